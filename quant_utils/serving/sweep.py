"""The load test's sweep: cells (workload x mode x policy), each run simulated or live, summarised into
one table, with a per-request table and a text report (the source's `mixdq_queue_results.{csv,txt}`).

Every policy of a (pattern, mode, rate) sees the same arrival trace and the same service-noise draws
(common random numbers), so static vs adaptive differences are the policies', not the dice's.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

import pandas as pd

from ..errors import ConfigError
from ..modes import mode_wbits
from ..perf_model import PerfModel
from . import workloads as wl
from .metrics import SUMMARY_COLUMNS, summarize
from .policies import Policy
from .simulator import RunResult, ServerConfig

CELL_COLUMNS = ["run_id", "source", "pattern", "wbits", "mode", "policy", "conc", "lam", "load", "burstiness",
                "burst_size", "burst_every_s", "retry_backoff_ms", "replicas", "max_batch", "dispatch", "static_res",
                "seed"]
RESULT_COLUMNS = CELL_COLUMNS + SUMMARY_COLUMNS
# added after results were committed: readers (plots) do not require them
NEWER_COLUMNS = ("retry_backoff_ms", "n_retries", "n_rejected_retries", "n_error", "n_timeout")


@dataclass
class Cell:
    """One run: a workload shape, a mode (bit-width) and a policy name."""
    pattern: str
    mode: str
    policy: str
    n: int
    conc: int | None = None
    lam: float | None = None          # req/s (Poisson, gamma)
    load: float | None = None         # lam as a fraction of the static configuration's capacity
    burstiness: float | None = None
    burst_size: int | None = None
    burst_every_s: float | None = None
    retry_backoff_ms: float | None = None  # closed loop: a rejected client's wait before it resends
    trace: str | None = None
    extra: dict = field(default_factory=dict)

    @property
    def run_id(self) -> str:
        if self.pattern == "burst":
            shape = f"conc{self.conc}" if self.conc else f"size{self.burst_size}-every{self.burst_every_s:g}s"
        elif self.pattern in ("poisson", "gamma"):
            shape = (f"load{self.load:g}" if self.load is not None else f"lam{self.lam:g}") + (
                f"-b{self.burstiness:g}" if self.pattern == "gamma" else "")
        else:
            shape = Path(self.trace or "trace").stem
        return f"{self.pattern}-{shape}-{self.mode}-{self.policy}"


def build_cells(patterns: list[str], modes: list[str], policies: list[str], n: int, *, conc=(1, 2), rates=(),
                loads=(), burstiness: float = 0.5, burst_size: int | None = None, burst_every_s: float | None = None,
                trace: str | None = None, capacity: Callable[[str], float] | None = None,
                retry_backoff_ms: float = 1e3 * wl.RETRY_BACKOFF_S) -> list[Cell]:
    """The sweep's cells. Rates come from `rates` (req/s) and/or `loads` x capacity(mode) (req/s at 100%).
    Closed-loop bursts resend a rejected request after `retry_backoff_ms`."""
    cells = []
    for pattern in patterns:
        if pattern not in wl.PATTERNS:
            raise ConfigError(f"pattern {pattern!r}: expected one of {wl.PATTERNS}")
        for mode in modes:
            if pattern == "burst":
                shapes = ([dict(burst_size=burst_size, burst_every_s=burst_every_s)] if burst_every_s is not None
                          else [dict(conc=int(c), retry_backoff_ms=float(retry_backoff_ms)) for c in conc])
            elif pattern in ("poisson", "gamma"):
                if not rates and not loads:
                    raise ConfigError(f"pattern {pattern}: give --rates (req/s) or --load (fraction of capacity)")
                shapes = [dict(lam=float(r)) for r in rates]
                shapes += [dict(lam=float(x) * capacity(mode), load=float(x)) for x in loads]
                if pattern == "gamma":
                    shapes = [dict(s, burstiness=burstiness) for s in shapes]
            else:
                if not trace:
                    raise ConfigError("pattern trace needs --trace FILE.csv")
                shapes = [dict(trace=trace)]
            n_cell = wl.read_trace(trace).n if pattern == "trace" else n  # a trace run has the trace's requests
            cells += [Cell(pattern, mode, pol, n_cell, **s) for s in shapes for pol in policies]
    return cells


def make_workload(cell: Cell, seed: int) -> wl.Workload:
    if cell.pattern == "burst":
        if cell.conc:
            backoff_ms = 1e3 * wl.RETRY_BACKOFF_S if cell.retry_backoff_ms is None else cell.retry_backoff_ms
            return wl.closed_loop(cell.n, cell.conc, backoff_ms / 1e3)
        return wl.burst(cell.n, cell.burst_size, cell.burst_every_s)
    if cell.pattern in ("poisson", "gamma"):
        return wl.gamma(cell.n, cell.lam, cell.burstiness or 1.0, seed)
    return wl.read_trace(cell.trace)


def result_row(cell: Cell, run: RunResult, source: str, server: ServerConfig, static_res: int, seed: int,
               slo_ms: float, perf: PerfModel | None = None, policy_name: str | None = None) -> dict:
    """One row of mixdq_queue_results.csv: the cell's description and its metrics."""
    load = cell.load
    if load is None and cell.lam is not None and perf is not None:
        cap = perf.capacity(cell.mode, static_res, server.max_batch, server.exec) * server.replicas
        load = cell.lam / cap
    d = dict(run_id=cell.run_id, source=source, pattern=cell.pattern, wbits=mode_wbits(cell.mode), mode=cell.mode,
             policy=policy_name or cell.policy, conc=cell.conc, lam=cell.lam, load=load, burstiness=cell.burstiness,
             burst_size=cell.burst_size, burst_every_s=cell.burst_every_s, retry_backoff_ms=cell.retry_backoff_ms,
             replicas=server.replicas,
             max_batch=server.max_batch, dispatch=server.dispatch, static_res=static_res, seed=seed)
    return d | summarize(run, slo_ms)


def run_cells(cells: list[Cell], make_policy: Callable[[Cell], Policy], runner: Callable[[wl.Workload, Policy], RunResult],
              source: str, server: ServerConfig, static_res: int, seed: int, slo_ms: float,
              perf: PerfModel | None = None, progress: Callable | None = None) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Run every cell; returns (one summary row per cell, all per-request rows with their run_id)."""
    rows, reqs = [], []
    for cell in (progress(cells) if progress else cells):
        policy = make_policy(cell)
        run = runner(make_workload(cell, seed), policy)
        rows.append(result_row(cell, run, source, server, static_res, seed, slo_ms, perf, policy.name))
        reqs.append(run.requests.assign(run_id=cell.run_id, source=source))
    per_request = pd.concat(reqs, ignore_index=True) if reqs else pd.DataFrame()
    if len(per_request):
        per_request = per_request[["run_id", "source"] + [c for c in per_request.columns if c not in ("run_id", "source")]]
    return pd.DataFrame(rows, columns=RESULT_COLUMNS), per_request


def text_report(results: pd.DataFrame, header: list[str]) -> list[str]:
    """The source's one line per (pattern, mode, shape): each policy's p95/p99, plus SLO attainment."""
    lines = list(header) + [""]
    keys = ["source", "pattern", "mode", "conc", "lam", "burstiness", "burst_size", "burst_every_s"]
    for key, g in results.groupby(keys, dropna=False, sort=False):
        src, pattern, mode, conc, lam = key[:5]
        shape = f"conc={int(conc)}" if pd.notna(conc) else (f"λ={lam:.2f} req/s" if pd.notna(lam) else "trace")
        parts = [f"{r.policy.upper()} p95={r.p95_ms:.1f}ms p99={r.p99_ms:.1f}ms SLO={100 * r.slo_attainment:.0f}%"
                 for r in g.itertuples()]
        lines.append(f"[{src} {pattern.upper()} W{mode_wbits(mode):g} {shape}] " + "  |  ".join(parts))
    return lines


def fidelity_table(sim: pd.DataFrame, live: pd.DataFrame, runs_as: dict[str, str] | None = None) -> pd.DataFrame:
    """Simulated vs live p50/p95 per run (error = (sim - live) / live, percent). `live_model` is the mode whose
    model really ran live (a different one than `mode` means the comparison is not like for like)."""
    m = sim.merge(live, on="run_id", suffixes=("_sim", "_live"))
    runs_as = runs_as or {}
    out = pd.DataFrame({"run_id": m["run_id"], "mode": m["mode_sim"],
                        "live_model": [runs_as.get(x, x) for x in m["mode_sim"]], "n_requests": m["n_requests_live"]})
    for q in ("p50_ms", "p95_ms"):
        out[f"sim_{q}"], out[f"live_{q}"] = m[f"{q}_sim"], m[f"{q}_live"]
        out[f"{q[:3]}_err_pct"] = 100.0 * (m[f"{q}_sim"] - m[f"{q}_live"]) / m[f"{q}_live"]
    out["live_utilisation"] = m["utilisation_live"]
    return out


def cell_config(cells: list[Cell]) -> list[dict]:
    return [asdict(c) | {"run_id": c.run_id} for c in cells]
