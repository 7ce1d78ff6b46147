"""Pure-torch, integer-exact reference of the kernel backend's math (the CPU fallback and the tests' oracle).

Conventions (the contract with qlayers.py):
- activations: q = clamp(round(x / s) + z, -2^(a-1), 2^(a-1)-1), computed in float32 with IEEE division (as
  qlayers' fake path and the Triton kernels do, so quantization is bit-identical);
- linear: y[m,n] = s * w_scale[n] * (sum_k q[m,k] q_w[n,k] - z * sum_k q_w[n,k]) + bias[n];
- conv: the same with padding taps holding q = z (x = 0), and with two K-parts, each with its own (s, z),
  where the input channels are split (`split`);
- BOS rows (token 0 of each sequence) of cross-attention K/V: x_bos @ (q_w * w_scale)^T + bias, unquantized input.
Integer sums are exact in float64 (|sum| < 2^53), so every reference here is exact before the final cast.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F


@dataclass(frozen=True)
class ActQuant:
    """Static per-tensor asymmetric activation quantizer, as plain numbers (read once, no device syncs later)."""
    scale: float
    zero: int
    bits: int

    @property
    def qmin(self) -> int:
        return -(1 << (self.bits - 1))

    @property
    def qmax(self) -> int:
        return (1 << (self.bits - 1)) - 1

    @classmethod
    def from_module(cls, aq) -> "ActQuant":
        """From a qlayers activation quantizer (.scale, .zero_point 0-dim tensors, .bits)."""
        return cls(float(aq.scale), int(round(float(aq.zero_point))), int(aq.bits))


def quantize_act(x: torch.Tensor, aq: ActQuant) -> torch.Tensor:
    """x (any float dtype) -> int8 codes, elementwise."""
    v = x.float() / torch.tensor(aq.scale, dtype=torch.float32)
    return (torch.round(v) + aq.zero).clamp(aq.qmin, aq.qmax).to(torch.int8)


def quantize_act_split(x: torch.Tensor, aq1: ActQuant, aq2: ActQuant | None, split: int | None) -> torch.Tensor:
    """NCHW input -> int8 codes, channels [0, split) with aq1 and [split, C) with aq2."""
    if split is None or aq2 is None:
        return quantize_act(x, aq1)
    return torch.cat([quantize_act(x[:, :split], aq1), quantize_act(x[:, split:], aq2)], dim=1)


def fake_quant(x: torch.Tensor, aq1: ActQuant, aq2: ActQuant | None = None, split: int | None = None) -> torch.Tensor:
    """Quantize-dequantize (x ~= (q - z) * s) in x's dtype; channel dim 1 when split."""
    q = quantize_act_split(x, aq1, aq2, split).double()
    if split is None or aq2 is None:
        out = (q - aq1.zero) * aq1.scale
    else:
        out = torch.cat([(q[:, :split] - aq1.zero) * aq1.scale, (q[:, split:] - aq2.zero) * aq2.scale], dim=1)
    return out.to(x.dtype)


def linear_int(q: torch.Tensor, w_int: torch.Tensor, w_scale: torch.Tensor, aq: ActQuant,
               bias: torch.Tensor | None) -> torch.Tensor:
    """Integer linear: q [..., K] int8, w_int [N, K] int8 -> float64 [..., N]."""
    acc = q.double() @ w_int.double().t()
    colsum = w_int.double().sum(dim=1)
    y = aq.scale * w_scale.double() * (acc - aq.zero * colsum)
    return y + bias.double() if bias is not None else y


def linear_wonly(x: torch.Tensor, w_int: torch.Tensor, w_scale: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """Unquantized input times the dequantized weight: x @ (q_w * w_scale)^T + bias, float64."""
    y = (x.double() @ w_int.double().t()) * w_scale.double()
    return y + bias.double() if bias is not None else y


def conv_int(q: torch.Tensor, w_int: torch.Tensor, w_scale: torch.Tensor, aq1: ActQuant, aq2: ActQuant | None,
             split: int | None, bias: torch.Tensor | None, stride, padding) -> torch.Tensor:
    """Integer conv: q [B, C, H, W] int8 codes, w_int [N, C, kh, kw] -> float64 [B, N, OH, OW].

    Computed on (q - z) with zero padding, which equals padding the codes with z (the contract's formula)."""
    parts = [(slice(None), aq1)] if split is None else [(slice(0, split), aq1), (slice(split, None), aq2)]
    y = 0.0
    for sl, aq in parts:
        xs = q[:, sl].double() - aq.zero
        y = y + aq.scale * F.conv2d(xs, w_int[:, sl].double(), stride=stride, padding=padding)
    y = y * w_scale.double().view(1, -1, 1, 1)
    return y + bias.double().view(1, -1, 1, 1) if bias is not None else y

