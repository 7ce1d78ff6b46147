"""Arrival workloads: burst, Poisson, gamma (burstiness), trace replay; all seeded.

A `Workload` is either an open-loop trace (arrival times fixed in advance) or a closed loop of
`clients` that each send their next request the moment their previous one finishes (the source's
"burst with concurrency c": submit as fast as possible, at most c in flight). A closed-loop client whose
request is rejected (admission control) sends it again after `retry_backoff_s` (a retry, counted apart
from first attempts); an open-loop request that is rejected is not retried.

Seeds: `--seed` wins, else the environment variable MIXDQ_LOADTEST_SEED (as in the source), else 0;
the seed used is recorded with every result.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from ..errors import ConfigError

SEED_ENV = "MIXDQ_LOADTEST_SEED"
PATTERNS = ("burst", "poisson", "gamma", "trace")
RETRY_BACKOFF_S = 0.1  # closed loop: a rejected client waits this long before it sends again


def resolve_seed(seed: int | None) -> int:
    """--seed if given, else $MIXDQ_LOADTEST_SEED, else 0."""
    if seed is not None:
        return int(seed)
    env = os.environ.get(SEED_ENV)
    if env is None or env == "":
        return 0
    try:
        return int(env)
    except ValueError:
        raise ConfigError(f"{SEED_ENV}={env!r} is not an integer") from None


@dataclass
class Workload:
    """`n` requests: open loop when `arrival_s` is set (sorted seconds from 0), closed loop with `clients`.

    `res` is the resolution each request asks for (0 = let the policy decide); `prompts` optional."""
    pattern: str
    n: int
    arrival_s: np.ndarray | None = None
    clients: int | None = None
    res: np.ndarray | None = None
    prompts: list[str] | None = None
    rate: float | None = None          # nominal req/s (Poisson, gamma), None otherwise
    burstiness: float | None = None
    burst_size: int | None = None
    burst_every_s: float | None = None
    retry_backoff_s: float = RETRY_BACKOFF_S  # closed loop: wait before resending a rejected request

    def __post_init__(self):
        if (self.arrival_s is None) == (self.clients is None):
            raise ConfigError("a workload is either open loop (arrival times) or closed loop (clients), not both")
        if self.res is None:
            self.res = np.zeros(self.n, dtype=np.int64)
        if self.arrival_s is not None and len(self.arrival_s) != self.n:
            raise ConfigError(f"{len(self.arrival_s)} arrival times for {self.n} requests")
        if not self.retry_backoff_s >= 0 or self.retry_backoff_s == float("inf"):
            raise ConfigError(f"retry back-off {self.retry_backoff_s} s must be finite and >= 0")

    @property
    def closed(self) -> bool:
        return self.clients is not None

    def describe(self) -> dict:
        return dict(pattern=self.pattern, conc=self.clients, lam=self.rate, burstiness=self.burstiness,
                    burst_size=self.burst_size, burst_every_s=self.burst_every_s)


def _check_n(n: int) -> None:
    if n < 1:
        raise ConfigError(f"number of requests {n} must be >= 1")


def closed_loop(n: int, clients: int, retry_backoff_s: float = RETRY_BACKOFF_S) -> Workload:
    """`clients` users each sending back to back until `n` requests are sent (the source's burst, concurrency c);
    a rejected request is sent again after `retry_backoff_s` (retries count towards `n`)."""
    _check_n(n)
    if clients < 1:
        raise ConfigError(f"concurrency {clients} must be >= 1")
    return Workload("burst", n, clients=int(clients), retry_backoff_s=float(retry_backoff_s))


def burst(n: int, size: int | None = None, every_s: float = 0.0) -> Workload:
    """Open-loop bursts: `size` requests at once every `every_s` seconds (default: all n at t=0)."""
    _check_n(n)
    size = n if size is None else int(size)
    if size < 1 or every_s < 0:
        raise ConfigError(f"burst size {size} must be >= 1 and period {every_s} s >= 0")
    t = (np.arange(n) // size) * float(every_s)
    return Workload("burst", n, arrival_s=t.astype(float), burst_size=size, burst_every_s=float(every_s))


def gamma(n: int, rate: float, burstiness: float = 1.0, seed: int = 0) -> Workload:
    """Gamma inter-arrivals of mean 1/rate and shape `burstiness` (vLLM's benchmark convention):
    1 = Poisson, < 1 burstier (coefficient of variation 1/sqrt(burstiness)), > 1 smoother."""
    _check_n(n)
    if rate <= 0 or burstiness <= 0:
        raise ConfigError(f"rate {rate} req/s and burstiness {burstiness} must be > 0")
    rng = np.random.default_rng(seed)
    gaps = rng.gamma(shape=burstiness, scale=1.0 / (rate * burstiness), size=n)
    gaps[0] = 0.0  # the first request opens the run
    pattern = "poisson" if burstiness == 1.0 else "gamma"
    return Workload(pattern, n, arrival_s=np.cumsum(gaps), rate=float(rate),
                    burstiness=None if pattern == "poisson" else float(burstiness))


def poisson(n: int, rate: float, seed: int = 0) -> Workload:
    """Poisson arrivals at `rate` req/s (exponential inter-arrivals)."""
    return gamma(n, rate, 1.0, seed)


TRACE_COLUMNS = ("arrival_s", "prompt", "res", "height", "width")
TRACE_ALIASES = {"resolution": "res"}


def read_trace(path: str | Path) -> Workload:
    """Replay a trace CSV: `arrival_s` (seconds, any order), optional `prompt` and `res` (alias `resolution`;
    or `height` = `width`: buckets are square; 0 or empty = let the policy decide). Other columns are an error
    that names them (a misspelt column would otherwise be ignored silently)."""
    from ..csvio import read_csv

    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"trace CSV {p} does not exist")
    df = read_csv(p).rename(columns=TRACE_ALIASES)
    unknown = [c for c in df.columns if c not in TRACE_COLUMNS]
    if unknown:
        raise ConfigError(f"trace CSV {p}: unknown column(s) {unknown}; known: {list(TRACE_COLUMNS)} "
                          f"(+ alias {', '.join(f'{a} = {b}' for a, b in TRACE_ALIASES.items())})")
    if df.columns.duplicated().any():
        raise ConfigError(f"trace CSV {p}: a column appears twice (res and its alias resolution?)")
    if "arrival_s" not in df:
        raise ConfigError(f"trace CSV {p} needs an 'arrival_s' column (seconds), has {list(df.columns)}")
    for col in ("arrival_s", "res", "height", "width"):
        if col in df:
            num = pd.to_numeric(df[col], errors="coerce")
            bad = df[col][num.isna() & df[col].notna()]
            if len(bad):
                raise ConfigError(f"trace CSV {p}: column {col} has a non-number, {bad.iloc[0]!r} "
                                  f"(row {bad.index[0] + 1})")
            df[col] = num
    if "res" not in df and "height" in df:
        if "width" in df and (df["width"].fillna(0) != df["height"].fillna(0)).any():
            raise ConfigError(f"trace CSV {p}: non-square requests are not supported (resolution buckets are square)")
        df["res"] = df["height"]
    df = df.sort_values("arrival_s", kind="stable").reset_index(drop=True)
    t = df["arrival_s"].to_numpy(float)
    if len(t) == 0 or np.any(t < 0) or not np.all(np.isfinite(t)):
        raise ConfigError(f"trace CSV {p}: arrival_s must be finite, >= 0 and non-empty")
    res = None
    if "res" in df:
        r = df["res"].fillna(0).to_numpy(float)
        if np.any(r < 0) or np.any(r % 8) or np.any(r > 16384):
            raise ConfigError(f"trace CSV {p}: res must be 0 (any) or a positive multiple of 8 up to 16384, "
                              f"got {r[(r < 0) | (r % 8 != 0) | (r > 16384)][0]:g}")
        res = r.astype(np.int64)
    prompts = df["prompt"].astype(str).tolist() if "prompt" in df else None
    return Workload("trace", len(df), arrival_s=t - t[0], res=res, prompts=prompts)


def write_trace(arrival_s: np.ndarray, path: str | Path, res: np.ndarray | None = None,
                prompts: list[str] | None = None, meta: dict | None = None) -> Path:
    from ..csvio import write_csv

    df = pd.DataFrame({"arrival_s": arrival_s})
    if res is not None:
        df["res"] = res
    if prompts is not None:
        df["prompt"] = prompts
    return write_csv(df, path, meta)
