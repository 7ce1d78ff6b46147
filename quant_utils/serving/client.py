"""HTTP load client: the load test's arrival traces replayed against the Ray Serve service (scripts/serve.py).

Open loop: each request is sent at its arrival time, whatever is still in flight. Closed loop (`burst` with a
concurrency): `clients` coroutines each send their next request when their previous one is answered; a rejected
one is sent again (same prompt and seed, `attempt` + 1) after the workload's `retry_backoff_s` (0 when the
workload has none), as the simulator does. Every request asks for one image format (`png` or `jpeg`) and ends in
exactly one outcome: `ok` (HTTP 200 with an image of that format), `rejected` (HTTP 429: admission control),
`error` (any other status, a body that is not such an image, or a transport failure such as a reset connection) or
`timeout` (no answer within the timeout); `accounting` checks that they add up to what was sent. Latencies are
client-side (send to last byte), server-side parts come from the headers: latency = queue + service + encode +
replica other + transport (`latency_split`).
"""
from __future__ import annotations

import asyncio
import json
import math
import time
from typing import Any, Callable, Sequence

import aiohttp
import httpx
import numpy as np
import pandas as pd

from ..errors import ConfigError
from ..modes import mode_wbits
from .images import is_image
from .metrics import queue_stats
from .simulator import RunResult
from .workloads import Workload

OUTCOMES = ("ok", "rejected", "error", "timeout")
# Per-request columns an HTTP run adds to the simulator's (docs/outputs.md)
HTTP_COLUMNS = ["attempt", "status", "outcome", "reason", "model", "vae", "format", "bytes", "server_queue_ms",
                "overhead_ms", "encode_ms", "encode_work_ms", "encode_faults", "replica_other_ms", "transport_ms", "elapsed_ms", "replica_id",
                "batch_ahead"]
# a served request's client latency, in parts that add up to it (per-request columns)
SPLIT_PARTS = ["server_queue_ms", "service_ms", "encode_ms", "replica_other_ms", "transport_ms"]


def get_json(target: str, path: str, timeout_s: float = 10.0) -> dict:
    """GET target/path as JSON; a clear error when nothing answers there."""
    url = target.rstrip("/") + path
    try:
        r = httpx.get(url, timeout=timeout_s)
    except httpx.HTTPError as e:
        raise ConfigError(f"no service at {url} ({type(e).__name__}: {e}); start one with: python scripts/serve.py") from None
    if r.status_code != 200:
        raise ConfigError(f"{url} answered HTTP {r.status_code}: {r.text[:200]}")
    return r.json()


def wait_ready(target: str, timeout_s: float = 0.0) -> dict:
    """The service's /healthz, polling for up to `timeout_s` seconds while it starts."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            return get_json(target, "/healthz", timeout_s=5.0)
        except ConfigError:
            if time.monotonic() >= deadline:
                raise
            time.sleep(1.0)


def server_info(target: str) -> dict:
    """The service's /config: its ServeConfig, model labels, dispatch rule and performance model."""
    return get_json(target, "/config", timeout_s=30.0)


def simulator_settings(info: dict) -> dict[str, Any]:
    """The load test's flags that make its simulator match the service (argparse dest -> value)."""
    s = info["serve"]
    return dict(wbits=[int(mode_wbits(m)) for m in s["modes"]], policies=[s["policy"]], res=s["res"],
                ladder=s["ladder"], adaptive_wbits=[int(mode_wbits(m)) for m in s["adaptive_modes"]],
                q_high=s["q_high"], q_low=s["q_low"], slo_ms=s["slo_ms"], admission=s["admission"],
                replicas=s["replicas"], max_batch=s["max_batch"], dispatch=info["dispatch"], steps=info["steps"],
                exec_mode=info["perf_exec"])


async def _replay(workload: Workload, targets: Sequence[str], mode: str, prompts: Sequence[str], seed: int,
                  timeout_s: float, fmt: str) -> list[dict]:
    n = workload.n
    urls = [t.rstrip("/") + "/generate" for t in targets]
    records: list[dict] = [{} for _ in range(n)]
    # aiohttp, not httpx's AsyncClient: with many requests in flight and multi-MB bodies the latter adds several ms
    # per request of its own (encode/httpx#3215; docs/serving.md), which the load test would book as transport
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0),  # open loop: no cap in flight
                                     timeout=aiohttp.ClientTimeout(total=timeout_s)) as session:
        t0 = time.perf_counter()

        async def send(i: int, body: dict | None = None, attempt: int = 1) -> dict:
            res = int(workload.res[i])
            body = body or {"prompt": prompts[i % len(prompts)], "seed": seed + i, "mode": mode, "format": fmt} | (
                {"res": res} if res else {})
            rec = records[i] = {"request": i, "arrival_s": time.perf_counter() - t0, "attempt": attempt, "body": body}
            try:
                async with session.post(urls[i % len(urls)], json=body) as r:  # several: in turn (the client balances)
                    content = await r.read()
                rec.update(status=r.status, headers={k.lower(): v for k, v in r.headers.items()}, bytes=len(content))
                if r.status == 200:
                    rec["outcome"] = "ok" if is_image(content, fmt) else "error"
                    rec["reason"] = "" if rec["outcome"] == "ok" else f"HTTP 200 without a {fmt.upper()} body"
                else:
                    rec["outcome"] = "rejected" if r.status == 429 else "error"
                    rec["reason"] = _error_reason(content)
            except asyncio.TimeoutError as e:  # before ClientError: aiohttp's timeouts are both
                rec.update(status=0, outcome="timeout", reason=f"{type(e).__name__} after {timeout_s:g} s")
            except aiohttp.ClientError as e:
                rec.update(status=0, outcome="error", reason=f"{type(e).__name__}: {e}"[:300])
            rec["done_s"] = time.perf_counter() - t0
            return rec

        if workload.closed:
            ids = iter(range(n))
            backoff_s = float(getattr(workload, "retry_backoff_s", 0.0) or 0.0)

            async def client_loop() -> None:
                retry = None
                for i in ids:  # a shared iterator: each client takes the next request when it is free
                    rec = await send(i, *(retry or ()))
                    retry = (rec["body"], rec["attempt"] + 1) if rec["outcome"] == "rejected" else None
                    if retry and backoff_s:
                        await asyncio.sleep(backoff_s)

            await asyncio.gather(*(client_loop() for _ in range(min(workload.clients, n))))
        else:
            tasks = []
            for i, t in enumerate(workload.arrival_s.tolist()):
                delay = t - (time.perf_counter() - t0)
                if delay > 0:
                    await asyncio.sleep(delay)
                tasks.append(asyncio.create_task(send(i)))
            await asyncio.gather(*tasks)
    return records


def _error_reason(content: bytes) -> str:
    """The one-line reason of a non-200 answer: the service's JSON `error`, else the body's start."""
    try:
        return str(json.loads(content).get("error", content.decode(errors="replace")))[:300]
    except (ValueError, AttributeError):
        return content[:300].decode(errors="replace")


def request_table(records: list[dict], mode: str) -> pd.DataFrame:
    """Per-request rows in the simulator's columns (times in s from the run's start, durations in ms) plus
    HTTP_COLUMNS; errors and timeouts have no finish time (they are neither served nor rejected). A served
    request's latency splits into SPLIT_PARTS: the replica's queue, service and encode (headers), its other time
    (x-replica-ms minus those three) and the transport outside the replica (latency - x-replica-ms)."""
    rows = []
    for rec in records:
        h = rec.get("headers") or {}
        ok, rejected = rec["outcome"] == "ok", rec["outcome"] == "rejected"
        done = rec["done_s"]
        service, queue_ms, encode_ms, replica_ms = (float(h.get(f"x-{k}-ms", "nan")) if ok else math.nan
                                                    for k in ("service", "queue", "encode", "replica"))
        finish = done if ok or rejected else math.nan
        start = finish - service / 1e3 if ok else finish
        latency = (finish - rec["arrival_s"]) * 1e3
        served_mode = h.get("x-mode", mode) if ok else mode
        rows.append({
            "request": rec["request"], "arrival_s": rec["arrival_s"], "start_s": start, "finish_s": finish,
            "latency_ms": latency, "wait_ms": (start - rec["arrival_s"]) * 1e3, "service_ms": service,
            "res": int(h.get("x-res", 0)) if ok else 0, "mode": served_mode,
            "wbits": mode_wbits(served_mode) if ok else math.nan, "batch_size": int(h.get("x-batch-size", 0)),
            "replica": -1, "rejected": rejected, "queue_len_at_arrival": int(h.get("x-queue-len", -1)),
            "attempt": rec.get("attempt", 1), "status": rec["status"], "outcome": rec["outcome"], "reason": rec.get("reason", ""),
            "model": h.get("x-model", ""), "vae": h.get("x-vae", ""), "format": rec.get("body", {}).get("format", "png"),
            "bytes": rec.get("bytes", 0), "server_queue_ms": queue_ms,
            "overhead_ms": latency - queue_ms - service if ok else math.nan, "encode_ms": encode_ms,
            "encode_work_ms": float(h.get("x-encode-work-ms", "nan")) if ok else math.nan,
            "encode_faults": float(h.get("x-encode-faults", "nan")) if ok else math.nan,
            "replica_other_ms": replica_ms - queue_ms - service - encode_ms, "transport_ms": latency - replica_ms,
            "elapsed_ms": (done - rec["arrival_s"]) * 1e3, "replica_id": h.get("x-replica", ""),
            "batch_ahead": float(h.get("x-batch-ahead", "nan")) if ok else math.nan})
    df = pd.DataFrame(rows)
    ids = [r for r in dict.fromkeys(df["replica_id"]) if r]
    df["replica"] = df["replica_id"].map({r: k for k, r in enumerate(ids)}).fillna(-1).astype(int)
    return df


def accounting(df: pd.DataFrame, sent: int) -> dict[str, int]:
    """Outcome counts; raises if ok + rejected + error + timeout differs from what was sent."""
    counts = {o: int((df["outcome"] == o).sum()) for o in OUTCOMES}
    if sum(counts.values()) != sent or len(df) != sent:
        raise RuntimeError(f"HTTP accounting: sent {sent}, recorded {len(df)}, outcomes {counts} (lost requests)")
    return counts


def accounting_line(counts: dict[str, int]) -> str:
    return (f"sent {sum(counts.values())} = ok {counts['ok']} + rejected {counts['rejected']} + error "
            f"{counts['error']} + timeout {counts['timeout']}")


def run_http(workload: Workload, target: str | Sequence[str], mode: str, prompts: Sequence[str], seed: int = 0,
             timeout_s: float = 120.0, replicas: int = 1, fmt: str = "png") -> RunResult:
    """Replay `workload` against target's /generate (every request asks for `mode` and an image in `fmt`; request i
    uses seed + i); several targets (each replica's own address) take the requests in turn, i mod n."""
    targets = [target] if isinstance(target, str) else list(target)
    records = asyncio.run(_replay(workload, targets, mode, list(prompts), seed, timeout_s, fmt))
    df = request_table(records, mode)
    counts = accounting(df, workload.n)
    ok = df[df["outcome"] == "ok"]
    busy = [float((g["service_ms"] / g["batch_size"].clip(lower=1)).sum() / 1e3) for _, g in ok.groupby("replica")]
    busy += [0.0] * max(replicas - len(busy), 0)
    mean_q, max_q = queue_stats(df.assign(rejected=df["outcome"] != "ok"))
    return RunResult(df, max(replicas, len(busy)), busy, mean_q, max_q, notes=[accounting_line(counts)])


async def _probe_request(session: aiohttp.ClientSession, url: str, body: dict, what: str,
                         skip_rejected: bool = False) -> tuple[float, dict] | None:
    """One probe request: (its latency in ms, its headers in lower case); None for a 429 with `skip_rejected`, any
    other answer than 200 a ConfigError naming the probe."""
    t = time.perf_counter()
    async with session.post(url, json=body) as r:
        content = await r.read()
    ms = (time.perf_counter() - t) * 1e3
    if r.status == 429 and skip_rejected:
        return None
    if r.status != 200:
        raise ConfigError(f"{what}: {url} answered HTTP {r.status}: {_error_reason(content)}")
    return ms, {k.lower(): v for k, v in r.headers.items()}


def _device_hold_ms(h: dict) -> float:
    """The replica's GPU thread held by this response's encode: its x-encode-ms when encoded on the device, else 0."""
    return float(h["x-encode-ms"]) if h.get("x-encoded-on") == "device" else 0.0


def probe_transport(target: str, mode: str, prompt: str, n: int = 6, timeout_s: float = 120.0,
                    fmt: str = "png") -> dict[str, float]:
    """What a request costs besides its batch (ms), for the simulator: medians over n sequential requests (an idle
    replica), after one warm-up, of `handoff_ms` = x-queue-ms (the replica's handling before the batch),
    `transport_ms` = latency - x-replica-ms (proxy, routing, network) and `encode_ms` = the rest of the overhead
    (latency - x-queue-ms - x-service-ms): the replica's encode and hand-offs, less `hold_ms` = the x-encode-ms of
    responses encoded on the device (x-encoded-on: device; they hold the replica's GPU thread; 0 otherwise). The sum
    of the last three is the median overhead, so the simulated client latency keeps it whole. Measured before a load
    test's runs, so that its simulator predicts the HTTP service instead of being fitted to it."""
    url = target.rstrip("/") + "/generate"

    async def probe() -> tuple[list[float], list[float], list[float], list[float]]:
        overhead, transport, queue, hold = [], [], [], []
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=timeout_s)) as session:  # as the runs
            for i in range(n + 1):
                ms, h = await _probe_request(session, url, {"prompt": prompt, "seed": i, "mode": mode, "format": fmt},
                                             "transport probe")
                if i:
                    queue.append(float(h["x-queue-ms"]))
                    overhead.append(ms - queue[-1] - float(h["x-service-ms"]))
                    transport.append(ms - float(h["x-replica-ms"]))
                    hold.append(_device_hold_ms(h))
        return overhead, transport, queue, hold

    overhead, transport, queue, hold = asyncio.run(probe())
    total, outside = max(float(np.median(overhead)), 0.0), max(float(np.median(transport)), 0.0)
    outside = min(outside, total)
    held = min(max(float(np.median(hold)), 0.0), total - outside)
    return {"transport_ms": outside, "encode_ms": total - outside - held, "hold_ms": held,
            "handoff_ms": max(float(np.median(queue)), 0.0)}


def probe_gap(target: str, mode: str, prompt: str, clients: int, batch_ms: Callable[[int, str, int], float],
              rounds: int = 5, timeout_s: float = 120.0, fmt: str = "png") -> float:
    """How long a replica stays busy per batch beyond the performance model's batch time and its device hold, for
    the simulator's `gap_ms` (ms, >= 0): `clients` closed-loop clients (twice the batches a replica takes at once,
    so that the next batch waits while one runs) send `rounds` requests each; over the replica's consecutive
    batches whose successor was already waiting when the batch ended, the median of (next start - start -
    batch_ms(res, mode, batch size) - the batch's x-encode-ms when encoded on the device). That covers the
    hand-offs between batches and the batch's own slow-down while the replica sends responses, neither of which
    an idle replica (probe_transport) shows. Requests turned away (429) are skipped; with no such pair, 0."""
    url = target.rstrip("/") + "/generate"

    async def burst() -> list[dict]:
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0),
                                         timeout=aiohttp.ClientTimeout(total=timeout_s)) as session:
            async def client_loop(c: int) -> list[dict]:
                out = []
                for i in range(rounds):
                    body = {"prompt": prompt, "seed": c * rounds + i, "mode": mode, "format": fmt}
                    got = await _probe_request(session, url, body, "gap probe", skip_rejected=True)
                    if got is not None:  # else admission control turned it away: no batch to time
                        out.append(got[1])
                return out

            return [h for hs in await asyncio.gather(*map(client_loop, range(clients))) for h in hs]

    batches: dict[tuple[str, float], dict] = {}  # (replica, start ms on its clock) -> the batch
    for h in asyncio.run(burst()):
        start = float(h["x-batch-start-ms"])
        b = batches.setdefault((h["x-replica"], start), {
            "start": start, "end": start + float(h["x-service-ms"]), "first_arrival": math.inf,
            "model_ms": batch_ms(int(h["x-res"]), h["x-mode"], int(h["x-batch-size"])),
            "hold": _device_hold_ms(h)})
        b["first_arrival"] = min(b["first_arrival"], start - float(h["x-queue-ms"]))
    excess = []
    for replica in {r for r, _ in batches}:
        seq = sorted((b for (r, _), b in batches.items() if r == replica), key=lambda b: b["start"])
        excess += [nxt["start"] - b["start"] - b["model_ms"] - b["hold"]
                   for b, nxt in zip(seq, seq[1:]) if nxt["first_arrival"] <= b["end"]]
    return max(float(np.median(excess)), 0.0) if excess else 0.0


def overhead_table(live: pd.DataFrame, http: pd.DataFrame, http_requests: pd.DataFrame) -> pd.DataFrame:
    """Per run: the same trace in process (--live) and over HTTP. `delta_*` = HTTP - in-process latency;
    `overhead_*` = per-request HTTP latency minus the replica's queue and service time (HTTP, proxy, routing,
    PNG encoding and transfer), from the response headers."""
    m = live.merge(http, on="run_id", suffixes=("_live", "_http"))
    out = pd.DataFrame({"run_id": m["run_id"], "mode": m["mode_live"], "n_requests": m["n_requests_http"]})
    for q in ("p50_ms", "p95_ms"):
        out[f"live_{q}"], out[f"http_{q}"] = m[f"{q}_live"], m[f"{q}_http"]
        out[f"delta_{q}"] = m[f"{q}_http"] - m[f"{q}_live"]
    ovh = http_requests.groupby("run_id")["overhead_ms"]
    out["overhead_p50_ms"] = out["run_id"].map(ovh.median())
    out["overhead_p95_ms"] = out["run_id"].map(ovh.quantile(0.95))
    return out


def latency_split(requests: pd.DataFrame) -> pd.DataFrame:
    """Per HTTP run, where its served requests' client latency went: the means of latency and of SPLIT_PARTS (they
    add up: latency = queue + service + encode + replica other + transport), and the p50s of the overhead (latency -
    queue - service, as the report quotes it) and of its parts, and of the encode alone (`encode_work_ms`, in the
    encoder thread; encode_ms - encode_work_ms is the wait for a thread and the hand-back) and its page faults
    (`encode_faults`); `body_kb`: mean response body."""
    ok = requests[requests["outcome"] == "ok"]
    g = ok.groupby("run_id", sort=False)
    out = pd.DataFrame({"format": g["format"].first(), "n_ok": g.size(), "body_kb": g["bytes"].mean() / 1e3})
    for c in ["latency_ms"] + SPLIT_PARTS:
        out[f"mean_{c.removeprefix('server_')}"] = g[c].mean()
    for c in ["overhead_ms"] + SPLIT_PARTS[2:3] + ["encode_work_ms", "encode_faults"] + SPLIT_PARTS[3:]:
        out[f"p50_{c}"] = g[c].median()
    return out.reset_index()


def fetch_image(target: str, prompt: str, **fields) -> tuple[np.ndarray, dict]:
    """One image (any `format`) as uint8 [H, W, 3] plus the response headers (for scripts and tests)."""
    import io

    from PIL import Image

    r = httpx.post(target.rstrip("/") + "/generate", json={"prompt": prompt, **fields}, timeout=120.0)
    if r.status_code != 200:
        raise ConfigError(f"HTTP {r.status_code}: {r.text[:200]}")
    return np.asarray(Image.open(io.BytesIO(r.content)).convert("RGB")), dict(r.headers)
