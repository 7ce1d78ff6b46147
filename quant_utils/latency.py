"""Latency and memory measurement of a Runner: one cell = (resolution, batch), many timed calls.

Stage times come from CUDA events (GPU) or perf_counter (CPU); the whole call from a wall clock.
Used by latency_probe.py (the performance-model grid) and eval_grid.py.
"""
from __future__ import annotations

from itertools import chain

import numpy as np
import torch
from torch import nn

from .qlayers import QuantLayer
from .runtime import Runner, StageTimes

STAGES = ("text", "unet", "vae", "total")


def device_weight_bytes(unet: nn.Module) -> int:
    """Bytes of every distinct storage the UNet holds: parameters, buffers and the kernel backend's packed
    states (shared storages counted once). The one measure used by latency_probe and bench_kernels."""
    tensors = list(chain(unet.parameters(), unet.buffers()))
    tensors += [t for m in unet.modules() if isinstance(m, QuantLayer) for t in m.kernel_tensors()]
    seen, total = set(), 0
    for t in tensors:
        if t is None:
            continue
        s = t.untyped_storage()
        if s.data_ptr() not in seen:
            seen.add(s.data_ptr())
            total += s.nbytes()
    return int(total)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def timed_call(runner: Runner, prompts: list[str], height: int, width: int, batch: int, steps: int = 1,
               seed: int = 0) -> dict[str, float]:
    """One call of `batch` images: milliseconds per stage (STAGES)."""
    t = StageTimes()
    runner([prompts[i % len(prompts)] for i in range(batch)], [seed + i for i in range(batch)], height, width, steps,
           times=t)
    return {s: getattr(t, f"{s}_ms") for s in STAGES}


def summarize(samples: list[dict[str, float]], batch: int) -> dict:
    """p50/p95 per stage, mean total and images per second of timed calls (timed_call's dicts)."""
    row = {}
    for s in STAGES:
        v = np.asarray([c[s] for c in samples])
        row[f"{s}_p50_ms"] = float(np.percentile(v, 50))
        row[f"{s}_p95_ms"] = float(np.percentile(v, 95))
    row["total_mean_ms"] = float(np.mean([c["total"] for c in samples]))
    row["images_per_s"] = batch / (row["total_mean_ms"] / 1e3)
    return row


def measure_cell(runner: Runner, prompts: list[str], height: int, width: int, batch: int, steps: int = 1,
                 warmup: int = 3, repeats: int = 30, seed: int = 0) -> dict:
    """Time `repeats` calls of `batch` images after `warmup` calls; p50/p95/mean per stage, peak memory."""
    device = runner.device
    for _ in range(warmup):  # also captures the CUDA graphs of this bucket
        timed_call(runner, prompts, height, width, batch, steps, seed)
    _sync(device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    row = summarize([timed_call(runner, prompts, height, width, batch, steps, seed) for _ in range(repeats)], batch)
    row["peak_mem_gib"] = torch.cuda.max_memory_allocated() / 2**30 if device.type == "cuda" else float("nan")
    return row
