"""Per-bucket layer plans: a quantized layer whose low-bit kernel loses to cuBLAS/cuDNN at a bucket's input size takes
the `dense` path for that size (its dequantized weight in fp16, activations not quantized), so the serving path is
never slower because of a kernel (issue 14; making the kernels win is issue 15).

At a bucket's first UNet call the Runner calls `plan_bucket`: one eager forward records every kernel-backend layer's
input shape; layers of one geometry at one input size are timed once (CUDA-graph replays: the layer's own kernel on
codes quantized beforehand, as under torch.compile where the quantize pass fuses into the producer, against
cuBLAS/cuDNN on an fp16 weight of the same shape) and all of them take the faster path, `dense` only when it wins by
more than `MARGIN` (a tie keeps the packed weight and its memory). Weights at rest stay packed; a `dense` layer keeps
its dequantized fp16 weight on the GPU beside them, reported as `dense_bytes`. The plan is measured on the GPU that
serves (it depends on the GPU, the shapes and the tuned tiles), costs a few seconds per bucket, and is recorded per
UNet (`plan_rows`) for the benchmarks' CSVs.
"""
from __future__ import annotations

import weakref
from collections import defaultdict
from typing import Callable

import torch
from torch import nn

from .kernels import backend

LAYER_PLANS = ("auto", "off")  # auto: measured per bucket on CUDA; off: every layer on its kernel at every bucket
MARGIN = 0.05  # `dense` must be this much faster than the layer's own kernel to be chosen

# per UNet: the buckets planned so far (input shape of the UNet's sample) and the rows of their plans
_PLANNED: "weakref.WeakKeyDictionary[nn.Module, dict[tuple, list[dict]]]" = weakref.WeakKeyDictionary()

Measure = Callable[[backend.KernelState, torch.Tensor], dict[str, float]]


def measure_paths(st: backend.KernelState, x: torch.Tensor) -> dict[str, float]:
    """GPU microseconds of each path the layer could take for input `x` (CUDA-graph replays, no launch cost)."""
    from .kernels import launch

    return {path: launch.graph_bench_ms(fn) * 1e3 for path, fn in backend.path_candidates(st, x).items()}


def choose(times: dict[str, float], own: str, margin: float = MARGIN) -> str:
    """`dense` if it beats the layer's own path by more than `margin`, else the layer's own path."""
    return "dense" if times["dense"] * (1 + margin) < times[own] else own


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


@torch.no_grad()
def plan_bucket(unet: nn.Module, run: Callable[[], object], bucket: tuple, measure: Measure | None = None,
                margin: float = MARGIN, info: dict | None = None) -> list[dict]:
    """Measure and install the plan of one bucket (`bucket`: a hashable key, e.g. the UNet input's shape; `run`: one
    UNet call at that bucket; `measure`: times of a layer's paths, default `measure_paths`; `info`: columns put first
    in its rows, e.g. height/width/batch). Idempotent per (UNet, bucket); returns the plan's rows (one per layer
    geometry)."""
    measure = measure or measure_paths
    done = _PLANNED.setdefault(unet, {})
    if bucket in done:
        return done[bucket]
    layers = dict(kernel_layers(unet))
    shapes = record_inputs(unet, run)
    groups: dict[tuple, list[str]] = defaultdict(list)
    for name, shape in shapes.items():
        groups[_geometry(layers[name].kernel_state, shape)].append(name)
    dev = next(iter(layers.values())).kernel_state.packed.device if layers else torch.device("cpu")
    rows = []
    for geo, names in groups.items():
        st = layers[names[0]].kernel_state
        shape = geo[-1]
        x = torch.randn(shape, device=dev, dtype=torch.float16)
        times = measure(st, x)
        path = choose(times, st.path, margin)
        rows_in = backend.input_rows(st, x)
        added = sum(backend.set_bucket_path(layers[n].kernel_state, rows_in, path) for n in names)
        rows.append(dict(**(info or {}), kind=st.kind, in_shape="x".join(map(str, shape)),
                         weight_shape="x".join(map(str, st.shape)), wbits=st.bits, own_path=st.path, layers=len(names),
                         own_us=round(times[st.path], 2), dense_us=round(times["dense"], 2), path=path,
                         dense_bytes_added=added, example=names[0]))
    done[bucket] = rows
    return rows


def plan_rows(unet: nn.Module) -> list[dict]:
    """Every plan row of this UNet's planned buckets, in planning order."""
    return [r for rows in _PLANNED.get(unet, {}).values() for r in rows]


def dense_summary(unet: nn.Module, bucket: tuple | None = None) -> dict:
    """Layers on `dense` (at `bucket`, or at any planned bucket) and the device bytes of their fp16 weights."""
    rows = _PLANNED.get(unet, {}).get(bucket, []) if bucket is not None else plan_rows(unet)
    return {"dense_layers": sum(r["layers"] for r in rows if r["path"] == "dense"),
            "kernel_layers": sum(r["layers"] for r in rows),
            "dense_bytes": sum(backend.dense_bytes(m.kernel_state) for _, m in kernel_layers(unet))}
