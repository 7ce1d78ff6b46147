"""The kernels as torch custom ops (`torch.ops.mixdq.*`), so CUDA graphs and torch.compile treat each as one opaque op.

Each op has a fake (meta) implementation for tracing. Under torch.compile the backend does not call the
quantize ops but their plain-torch equivalents below (`*_torch`), bit-identical to the Triton kernels, so
Inductor can fuse the quantization into the kernel that produces the activation (LayerNorm, GELU, SiLU...).
"""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor

from . import launch
from . import triton_kernels as tk

# ----------------------------------------------------------------------------------------------- quantize


@torch.library.custom_op("mixdq::quant", mutates_args=())
def quant(x: Tensor, scale: float, zero: int, qmin: int, qmax: int) -> Tensor:
    """int8 codes clamp(round(x / s) + z, qmin, qmax), same shape as x."""
    return tk.quant_flat(x, scale, zero, qmin, qmax)


@quant.register_fake
def _(x, scale, zero, qmin, qmax):
    return torch.empty(x.shape, dtype=torch.int8, device=x.device)


@torch.library.custom_op("mixdq::quant_nhwc", mutates_args=())
def quant_nhwc(x: Tensor, split: int, pad: int, s1: float, z1: int, lo1: int, hi1: int,
               s2: float, z2: int, lo2: int, hi2: int) -> Tensor:
    """NCHW -> zero-padded NHWC int8 codes (channels >= split use the second quantizer)."""
    return tk.quant_nchw_to_nhwc(x, split, (s1, z1, lo1, hi1), (s2, z2, lo2, hi2), pad)


@quant_nhwc.register_fake
def _(x, split, pad, s1, z1, lo1, hi1, s2, z2, lo2, hi2):
    b, c, h, w = x.shape
    return torch.empty((b, h + 2 * pad, w + 2 * pad, c), dtype=torch.int8, device=x.device)


@torch.library.custom_op("mixdq::fake_quant", mutates_args=())
def fake_quant(x: Tensor, split: int, s1: float, z1: int, lo1: int, hi1: int,
               s2: float, z2: int, lo2: int, hi2: int) -> Tensor:
    """(q - z) * s in x's dtype, one pass (channel dim 1 holds the split)."""
    return tk.fake_quant(x, split, (s1, z1, lo1, hi1), (s2, z2, lo2, hi2))


@fake_quant.register_fake
def _(x, split, s1, z1, lo1, hi1, s2, z2, lo2, hi2):
    return torch.empty_like(x)


# ----------------------------------------------------------------------------------------------- GroupNorm statistics


def spatial_strides(x: Tensor) -> tuple[int, int, int] | None:
    """(s_n, s_c, s_p) when x's spatial dims (2:) collapse into one strided dim P (NCHW contiguous, channels_last);
    else None."""
    dims = [(size, stride) for size, stride in zip(x.shape[2:], x.stride()[2:]) if size != 1]
    for (_, outer), (size, inner) in zip(dims, dims[1:]):
        if outer != inner * size:
            return None
    return x.stride(0), x.stride(1), dims[-1][1] if dims else 1


# The GroupNorm ops read any layout (spatial_strides; a copy only for non-collapsible strides), so they tell Inductor
# so: under its default constraint for custom ops an input must keep its eager strides, and in a compiled decoder
# whose convolutions Inductor runs channels_last that meant a transposing copy to NCHW before every GroupNorm.
FLEXIBLE_LAYOUT = (torch.Tag.flexible_layout,)


@torch.library.custom_op("mixdq::channel_moments", mutates_args=(), tags=FLEXIBLE_LAYOUT)
def channel_moments(x: Tensor) -> tuple[Tensor, Tensor]:
    """Per (image, channel, chunk of pixels): (mean, M2) in float32, [N, C, n_chunks] (triton_kernels)."""
    strides = spatial_strides(x)
    if strides is None:
        x = x.contiguous()
        strides = spatial_strides(x)
    return tk.channel_moments_partials(x, *strides)


@channel_moments.register_fake
def _(x):
    n, c = (int(d) for d in x.shape[:2])  # (specialises symbolic sizes: one launch shape per bucket)
    p = int(x.numel() // (n * c))
    chunk = tk.moments_config(n, c, p)[2]
    shape = (n, c, (p + chunk - 1) // chunk)
    return x.new_empty(shape, dtype=torch.float32), x.new_empty(shape, dtype=torch.float32)


@torch.library.custom_op("mixdq::group_affine", mutates_args=(), tags=FLEXIBLE_LAYOUT)
def group_affine(x: Tensor, groups: int, weight: Optional[Tensor], bias: Optional[Tensor],
                 eps: float) -> tuple[Tensor, Tensor]:
    """GroupNorm's per-(image, channel) scale and shift, float32 [N, C] (triton_kernels.group_affine): one op, so a
    compiled graph's normalize kernel only reads them."""
    strides = spatial_strides(x)
    if strides is None:
        x = x.contiguous()
        strides = spatial_strides(x)
    return tk.group_affine(x, groups, weight, bias, eps, *strides)


@group_affine.register_fake
def _(x, groups, weight, bias, eps):
    shape = tuple(x.shape[:2])
    return x.new_empty(shape, dtype=torch.float32), x.new_empty(shape, dtype=torch.float32)


@torch.library.custom_op("mixdq::norm_act_quant", mutates_args=(), tags=FLEXIBLE_LAYOUT)
def norm_act_quant(x: Tensor, scale: Optional[Tensor], shift: Optional[Tensor], silu: bool, up: int, pad: int,
                   s: float, z: int, lo: int, hi: int) -> Tensor:
    """(N, C, H, W) fp16, any layout -> padded NHWC int8 codes of quantize(silu(x * scale + shift)), upsampled `up`x
    (nearest): an int8 conv's input after a GroupNorm (+ SiLU) or an upsample, in one pass (triton_kernels)."""
    return tk.norm_act_quant(x, scale, shift, silu, up, pad, (s, z, lo, hi))


@norm_act_quant.register_fake
def _(x, scale, shift, silu, up, pad, s, z, lo, hi):
    b, c, h, w = x.shape
    return torch.empty((b, h * up + 2 * pad, w * up + 2 * pad, c), dtype=torch.int8, device=x.device)


# ----------------------------------------------------------------------------------------------- GEMM / conv


def _aligned(x: Tensor, rows_may_stride: bool = False) -> Tensor:
    """x itself when the kernels can read it (16-byte aligned, contiguous, or for a GEMM input unit-stride rows
    16-byte apart), else a contiguous copy: a compiled graph may hand a custom op a permuted or offset view."""
    ok = x.data_ptr() % 16 == 0 and (x.is_contiguous() or (
        rows_may_stride and x.stride(-1) == 1 and all(s % 16 == 0 for s in x.stride()[:-1])))
    return x if ok else x.clone(memory_format=torch.contiguous_format)


@torch.library.custom_op("mixdq::qlinear", mutates_args=())
def qlinear(a: Tensor, w: Tensor, scale: Tensor, zc: Optional[Tensor], bias: Optional[Tensor],
            bits: int, group: int, n: int) -> Tensor:
    """[M, K] int8 codes (or fp16 with zc None) x packed weight -> [M, n] fp16, fused epilogue."""
    return launch.linear(_aligned(a, rows_may_stride=True), w, scale, zc, bias, bits, group, n)


@qlinear.register_fake
def _(a, w, scale, zc, bias, bits, group, n):
    return torch.empty((a.shape[0], n), dtype=torch.float16, device=a.device)


@torch.library.custom_op("mixdq::qconv", mutates_args=())
def qconv(x_pad: Tensor, w: Tensor, scale1: Tensor, zc1: Tensor, scale2: Optional[Tensor], zc2: Optional[Tensor],
          bias: Optional[Tensor], bits: int, group: int, n: int, c1: int, kh: int, kw: int, stride: int,
          pad: int, channels_last: bool = False, residual: Optional[Tensor] = None, out_scale: float = 1.0,
          subpixel: bool = False) -> Tensor:
    """Padded NHWC int8 codes -> NCHW fp16 conv output (implicit GEMM, fused epilogue), in channels_last memory
    with `channels_last`; (conv + residual) * out_scale with a `residual`; `subpixel`: a nearest 2x upsample + 3x3
    conv computed as four 2x2 phase convs of the input (tk.qconv)."""
    return launch.conv(_aligned(x_pad), w, scale1, zc1, scale2, zc2, bias, bits, group, n, c1, kh, kw, stride, pad,
                       channels_last=channels_last, residual=residual, out_scale=out_scale, subpixel=subpixel)


@qconv.register_fake
def _(x_pad, w, scale1, zc1, scale2, zc2, bias, bits, group, n, c1, kh, kw, stride, pad, channels_last=False,
      residual=None, out_scale=1.0, subpixel=False):
    b, hp, wp, _ = x_pad.shape
    return torch.empty((b, n, *tk.conv_out_hw(hp, wp, kh, kw, stride, subpixel)), dtype=torch.float16,
                       device=x_pad.device,
                       memory_format=torch.channels_last if channels_last else torch.contiguous_format)


# ----------------------------------------------------------------------------------------------- plain torch twins


def _codes(v: Tensor, scale, zero, qmin, qmax) -> Tensor:
    # same arithmetic as the Triton kernels: float32 division, round half to even, clamp; the parameters are
    # numbers or 0-d float32 tensors (the compiled path: one Inductor kernel for every layer of a shape)
    return torch.clamp(torch.round(v.float() / scale) + zero, qmin, qmax)


def quant_torch(x: Tensor, scale, zero, qmin, qmax) -> Tensor:
    return _codes(x, scale, zero, qmin, qmax).to(torch.int8)


def _per_channel(c: int, split: int, p1, p2, device) -> list[Tensor]:
    first = torch.arange(c, device=device) < split
    return [torch.where(first, torch.as_tensor(a, dtype=torch.float32, device=device),
                        torch.as_tensor(b, dtype=torch.float32, device=device)) for a, b in zip(p1, p2)]


def quant_nhwc_torch(x: Tensor, split: int, pad: int, p1, p2) -> Tensor:
    """Plain-torch twin of quant_nhwc (x NCHW; p = (scale, zero, qmin, qmax), numbers or 0-d tensors)."""
    xs = x.permute(0, 2, 3, 1)
    if split >= x.shape[1]:
        s, z, lo, hi = p1
    else:
        s, z, lo, hi = _per_channel(x.shape[1], split, p1, p2, x.device)
    q = torch.clamp(torch.round(xs.float() / s) + z, lo, hi)
    if pad:  # border = each channel's zero point (the code of x = 0)
        q = F.pad(q - z, (0, 0, pad, pad, pad, pad)) + z
    return q.to(torch.int8).contiguous()


def norm_act_quant_torch(x: Tensor, scale: Optional[Tensor], shift: Optional[Tensor], silu: bool, up: int, pad: int,
                         p: tuple) -> Tensor:
    """Plain-torch twin of norm_act_quant (x fp16 NCHW; scale/shift float32 [N, C] or None; p = (s, z, lo, hi)),
    rounded to fp16 after each step as the unfused modules compute."""
    if scale is not None:
        x = (x.float() * scale[:, :, None, None] + shift[:, :, None, None]).half()
    if silu:
        x = F.silu(x.float()).half()
    if up > 1:
        x = F.interpolate(x, scale_factor=up, mode="nearest")
    return quant_nhwc_torch(x, x.shape[1], pad, p, p)


def fake_quant_torch(x: Tensor, split: int, p1, p2) -> Tensor:
    """Plain-torch twin of fake_quant (channel dim 1 holds the split; p = (scale, zero, qmin, qmax))."""
    if x.dim() < 2 or split >= x.shape[1]:
        s, z, lo, hi = p1
        return ((_codes(x, s, z, lo, hi) - z) * s).to(x.dtype)
    s, z, lo, hi = (t.view(1, -1, *([1] * (x.dim() - 2))) for t in _per_channel(x.shape[1], split, p1, p2, x.device))
    q = torch.clamp(torch.round(x.float() / s) + z, lo, hi)
    return ((q - z) * s).to(x.dtype)
