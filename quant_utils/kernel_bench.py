"""Benchmarks of the kernel backend on a GPU: per-layer-shape GEMM/conv timings and whole-UNet steps.

Everything runs on the full-size SDXL-Turbo UNet with random weights (true shapes, meaningless values),
built directly on the GPU. Shapes come from the UNet itself: forward hooks record every Linear/Conv2d
input at each (resolution, batch), with how often it occurs per step.
Timing: single kernels as the median of CUDA-graph replays of 10 calls (`launch.graph_bench_ms`, no Python
launch cost); UNet steps as CUDA-graph replays timed one by one with CUDA events (p50/p95), after warm-up
(which also autotunes the kernels).
"""
from __future__ import annotations

import re
import time
from collections import Counter
from dataclasses import dataclass
from typing import Callable

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from torch import nn

from . import kernels
from .kernels import launch, packing
from .kernels import reference as ref
from .kernels import triton_kernels as tk
from .kernels.tuning import current_tuning
from .modes import QUANTIZED, format_name, mode_wbits

FORMATS = {format_name(m): int(mode_wbits(m)) for m in QUANTIZED}  # W8A8 -> 8 weight bits (activations 8 bits)


# ----------------------------------------------------------------------------------------------- model


def build_unet(cfg, device: str = "cuda", seed: int = 0) -> nn.Module:
    """The config's full-size UNet with random weights, initialised on the GPU, fp16, eval."""
    from diffusers import UNet2DConditionModel

    from .pipeline import architecture_configs

    arch = {k: v for k, v in architecture_configs(cfg)["unet"].items() if not k.startswith("_")}
    torch.manual_seed(seed)
    with torch.device(device):
        unet = UNet2DConditionModel.from_config(arch)
    return unet.half().eval().requires_grad_(False)


def unet_inputs(unet: nn.Module, batch: int, res: int, seed: int = 0) -> dict:
    """Random inputs of one SDXL UNet step at `res` x `res` pixels, on the UNet's device."""
    dev = next(unet.parameters()).device
    g = torch.Generator(device=dev).manual_seed(seed)
    cfg, h, f16 = unet.config, res // 8, torch.float16
    pooled = cfg.projection_class_embeddings_input_dim - 6 * cfg.addition_time_embed_dim
    return dict(sample=torch.randn(batch, 4, h, h, device=dev, generator=g, dtype=f16),
                timestep=torch.full((batch,), 999.0, device=dev),
                encoder_hidden_states=torch.randn(batch, 77, cfg.cross_attention_dim, device=dev, generator=g, dtype=f16),
                added_cond_kwargs={"text_embeds": torch.randn(batch, pooled, device=dev, generator=g, dtype=f16),
                                   "time_ids": torch.tensor([[res, res, 0, 0, res, res]], device=dev,
                                                            dtype=f16).repeat(batch, 1)})


def step_fn(unet: nn.Module, inputs: dict) -> Callable[[], torch.Tensor]:
    return lambda: unet(**inputs).sample


@dataclass(frozen=True)
class LayerCall:
    name: str
    kind: str
    in_shape: tuple
    weight_shape: tuple
    stride: int
    padding: int


@torch.no_grad()
def record_layer_calls(unet: nn.Module, inputs: dict) -> Counter:
    """Counter of LayerCall -> calls per step, from one eager forward with hooks on every Linear/Conv2d."""
    calls: Counter = Counter()
    hooks = []
    for name, m in unet.named_modules():
        if isinstance(m, (nn.Linear, nn.Conv2d)):
            def hook(mod, args, _name=name):
                conv = isinstance(mod, nn.Conv2d)
                calls[LayerCall(_name, "conv" if conv else "linear", tuple(args[0].shape), tuple(mod.weight.shape),
                                mod.stride[0] if conv else 1, mod.padding[0] if conv else 0)] += 1
            hooks.append(m.register_forward_pre_hook(hook))
    try:
        unet(**inputs)
    finally:
        for h in hooks:
            h.remove()
    return calls


def quantize_random(unet: nn.Module, wbits: int, abits: int = 8, calib: dict | None = None) -> nn.Module:
    """Uniform W{wbits}A{abits} with the project's quantize_unet (min-max weight ranges), activation ranges
    calibrated (min-max) on one forward of `calib`; fake backend, ready for set_backend('kernel')."""
    from .calibrate import observing
    from .quantize import make_spec, quantize_unet, uniform_bits

    spec = make_spec(unet, uniform_bits(unet, wbits), uniform_bits(unet, abits), a_method="minmax")
    quantize_unet(unet, spec, search=False)
    with observing(unet), torch.no_grad():
        unet(**calib)
    return unet


def kernel_paths(unet: nn.Module) -> Counter:
    """How many prepared layers take each kernel path (int | wonly | fp16)."""
    from .quantize import quant_layers

    return Counter(m.kernel_state.path for _, m in quant_layers(unet) if m.kernel_state is not None)


# ----------------------------------------------------------------------------------------------- timing


def graph_times(fn: Callable[[], torch.Tensor], iters: int = 50, warmup: int = 10) -> tuple[np.ndarray, float]:
    """Per-replay milliseconds of `fn` captured as a CUDA graph, and the peak GiB allocated meanwhile."""
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side), torch.no_grad():
        for _ in range(2):  # first calls autotune kernels and plan cuDNN: outside the graph
            fn()
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph), torch.no_grad():
        fn()
    for _ in range(warmup):
        graph.replay()
    times = np.array(launch.replay_ms(graph, iters))
    peak = torch.cuda.max_memory_allocated() / 2**30
    del graph
    return times, peak


def bench_us(fn: Callable[[], object]) -> float:
    """GPU microseconds of one call, from CUDA-graph replays (no Python launch cost, as in the UNet step)."""
    return launch.graph_bench_ms(fn) * 1e3


# Kernel-name patterns of a UNet step's GPU time, first match wins (ours first: their names are ours).
KERNEL_CATEGORIES = [
    ("int8 GEMM (ours)", r"_qlinear_kernel"), ("int8 conv (ours)", r"_qconv_kernel"),
    ("activation quantize (ours)", r"_quant_flat|_quant_nhwc"), ("weight unpack pass (ours)", r"_unpack_kernel"),
    ("fake-quant for fp16 layers (ours)", r"_fake_quant"), ("group/layer norm", r"_channel_moments|_group_affine"),
    ("attention", r"flash|fmha|attention|sdpa|softmax"),
    # Inductor's generated pointwise/reduction kernels are named after the ops they fuse, `convolution` (a bias add)
    # and `qconv`/`qlinear` (an activation quantize) among them: never cuDNN or cuBLAS work
    ("norm/elementwise + quantize, fused (Inductor)", r"^triton_(poi|red|per)_\w*(qconv|qlinear)"),
    ("group/layer norm", r"^triton_(poi|red|per)_\w*norm"), ("elementwise, copies, other", r"^triton_(poi|red|per)_"),
    ("conv fp16 (cuDNN)", r"fprop|conv|implicit"), ("matmul fp16 (cuBLAS)", r"gemm|nvjet|cutlass|matmul|xmma|^triton_tem_"),  # tem: an Inductor GEMM template
    ("group/layer norm", r"norm"), ("elementwise, copies, other", r"."),
]


def kernel_category(name: str) -> str:
    """The KERNEL_CATEGORIES name of a GPU kernel (first pattern that matches)."""
    return next(cat for cat, pat in KERNEL_CATEGORIES if re.search(pat, name, re.I))


def category_table(per_kernel: pd.DataFrame) -> pd.DataFrame:
    """Per-kernel rows (kernel, gpu_ms, count) -> one row per category present: gpu_ms, share of the total, kernels
    (launches), in KERNEL_CATEGORIES order."""
    order = list(dict.fromkeys(cat for cat, _ in KERNEL_CATEGORIES))
    cats = per_kernel.assign(category=per_kernel["kernel"].map(kernel_category))
    g = cats.groupby("category")[["gpu_ms", "count"]].sum().reindex(order).dropna()
    total = g["gpu_ms"].sum()
    return pd.DataFrame({"category": g.index, "gpu_ms": g["gpu_ms"].round(3).values,
                         "share": (g["gpu_ms"] / total).round(4).values if total else 0.0,
                         "kernels": g["count"].astype(int).values})


@torch.no_grad()
def profile_step(fn: Callable[[], torch.Tensor], kernels: list[dict] | None = None) -> list[dict]:
    """GPU time of one eager step by kernel category (torch.profiler; the sum matches a graph replay's work); with
    `kernels`, also appends one row per distinct kernel (kernel, category, gpu_ms, count), the slowest first."""
    from torch.autograd import DeviceType
    from torch.profiler import ProfilerActivity, profile

    fn()
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        fn()
        torch.cuda.synchronize()
    per_kernel = [dict(kernel=evt.key, category=kernel_category(evt.key), gpu_ms=evt.self_device_time_total / 1e3,
                       count=evt.count)
                  for evt in prof.key_averages() if evt.device_type == DeviceType.CUDA and evt.self_device_time_total > 0]
    if kernels is not None:
        kernels += [dict(r, kernel=r["kernel"][:160], gpu_ms=round(r["gpu_ms"], 4))
                    for r in sorted(per_kernel, key=lambda r: -r["gpu_ms"])]
    table = category_table(pd.DataFrame(per_kernel, columns=["kernel", "category", "gpu_ms", "count"]))
    return table.to_dict("records")


# ----------------------------------------------------------------------------------------------- per-shape


def distinct_shapes(calls: Counter, splits: dict[str, int]) -> dict[tuple, tuple[int, LayerCall]]:
    """Distinct GEMM/conv geometries the int8 kernels can take -> (calls per step, an example call).

    Keys: ("linear", M, K, N) or ("conv", input shape, weight shape, stride, split)."""
    out: dict[tuple, list] = {}
    for c, n in calls.items():
        if c.kind == "linear":
            if c.in_shape[-1] % 16 or c.weight_shape[0] % 8:
                continue
            key = ("linear", int(np.prod(c.in_shape[:-1])), c.in_shape[-1], c.weight_shape[0])
        else:
            if c.in_shape[1] % 16 or c.weight_shape[0] % 8:
                continue
            key = ("conv", c.in_shape, c.weight_shape, c.stride, splits.get(c.name))
        entry = out.setdefault(key, [0, c])
        entry[0] += n
    return {k: (v[0], v[1]) for k, v in out.items()}



def _rand_codes(shape, lo=-100, hi=100) -> torch.Tensor:
    return torch.randint(lo, hi, shape, device="cuda", dtype=torch.int8)


def _packed(n: int, shape_k: tuple, bits: int, split: int | None = None):
    lo, hi = -(1 << (bits - 1)), (1 << (bits - 1))
    q = torch.randint(lo, hi, (n, *shape_k), device="cuda", dtype=torch.int8)
    return packing.pack_weight(q, bits, split)


def linear_shape_rows(m: int, k: int, n: int) -> list[dict]:
    """fp16 cuBLAS, torch._int_mm and our W8/W6/W4 GEMMs (with and without the activation quantization pass)."""
    x16 = torch.randn(m, k, device="cuda", dtype=torch.float16)
    w16 = torch.randn(n, k, device="cuda", dtype=torch.float16) * 0.02
    b16 = torch.randn(n, device="cuda", dtype=torch.float16)
    rows = [dict(impl="fp16 cuBLAS", us=bench_us(lambda: F.linear(x16, w16, b16)), config="")]
    a8 = _rand_codes((m, k))
    if m > 16 and k % 8 == 0 and n % 8 == 0:
        w8t = _rand_codes((n, k)).t()
        rows.append(dict(impl="torch._int_mm", us=bench_us(lambda: torch._int_mm(a8, w8t)), config="int32 out, no epilogue"))
    scale = torch.rand(n, device="cuda") * 1e-3
    zc = torch.randint(-1000, 1000, (n,), device="cuda", dtype=torch.int32)
    bias = torch.randn(n, device="cuda")
    aq = ref.ActQuant(0.05, 3, 8)
    for fmt, bits in FORMATS.items():
        packed, pf = _packed(n, (k,), bits)
        launch.linear(a8, packed, scale, zc, bias, bits, pf.group, n)  # autotune
        cfg = current_tuning().configs.get(launch.linear_key(m, n, k, bits, pf.group, False), {})
        rows.append(dict(impl=fmt, us=bench_us(lambda: launch.linear(a8, packed, scale, zc, bias, bits, pf.group, n)),
                         config=_cfg_str(cfg)))
        rows.append(dict(impl=fmt + " +quant", config=_cfg_str(cfg), us=bench_us(
            lambda: launch.linear(tk.quant_flat(x16, aq.scale, aq.zero, aq.qmin, aq.qmax), packed, scale, zc, bias,
                                  bits, pf.group, n))))
    for r in rows:
        r["tops"] = 2 * m * n * k / (r["us"] * 1e-6) / 1e12
    return rows


def conv_shape_rows(x_shape: tuple, n: int, ksize: int, stride: int, pad: int, split: int | None) -> list[dict]:
    """cuDNN fp16 and our W8/W6/W4 implicit-GEMM convs (with and without the quantize/NHWC/pad pass)."""
    b, c, h, w = x_shape
    x16 = torch.randn(x_shape, device="cuda", dtype=torch.float16)
    w16 = torch.randn(n, c, ksize, ksize, device="cuda", dtype=torch.float16) * 0.02
    b16 = torch.randn(n, device="cuda", dtype=torch.float16)
    rows = [dict(impl="fp16 cuDNN", us=bench_us(lambda: F.conv2d(x16, w16, b16, stride, pad)), config="")]
    c1 = split or c
    p = (0.05, 3, -128, 127)
    xq = tk.quant_nchw_to_nhwc(x16, c1, p, p, pad)
    s = torch.rand(n, device="cuda") * 1e-3
    z = torch.randint(-1000, 1000, (n,), device="cuda", dtype=torch.int32)
    bias = torch.randn(n, device="cuda")
    for fmt, bits in FORMATS.items():
        packed, pf = _packed(n, (c, ksize, ksize), bits, split)
        args = (packed, s, z, s if split else None, z if split else None, bias, bits, pf.group, n, c1, ksize, ksize,
                stride, pad)
        launch.conv(xq, *args)  # autotune
        cfg = current_tuning().configs.get(launch.conv_key(tuple(xq.shape), n, c1, ksize, stride, bits, pf.group), {})
        rows.append(dict(impl=fmt, us=bench_us(lambda: launch.conv(xq, *args)), config=_cfg_str(cfg)))
        rows.append(dict(impl=fmt + " +quant", config=_cfg_str(cfg),
                         us=bench_us(lambda: launch.conv(tk.quant_nchw_to_nhwc(x16, c1, p, p, pad), *args))))
    oh = (h + 2 * pad - ksize) // stride + 1
    flops = 2 * b * oh * oh * n * c * ksize * ksize
    for r in rows:
        r["tops"] = flops / (r["us"] * 1e-6) / 1e12
    return rows


def _cfg_str(cfg: dict) -> str:
    if not cfg:
        return ""
    return (f"{cfg['BM']}x{cfg['BN']} w{cfg['num_warps']} s{cfg['num_stages']}" + (" swap" if cfg.get("SWAP") else "")
            + (f" splitk{cfg['SPLIT_K']}" if cfg.get("SPLIT_K", 1) > 1 else "") + (" pre" if cfg.get("PRE") else ""))


# ----------------------------------------------------------------------------------------------- precompile


def layer_spec(call: LayerCall, wbits: int, abits: int, split: int | None, bos: bool) -> kernels.LayerSpec:
    """The kernels' view of a recorded layer call quantized to W{wbits}A{abits} (UNet convs: ungrouped, undilated)."""
    ws = call.weight_shape
    conv = dict(stride=(call.stride,) * 2, padding=(call.padding,) * 2) if call.kind == "conv" else {}
    return kernels.LayerSpec(call.kind, ws[1], ws[0], ws, wbits, abits, split, bos, **conv)


_BOS = re.compile(r"attn2\.to_[kv]$")


def precompile_jobs(calls: list[LayerCall], wbits_list: list[int], splits: dict[str, int]) -> list[tuple]:
    """Every kernel variant the quantized UNet may try for these layer calls (all autotuning candidates)."""
    jobs = []
    for wbits in wbits_list:
        for c in calls:
            split, bos = splits.get(c.name), bool(_BOS.search(c.name))
            pl = kernels.plan(layer_spec(c, wbits, 8, split, bos))
            if pl.path == "fp16":
                continue
            if c.kind == "linear":
                m = int(np.prod(c.in_shape[:-1]))
                jobs += launch.linear_jobs(m, c.in_shape[-1], pl.bits, pl.group, pl.path == "wonly")
                if bos:
                    jobs += launch.linear_jobs(c.in_shape[0], c.in_shape[-1], pl.bits, pl.group, True)
            else:
                b, ch, h, w = c.in_shape
                kh = c.weight_shape[2]
                m = b * ((h + 2 * c.padding - kh) // c.stride + 1) * ((w + 2 * c.padding - kh) // c.stride + 1)
                jobs += launch.conv_jobs(m, ch, split or ch, kh, c.stride, pl.bits, pl.group)
    return sorted(set(jobs))


def timed(label: str):
    """Context printing how long a section took (progress goes to the log)."""
    class _T:
        def __enter__(self):
            self.t = time.perf_counter()
            print(f"[bench] {label} ...", flush=True)

        def __exit__(self, *exc):
            print(f"[bench] {label}: {time.perf_counter() - self.t:.1f}s", flush=True)
    return _T()
