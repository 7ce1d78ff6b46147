"""Uniform quantizers: per-output-channel weights, static per-tensor activations, range search.

Conventions (shared with the CUDA kernels, see quant_utils/kernels):
- weights, symmetric: q in [-2^(b-1), 2^(b-1)-1], w ~= q * scale[n];
  asymmetric (fake-quant only): the same signed q with a per-channel zero point, w ~= (q - z[n]) * scale[n];
- activations: q = clamp(round(x / s) + z, -2^(a-1), 2^(a-1)-1), x ~= (q - z) * s, z an integer.
"""
from __future__ import annotations

import torch
from torch import nn

RANGE_METHODS = ("minmax", "percentile", "mse")
_CLIP_GRID = torch.linspace(0.3, 1.0, 15).tolist()  # clipping ratios tried by the MSE searches
_SAMPLE_CAP = 1 << 20                                 # activation values kept per quantizer for calibration
_PERCENTILE = 99.99


def qrange(bits: int) -> tuple[int, int]:
    return -(1 << (bits - 1)), (1 << (bits - 1)) - 1


_MAGIC = 1.5 * 2 ** 23  # adding and subtracting it rounds a float32 |v| < 2^22 half-to-even, like torch.round


def round_clamped(v: torch.Tensor, lo: float, hi: float) -> torch.Tensor:
    """torch.round(v).clamp(lo, hi) for float32 v.

    On the CPU torch.round is unvectorised and slow under thread contention (50x slower than
    floor on 2 busy cores); clamping first keeps |v| small enough for the exact magic-number rounding.
    """
    if v.is_cuda or v.dtype != torch.float32:
        return torch.round(v).clamp_(lo, hi)
    return (v.clamp(lo - 1, hi + 1) + _MAGIC - _MAGIC).clamp_(lo, hi)


def fake_quant(x: torch.Tensor, scale: torch.Tensor, zero_point: torch.Tensor, bits: int) -> torch.Tensor:
    """Quantize-dequantize with broadcasting scale/zero point."""
    qmin, qmax = qrange(bits)
    q = round_clamped(x / scale + zero_point, qmin, qmax)
    return (q - zero_point) * scale


def _affine_params(lo: torch.Tensor, hi: torch.Tensor, bits: int, symmetric: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Scale and integer zero point that map [lo, hi] onto the signed b-bit grid."""
    qmin, qmax = qrange(bits)
    if symmetric:
        scale = torch.maximum(lo.abs(), hi.abs()) / qmax
        return scale.clamp_min(1e-8), torch.zeros_like(scale)
    lo, hi = torch.minimum(lo, torch.zeros_like(lo)), torch.maximum(hi, torch.zeros_like(hi))
    scale = ((hi - lo) / (qmax - qmin)).clamp_min(1e-8)
    zero_point = torch.clamp(qmin - torch.round(lo / scale), qmin, qmax)
    return scale, zero_point


# --------------------------------------------------------------------------- weights
@torch.no_grad()
def weight_qparams(w: torch.Tensor, bits: int, symmetric: bool = True, method: str = "mse") -> tuple[torch.Tensor, torch.Tensor]:
    """Per-output-channel (dim 0) scale and zero point; `mse` searches the clipping ratio per channel."""
    if method not in ("minmax", "mse"):
        raise ValueError(f"weight range method {method!r}: expected minmax or mse")
    flat = w.detach().reshape(w.shape[0], -1).float()
    lo, hi = flat.min(dim=1).values, flat.max(dim=1).values
    if method == "minmax":
        return _affine_params(lo, hi, bits, symmetric)
    best_err = torch.full_like(lo, float("inf"))
    best_scale, best_zp = _affine_params(lo, hi, bits, symmetric)
    for ratio in _CLIP_GRID:
        scale, zp = _affine_params(lo * ratio, hi * ratio, bits, symmetric)
        err = (fake_quant(flat, scale[:, None], zp[:, None], bits) - flat).pow(2).mean(dim=1)
        better = err < best_err
        best_err = torch.where(better, err, best_err)
        best_scale, best_zp = torch.where(better, scale, best_scale), torch.where(better, zp, best_zp)
    return best_scale, best_zp


def quantize_weight(w: torch.Tensor, scale: torch.Tensor, zero_point: torch.Tensor, bits: int) -> torch.Tensor:
    """Integer weights (int8 storage) for per-channel scale/zero point."""
    qmin, qmax = qrange(bits)
    shape = (-1,) + (1,) * (w.dim() - 1)
    q = round_clamped(w.float() / scale.view(shape) + zero_point.view(shape), qmin, qmax)
    return q.to(torch.int8)


def dequantize_weight(q: torch.Tensor, scale: torch.Tensor, zero_point: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    shape = (-1,) + (1,) * (q.dim() - 1)
    return ((q.float() - zero_point.view(shape)) * scale.view(shape)).to(dtype)


# --------------------------------------------------------------------------- activations
class ActQuantizer(nn.Module):
    """Static per-tensor activation quantizer; calibrated by `observe` + `finish_calibration`."""

    def __init__(self, bits: int, method: str = "mse"):
        super().__init__()
        if method not in RANGE_METHODS:
            raise ValueError(f"activation range method {method!r}: expected one of {RANGE_METHODS}")
        self.bits, self.method = bits, method
        self.register_buffer("scale", torch.tensor(1.0))
        self.register_buffer("zero_point", torch.tensor(0.0))
        self.calibrated = False
        self._samples: list[torch.Tensor] = []
        self._lo, self._hi = float("inf"), float("-inf")

    def extra_repr(self) -> str:
        return f"bits={self.bits}, method={self.method}, scale={self.scale.item():.4g}, zero_point={self.zero_point.item():.0f}"

    @torch.no_grad()
    def observe(self, x: torch.Tensor) -> None:
        """Record the range and a random subsample of x (enough for percentile/MSE searches).

        The subsample is drawn from a generator seeded by the call's index, so quantizers that see the same inputs
        (an attention's q/k/v projections) keep the same values and calibrate to the same range: they can then share
        one GEMM exactly (quant_utils/fusion.py), and a calibration run repeats."""
        flat = x.detach().reshape(-1).float()
        self._lo, self._hi = min(self._lo, flat.min().item()), max(self._hi, flat.max().item())
        if self.method != "minmax":
            keep = max(1, _SAMPLE_CAP // 16)
            if flat.numel() > keep:
                gen = torch.Generator(device=flat.device).manual_seed(len(self._samples))
                flat = flat[torch.randint(flat.numel(), (keep,), device=flat.device, generator=gen)]
            self._samples.append(flat.cpu())

    @torch.no_grad()
    def finish_calibration(self) -> None:
        if self._lo == float("inf"):
            raise RuntimeError("activation quantizer saw no data during calibration")
        lo, hi = torch.tensor(self._lo), torch.tensor(self._hi)
        if self.method == "percentile":
            s = torch.cat(self._samples)
            lo, hi = torch.quantile(s, 1 - _PERCENTILE / 100), torch.quantile(s, _PERCENTILE / 100)
        scale, zp = _affine_params(lo, hi, self.bits, symmetric=False)
        if self.method == "mse":
            s = torch.cat(self._samples)
            s = s[torch.randperm(s.numel(), generator=torch.Generator().manual_seed(0))[:_SAMPLE_CAP]]
            best = float("inf")
            for ratio in _CLIP_GRID:
                sc, z = _affine_params(lo * ratio, hi * ratio, self.bits, symmetric=False)
                err = (fake_quant(s, sc, z, self.bits) - s).pow(2).mean().item()
                if err < best:
                    best, scale, zp = err, sc, z
        self.scale.copy_(scale)
        self.zero_point.copy_(zp)
        self.calibrated = True
        self._samples, self._lo, self._hi = [], float("inf"), float("-inf")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # in float32 like the kernels' quantize step, so fake and kernel round the same way
        return fake_quant(x.float(), self.scale, self.zero_point, self.bits).to(x.dtype)
