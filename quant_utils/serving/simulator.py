"""Discrete-event simulation of an image-generation service, driven by the performance model.

Server: `replicas` GPUs; a dispatcher sends each arriving request to one (round robin or
join-shortest-queue); the policy then picks its (resolution, mode) or rejects it. Each replica keeps a
FIFO per (res, mode) bucket and, whenever idle, serves up to `max_batch` requests of the bucket whose
oldest request has waited longest (no waiting for a batch to fill). A batch of b takes the model's
total p50 for (mode, res, b) times a noise factor: lognormal with the model's p95/p50 spread
(default), none (deterministic), or exponential of mean p50 (queueing-theory checks).

The event loop keeps only completions in a heap (at most one per replica); arrivals come from a sorted
list. A closed loop keeps its clients' next sends in a second heap (the next request at the previous
one's finish time; a rejected one again after the workload's retry back-off) and moves each into the
arrival list when it is due, which keeps that list sorted. All events at one instant are applied before
idle replicas start batches, so requests that arrive together can share a batch.
"""
from __future__ import annotations

import heapq
import math
from collections import deque
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from ..errors import ConfigError
from ..modes import mode_wbits
from ..perf_model import PerfModel
from .policies import Option, Policy
from .workloads import Workload

DISPATCH = ("rr", "jsq")
NOISE = ("lognormal", "none", "exponential")
Z95 = 1.6448536269514722  # standard normal 95th percentile


@dataclass
class ServerConfig:
    replicas: int = 1
    max_batch: int = 1
    dispatch: str = "rr"
    noise: str = "lognormal"
    exec: str | None = None      # perf-model exec per mode (default: graph when measured)
    steps: int | None = None     # UNet steps (default: the perf model's)
    # ms between a batch's end on the GPU and its clients holding the images, as two parts: the replica's own work
    # after the batch (image encode, hand-offs; off the GPU thread) and the transport (proxy, routing, network).
    # Both delay the response and a closed-loop client's next request, not the replica (the HTTP service's,
    # measured by load_test_stub --target; 0 in process)
    transport_ms: float = 0.0
    encode_ms: float = 0.0
    # ms between a request's send and its place in the replica's queue: the replica's handling before a batch (body,
    # policy, hand-off to the batcher; the HTTP service's x-queue-ms at an idle replica, 3-4 ms on the H200 box)
    handoff_ms: float = 0.0
    # ms the replica stays busy after each batch with its requests' work on the device (serve.py --encode_on device:
    # the batch's JPEG encode in the GPU thread): delays the batch's responses and the replica's next batch
    hold_ms: float = 0.0
    # ms the replica stays busy after each batch (and its hold) without delaying that batch's responses: its hand-offs
    # between one batch's end and the next one's start, and what a batch takes beyond the performance model's time
    # while the replica also sends responses (load_test_stub's probe times back-to-back batches; 0 in process)
    gap_ms: float = 0.0

    def __post_init__(self):
        if self.replicas < 1 or self.max_batch < 1:
            raise ConfigError(f"replicas={self.replicas} and max_batch={self.max_batch} must be >= 1")
        costs = dict(transport_ms=self.transport_ms, encode_ms=self.encode_ms, handoff_ms=self.handoff_ms,
                     hold_ms=self.hold_ms, gap_ms=self.gap_ms)
        if not all(v >= 0 for v in costs.values()):
            raise ConfigError(f"{', '.join(f'{k}={v}' for k, v in costs.items())}: each must be >= 0")
        if self.dispatch not in DISPATCH:
            raise ConfigError(f"dispatch {self.dispatch!r}: expected one of {DISPATCH}")
        if self.noise not in NOISE:
            raise ConfigError(f"noise {self.noise!r}: expected one of {NOISE}")


class ServiceTable:
    """Predicted batch latency per option (index k) and batch size b: p50 ms and the lognormal sigma
    that puts the model's p95 at the 95th percentile. Options are added on first use."""

    def __init__(self, perf: PerfModel, max_batch: int, exec: str | None = None, steps: int | None = None):
        self.perf, self.max_batch, self.exec, self.steps = perf, max_batch, exec, steps
        self.index: dict[Option, int] = {}
        self.options: list[Option] = []
        self.p50: list[list[float]] = []
        self.sigma: list[list[float]] = []

    def add(self, opt: Option) -> int:
        k = self.index.get(opt)
        if k is None:
            b = np.arange(1, self.max_batch + 1)
            exec = self.exec if self.exec in self.perf.groups.get(opt.mode, {}) else None
            pred = self.perf.predict(opt.mode, np.full_like(b, opt.res), np.full_like(b, opt.res), b, self.steps, exec)
            p50, p95 = np.asarray(pred["total_p50_ms"], float), np.asarray(pred["total_p95_ms"], float)
            k = self.index[opt] = len(self.options)
            self.options.append(opt)
            self.p50.append([0.0] + p50.tolist())  # index by batch size
            self.sigma.append([0.0] + (np.log(np.maximum(p95 / p50, 1.0)) / Z95).tolist())
        return k

    def cost_ms(self, opt: Option) -> float:
        """Predicted batch-1 latency of an option (what policies compare against the SLO)."""
        return self.p50[self.add(opt)][1]

    def batched_ms(self, k: int, n: int) -> float:
        """Predicted time to serve n queued requests of option k in full batches."""
        full, rest = divmod(n, self.max_batch)
        return full * self.p50[k][self.max_batch] + (self.p50[k][rest] if rest else 0.0)


class BucketQueue:
    """One replica's waiting requests: a FIFO per option index and, when given a service table, their
    predicted service time in full batches (`backlog_ms`, updated on every push and pop; skipped without
    a table because most policies never ask). Request ids grow with arrival time, so the bucket with the
    smallest head id holds the longest-waiting request."""

    __slots__ = ("buckets", "n", "backlog_ms", "table")

    def __init__(self, table: ServiceTable | None = None):
        self.buckets: dict[int, deque] = {}
        self.n = 0
        self.backlog_ms = 0.0
        self.table = table

    def push(self, k: int, rid: int) -> None:
        q = self.buckets.get(k)
        if q is None:
            q = self.buckets[k] = deque()
        q.append(rid)
        self.n += 1
        if self.table is not None:
            bm, c = self.table.batched_ms, len(q)
            self.backlog_ms += bm(k, c) - bm(k, c - 1)

    def pop_batch(self, max_batch: int) -> tuple[int, list[int]]:
        best, head = -1, -1
        for k, q in self.buckets.items():
            if q and (head < 0 or q[0] < head):
                best, head = k, q[0]
        q = self.buckets[best]
        c = len(q)
        batch = [q.popleft()] if max_batch == 1 else [q.popleft() for _ in range(min(max_batch, c))]
        self.n -= len(batch)
        if self.table is not None:
            bm = self.table.batched_ms
            self.backlog_ms = self.backlog_ms - bm(best, c) + bm(best, c - len(batch)) if self.n else 0.0
        return best, batch


@dataclass
class RunResult:
    """Per-request outcome plus run-level counters; `metrics.summarize` turns it into one row."""
    requests: pd.DataFrame
    replicas: int
    busy_s: list[float]
    mean_queue_len: float
    max_queue_len: int
    notes: list[str] = field(default_factory=list)


# Microsecond resolution when written to CSV (full precision in memory): keeps per-request CSVs small.
REQUEST_CSV_DECIMALS = {"arrival_s": 6, "start_s": 6, "finish_s": 6, "latency_ms": 3, "wait_ms": 3, "service_ms": 3}
REQUEST_COLUMNS = ["request", "arrival_s", "start_s", "finish_s", "latency_ms", "wait_ms", "service_ms", "res", "mode",
                   "wbits", "batch_size", "replica", "rejected", "attempt", "queue_len_at_arrival"]


def request_frame(arrival, start, finish, service, opt_of, bsize, replica, qlen, options: list[Option],
                  attempt=None) -> pd.DataFrame:
    """The per-request table (shared by the simulator and the live runner); times in s, durations in ms.
    `attempt`: 1 for a first attempt, k for the (k-1)-th retry of a rejected closed-loop request."""
    arrival, start, finish = (np.asarray(x, float) for x in (arrival, start, finish))
    opt_of = np.asarray(opt_of, int)
    rejected = opt_of < 0
    res = np.array([o.res for o in options] + [0])[opt_of]
    modes = np.array([o.mode for o in options] + [""], dtype=object)[opt_of]
    wbits = np.array([mode_wbits(o.mode) for o in options] + [np.nan])[opt_of]
    return pd.DataFrame({
        "request": np.arange(len(arrival)), "arrival_s": arrival, "start_s": start, "finish_s": finish,
        "latency_ms": (finish - arrival) * 1e3, "wait_ms": (start - arrival) * 1e3, "service_ms": np.asarray(service, float),
        "res": res, "mode": modes, "wbits": wbits, "batch_size": np.asarray(bsize, int), "replica": np.asarray(replica, int),
        "rejected": rejected, "attempt": np.ones(len(arrival), int) if attempt is None else np.asarray(attempt, int),
        "queue_len_at_arrival": np.asarray(qlen, int)})


def draw_noise(kind: str, n: int, rng: np.random.Generator) -> np.ndarray | None:
    """The service-time noise of n batches: standard normals (lognormal: ms = p50 * exp(sigma * z)),
    unit exponentials (ms = p50 * e, so p50 is the mean), or None (ms = p50)."""
    if kind == "lognormal":
        return rng.standard_normal(n)
    if kind == "exponential":
        return rng.exponential(1.0, n)
    return None


def simulate(workload: Workload, policy: Policy, perf: PerfModel, server: ServerConfig | None = None,
             seed: int = 0, table: ServiceTable | None = None) -> RunResult:
    """Run one workload through one policy; deterministic for a given seed."""
    server = server or ServerConfig()
    table = table or ServiceTable(perf, server.max_batch, server.exec, server.steps)
    policy.reset()
    policy.bind({o: table.cost_ms(o) for o in policy.options()})
    n, R, B = workload.n, server.replicas, server.max_batch
    # one noise draw per batch (at most n batches), as a list: list indexing is faster than numpy's
    noise = draw_noise(server.noise, n, np.random.default_rng(seed))
    noise = noise.tolist() if noise is not None else None
    lognormal = server.noise == "lognormal"
    closed = workload.closed
    transport = (server.encode_ms + server.transport_ms) / 1e3  # the client-seen response delay after the batch
    hold = server.hold_ms / 1e3  # after each batch, the replica still busy for its requests (device-side encode)
    gap = server.gap_ms / 1e3  # then busy still, its responses gone
    handoff = server.handoff_ms / 1e3  # `arrival` below: when a request joins its replica's queue (sent + handoff)
    # closed loop: (queue arrival, order, attempt) of the clients' next requests; moved into `arrival` when due
    pending = [(handoff, c, 1) for c in range(min(workload.clients, n))] if closed else []
    n_sched = len(pending)  # requests scheduled so far (at most n, retries included)
    backoff = workload.retry_backoff_s
    arrival = [] if closed else [a + handoff for a in workload.arrival_s.tolist()]
    attempt: list[int] = [] if closed else [1] * n
    n_arr = len(arrival)
    req_res = workload.res.tolist()
    has_req = bool(workload.res.any())
    nan = math.nan
    start, finish, service = [nan] * n, [nan] * n, [nan] * n
    opt_of, bsize, replica_of, qlen_of = [-1] * n, [0] * n, [-1] * n, [0] * n
    queues = [BucketQueue(table if policy.needs_backlog else None) for _ in range(R)]
    busy = [False] * R
    running: list[list[int]] = [[] for _ in range(R)]
    end_pred = [0.0] * R
    busy_s = [0.0] * R
    in_system = [0] * R  # waiting + in service, per replica (join-shortest-queue)
    heap: list = []
    heappush, heappop = heapq.heappush, heapq.heappop
    p50, sigma, index, table_add = table.p50, table.sigma, table.index, table.add
    choose, decide = policy.choose, policy.decide
    needs_backlog, jsq = policy.needs_backlog, server.dispatch == "jsq"
    i = nb = waiting = q_max = 0
    q_area = t_last = 0.0
    touched: list[int] = []

    while i < n_arr or heap or pending:
        na = pending[0][0] if closed and i >= n_arr and pending else (arrival[i] if i < n_arr else math.inf)
        t = heap[0][0] if heap and heap[0][0] <= na else na
        q_area += waiting * (t - t_last)
        t_last = t
        # 1. completions at t: a batch's responses leave (then, after its gap, the replica is free)
        while heap and heap[0][0] == t:
            _, seq, r = heappop(heap)
            if seq < 0:  # the gap after a batch is over
                busy[r] = False
                touched.append(r)
                continue
            for j in running[r]:
                finish[j] = t + transport
            in_system[r] -= len(running[r])
            if closed:  # each client sends its next request once it holds its images
                for _ in running[r]:
                    if n_sched < n:
                        heappush(pending, (t + transport + handoff, n_sched, 1))
                        n_sched += 1
            if gap:
                heappush(heap, (t + gap, -seq, r))
            else:
                busy[r] = False
                touched.append(r)
        # 2. arrivals at t
        while True:
            if closed:
                while pending and pending[0][0] == t:  # due sends become arrivals (ids grow with time)
                    attempt.append(heappop(pending)[2])
                    arrival.append(t)
                n_arr = len(arrival)
            if not (i < n_arr and arrival[i] == t):
                break
            if R == 1:
                r = 0
            elif jsq:
                r = min(range(R), key=in_system.__getitem__)
            else:
                r = i % R
            q = queues[r]
            backlog = ((end_pred[r] - t) * 1e3 if busy[r] else 0.0) + q.backlog_ms if needs_backlog else 0.0
            opt = decide(t, q.n, backlog, req_res[i]) if has_req else choose(t, q.n, backlog)
            qlen_of[i] = q.n
            replica_of[i] = r
            if opt is None:  # rejected: a closed-loop client sends it again after its back-off (a retry)
                finish[i] = start[i] = t
                if closed and n_sched < n:
                    heappush(pending, (t + backoff + handoff, n_sched, attempt[i] + 1))
                    n_sched += 1
            else:
                k = index.get(opt)
                opt_of[i] = k = table_add(opt) if k is None else k
                q.push(k, i)
                in_system[r] += 1
                waiting += 1
                touched.append(r)
            i += 1
        # 3. idle replicas with work start a batch
        for r in touched:
            if busy[r] or not queues[r].n:
                continue
            k, batch = queues[r].pop_batch(B)
            b = len(batch)
            waiting -= b
            ms = p50[k][b]
            if noise is not None:
                ms = ms * math.exp(sigma[k][b] * noise[nb]) if lognormal else ms * noise[nb]
            nb += 1
            for j in batch:
                start[j] = t
                service[j] = ms
                bsize[j] = b
            running[r] = batch
            busy[r] = True
            end_pred[r] = t + p50[k][b] / 1e3 + hold + gap
            busy_s[r] += ms / 1e3 + hold + gap
            heappush(heap, (t + ms / 1e3 + hold, nb, r))
        touched.clear()
        if waiting > q_max:
            q_max = waiting
    sent = [a - handoff for a in arrival[:n]]  # the clients' send times: latency and wait include the handoff
    df = request_frame(sent, start, finish, service, opt_of, bsize, replica_of, qlen_of, table.options, attempt[:n])
    duration = max(t_last - (sent[0] if sent else 0.0), 1e-12)
    return RunResult(df, R, busy_s, q_area / duration, q_max)
