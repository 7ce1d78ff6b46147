"""Capacity planning with the simulator: how many GPUs (replicas) a rate needs at a latency SLO, per precision mode,
and scale-out efficiency of measured runs with N replicas (scripts/gpus_needed.py, scripts/serve_scaleout.py).

`gpus_needed` simulates Poisson arrivals against N = 1, 2, ... replicas (static policy at one resolution, no
admission control) and returns the smallest N whose latency percentile meets the SLO; everything is the
simulator's, so it is only as good as the performance model behind it (its GPU is recorded with every row).
"""
from __future__ import annotations

import math
from typing import Sequence

import pandas as pd

from ..modes import mode_wbits
from ..perf_model import PerfModel
from . import workloads as wl
from .metrics import percentile, summarize
from .policies import Option, Static
from .simulator import ServerConfig, simulate

GPUS_COLUMNS = ["mode", "wbits", "res", "rate_rps", "slo_ms", "quantile", "max_batch", "dispatch", "gpus_needed",
                "p50_ms", "p_ms", "utilisation", "gpu_capacity_rps", "p_ms_one_fewer", "perf_gpu", "exec"]


def gpus_needed(perf: PerfModel, mode: str, res: int, rate: float, slo_ms: float, *, quantile: float = 95,
                max_batch: int = 1, dispatch: str = "jsq", n: int = 2000, seed: int = 0, max_gpus: int = 64,
                exec: str | None = None) -> dict:
    """The fewest replicas whose simulated `quantile` latency at Poisson `rate` req/s is <= slo_ms (NaN if even
    `max_gpus` do not, e.g. when one image alone takes longer than the SLO)."""
    cap = perf.capacity(mode, res, max_batch, exec)
    policy = Static(Option(res, mode))
    row = dict(mode=mode, wbits=mode_wbits(mode), res=res, rate_rps=rate, slo_ms=slo_ms, quantile=quantile,
               max_batch=max_batch, dispatch=dispatch, gpus_needed=math.nan, p50_ms=math.nan, p_ms=math.nan,
               utilisation=math.nan, gpu_capacity_rps=cap, p_ms_one_fewer=math.nan, perf_gpu=perf.gpu,
               exec=exec or perf.default_exec(mode))
    last_p = math.nan
    for gpus in range(max(1, math.ceil(rate / cap)), max_gpus + 1):  # fewer would run above 100% utilisation
        run = simulate(wl.poisson(n, rate, seed), policy, perf, ServerConfig(gpus, max_batch, dispatch, exec=exec), seed)
        m = summarize(run, slo_ms)
        p = percentile(run.requests["latency_ms"].to_numpy(), quantile)
        if p <= slo_ms:
            return row | dict(gpus_needed=gpus, p50_ms=m["p50_ms"], p_ms=p, utilisation=m["utilisation"],
                              p_ms_one_fewer=last_p)
        last_p = p
    return row


def gpus_needed_table(perf: PerfModel, modes: Sequence[str], res: Sequence[int], rates: Sequence[float],
                      slos_ms: Sequence[float], max_batches: Sequence[int] = (1,), **kw) -> pd.DataFrame:
    rows = [gpus_needed(perf, m, r, lam, slo, max_batch=b, **kw)
            for m in modes for r in res for b in max_batches for slo in slos_ms for lam in rates]
    return pd.DataFrame(rows, columns=GPUS_COLUMNS)


SCALEOUT_COLUMNS = ["replicas", "mode", "pattern", "load", "lam", "p50_ms", "p95_ms", "goodput_rps", "throughput_rps",
                    "n_requests", "n_done", "n_rejected", "n_error", "n_timeout", "goodput_1_rps", "efficiency",
                    "sim_p50_ms", "sim_p95_ms", "p50_err_pct", "p95_err_pct"]


def scaleout_table(results: dict[int, pd.DataFrame]) -> pd.DataFrame:
    """Per replica count N (load-test results of an N-replica service, sim and http rows): the HTTP runs' latency and
    goodput, scale-out efficiency = goodput(N) / (N x goodput(1)) at the same load fraction (rates scale with N), and
    the simulator's error for the same run."""
    rows = []
    for n_rep, res in sorted(results.items()):
        sim = res[res["source"] == "sim"].set_index("run_id")
        for r in res[res["source"] == "http"].itertuples():
            s = sim.loc[r.run_id] if r.run_id in sim.index else None
            rows.append(dict(replicas=n_rep, mode=r.mode, pattern=r.pattern, load=r.load, lam=r.lam, p50_ms=r.p50_ms,
                             p95_ms=r.p95_ms, goodput_rps=r.goodput_rps, throughput_rps=r.throughput_rps,
                             n_requests=r.n_requests, n_done=r.n_done, n_rejected=r.n_rejected, n_error=r.n_error,
                             n_timeout=r.n_timeout, sim_p50_ms=s.p50_ms if s is not None else math.nan,
                             sim_p95_ms=s.p95_ms if s is not None else math.nan, run_id=r.run_id))
    df = pd.DataFrame(rows)
    if df.empty:
        return pd.DataFrame(columns=SCALEOUT_COLUMNS)
    df["p50_err_pct"] = 100 * (df["sim_p50_ms"] - df["p50_ms"]) / df["p50_ms"]
    df["p95_err_pct"] = 100 * (df["sim_p95_ms"] - df["p95_ms"]) / df["p95_ms"]
    key = ["mode", "pattern", "load"]
    one = df[df["replicas"] == 1].set_index(key)["goodput_rps"]
    df["goodput_1_rps"] = [one.get(tuple(k), math.nan) for k in df[key].itertuples(index=False)]
    df["efficiency"] = df["goodput_rps"] / (df["replicas"] * df["goodput_1_rps"])
    return df[SCALEOUT_COLUMNS]
