"""Run metrics: latency percentiles, SLO attainment, goodput, throughput, rejections, served quality
(mean resolution and weight bits), utilisation, queue length. Works on simulated and live runs alike."""
from __future__ import annotations

import numpy as np
import pandas as pd

from .simulator import RunResult

SUMMARY_COLUMNS = ["n_requests", "n_done", "n_rejected", "n_retries", "n_rejected_retries", "n_error", "n_timeout",
                   "p50_ms", "p95_ms", "p99_ms", "mean_ms", "mean_wait_ms",
                   "slo_ms", "slo_attainment", "goodput_rps", "throughput_rps", "mean_res", "mean_wbits",
                   "utilisation", "mean_queue_len", "max_queue_len", "duration_s"]


def percentile(x: np.ndarray, q: float) -> float:
    """Empirical percentile (linear interpolation); NaN when empty."""
    x = np.asarray(x, float)
    x = x[np.isfinite(x)]
    return float(np.percentile(x, q)) if len(x) else float("nan")


def summarize(run: RunResult, slo_ms: float) -> dict[str, float]:
    """One row of metrics. Rejected requests count as SLO misses; latency percentiles are over served ones.
    Duration runs from the first arrival to the last finish. Retries (a closed-loop client resending a rejected
    request after its back-off) are requests too; `n_retries` / `n_rejected_retries` count them apart (first
    attempts: n_requests - n_retries, of which n_rejected - n_rejected_retries were rejected). HTTP runs (an
    `outcome` column) also count requests that failed (error) or got no answer (timeout): neither served nor rejected."""
    df = run.requests
    done = df[~df["rejected"] & df["finish_s"].notna()]
    retry = df["attempt"] > 1 if "attempt" in df else pd.Series(False, index=df.index)
    lat = done["latency_ms"].to_numpy(float)
    t0 = float(df["arrival_s"].min()) if len(df) else 0.0
    t1 = float(np.nanmax(df["finish_s"])) if df["finish_s"].notna().any() else t0
    duration = max(t1 - t0, 1e-12)
    ok = int((lat <= slo_ms).sum())
    return {
        "n_requests": int(len(df)), "n_done": int(len(done)), "n_rejected": int(df["rejected"].sum()),
        "n_retries": int(retry.sum()), "n_rejected_retries": int((retry & df["rejected"]).sum()),
        **{f"n_{o}": int((df["outcome"] == o).sum()) if "outcome" in df else 0 for o in ("error", "timeout")},
        "p50_ms": percentile(lat, 50), "p95_ms": percentile(lat, 95), "p99_ms": percentile(lat, 99),
        "mean_ms": float(lat.mean()) if len(lat) else float("nan"),
        "mean_wait_ms": float(done["wait_ms"].mean()) if len(done) else float("nan"),
        "slo_ms": float(slo_ms), "slo_attainment": ok / len(df) if len(df) else float("nan"),
        "goodput_rps": ok / duration, "throughput_rps": len(done) / duration,
        "mean_res": float(done["res"].mean()) if len(done) else float("nan"),
        "mean_wbits": float(done["wbits"].mean()) if len(done) else float("nan"),
        "utilisation": float(sum(run.busy_s) / (run.replicas * duration)),
        "mean_queue_len": float(run.mean_queue_len), "max_queue_len": int(run.max_queue_len), "duration_s": duration,
    }


def queue_length_series(requests: pd.DataFrame) -> pd.DataFrame:
    """Requests waiting (arrived, not started) over time, as a step function: columns time_s, queue_len
    (the length after everything that happened at time_s)."""
    served = requests[~requests["rejected"]]
    ev = pd.concat([pd.DataFrame({"time_s": served["arrival_s"], "d": 1}),
                    pd.DataFrame({"time_s": served["start_s"], "d": -1})])
    ev = ev.groupby("time_s", sort=True)["d"].sum()
    return pd.DataFrame({"time_s": ev.index.to_numpy(float), "queue_len": ev.cumsum().to_numpy(int)})


def queue_stats(requests: pd.DataFrame) -> tuple[float, int]:
    """Time-weighted mean and maximum of the waiting-queue length, from the first arrival to the last start."""
    s = queue_length_series(requests)
    if len(s) < 2:
        return 0.0, int(s["queue_len"].max()) if len(s) else 0
    t = s["time_s"].to_numpy(float)
    q = s["queue_len"].to_numpy(float)
    end = float(np.nanmax(requests["finish_s"]))
    dt = np.diff(np.append(t, max(end, t[-1])))
    span = max(end - t[0], 1e-12)
    return float((q * dt).sum() / span), int(q.max())
