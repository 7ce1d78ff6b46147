"""Tile configs for the GEMM/conv kernels: candidates per problem-size class, autotuned once per shape.

`linear(...)` / `conv(...)` run the kernels of triton_kernels.py with the config the process's Tuning
(tuning.py) picks: the fastest candidate for the shape's size class, timed under a CUDA graph (`graph_bench_ms`)
on the first call of each (shape, format) and remembered; never while a CUDA graph is being captured (then the
first candidate runs; warm up before capturing).

Because the kernels do not specialise on integer sizes, a compiled kernel depends only on the format and
the tile config; `precompile(jobs)` compiles many of them in parallel worker processes (Triton's on-disk
cache then serves the main process), which cuts the first-call cost from minutes to seconds.
"""
from __future__ import annotations

import os
import time
from collections import Counter
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from typing import Callable

import torch

from . import triton_kernels as tk
from .tuning import current_tuning, interpreting


def _cfg(bm: int, bn: int, warps: int, stages: int, swap: bool = False, split_k: int = 1) -> dict:
    return dict(BM=bm, BN=bn, num_warps=warps, num_stages=stages, SWAP=swap, SPLIT_K=split_k, GROUP_M=8)


def _fixup(bm: int, bn: int, warps: int, stages: int, swap: bool, split_k: int) -> dict:
    return dict(_cfg(bm, bn, warps, stages, swap, split_k), FIXUP=True)


# SWAP: the weight tile is the tensor-core instruction's M side and the activation rows its N side, so a
# handful of rows still fills the instruction; SPLIT_K > 1 spreads a long K over more SMs when tiles are few.
LINEAR_CANDIDATES = {
    "tiny": [_cfg(16, 64, 4, 4, True), _cfg(32, 128, 4, 4, True), _cfg(32, 64, 4, 4, True, 4), _cfg(16, 128, 4, 4, True, 2),
             _cfg(32, 64, 4, 4), _fixup(32, 64, 4, 4, True, 4), _fixup(32, 128, 4, 4, True, 8)],
    # 65-512 rows (512 px, batch 1) leave most SMs idle, but split-K 4/8 here never won in measurements
    # (zeroing, fp32 atomics and the cast pass cost more: results/kernels_notes.md, v3), so only split-K 2; the FIXUP
    # form (the K slices' int32 sums reduced in the kernel, kernels v5) has none of those three costs
    "small": [_cfg(64, 128, 4, 4, True), _cfg(64, 128, 4, 4), _cfg(32, 128, 4, 4, True, 2), _cfg(128, 128, 8, 3),
              _fixup(64, 128, 4, 4, True, 2), _fixup(64, 128, 4, 4, True, 4), _fixup(32, 128, 4, 4, True, 4),
              _fixup(64, 128, 4, 3, True, 8)],
    "mid": [_cfg(128, 128, 8, 3), _cfg(128, 128, 8, 3, True), _cfg(128, 256, 8, 3), _cfg(64, 128, 4, 4),
            _cfg(64, 256, 8, 3, True)],
    "large": [_cfg(128, 256, 8, 3), _cfg(256, 128, 8, 3, True), _cfg(128, 128, 8, 3), _cfg(128, 128, 8, 3, True)],
}
# FIXUP (kernels v5): split-K whose last K slice of a tile adds the others' int32 partials (a workspace) and stores
# fp16; int8 codes, any weight bits. (Kernels v4's TMA tiles and v5's persistent linear lost to the tuned configs on
# every H200 shape, results/kernels_tma_vs_tuned_nvidia_h200.csv and kernels_persist_fixup_vs_tuned_nvidia_h200.csv;
# nothing merged, both removed: `git log -S _qlinear_persistent_kernel` finds the code)
# the subpixel upsampler convs (tk.qconv): the tile every decoder conv shape tuned to, and its 4-warp twin
SUBPIXEL_CANDIDATES = [_cfg(128, 128, 8, 3, True), _cfg(128, 128, 4, 3, True)]
CONV_CANDIDATES = {
    "small": [_cfg(64, 128, 4, 4, True), _cfg(64, 128, 4, 4), _cfg(32, 128, 4, 4, True), _cfg(64, 64, 4, 4)],
    "mid": [_cfg(128, 128, 8, 3), _cfg(128, 128, 8, 3, True), _cfg(64, 128, 4, 4), _cfg(64, 128, 4, 4, True)],
    "large": [_cfg(128, 256, 8, 3), _cfg(256, 128, 8, 3, True), _cfg(128, 128, 8, 3), _cfg(128, 128, 8, 3, True)],
}
# (kernels v6's WIDE conv tiles, deeper pipelines and 256-wide shapes, lost to these on every decoder conv of the
# H200, 0.86-0.94x: results/kernels_wide_vs_tuned_nvidia_h200.csv; removed in the twenty-first session)
# fp16 activations (BOS rows, protected layers) double the A tile's shared memory: no 256-wide tiles
FP16A_CANDIDATES = {
    "tiny": LINEAR_CANDIDATES["tiny"],
    "small": LINEAR_CANDIDATES["small"],
    "mid": [_cfg(128, 128, 8, 3), _cfg(128, 128, 8, 3, True), _cfg(64, 128, 4, 4)],
    "large": [_cfg(128, 128, 8, 3), _cfg(128, 128, 8, 3, True), _cfg(64, 128, 4, 4)],
}
INT32_LIMIT = 2**31  # the conv kernel's offsets are int32: larger batches run in parts


def linear_class(m: int) -> str:
    return "tiny" if m <= 64 else "small" if m <= 512 else "mid" if m <= 4096 else "large"


def conv_class(m: int) -> str:
    return "small" if m <= 1024 else "mid" if m <= 8192 else "large"


def with_pre(cands: list[dict], bits: int) -> list[dict]:
    """Packed 2/4/6-bit weights: each config twice, unpacking in the K loop and (PRE) in a separate pass first.

    Unpacking in the K loop puts the weight through registers before the tensor cores, which makes the GEMM slower
    than an 8-bit one (measured: results/kernels_notes.md); a separate pass costs one read of the packed and one
    write of the int8 weight. The autotuner keeps whichever is faster per shape."""
    return cands if bits == 8 else cands + [dict(c, PRE=True) for c in cands]


def opt_in_kind(cfg: dict) -> str | None:
    """`FIXUP` for a tile config of an opt-in kind (kernels v5), else None."""
    return "FIXUP" if cfg.get("FIXUP") else None


def fixup_enabled() -> bool:
    """FIXUP split-K tile configs are opt-in (MIXDQ_FIXUP=1) until they have passed the GPU self-check and been timed
    against the tuned ones (scripts/device/tiles_vs_tuned.py --tiles fixup)."""
    return os.environ.get("MIXDQ_FIXUP", "0") == "1"


def linear_candidates(m: int, a_fp16: bool, bits: int) -> list[dict]:
    cands = FP16A_CANDIDATES[linear_class(m)] if a_fp16 else LINEAR_CANDIDATES[linear_class(m)]
    return with_pre([c for c in cands if not (opt_in_kind(c) and (a_fp16 or not fixup_enabled()))], bits)


def conv_candidates(m: int, two_seg: bool, bits: int = 8) -> list[dict]:
    """Conv tile configs for M output pixels; a split input keeps two accumulators, so no tiles above 128x128
    there (they spill registers: Triton 3.6, sm_90, ptxas -v)."""
    cands = CONV_CANDIDATES[conv_class(m)]
    return with_pre([c for c in cands if c["BM"] * c["BN"] <= 128 * 128] if two_seg else cands, bits)


def graph_bench_ms(fn: Callable[[], object], n_inner: int = 10, reps: int = 5) -> float:
    """GPU milliseconds of one fn() call: n_inner calls captured in a CUDA graph, median of `reps` replays.

    A graph takes the Python launch cost (tens of microseconds, more than many of these kernels run) out
    of the timing, as in the UNet step, which replays a graph too."""
    fn()  # compile / warm up outside the graph
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        for _ in range(n_inner):
            fn()
    graph.replay()
    times = sorted(replay_ms(graph, reps))
    del graph
    return times[len(times) // 2] / n_inner


def replay_ms(graph: "torch.cuda.CUDAGraph", reps: int) -> list[float]:
    """Milliseconds of each of `reps` replays of a captured graph (CUDA events around each replay)."""
    events = [(torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)) for _ in range(reps)]
    for a, b in events:
        a.record()
        graph.replay()
        b.record()
    torch.cuda.synchronize()
    return [a.elapsed_time(b) for a, b in events]


def _strip(cfg: dict) -> dict:
    return {k: v for k, v in cfg.items() if k != "ms"}


def kernel_forms(configs: dict[str, dict]) -> str:
    """The linear shapes of a tuning by the kernel form their config runs (the opt-in forms named), e.g.
    '340 one tile per program, 22 split-K (atomic)': a CSV's provenance says whether FIXUP tiles ran."""
    def form(c: dict) -> str:
        return ("fixup split-K" if c.get("FIXUP") else "split-K (atomic)" if c.get("SPLIT_K", 1) > 1
                else "one tile per program")

    counts = Counter(form(c) for k, c in configs.items() if k.startswith("linear|"))
    return ", ".join(f"{n} {f}" for f, n in counts.most_common()) or "none"


def tile_name(c: dict) -> str:
    """A tile config in a few characters, e.g. '64x128w4s4swap', '32x64w4s4swapk4fixup' (CSV columns, logs)."""
    return f"{c['BM']}x{c['BN']}w{c['num_warps']}s{c['num_stages']}" + ("swap" if c.get("SWAP") else "") + (
        f"k{c['SPLIT_K']}" if c.get("SPLIT_K", 1) > 1 else "") + ("fixup" if c.get("FIXUP") else "")


def parse_key(key: str) -> dict:
    """A tuning key's fields, integers where they are: 'linear|m=4096|n=640|...|a=int8' -> {'m': 4096, ..., 'a': 'int8'};
    a conv key's x (the padded input shape) stays 'BxHxWxC', its o 'nhwc'."""
    return {k: int(v) if v.isdigit() else v for k, v in (p.split("=") for p in key.split("|")[1:])}


def linear_key(m: int, n: int, k: int, bits: int, group: int, a_fp16: bool) -> str:
    return f"linear|m={m}|n={n}|k={k}|b={bits}|g={group}|a={'fp16' if a_fp16 else 'int8'}"


def conv_key(x_shape: tuple, n: int, c1: int, kh: int, stride: int, bits: int, group: int,
             channels_last: bool = False, subpixel: bool = False) -> str:
    key = f"conv|x={'x'.join(map(str, x_shape))}|n={n}|c1={c1}|k={kh}|s={stride}|b={bits}|g={group}"
    key += "|o=nhwc" if channels_last else ""  # its own tuning: the store pattern differs
    return key + "|up=2" if subpixel else key


def linear(a: torch.Tensor, w: torch.Tensor, scale: torch.Tensor, zc: torch.Tensor | None, bias: torch.Tensor | None,
           bits: int, group: int, n: int, cfg: dict | None = None) -> torch.Tensor:
    """y = epilogue(a @ unpack(w)^T) with an autotuned (or the given) tile config; a: [M, K] int8 or fp16."""
    m, k = a.shape
    a_fp16 = a.dtype != torch.int8
    if cfg is None:
        cfg = current_tuning().choose(linear_key(m, n, k, bits, group, a_fp16), linear_candidates(m, a_fp16, bits),
                                      lambda c: graph_bench_ms(lambda: tk.qlinear(a, w, scale, zc, bias, bits, group, n, c)))
    return tk.qlinear(a, w, scale, zc, bias, bits, group, n, _strip(cfg))


def conv(x_pad: torch.Tensor, w: torch.Tensor, scale1: torch.Tensor, zc1: torch.Tensor, scale2: torch.Tensor | None,
         zc2: torch.Tensor | None, bias: torch.Tensor | None, bits: int, group: int, n: int, c1: int, kh: int, kw: int,
         stride: int, pad: int, cfg: dict | None = None, channels_last: bool = False,
         residual: torch.Tensor | None = None, out_scale: float = 1.0, subpixel: bool = False) -> torch.Tensor:
    """Implicit-GEMM conv on padded NHWC codes with an autotuned (or the given) tile config, its output NCHW or
    (`channels_last`) channels_last, plus `residual` times `out_scale` when given (fused epilogue); `subpixel`: a 2x
    upsample + 3x3 conv as four 2x2 phases (tk.qconv). A batch whose input or output passes the kernel's int32
    offsets (the VAE decoder at 1024 px, batch 8) runs in halves."""
    b, hp, wp, _ = x_pad.shape
    out_h, out_w = tk.conv_out_hw(hp, wp, kh, kw, stride, subpixel)
    if b > 1 and max(x_pad.numel(), b * n * out_h * out_w) >= INT32_LIMIT:
        h = b // 2
        res = (None, None) if residual is None else (residual[:h], residual[h:])
        return torch.cat([conv(x, w, scale1, zc1, scale2, zc2, bias, bits, group, n, c1, kh, kw, stride, pad, cfg,
                               channels_last, r, out_scale, subpixel) for x, r in zip((x_pad[:h], x_pad[h:]), res)])
    if cfg is None:
        cfg = current_tuning().choose(
            conv_key(tuple(x_pad.shape), n, c1, kh, stride, bits, group, channels_last, subpixel),
            SUBPIXEL_CANDIDATES if subpixel else
            conv_out_candidates(tuple(x_pad.shape), n, c1, kh, stride, bits, group, channels_last),
            lambda c: graph_bench_ms(lambda: tk.qconv(x_pad, w, scale1, zc1, scale2, zc2, bias, bits, group, n, c1, kh, kw,
                                                      stride, pad, c, channels_last, subpixel=subpixel)))
    return tk.qconv(x_pad, w, scale1, zc1, scale2, zc2, bias, bits, group, n, c1, kh, kw, stride, pad, _strip(cfg),
                    channels_last, residual, out_scale, subpixel)


def conv_out_candidates(x_shape: tuple, n: int, c1: int, kh: int, stride: int, bits: int, group: int,
                        channels_last: bool) -> list[dict]:
    """A conv's tile candidates. With channels_last outputs and the NCHW store's config tuned already: that tile in
    both orientations (only the store differs; a full autotune of every decoder conv would cost minutes of first
    call), else every candidate of its size class."""
    b, hp, wp, c = x_shape
    if channels_last:
        tuned = current_tuning().configs.get(conv_key(x_shape, n, c1, kh, stride, bits, group))
        if tuned is not None:
            return [_strip(tuned), dict(_strip(tuned), SWAP=not tuned.get("SWAP", False))]
    return conv_candidates(b * ((hp - kh) // stride + 1) * ((wp - kh) // stride + 1), c1 < c, bits)  # square


# ----------------------------------------------------------------------------------------------- precompile


def linear_jobs(m: int, k: int, bits: int, group: int, a_fp16: bool) -> list[tuple]:
    """Compile jobs for every candidate a linear of this size class and format may try."""
    even_k = k % group == 0
    return [("linear", bits, group, a_fp16, even_k, tuple(sorted(_strip(c).items())))
            for c in linear_candidates(m, a_fp16, bits)]


def conv_jobs(m: int, c: int, c1: int, kh: int, stride: int, bits: int, group: int) -> list[tuple]:
    two = c1 < c
    even = c1 % group == 0 and (c - c1) % group == 0
    return [("conv", bits, group, kh, stride, two, even, tuple(sorted(_strip(cf).items())))
            for cf in conv_candidates(m, two, bits)]


def _compile_job(job: tuple) -> str:
    """Run one tiny launch of a (format, flags, config) variant so Triton compiles and caches it."""
    from . import packing

    dev = "cuda"
    t0 = time.perf_counter()
    try:
        if job[0] == "linear":
            _, bits, group, a_fp16, even_k, cfg = job
            k = 2 * group if even_k else 2 * group - 16
            qw = torch.zeros(16, k, dtype=torch.int8)
            packed, fmt = packing.pack_weight(qw, bits)
            a = torch.zeros(16, k, dtype=torch.float16 if a_fp16 else torch.int8, device=dev)
            s = torch.ones(16, device=dev)
            tk.qlinear(a, packed.to(dev), s, None if a_fp16 else torch.zeros(16, dtype=torch.int32, device=dev), s,
                       bits, fmt.group, 16, dict(cfg))
        else:
            _, bits, group, kh, stride, two, even, cfg = job
            c1 = group if even else group - 16
            c = 2 * c1 if two else c1
            qw = torch.zeros(16, c, kh, kh, dtype=torch.int8)
            packed, fmt = packing.pack_weight(qw, bits, c1 if two else None)
            x = torch.zeros(1, 4 + kh - 1, 4 + kh - 1, c, dtype=torch.int8, device=dev)
            s = torch.ones(16, device=dev)
            z = torch.zeros(16, dtype=torch.int32, device=dev)
            tk.qconv(x, packed.to(dev), s, z, s if two else None, z if two else None, s, bits, fmt.group, 16, c1, kh,
                     kh, stride, kh // 2, dict(cfg))
        torch.cuda.synchronize()
        return f"ok {time.perf_counter() - t0:.1f}s"
    except Exception as e:  # reported, not fatal: the autotuner skips configs that fail
        return f"failed: {type(e).__name__}: {str(e)[:200]}"


def precompile(jobs: list[tuple], workers: int | None = None) -> dict[tuple, str]:
    """Compile the kernel variants of `jobs` in parallel processes (fills Triton's on-disk cache)."""
    jobs = sorted(set(jobs))
    if not jobs or interpreting() or not torch.cuda.is_available():
        return {}
    workers = workers or min(len(jobs), max(1, (os.cpu_count() or 2) - 1))
    with ProcessPoolExecutor(workers, mp_context=get_context("spawn")) as pool:
        return dict(zip(jobs, pool.map(_compile_job, jobs)))
