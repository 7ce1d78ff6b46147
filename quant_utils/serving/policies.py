"""Serving policies: for each arriving request, what to serve — an `Option(res, mode)` — or None to reject.

One interface for all (a new policy is a subclass with a `choose` method):

    class MyPolicy(Policy):
        name = "mine"
        def choose(self, now_s, queue_len, backlog_ms):
            return self.ladder[0] if queue_len < 3 else self.ladder[-1]

`queue_len` is the number of requests waiting (not yet in service) at the replica the request goes to,
`backlog_ms` the predicted time until that replica could start it (computed only for policies with
`needs_backlog = True`). `self.costs[option]` is the predicted batch-1 latency (ms) of each of its
options (bound by the simulator or the live runner from the performance model). A request that asks for a resolution is
never served above it (`decide` caps the choice).
"""
from __future__ import annotations

from abc import ABC, abstractmethod
from typing import NamedTuple, Sequence

import pandas as pd

from ..errors import ConfigError
from ..modes import DECODER_QUALITY, mode_wbits, split_mode, wbits_mode


class Option(NamedTuple):
    res: int
    mode: str


class Policy(ABC):
    """A serving policy: `choose` picks the (resolution, mode) of the next batch, or None to reject."""
    name = "policy"
    needs_backlog = False

    def __init__(self, ladder: Sequence[Option]):
        if not ladder:
            raise ConfigError(f"policy {self.name}: needs at least one (res, mode) option")
        self.ladder = [Option(int(o.res), str(o.mode)) for o in ladder]
        self.costs: dict[Option, float] = {o: 0.0 for o in self.ladder}

    def options(self) -> list[Option]:
        """Every option the policy may choose (so service tables can be prepared)."""
        return list(self.ladder)

    def bind(self, costs: dict[Option, float]) -> None:
        """Predicted batch-1 ms of every option in `options()`."""
        self.costs = dict(costs)

    def reset(self) -> None:
        """Forget run state (called before each run)."""

    @abstractmethod
    def choose(self, now_s: float, queue_len: int, backlog_ms: float) -> Option | None:
        """The option for the next batch given the queue (None: reject the request)."""

    def decide(self, now_s: float, queue_len: int, backlog_ms: float, requested_res: int = 0) -> Option | None:
        opt = self.choose(now_s, queue_len, backlog_ms)
        if opt is not None and 0 < requested_res < opt.res:
            return Option(int(requested_res), opt.mode)
        return opt

    def describe(self) -> str:
        return f"{self.name}({', '.join(f'{o.res}:{o.mode}' for o in self.ladder)})"


class Static(Policy):
    """Always the same resolution and bit-width."""
    name = "static"

    def __init__(self, option: Option):
        super().__init__([option])

    def choose(self, now_s, queue_len, backlog_ms):
        return self.ladder[0]


class Adaptive(Policy):
    """The source's queue-length controller with hysteresis over a quality ladder (best first).

    From level k it steps down (cheaper) when queue_len >= down_at[k] and back up from level k+1
    when queue_len <= up_at[k]; up_at[k] < down_at[k] is the hysteresis band. Default ladder
    1024 -> 768 -> 512 at one bit-width; optionally lower bit-widths after the lowest resolution."""
    name = "adaptive"

    def __init__(self, ladder: Sequence[Option], down_at: Sequence[int], up_at: Sequence[int]):
        super().__init__(ladder)
        n = len(self.ladder) - 1
        if len(down_at) != n or len(up_at) != n:
            raise ConfigError(f"adaptive: {len(self.ladder)} levels need {n} down and {n} up thresholds, "
                               f"got {list(down_at)} and {list(up_at)}")
        for k in range(n):
            if not 0 <= up_at[k] < down_at[k]:
                raise ConfigError(f"adaptive: step {k}: up threshold {up_at[k]} must be >= 0 and below the "
                                   f"down threshold {down_at[k]} (hysteresis)")
        self.down_at, self.up_at = [int(x) for x in down_at], [int(x) for x in up_at]
        self.level = 0

    def reset(self) -> None:
        self.level = 0

    def choose(self, now_s, queue_len, backlog_ms):
        k, down, up = self.level, self.down_at, self.up_at
        while k < len(down) and queue_len >= down[k]:
            k += 1
        while k > 0 and queue_len <= up[k - 1]:
            k -= 1
        self.level = k
        return self.ladder[k]

    def describe(self) -> str:
        return f"{super().describe()} down_at={self.down_at} up_at={self.up_at}"


class SLOPredictive(Policy):
    """Per request, the highest-quality option whose predicted completion (backlog + its own batch-1
    latency) meets the SLO; the cheapest option when none does."""
    name = "slo"
    needs_backlog = True

    def __init__(self, ladder: Sequence[Option], slo_ms: float):
        super().__init__(ladder)
        if slo_ms <= 0:
            raise ConfigError(f"slo_ms={slo_ms} must be > 0")
        self.slo_ms = float(slo_ms)

    def bind(self, costs):
        super().bind(costs)
        self._by_quality = [(o, self.costs[o]) for o in self.ladder]
        self._cheapest = min(self.ladder, key=self.costs.__getitem__)

    def choose(self, now_s, queue_len, backlog_ms):
        for opt, cost in self._by_quality:
            if backlog_ms + cost <= self.slo_ms:
                return opt
        return self._cheapest

    def describe(self) -> str:
        return f"{super().describe()} slo_ms={self.slo_ms:g}"


class AdmissionControl(Policy):
    """Wraps any policy: rejects a request when even the cheapest option would miss the SLO."""
    needs_backlog = True

    def __init__(self, inner: Policy, slo_ms: float):
        super().__init__(inner.options())
        self.inner, self.slo_ms = inner, float(slo_ms)
        self.name = f"{inner.name}+admission"

    def bind(self, costs):
        super().bind(costs)
        self.inner.bind(costs)
        self._cheapest = min(self.costs.values())

    def reset(self):
        self.inner.reset()

    def choose(self, now_s, queue_len, backlog_ms):
        if backlog_ms + self._cheapest > self.slo_ms:
            return None
        return self.inner.choose(now_s, queue_len, backlog_ms)

    def describe(self) -> str:
        return f"{self.inner.describe()} +admission(slo_ms={self.slo_ms:g})"


# --------------------------------------------------------------------------- building policies from flags
def default_thresholds(levels: int, q_high: int, q_low: int) -> tuple[list[int], list[int]]:
    """Step k down at q_high*(k+1) waiting requests, back up at q_low + q_high*k (hysteresis q_high - q_low)."""
    if not 0 <= q_low < q_high:
        raise ConfigError(f"need 0 <= q_low < q_high, got q_low={q_low}, q_high={q_high}")
    return [q_high * (k + 1) for k in range(levels - 1)], [q_low + q_high * k for k in range(levels - 1)]


def quality_order(options: Sequence[Option], quality: pd.DataFrame | None = None, score: str = "clip_score") -> list[Option]:
    """Best first. Default: higher resolution first, then more weight bits. With a quality table (e.g.
    eval_grid's CSV: columns res or height, mode or wbits, and `score`), higher score first."""
    opts = list(dict.fromkeys(options))
    if quality is None:
        return sorted(opts, key=lambda o: (-o.res, -mode_wbits(o.mode), DECODER_QUALITY[split_mode(o.mode)[1]]))
    q = quality.copy()
    if "res" not in q and "height" in q:
        q["res"] = q["height"]
    if "mode" not in q and "wbits" in q:
        q["mode"] = q["wbits"].map(wbits_mode)
    if not {"res", "mode", score} <= set(q.columns):
        raise ConfigError(f"quality table needs columns res (or height), mode (or wbits) and {score!r}; has {list(quality.columns)}")
    table = {(int(r), str(m)): float(s) for r, m, s in zip(q["res"], q["mode"], q[score])}
    missing = [o for o in opts if (o.res, o.mode) not in table]
    if missing:
        raise ConfigError(f"quality table has no {score} for {missing}")
    return sorted(opts, key=lambda o: -table[(o.res, o.mode)])


POLICIES = ("static", "adaptive", "slo")


def build_policy(name: str, mode: str, res: int, ladder_res: Sequence[int], *, bits_ladder: Sequence[str] = (),
                 q_high: int = 4, q_low: int = 1, slo_ms: float = 1000.0, admission: bool = False,
                 quality: pd.DataFrame | None = None, score: str = "clip_score") -> Policy:
    """A policy from the load test's flags. The ladder is `ladder_res` at `mode`, then (if given) the lower
    bit-widths `bits_ladder` at the lowest resolution; `slo` considers every (res, mode) of those."""
    ladder = [Option(int(r), mode) for r in ladder_res] + [Option(int(ladder_res[-1]), m) for m in bits_ladder if m != mode]
    if name == "static":
        pol: Policy = Static(Option(int(res), mode))
    elif name == "adaptive":
        down, up = default_thresholds(len(ladder), q_high, q_low)
        pol = Adaptive(ladder, down, up)
    elif name == "slo":
        modes = [mode] + [m for m in bits_ladder if m != mode]
        pol = SLOPredictive(quality_order([Option(int(r), m) for r in ladder_res for m in modes], quality, score), slo_ms)
    else:
        raise ConfigError(f"policy {name!r}: expected one of {POLICIES}")
    return AdmissionControl(pol, slo_ms) if admission else pol
