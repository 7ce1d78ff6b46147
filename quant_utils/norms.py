"""GroupNorm with its statistics as two reductions (`split`; measured slower in the whole decode), with its
per-channel statistics from a Triton kernel (`triton`), or with its per-channel scale and shift from Triton kernels
(`triton-affine`): `--group_norm` sets the UNet's (PyTorch's, `native`, by default), `--vae_group_norm` the
decoder's (`auto`: `triton-affine` for the FP16 decoder compiled on CUDA, measured fastest; else `native`; see
decoder_group_norm).

Why it was tried: as Inductor compiles the SDXL decoder, its GroupNorms (+ SiLU) run far below memory bandwidth (on
the H200, ~280 GB/s counting one read and one write per element, against ~4.3 TB/s for a copy; 63 ms of a 130 ms
4-image 1024 px decode). PyTorch's GroupNorm is one reduction per (image, group): 128 rows of 8 M elements at
1024x4. What the H200 said of a first form (statistics per 16 K-element chunk of a channel, then per group; commit
ac1cd79; results/groupnorm_nvidia_h200.csv, results/vae_decode_groupnorm*_nvidia_h200.csv): GroupNorm + SiLU alone
on contiguous NCHW data, 1.45x at the 512x1 decoder's shapes but the same ~280 GB/s at 1024x4 (so too few rows were
not what held it; untested guess: Inductor's looped var_mean is a Welford update with a division per element); in
the compiled decode it was slower (FP16 1024x4 172 vs 130 ms; int8 decoder 82 vs 84 ms): there Inductor keeps the
convolutions' outputs channels_last (cuDNN ran its NHWC kernels; likely, not verified), and rows of one channel
are strided in that layout.
The form below takes per-channel statistics over the spatial dims without reshaping (any layout: Inductor picks the
loop order) and normalises with one per-channel scale and shift: not yet measured on a GPU (queued,
scripts/device/README.md). `triton` computes those statistics with quant_utils/kernels' moments kernel (plain shifted
sums over chunks of up to 4096 pixels, hundreds to thousands of programs, either layout read with vector loads; the
chunks combined here), since the looped reductions Inductor generates are the suspect; the per-channel scale and
shift, the SiLU after it and (int8 decoder) the next conv's input quantize stay Inductor's to fuse. Measured (tenth
session, H200, 1024x4, results/vae_decode_gn_*_nvidia_h200.csv): the compiled FP16 decode 131.0 -> 108.2 ms with
`triton` (Inductor's layout optimisation off instead: 128.8 ms); the int8 decoder 83.2 -> 92.2 ms (slower: its
GroupNorms already reduce over contiguous NCHW rows, fused with their quantize), so `auto` gives `triton` to the FP16
decoder only. Twelfth session (same H200 setup, commit 8fb481c: the GroupNorm ops now tagged layout-free, so Inductor
no longer copies channels_last conv outputs to NCHW for them; `triton-affine` also computes the per-group combine and
the per-channel scale/shift in a Triton kernel): FP16 decode native 130.8, triton 95.5, triton-affine 89.6 ms (1.46x);
int8 decoder native 81.9, triton 92.0, triton-affine 85.6 ms. So `auto` = triton-affine for the FP16 decoder and
native for the int8 one.

`use_group_norm(model, kind)` switches every nn.GroupNorm of a model (same parameters and state dict); "native"
switches back.
"""
from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

GROUP_NORMS = ("native", "split", "triton", "triton-affine")
DECODER_GROUP_NORMS = ("auto",) + GROUP_NORMS
Moments = Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor]]  # x -> per-channel (mean, variance), (N, C)


def torch_moments(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-channel float32 (mean, variance) over the spatial dims of an (N, C, *spatial) tensor, by torch.var_mean."""
    var, mean = torch.var_mean(x.float(), dim=tuple(range(2, x.dim())), correction=0)  # (n, c): no reshape of x
    return mean, var


def kernel_moments(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """torch_moments by the Triton kernel (quant_utils/kernels: per chunk of pixels, then the chunks combined here,
    Chan's parallel formula: exact in exact arithmetic, no sum-of-squares cancellation)."""
    from .kernels import ops, triton_kernels

    mean_p, m2_p = ops.channel_moments(x)
    n, c = x.shape[:2]
    p = x.numel() // (n * c)
    chunk = triton_kernels.moments_config(n, c, p)[2]
    counts = (p - chunk * torch.arange(mean_p.shape[-1], device=x.device)).clamp(max=chunk).float()  # last: the rest
    mean = (mean_p * counts).sum(-1) / p
    m2 = m2_p.sum(-1) + (counts * (mean_p - mean.unsqueeze(-1)).square()).sum(-1)
    return mean, m2 / p


def group_norm_split(x: torch.Tensor, groups: int, weight: torch.Tensor | None, bias: torch.Tensor | None,
                     eps: float, moments: Moments = torch_moments) -> torch.Tensor:
    """F.group_norm(x, groups, weight, bias, eps) for an (N, C, *spatial) tensor in any memory layout: float32
    statistics per channel over the spatial dims (`moments`), combined per group, then one per-channel scale and
    shift."""
    n, c = x.shape[:2]
    mean, var = moments(x)
    mean, var = mean.view(n, groups, -1), var.view(n, groups, -1)  # equal counts per channel
    group_mean = mean.mean(-1, keepdim=True)
    group_var = (var + (mean - group_mean).square()).mean(-1, keepdim=True)
    scale = torch.rsqrt(group_var + eps).expand(n, groups, c // groups).reshape(n, c)
    shift = -group_mean.expand(n, groups, c // groups).reshape(n, c) * scale
    if weight is not None:
        scale, shift = scale * weight.float(), shift * weight.float()
    if bias is not None:
        shift = shift + bias.float()
    return _per_channel_affine(x, scale, shift)


def _per_channel_affine(x: torch.Tensor, scale: torch.Tensor, shift: torch.Tensor) -> torch.Tensor:
    """x * scale + shift with (N, C) float32 scale and shift, in x's dtype."""
    per_channel = tuple(x.shape[:2]) + (1,) * (x.dim() - 2)
    return (x.float() * scale.view(per_channel) + shift.view(per_channel)).to(x.dtype)


def triton_moments(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """kernel_moments on CUDA (or in the Triton interpreter), torch_moments elsewhere."""
    from .kernels.tuning import interpreting

    return kernel_moments(x) if x.is_cuda or interpreting() else torch_moments(x)


def group_norm_triton(x: torch.Tensor, groups: int, weight: torch.Tensor | None, bias: torch.Tensor | None,
                      eps: float) -> torch.Tensor:
    """group_norm_split with triton_moments' statistics."""
    return group_norm_split(x, groups, weight, bias, eps, triton_moments)


def group_norm_triton_affine(x: torch.Tensor, groups: int, weight: torch.Tensor | None, bias: torch.Tensor | None,
                             eps: float) -> torch.Tensor:
    """group_norm_triton with the per-group combine and the per-channel scale and shift in a Triton kernel too (op
    `mixdq::group_affine`): in the `triton` form a compiled graph's normalize kernel recomputes the combine per element
    (Inductor unrolls reductions over <= 8 channels, a group of SDXL's 256-channel decoder blocks, into it). CPU
    without the Triton interpreter: group_norm_split."""
    from .kernels.tuning import interpreting

    if not (x.is_cuda or interpreting()):
        return group_norm_split(x, groups, weight, bias, eps)
    from .kernels import ops

    return _per_channel_affine(x, *ops.group_affine(x, groups, weight, bias, eps))


class SplitGroupNorm(nn.GroupNorm):
    """nn.GroupNorm whose forward is group_norm_split."""

    form = staticmethod(group_norm_split)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() < 3:  # (N, C): no spatial dims to take per-channel statistics over
            return F.group_norm(x, self.num_groups, self.weight, self.bias, self.eps)
        return self.form(x, self.num_groups, self.weight, self.bias, self.eps)


class TritonGroupNorm(SplitGroupNorm):
    """nn.GroupNorm whose forward is group_norm_triton."""

    form = staticmethod(group_norm_triton)


class TritonAffineGroupNorm(SplitGroupNorm):
    """nn.GroupNorm whose forward is group_norm_triton_affine."""

    form = staticmethod(group_norm_triton_affine)


_FORMS = {"native": nn.GroupNorm, "split": SplitGroupNorm, "triton": TritonGroupNorm,
          "triton-affine": TritonAffineGroupNorm}
# each kind as a function with F.group_norm's arguments (x, groups, weight, bias, eps)
GROUP_NORM_FUNCTIONS = {"native": F.group_norm, "split": group_norm_split, "triton": group_norm_triton,
                        "triton-affine": group_norm_triton_affine}


def decoder_group_norm(choice: str, vae_kind: str, compiled_on_cuda: bool, conv_out: str = "nchw") -> str:
    """The decoder's GroupNorm form for `--vae_group_norm choice`: auto = `triton-affine` when the decode is compiled
    on CUDA, for the FP16 decoder (measured 1.46x over PyTorch's in the compiled decode at 1024x4, see above) and for
    the int8 decoder whose convs write channels_last outputs (`conv_out` nhwc: 71.9 ms against 185.8 ms with PyTorch's,
    which reads those outputs slowly; with NCHW outputs the Triton forms were slower, so `native` there); else
    `native` (uncompiled: unmeasured; the tiny decoder has no GroupNorm)."""
    if choice not in DECODER_GROUP_NORMS:
        raise ValueError(f"vae_group_norm={choice!r}, expected one of {DECODER_GROUP_NORMS}")
    if choice != "auto":
        return choice
    fast = vae_kind == "fp16" or (vae_kind == "int8" and conv_out == "nhwc")
    return "triton-affine" if fast and compiled_on_cuda else "native"


def use_group_norm(model: nn.Module, kind: str) -> int:
    """Every nn.GroupNorm of `model` computes as `kind` (GROUP_NORMS) from now on, in place (the class is
    swapped: parameters, buffers and state-dict keys stay as they are). Returns how many modules were switched."""
    if kind not in GROUP_NORMS:
        raise ValueError(f"group_norm={kind!r}, expected one of {GROUP_NORMS}")
    cls = _FORMS[kind]
    n = 0
    for m in model.modules():
        if isinstance(m, nn.GroupNorm) and type(m) in _FORMS.values():
            n += type(m) is not cls
            m.__class__ = cls
    return n
