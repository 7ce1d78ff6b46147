"""Tile configs for the GEMM/conv kernels: candidates per problem-size class, autotuned once per shape.

`linear(...)` / `conv(...)` run the kernels of triton_kernels.py with the config this module picks: the
fastest candidate for the shape's size class, timed under a CUDA graph (`graph_bench_ms`) on the first
call of each (shape, format) and cached; never while a CUDA graph is being captured (then the first
candidate runs; warm up before capturing). Tuning results can be saved to and loaded from JSON
(`save_tuning` / `load_tuning`), so a later process skips the timing.

Tuning is shared and cached: on the first GEMM/conv a process loads the committed tuning files of GPUs with
this GPU's compute capability (a file tuned on an H100 serves an H200: both sm_90), then the per-user cache of
this GPU model (~/.cache/mixdq/kernels_tuning_<gpu>.json, $MIXDQ_TUNING_CACHE; `none` disables it); the shapes
it times itself are merged into that cache at exit, so a GPU model is tuned once.

Because the kernels do not specialise on integer sizes, a compiled kernel depends only on the format and
the tile config; `precompile(jobs)` compiles many of them in parallel worker processes (Triton's on-disk
cache then serves the main process), which cuts the first-call cost from minutes to seconds.
"""
from __future__ import annotations

import atexit
import json
import os
import re
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from contextlib import contextmanager
from multiprocessing import get_context
from pathlib import Path
from typing import Callable

import torch

from .. import REPO_ROOT
from . import triton_kernels as tk


def _cfg(bm: int, bn: int, warps: int, stages: int, swap: bool = False, split_k: int = 1) -> dict:
    return dict(BM=bm, BN=bn, num_warps=warps, num_stages=stages, SWAP=swap, SPLIT_K=split_k, GROUP_M=8)


# SWAP: the weight tile is the tensor-core instruction's M side and the activation rows its N side, so a
# handful of rows still fills the instruction; SPLIT_K > 1 spreads a long K over more SMs when tiles are few.
LINEAR_CANDIDATES = {
    "tiny": [_cfg(16, 64, 4, 4, True), _cfg(32, 128, 4, 4, True), _cfg(32, 64, 4, 4, True, 4), _cfg(16, 128, 4, 4, True, 2),
             _cfg(32, 64, 4, 4)],
    # 65-512 rows (512 px, batch 1) leave most of 132 SMs idle, but split-K 4/8 here never won on the H100
    # (zeroing, fp32 atomics and the cast pass cost more: results/kernels_notes.md, v3), so only split-K 2
    "small": [_cfg(64, 128, 4, 4, True), _cfg(64, 128, 4, 4), _cfg(32, 128, 4, 4, True, 2), _cfg(128, 128, 8, 3)],
    "mid": [_cfg(128, 128, 8, 3), _cfg(128, 128, 8, 3, True), _cfg(128, 256, 8, 3), _cfg(64, 128, 4, 4),
            _cfg(64, 256, 8, 3, True)],
    "large": [_cfg(128, 256, 8, 3), _cfg(256, 128, 8, 3, True), _cfg(128, 128, 8, 3), _cfg(128, 128, 8, 3, True)],
}
CONV_CANDIDATES = {
    "small": [_cfg(64, 128, 4, 4, True), _cfg(64, 128, 4, 4), _cfg(32, 128, 4, 4, True), _cfg(64, 64, 4, 4)],
    "mid": [_cfg(128, 128, 8, 3), _cfg(128, 128, 8, 3, True), _cfg(64, 128, 4, 4), _cfg(64, 128, 4, 4, True)],
    "large": [_cfg(128, 256, 8, 3), _cfg(256, 128, 8, 3, True), _cfg(128, 128, 8, 3), _cfg(128, 128, 8, 3, True)],
}
# fp16 activations (BOS rows, protected layers) double the A tile's shared memory: no 256-wide tiles
FP16A_CANDIDATES = {
    "tiny": LINEAR_CANDIDATES["tiny"],
    "small": LINEAR_CANDIDATES["small"],
    "mid": [_cfg(128, 128, 8, 3), _cfg(128, 128, 8, 3, True), _cfg(64, 128, 4, 4)],
    "large": [_cfg(128, 128, 8, 3), _cfg(128, 128, 8, 3, True), _cfg(64, 128, 4, 4)],
}

_TUNED: dict[str, dict] = {}
_TUNED_HERE: set[str] = set()  # keys this process timed itself (merged into the per-user cache at exit)
TUNING = os.environ.get("MIXDQ_TUNE", "1") != "0"
# Tile configs that bench_kernels tuned (results/kernels_tuning_<gpu>.json, any GPU of this compute capability) and
# this user's cache are loaded on the first GEMM/conv, so a service or a latency grid skips re-timing them;
# MIXDQ_TUNING_FILE=<file> loads that file instead of the committed ones, `none` none of them.
_DEFAULT_TUNING_LOADED = False
# Files written before `capability` was stored name only their GPU: these names map to a compute capability.
KNOWN_CAPABILITIES = {r"NVIDIA (GH|H)(100|200)\b": "sm_90", r"NVIDIA A100\b": "sm_80", r"NVIDIA A10G?$": "sm_86",
                      r"NVIDIA L(4|40S?)$": "sm_89", r"NVIDIA B200\b": "sm_100"}


def gpu_name() -> str:
    return torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu"


def gpu_tag() -> str:
    """'NVIDIA H100 80GB HBM3' -> 'nvidia_h100_80gb_hbm3' (file-name part of per-GPU results)."""
    return re.sub(r"[^a-z0-9]+", "_", gpu_name().lower()).strip("_")


def capability() -> str:
    """This GPU's compute capability ('sm_90'); 'cpu' without CUDA."""
    if not torch.cuda.is_available():
        return "cpu"
    major, minor = torch.cuda.get_device_capability(0)
    return f"sm_{major}{minor}"


def file_capability(data: dict) -> str | None:
    """The compute capability a tuning file was made on: stored, or known from its GPU name (older files)."""
    if data.get("capability"):
        return data["capability"]
    gpu = data.get("gpu", "")
    if gpu == "cpu":
        return "cpu"
    return next((cap for pat, cap in KNOWN_CAPABILITIES.items() if re.match(pat, gpu)), None)


def tuning_cache_path() -> Path | None:
    """This user's tuning cache for this GPU model; None when MIXDQ_TUNING_CACHE=none."""
    env = os.environ.get("MIXDQ_TUNING_CACHE")
    if env == "none":
        return None
    if env:
        return Path(env).expanduser()
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return base / "mixdq" / f"kernels_tuning_{gpu_tag()}.json"


def default_tuning_files() -> list[Path]:
    """Committed tuning files usable here: other GPU models of this capability first, this GPU model's last
    (later files win where both tuned a shape), then this user's cache."""
    env = os.environ.get("MIXDQ_TUNING_FILE")
    if env == "none":
        files = []
    elif env:
        files = [Path(env)]
    else:
        own = REPO_ROOT / "results" / f"kernels_tuning_{gpu_tag()}.json"
        files = sorted(p for p in (REPO_ROOT / "results").glob("kernels_tuning_*.json") if p != own) + [own]
    cache = tuning_cache_path()
    return [p for p in files + ([cache] if cache else []) if p.is_file()]


def _load_default_tuning() -> None:
    global _DEFAULT_TUNING_LOADED
    if _DEFAULT_TUNING_LOADED:
        return
    _DEFAULT_TUNING_LOADED = True
    for path in default_tuning_files():
        try:
            n, gpu = load_tuning(path, with_source=True)
        except (OSError, ValueError, KeyError) as e:
            print(f"[kernels] tuning file {path} skipped: {type(e).__name__}: {str(e)[:120]}")
            continue
        same = "" if gpu == gpu_name() else f" (tuned on {gpu}, this is {gpu_name()}, {capability()})"
        print(f"[kernels] {n} tuned tile configs from {path}{same}")


def interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET") == "1"


def linear_class(m: int) -> str:
    return "tiny" if m <= 64 else "small" if m <= 512 else "mid" if m <= 4096 else "large"


def conv_class(m: int) -> str:
    return "small" if m <= 1024 else "mid" if m <= 8192 else "large"


def with_pre(cands: list[dict], bits: int) -> list[dict]:
    """Packed 2/4/6-bit weights: each config twice, unpacking in the K loop and (PRE) in a separate pass first.

    Measured on the H100 (results/kernels_notes.md): unpacking in the K loop puts the weight through registers
    before the tensor cores, which cost 1.5-2x an 8-bit GEMM; a separate pass costs one read of the packed and
    one write of the int8 weight. The autotuner keeps whichever is faster per shape."""
    return cands if bits == 8 else cands + [dict(c, PRE=True) for c in cands]


def linear_candidates(m: int, a_fp16: bool, bits: int) -> list[dict]:
    return with_pre((FP16A_CANDIDATES if a_fp16 else LINEAR_CANDIDATES)[linear_class(m)], bits)


def conv_candidates(m: int, two_seg: bool, bits: int = 8) -> list[dict]:
    """Conv tile configs for M output pixels; a split input keeps two accumulators, so no tiles above 128x128
    there (they spill registers: Triton 3.6, sm_90, ptxas -v)."""
    cands = CONV_CANDIDATES[conv_class(m)]
    return with_pre([c for c in cands if c["BM"] * c["BN"] <= 128 * 128] if two_seg else cands, bits)


_FORCED: dict | None = None
INT32_LIMIT = 2**31  # the conv kernel's offsets are int32: larger batches run in parts


@contextmanager
def forced(cfg: dict | None):
    """Run every GEMM/conv inside the block with this tile config (correctness checks of each candidate)."""
    global _FORCED
    prev, _FORCED = _FORCED, cfg
    try:
        yield
    finally:
        _FORCED = prev


def _choose(key: str, candidates: list[dict], run: Callable[[dict], object]) -> dict:
    if _FORCED is not None:
        return _FORCED
    _load_default_tuning()
    cfg = _TUNED.get(key)
    if cfg is not None:
        return cfg
    if interpreting() or not TUNING or len(candidates) == 1 or torch.cuda.is_current_stream_capturing():
        return candidates[0]
    best, best_ms = None, float("inf")
    for c in candidates:
        try:
            ms = graph_bench_ms(lambda: run(c))
        except Exception as e:  # a config that does not fit this GPU (shared memory, registers): skip it
            print(f"[kernels] {key}: config {c} failed: {type(e).__name__}: {str(e)[:120]}")
            continue
        if ms < best_ms:
            best, best_ms = c, ms
    if best is None:
        raise RuntimeError(f"no kernel config ran for {key}")
    _TUNED[key] = dict(best, ms=round(best_ms, 5))
    if not _TUNED_HERE:
        atexit.register(save_tuning_cache)
    _TUNED_HERE.add(key)
    return _TUNED[key]


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


def linear_key(m: int, n: int, k: int, bits: int, group: int, a_fp16: bool) -> str:
    return f"linear|m={m}|n={n}|k={k}|b={bits}|g={group}|a={'fp16' if a_fp16 else 'int8'}"


def conv_key(x_shape: tuple, n: int, c1: int, kh: int, stride: int, bits: int, group: int) -> str:
    return f"conv|x={'x'.join(map(str, x_shape))}|n={n}|c1={c1}|k={kh}|s={stride}|b={bits}|g={group}"


def linear(a: torch.Tensor, w: torch.Tensor, scale: torch.Tensor, zc: torch.Tensor | None, bias: torch.Tensor | None,
           bits: int, group: int, n: int, cfg: dict | None = None) -> torch.Tensor:
    """y = epilogue(a @ unpack(w)^T) with an autotuned (or the given) tile config; a: [M, K] int8 or fp16."""
    m, k = a.shape
    a_fp16 = a.dtype != torch.int8
    if cfg is None:
        cfg = _choose(linear_key(m, n, k, bits, group, a_fp16), linear_candidates(m, a_fp16, bits),
                      lambda c: tk.qlinear(a, w, scale, zc, bias, bits, group, n, c))
    return tk.qlinear(a, w, scale, zc, bias, bits, group, n, _strip(cfg))


def conv(x_pad: torch.Tensor, w: torch.Tensor, scale1: torch.Tensor, zc1: torch.Tensor, scale2: torch.Tensor | None,
         zc2: torch.Tensor | None, bias: torch.Tensor | None, bits: int, group: int, n: int, c1: int, kh: int, kw: int,
         stride: int, pad: int, cfg: dict | None = None) -> torch.Tensor:
    """Implicit-GEMM conv on padded NHWC codes with an autotuned (or the given) tile config. A batch whose input or
    output passes the kernel's int32 offsets (the VAE decoder at 1024 px, batch 8) runs in halves."""
    b, hp, wp, _ = x_pad.shape
    if b > 1 and max(x_pad.numel(), b * n * ((hp - kh) // stride + 1) * ((wp - kw) // stride + 1)) >= INT32_LIMIT:
        h = b // 2
        return torch.cat([conv(x, w, scale1, zc1, scale2, zc2, bias, bits, group, n, c1, kh, kw, stride, pad, cfg)
                          for x in (x_pad[:h], x_pad[h:])])
    if cfg is None:
        b, hp, wp, _ = x_pad.shape
        m = b * ((hp - kh) // stride + 1) * ((wp - kw) // stride + 1)
        cfg = _choose(conv_key(tuple(x_pad.shape), n, c1, kh, stride, bits, group), conv_candidates(m, c1 < x_pad.shape[3], bits),
                      lambda c: tk.qconv(x_pad, w, scale1, zc1, scale2, zc2, bias, bits, group, n, c1, kh, kw,
                                         stride, pad, c))
    return tk.qconv(x_pad, w, scale1, zc1, scale2, zc2, bias, bits, group, n, c1, kh, kw, stride, pad, _strip(cfg))


# ----------------------------------------------------------------------------------------------- tuning files


def tuned() -> dict[str, dict]:
    """The configs picked so far (key -> config with its measured median ms)."""
    return dict(_TUNED)


def _write_json(path: Path, data: dict) -> None:
    """Atomically (temp file + rename): a reader never sees half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(data, f, indent=1, sort_keys=True)
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def save_tuning(path: str | Path, configs: dict[str, dict] | None = None) -> None:
    """Write `configs` (default: every config picked so far, the default tuning files' included) with this GPU's
    name and compute capability."""
    if configs is None:
        _load_default_tuning()  # a save before the first GEMM would otherwise drop the configs those files hold
    _write_json(Path(path), {"gpu": gpu_name(), "capability": capability(),
                             "configs": _TUNED if configs is None else configs})


def load_tuning(path: str | Path, with_source: bool = False):
    """Load configs tuned earlier on this GPU model or another of the same compute capability (an H100 file serves
    an H200); returns how many (0 for a file of another architecture), with the file's GPU if `with_source`."""
    data = json.loads(Path(path).read_text())
    gpu = data.get("gpu")
    n = 0
    if gpu == gpu_name() or file_capability(data) == capability():
        _TUNED.update(data["configs"])
        n = len(data["configs"])
    return (n, gpu) if with_source else n


def save_tuning_cache() -> Path | None:
    """Merge the configs this process timed into this user's cache file of this GPU model (run at exit)."""
    path = tuning_cache_path()
    if path is None or not _TUNED_HERE:
        return None
    configs = {}
    try:
        old = json.loads(path.read_text())
        if old.get("gpu") == gpu_name():
            configs = old["configs"]
    except (OSError, ValueError, KeyError):
        pass  # no cache yet, or a damaged one: rewritten
    configs.update({k: _TUNED[k] for k in _TUNED_HERE if k in _TUNED})
    save_tuning(path, configs)
    print(f"[kernels] {len(_TUNED_HERE)} newly tuned tile configs saved to {path} ({len(configs)} in all)")
    return path


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
