"""GroupNorm written so that torch.compile spreads its statistics over the whole GPU (`--group_norm split`).

The SDXL VAE decoder normalises 4 x 128 x 1024 x 1024 tensors (1 GB in fp16) in 32 groups: PyTorch's GroupNorm,
as Inductor lowers it, is one reduction per (image, group) (128 rows of 8 M elements), far too few rows for 132
SMs; on the H200 a 4-image 1024 px FP16 image spent 71 ms in norm kernels (report section 1), several times what
reading and writing those tensors costs. `group_norm_split` computes the same statistics in two steps: mean and
variance per chunk of one channel (thousands of rows of ~16 K elements, a well-parallel reduction), then combined
per group exactly (equal counts: the group variance is the mean of the chunk variances plus the variance of the
chunk means, no E[x^2] - E[x]^2 cancellation). Everything is plain torch ops, so Inductor still fuses the
producer (conv bias, residual add) into both passes and the consumer (SiLU, the int8 decoder's activation
quantize) into the normalisation.

`use_group_norm(model, "split")` switches every nn.GroupNorm of a model (same parameters and state dict); "native"
switches back. The Runner's `group_norm="auto"` picks split for compiled execution on CUDA (measured:
results/groupnorm_*.csv) and leaves eager PyTorch (the numerical reference) native.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

GROUP_NORMS = ("auto", "native", "split", "split-decoder")  # split-decoder: the UNet's stay native
CHUNK = 16384  # target elements per partial-statistics row


def chunks_per_channel(hw: int, chunk: int = CHUNK) -> int:
    """The largest divisor of `hw` that is at most hw // chunk (at least 1): rows of >= `chunk` elements each."""
    most = max(1, hw // chunk)
    return next(s for s in range(most, 0, -1) if hw % s == 0)


def group_norm_split(x: torch.Tensor, groups: int, weight: torch.Tensor | None, bias: torch.Tensor | None,
                     eps: float, chunk: int = CHUNK) -> torch.Tensor:
    """F.group_norm(x, groups, weight, bias, eps) for a contiguous NC... tensor, statistics in float32 computed per
    chunk of a channel first, then combined per group."""
    n, c = x.shape[:2]
    hw = x[0, 0].numel()
    s = chunks_per_channel(hw, chunk)
    var, mean = torch.var_mean(x.reshape(n, c * s, hw // s).float(), dim=-1, correction=0)
    mean, var = mean.view(n, groups, -1), var.view(n, groups, -1)  # (n, groups, chunks of the group), equal counts
    group_mean = mean.mean(-1, keepdim=True)
    group_var = (var + (mean - group_mean).square()).mean(-1, keepdim=True)
    rstd = torch.rsqrt(group_var + eps)
    y = ((x.reshape(n, groups, -1).float() - group_mean) * rstd).view(x.shape)
    affine_shape = (1, c) + (1,) * (x.dim() - 2)
    if weight is not None:
        y = y * weight.float().view(affine_shape)
    if bias is not None:
        y = y + bias.float().view(affine_shape)
    return y.to(x.dtype)


class SplitGroupNorm(nn.GroupNorm):
    """nn.GroupNorm whose forward is group_norm_split (contiguous inputs; others take F.group_norm)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() < 3 or not x.is_contiguous():  # channels_last: the chunk rows would not be contiguous
            return F.group_norm(x, self.num_groups, self.weight, self.bias, self.eps)
        return group_norm_split(x, self.num_groups, self.weight, self.bias, self.eps)


def use_group_norm(model: nn.Module, kind: str) -> int:
    """Every nn.GroupNorm of `model` computes as `kind` ("split" or "native") from now on, in place (the class is
    swapped: parameters, buffers and state-dict keys stay as they are). Returns how many modules were switched."""
    if kind not in ("native", "split"):
        raise ValueError(f"group_norm={kind!r}, expected 'native' or 'split'")
    cls = SplitGroupNorm if kind == "split" else nn.GroupNorm
    n = 0
    for m in model.modules():
        if isinstance(m, nn.GroupNorm) and type(m) in (nn.GroupNorm, SplitGroupNorm):
            n += type(m) is not cls
            m.__class__ = cls
    return n


def group_norm_for(resolved: str, part: str) -> str:
    """The form a resolved --group_norm gives the `part` ("unet" or "decoder")."""
    return "split" if resolved == "split" or (resolved == "split-decoder" and part == "decoder") else "native"


def group_norm_kind(model: nn.Module) -> str:
    """"split", "native", "mixed" or "none": how the GroupNorms of `model` compute now."""
    kinds = {type(m) is SplitGroupNorm for m in model.modules() if isinstance(m, nn.GroupNorm)}
    return "none" if not kinds else "mixed" if len(kinds) == 2 else "split" if kinds == {True} else "native"


def resolve_group_norm(kind: str, compiled: bool, device: torch.device) -> str:
    """`auto` -> split for compiled code on CUDA, native otherwise (eager PyTorch stays the reference)."""
    if kind not in GROUP_NORMS:
        raise ValueError(f"group_norm={kind!r}, expected one of {GROUP_NORMS}")
    if kind == "auto":
        return "split" if compiled and torch.device(device).type == "cuda" else "native"
    return kind
