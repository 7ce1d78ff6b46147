"""The same workload against a live in-process generator: one loaded model, a request queue, one worker.

The model comes in as plain callables, one per mode, `generate(prompts, seeds, height, width) -> images`
(`quant_utils.runtime.Runner` has that signature), so this module knows nothing of how a model is
built. The main thread replays the arrivals in real time and asks the policy at each arrival, exactly
as the simulator does (same `BucketQueue`, same batching rule); the worker thread serves batches.
A mode without its own callable runs another mode's model: bit-width switching is then a no-op and
the notes say so.
"""
from __future__ import annotations

import heapq
import math
import threading
import time
from typing import Any, Callable, Iterable, Sequence

import numpy as np
import pandas as pd

from ..errors import ConfigError
from ..modes import mode_wbits
from .policies import Option, Policy
from .simulator import BucketQueue, RunResult, ServiceTable, request_frame
from .workloads import Workload

GenerateFn = Callable[[list[str], list[int], int, int], Any]


def resolve_variants(variants: dict[str, GenerateFn], modes: Iterable[str]) -> tuple[dict[str, GenerateFn], dict[str, str]]:
    """A callable for every mode, and which model really runs each mode: a mode with no callable of its
    own runs the first given model (see `substitution_notes`)."""
    if not variants:
        raise ConfigError("live mode needs at least one generate callable")
    fallback_mode = next(iter(variants))
    out, runs_as = dict(variants), {m: m for m in variants}
    for m in modes:
        if m not in out:
            out[m], runs_as[m] = variants[fallback_mode], fallback_mode
    return out, runs_as


def substitution_notes(runs_as: dict[str, str]) -> list[str]:
    return [f"live: mode {m} has no model of its own here; it runs the {r} model (bit-width switching is a no-op "
            f"in this live run; resolution switching is real)" for m, r in runs_as.items() if m != r]


def warm_up(variants: dict[str, GenerateFn], options: Sequence[Option], max_batch: int, prompt: str = "warm-up") -> None:
    """One call per (res, mode, batch <= max_batch): first use of a bucket (CUDA-graph capture, allocator,
    autotuning) stays out of the measured run."""
    for opt in dict.fromkeys(Option(o.res, o.mode) for o in options):
        for b in range(1, max_batch + 1):
            time_call(variants[opt.mode], [prompt] * b, list(range(b)), opt.res)


def time_call(fn: GenerateFn, prompts: list[str], seeds: list[int], res: int) -> float:
    t = time.perf_counter()
    fn(prompts, seeds, res, res)  # callables return host images, so the GPU work is finished here
    return (time.perf_counter() - t) * 1e3


def calibrate(variants: dict[str, GenerateFn], options: Sequence[Option], max_batch: int, repeats: int = 3,
              steps: int = 1, device: str = "unknown", prompt: str = "a corgi in sunglasses") -> pd.DataFrame:
    """Time every (mode, res, batch <= max_batch) through its callable (one warm-up call first): a latency
    table in latency_probe's columns, total only, to fit a PerfModel of this device for the simulator."""
    rows = []
    for opt in dict.fromkeys(Option(o.res, o.mode) for o in options):
        fn = variants[opt.mode]
        warm_up(variants, [opt], max_batch, prompt)
        for b in range(1, max_batch + 1):
            prompts, seeds = [prompt] * b, list(range(b))
            ms = np.array([time_call(fn, prompts, seeds, opt.res) for _ in range(repeats)])
            rows.append(dict(mode=opt.mode, wbits=mode_wbits(opt.mode), abits=np.nan, backend="live", exec="live",
                             height=opt.res, width=opt.res, batch=b, steps=steps, repeats=repeats,
                             total_p50_ms=float(np.median(ms)), total_p95_ms=float(np.percentile(ms, 95)),
                             total_mean_ms=float(ms.mean()), images_per_s=b / (ms.mean() / 1e3), gpu=device,
                             weights="live"))
    return pd.DataFrame(rows)


def run_live(workload: Workload, policy: Policy, variants: dict[str, GenerateFn], table: ServiceTable,
             prompts: Sequence[str], seed: int = 0) -> RunResult:
    """Replay `workload` in real time against the callables; `table` gives the policy its cost estimates."""
    policy.reset()
    policy.bind({o: table.cost_ms(o) for o in policy.options()})
    n, B = workload.n, table.max_batch
    nan = math.nan
    closed = workload.closed
    # closed loop: (send time, order, attempt) of the clients' next requests, moved into `arrival` when due
    pending = [(0.0, c, 1) for c in range(min(workload.clients, n))] if closed else []
    sched = {"n": len(pending)}  # requests scheduled so far (at most n, retries included)
    arrival = [] if closed else workload.arrival_s.tolist()
    attempt: list[int] = [] if closed else [1] * n
    start, finish, service = [nan] * n, [nan] * n, [nan] * n
    opt_of, bsize, qlen_of = [-1] * n, [0] * n, [0] * n
    req_res = workload.res.tolist()
    queue = BucketQueue(table if policy.needs_backlog else None)
    cond = threading.Condition()
    state = {"busy": False, "end_pred": 0.0, "admitted": 0, "busy_s": 0.0, "error": None}
    t0 = time.perf_counter()
    now = lambda: time.perf_counter() - t0  # noqa: E731

    def schedule(t: float, count: int, tries: int = 1) -> None:  # closed loop: clients send (again) at t
        for _ in range(count):
            if closed and sched["n"] < n:
                heapq.heappush(pending, (t, sched["n"], tries))
                sched["n"] += 1

    def worker() -> None:
        while True:
            with cond:
                while not queue.n and state["admitted"] < n:
                    cond.wait()
                if not queue.n:
                    return
                k, batch = queue.pop_batch(B)
                opt = table.options[k]
                state["busy"], state["end_pred"] = True, now() + table.p50[k][len(batch)] / 1e3
                ts = now()
            try:
                variants[opt.mode]([_prompt(prompts, workload, j) for j in batch], [seed + j for j in batch],
                                   opt.res, opt.res)
            except BaseException as e:  # surface in the main thread
                with cond:
                    state["error"], state["admitted"] = e, n
                    cond.notify_all()
                return
            te = now()
            with cond:
                for j in batch:
                    start[j], finish[j], service[j], bsize[j] = ts, te, (te - ts) * 1e3, len(batch)
                state["busy"], state["busy_s"] = False, state["busy_s"] + (te - ts)
                schedule(te, len(batch))
                cond.notify_all()

    th = threading.Thread(target=worker, name="live-generator", daemon=True)
    th.start()
    with cond:
        i = 0
        while i < n and state["error"] is None:
            if i >= len(arrival) and pending:  # closed loop: the next send, when due, becomes the next arrival
                delay = pending[0][0] - now()
                if delay > 0:
                    cond.wait(delay)
                    continue
                t_send, _, tries = heapq.heappop(pending)
                arrival.append(t_send)
                attempt.append(tries)
            if i >= len(arrival):  # closed loop: wait for a completion
                cond.wait()
                continue
            delay = arrival[i] - now()
            if delay > 0:
                cond.wait(delay)
                continue
            t = now()
            backlog = (max(state["end_pred"] - t, 0.0) * 1e3 if state["busy"] else 0.0) + queue.backlog_ms
            opt = policy.decide(t, queue.n, backlog, req_res[i])
            qlen_of[i] = queue.n
            if opt is None:  # rejected: a closed-loop client sends it again after its back-off (a retry)
                start[i] = finish[i] = arrival[i]
                schedule(t + workload.retry_backoff_s, 1, attempt[i] + 1)
            else:
                opt_of[i] = table.add(opt)
                queue.push(opt_of[i], i)
            i += 1
            state["admitted"] = i
            cond.notify_all()
    th.join()
    if state["error"] is not None:
        raise state["error"]
    df = request_frame(arrival[:n], start, finish, service, opt_of, bsize, [0] * n, qlen_of, table.options,
                       attempt[:n])
    from .metrics import queue_stats
    mean_q, max_q = queue_stats(df)
    return RunResult(df, 1, [state["busy_s"]], mean_q, max_q)


def _prompt(prompts: Sequence[str], workload: Workload, j: int) -> str:
    if workload.prompts:
        return workload.prompts[j % len(workload.prompts)]
    return prompts[j % len(prompts)]
