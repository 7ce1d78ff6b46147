"""Per-bucket layer plans: a quantized layer whose low-bit kernel loses at a bucket's input size takes a faster path
for that size only, so the serving path is never slower because of a kernel (issue 14; making the kernels win is
issue 15): `wonly` (an int linear's packed weight with fp16 activations: one launch, no extra memory) or `dense` (its
dequantized weight in fp16 on cuBLAS/cuDNN, activations not quantized).

At a bucket's first UNet call the Runner calls `plan_bucket`: one eager forward records every kernel-backend layer's
input shape; layers of one geometry at one input size are timed once (CUDA-graph replays: the layer's own kernel on
codes quantized beforehand, as under torch.compile where the quantize pass fuses into the producer; `wonly`; cuBLAS/
cuDNN on an fp16 weight of the same shape, convs channels_last as in the compiled FP16 UNet) and all of them take the fastest path: a path must win by more than
`MARGIN` (a tie keeps the layer's own kernel), and `dense` only while the dense weights of all buckets fit in
`DENSE_BUDGET` (best microseconds saved per byte first). Weights at rest stay packed; a `dense` layer keeps its
dequantized fp16 weight on the GPU beside them, reported as `dense_bytes`. The plan is measured on the GPU that
serves (it depends on the GPU, the shapes and the tuned tiles), costs a few seconds per bucket, and is recorded per
UNet (`plan_rows`) for the benchmarks' CSVs.
"""
from __future__ import annotations

import json
import math
import os
import warnings
import weakref
from collections import defaultdict
from pathlib import Path
from typing import Callable

import torch
from torch import nn

from .kernels import backend

LAYER_PLANS = ("auto", "off")  # auto: measured per bucket on CUDA; off: every layer on its kernel at every bucket
MARGIN = 0.05  # `dense` must be this much faster than the layer's own kernel to be chosen
# dense fp16 weights a plan may keep, as a fraction of the kernel layers' weights in fp16 (SDXL: ~1 GB): the speed of
# the cheapest wins without giving back the memory quantization saved (unbounded, W4A8 at 512x1 held more than FP16)
DENSE_BUDGET = 0.2

# per UNet: the buckets planned so far (input shape of the UNet's sample) and the rows of their plans
_PLANNED: "weakref.WeakKeyDictionary[nn.Module, dict[tuple, list[dict]]]" = weakref.WeakKeyDictionary()

Measure = Callable[[backend.KernelState, torch.Tensor], dict[str, float]]


PLAN_L2 = ("warm", "cold")
MAX_COPIES = 64  # weight copies a cold-L2 timing cycles through (tiny weights stay partly cached: they cost little)


def plan_l2() -> str:
    """How a plan times a layer's paths, MIXDQ_PLAN_L2: `warm` (default) replays calls on one weight, which then sits
    in the GPU's L2 cache; `cold` cycles through copies of the weight (together more than twice the L2), so each call
    reads its weight from memory as in a UNet step, whose ~1-3 GB of weights pass through a 50-60 MB L2 once per step,
    while the input stays cached as when its producer has just written it. Opt-in: measured at 512x1 on an H200 it
    raised both paths' times alike and left the image as fast as the warm plan's (report section 1, sixteenth session)."""
    mode = os.environ.get("MIXDQ_PLAN_L2", "warm")
    if mode not in PLAN_L2:
        raise ValueError(f"MIXDQ_PLAN_L2={mode!r}: expected one of {PLAN_L2}")
    return mode


def weight_copies(st: backend.KernelState, l2_bytes: int) -> int:
    """How many copies of st's packed weight (the smallest of its paths' weights) fill twice an L2 of `l2_bytes`."""
    return max(1, min(MAX_COPIES, math.ceil(2 * l2_bytes / max(st.packed.numel() * st.packed.element_size(), 1))))


def measure_paths(st: backend.KernelState, x: torch.Tensor) -> dict[str, float]:
    """GPU microseconds of each path the layer could take for input `x` (CUDA-graph replays, no launch cost; weights
    in L2 or not: plan_l2)."""
    from .kernels import launch

    copies = 1 if plan_l2() == "warm" else weight_copies(st, torch.cuda.get_device_properties(x.device).L2_cache_size)
    return {path: launch.graph_bench_ms(fn, n_inner=max(10, copies)) * 1e3
            for path, fn in backend.path_candidates(st, x, copies).items()}


# ------------------------------------------------------------------ measured times, kept across processes
# A later process on the same GPU model plans a bucket from the times an earlier one measured (this user's cache,
# like the kernels' tile configs) instead of timing every geometry again: the first call of a bucket gets seconds
# faster; the plan is the same function of the times. MIXDQ_PLAN_CACHE=<file> uses that file, `none` no cache.
# The times are keyed by geometry and the torch/Triton versions, not by the kernels' tile configs: after new tile
# configs (a new tuning file, `TILES=1` in a GPU job) plan with MIXDQ_PLAN_CACHE=none once, or the old times stand.
_TIMES: dict[Path, dict[str, dict[str, float]]] = {}  # per cache file, read once per process: key -> us per path


def times_cache_path() -> Path | None:
    from .kernels.tuning import cache_path

    return cache_path(os.environ.get("MIXDQ_PLAN_CACHE"), "layer_plan_times")


def _times_key(st: backend.KernelState, shape: tuple) -> str:
    import triton  # noqa: F401  (present wherever a plan is measured)

    l2 = "|l2=cold" if plan_l2() == "cold" else ""  # (warm keys as before the option: their caches stay valid)
    return "|".join(map(str, _geometry(st, shape))) + f"|torch={torch.__version__}|triton={triton.__version__}{l2}"


def _read_times(path: Path, warn: bool = True) -> dict[str, dict[str, float]]:
    """The times in a cache file ({} if absent; a damaged file is warned about and measured again, not fatal)."""
    try:
        return json.loads(path.read_text())["times"] if path.is_file() else {}
    except (ValueError, KeyError, TypeError) as e:
        if warn:
            warnings.warn(f"layer plan: ignoring the times cache {path} ({type(e).__name__}: {e})", stacklevel=3)
        return {}


class TimesCache:
    """A plan's path times looked up in (and added to) the cache file at `path` (None: measure everything)."""

    def __init__(self, path: Path | None):
        self.path = path
        if path is not None and path not in _TIMES:
            _TIMES[path] = _read_times(path)
        self.times = _TIMES[path] if path is not None else {}
        self.new: dict[str, dict[str, float]] = {}
        self.count = {"cache": 0, "measured": 0}

    def get(self, st: backend.KernelState, x: torch.Tensor, measure: Measure) -> tuple[dict[str, float], str]:
        """The times of st's paths for input x, and where they came from: `cache` or `measured`."""
        key = _times_key(st, tuple(x.shape)) if self.path is not None else None
        if key in self.times:
            self.count["cache"] += 1
            return dict(self.times[key]), "cache"
        self.count["measured"] += 1
        times = measure(st, x)
        if key is not None:
            self.new[key] = self.times[key] = times
        return dict(times), "measured"

    def save(self) -> None:
        """Merge what was measured into the file (keeping what another process added meanwhile)."""
        from .csvio import atomic_write_text

        if self.path is None or not self.new:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        merged = {**_read_times(self.path, warn=False), **self.new}  # warned about when read first
        atomic_write_text(self.path, json.dumps({"times": merged}, indent=1, sort_keys=True))
        self.new.clear()


def best_packed(times: dict[str, float], own: str, margin: float = MARGIN) -> str:
    """The fastest path on the packed weights: `wonly` (an int linear with fp16 activations) if it beats the layer's
    own kernel by more than `margin`, else its own."""
    return "wonly" if own != "wonly" and "wonly" in times and times["wonly"] * (1 + margin) < times[own] else own


def choose(times: dict[str, float], own: str, margin: float = MARGIN) -> str:
    """`dense` if it beats the best path on the packed weights by more than `margin`, else that path."""
    packed = best_packed(times, own, margin)
    return "dense" if times["dense"] * (1 + margin) < times[packed] else packed


def kernel_layers(unet: nn.Module) -> list[tuple[str, nn.Module]]:
    """(name, layer) of every layer running a low-bit kernel (int or wonly path): the ones a plan may move."""
    return [(n, m) for n, m in unet.named_modules()
            if getattr(m, "kernel_state", None) is not None and m.kernel_state.path in ("int", "wonly")]


@torch.no_grad()
def record_inputs(unet: nn.Module, run: Callable[[], object]) -> dict[str, tuple[int, ...]]:
    """Input shape of every kernel layer in one call of `run` (eager: compiled blocks are not traced with hooks)."""
    shapes, hooks = {}, []

    def hook(name: str):
        def record(mod, args) -> None:  # returns None: a pre-hook's return value would replace the inputs
            shapes.setdefault(name, tuple(args[0].shape))
        return record

    for name, m in kernel_layers(unet):
        hooks.append(m.register_forward_pre_hook(hook(name)))
    try:
        with torch.compiler.set_stance("force_eager"):
            run()
    finally:
        for h in hooks:
            h.remove()
    return shapes


def _geometry(st: backend.KernelState, shape: tuple) -> tuple:
    """Layers with equal geometry and input shape run the same kernels: timed once, planned alike."""
    return (st.kind, st.path, st.shape, st.bits, st.fmt.group if st.fmt else None, st.bos, st.split, st.stride,
            st.pad, shape)


def _fp16_bytes(st: backend.KernelState) -> int:
    """Bytes of a layer's weight and bias in fp16 (its dense weight's size)."""
    return (math.prod(st.shape) + st.n) * 2


def _dense_cost(st: backend.KernelState) -> int:
    """Bytes a layer's dense weight would add on the device; 0 if it holds one already."""
    return 0 if st.fp16_weight is not None else _fp16_bytes(st)


@torch.no_grad()
def plan_bucket(unet: nn.Module, run: Callable[[], object], bucket: tuple, measure: Measure | None = None,
                margin: float = MARGIN, dense_budget: float = DENSE_BUDGET, info: dict | None = None) -> list[dict]:
    """Measure and install the plan of one bucket (`bucket`: a hashable key, e.g. the UNet input's shape; `run`: one
    UNet call at that bucket; `measure`: times of a layer's paths, default `measure_paths`; `dense_budget`: the most
    dense fp16 weights the UNet may hold over all its buckets, as a fraction of its kernel layers' weights in fp16;
    `info`: columns put first in its rows, e.g. height/width/batch). Idempotent per (UNet, bucket); returns the
    plan's rows (one per layer geometry).

    Each group takes the best path on its packed weights (its own kernel, or `wonly` for an int linear); where dense
    beats that, groups go dense in order of microseconds saved per byte added (layers already dense at an earlier
    bucket cost nothing) while the budget holds; the others keep their best packed path (`budget_limited`)."""
    done = _PLANNED.setdefault(unet, {})
    if bucket in done:
        return done[bucket]
    # the default measurement goes through this user's times cache (an injected one, e.g. in tests, does not)
    cache = TimesCache(times_cache_path() if measure is None else None)
    measure = measure or measure_paths
    layers = dict(kernel_layers(unet))
    shapes = record_inputs(unet, run)
    groups: dict[tuple, list[str]] = defaultdict(list)
    for name, shape in shapes.items():
        groups[_geometry(layers[name].kernel_state, shape)].append(name)
    dev = next(iter(layers.values())).kernel_state.packed.device if layers else torch.device("cpu")
    rows = []
    try:
        for geo, names in groups.items():
            st = layers[names[0]].kernel_state
            x = torch.randn(geo[-1], device=dev, dtype=torch.float16)
            times, source = cache.get(st, x, measure)
            rows.append(dict(**(info or {}), kind=st.kind, in_shape="x".join(map(str, geo[-1])),
                             weight_shape="x".join(map(str, st.shape)), wbits=st.bits, own_path=st.path,
                             layers=len(names), own_us=round(times[st.path], 2),
                             wonly_us=round(times.get("wonly", math.nan), 2), dense_us=round(times["dense"], 2),
                             times=source,
                             path=choose(times, st.path, margin), budget_limited=False, dense_bytes_added=0,
                             _packed=best_packed(times, st.path, margin), example=names[0], _names=names,
                             _rows=backend.input_rows(st, x),
                             _cost=sum(_dense_cost(layers[n].kernel_state) for n in names)))
    finally:
        cache.save()  # what was measured reaches the cache, also when a later geometry fails
    budget = dense_budget * sum(_fp16_bytes(m.kernel_state) for m in layers.values())
    used = sum(backend.dense_bytes(m.kernel_state) for m in layers.values())
    packed_us = lambda r: r["wonly_us"] if r["_packed"] == "wonly" else r["own_us"]  # noqa: E731
    wins = [r for r in rows if r["path"] == "dense"]
    for r in sorted(wins, key=lambda r: -(packed_us(r) - r["dense_us"]) * r["layers"] / max(r["_cost"], 1)):
        if used + r["_cost"] <= budget:
            r["dense_bytes_added"] = sum(backend.set_bucket_path(layers[n].kernel_state, r["_rows"], "dense")
                                         for n in r["_names"])
            used += r["dense_bytes_added"]
        else:
            r["path"], r["budget_limited"] = r["_packed"], True
    for r in rows:
        if r["path"] == "wonly":
            for n in r["_names"]:
                backend.set_bucket_path(layers[n].kernel_state, r["_rows"], "wonly")
    rows = [{k: v for k, v in r.items() if not k.startswith("_")} for r in rows]
    done[bucket] = rows
    return rows


def plan_rows(unet: nn.Module) -> list[dict]:
    """Every plan row of this UNet's planned buckets, in planning order."""
    return [r for rows in _PLANNED.get(unet, {}).values() for r in rows]


def dense_summary(unet: nn.Module, bucket: tuple | None = None) -> dict:
    """Layers moved to `dense` and to `wonly` (at `bucket`, or at any planned bucket), and the device bytes of the
    dense fp16 weights the UNet holds."""
    rows = _PLANNED.get(unet, {}).get(bucket, []) if bucket is not None else plan_rows(unet)
    return {"dense_layers": sum(r["layers"] for r in rows if r["path"] == "dense"),
            "wonly_layers": sum(r["layers"] for r in rows if r["path"] == "wonly" != r["own_path"]),
            "kernel_layers": sum(r["layers"] for r in rows),
            "dense_bytes": sum(backend.dense_bytes(m.kernel_state) for _, m in kernel_layers(unet))}
