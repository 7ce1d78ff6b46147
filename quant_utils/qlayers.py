"""QuantLinear and QuantConv2d: one layer type, two backends behind one interface.

- `fake`: simulated quantization in floating point (any device): activations are quantized and
  dequantized, weights are the dequantized integers (computed once and cached).
- `kernel`: real low-bit CUDA kernels from `quant_utils.kernels` (packed weights, int8 GEMMs); on a
  CPU it falls back to `fake` with a warning. The layer asks `kernels.prepare` for its KernelState once, owns
  it, and frees the weight copies the kernels do not read.
"""
from __future__ import annotations

import warnings
from enum import StrEnum

import torch
import torch.nn.functional as F
from torch import nn

from . import kernels
from .quantizers import ActQuantizer, dequantize_weight, quantize_weight, weight_qparams


class Backend(StrEnum):
    """How a QuantLayer computes: `Backend("kernel")` parses the --backend flag; members equal their names."""
    FAKE = "fake"
    KERNEL = "kernel"

    @classmethod
    def for_device(cls, device: torch.device | str) -> "Backend":
        """The fastest backend a device runs: the kernels on CUDA, the fake-quant reference elsewhere."""
        return cls.KERNEL if torch.device(device).type == "cuda" else cls.FAKE


BACKENDS = tuple(b.value for b in Backend)


class QuantLayer(nn.Module):
    """A quantized nn.Linear / nn.Conv2d (see quant_utils/kernels' contract for the attributes)."""

    def __init__(self, orig: nn.Linear | nn.Conv2d, w_bits: int | None, a_bits: int | None, *,
                 w_symmetric: bool = True, w_method: str = "mse", a_method: str = "mse",
                 split: int | None = None, bos: bool = False):
        super().__init__()
        self.kind = "conv" if isinstance(orig, nn.Conv2d) else "linear"
        if self.kind == "conv":
            self.stride, self.padding, self.dilation, self.groups = orig.stride, orig.padding, orig.dilation, orig.groups
        self.in_features = orig.weight.shape[1]
        self.out_features = orig.weight.shape[0]
        self.weight = orig.weight
        self.weight_numel = orig.weight.numel()
        self.bias = orig.bias
        self.w_bits, self.a_bits = w_bits, a_bits
        self.w_symmetric, self.split, self.bos = w_symmetric, split, bos
        self.use_wq, self.use_aq, self.calibrating = True, True, False
        self.backend = Backend.FAKE
        self.kernel_state: kernels.KernelState | None = None  # built by prepare_kernels()
        self._w_fake: torch.Tensor | None = None
        if w_bits is not None and orig.weight.is_meta:  # structure only, filled later (a quantized folder)
            n = self.out_features
            self.register_buffer("w_scale", torch.empty(n, device="meta"))
            self.register_buffer("w_zero_point", torch.empty(n, device="meta"))
            self.register_buffer("w_int", torch.empty(orig.weight.shape, dtype=torch.int8, device="meta"))
        elif w_bits is not None:
            scale, zp = weight_qparams(orig.weight, w_bits, w_symmetric, w_method)
            self.register_buffer("w_scale", scale)
            self.register_buffer("w_zero_point", zp)
            self.register_buffer("w_int", quantize_weight(orig.weight, scale, zp, w_bits))
        self.act_quant = ActQuantizer(a_bits, a_method) if a_bits is not None else None
        self.act_quant2 = ActQuantizer(a_bits, a_method) if (a_bits is not None and split) else None

    def extra_repr(self) -> str:
        extra = (f", split={self.split}" if self.split else "") + (", bos" if self.bos else "")
        return f"{self.kind}, {self.in_features}->{self.out_features}, w_bits={self.w_bits}, a_bits={self.a_bits}{extra}, backend={self.backend}"

    # ------------------------------------------------------------------ weights
    def set_weight_qparams(self, scale: torch.Tensor, zero_point: torch.Tensor) -> None:
        """Install per-channel weight quantization params (e.g. from a checkpoint) and requantize."""
        self.w_scale.copy_(scale)
        self.w_zero_point.copy_(zero_point)
        self.w_int.copy_(quantize_weight(self.weight, self.w_scale, self.w_zero_point, self.w_bits))
        self._w_fake = None

    def drop_cached_weight(self) -> None:
        """Free the cached dequantized weight (it is rebuilt on the next fake-quant forward)."""
        self._w_fake = None

    def drop_fp_weight(self, dtype: torch.dtype) -> None:
        """Hold the integer codes only (a layer loaded from a quantized folder): no FP weight, dequantized on use.

        `w_dtype_ref`, an empty buffer, carries the compute dtype and follows .to()/.half() as a weight would."""
        self.weight = None
        self.register_buffer("w_dtype_ref", torch.empty(0, dtype=dtype, device=self.w_int.device), persistent=False)

    def effective_weight(self) -> torch.Tensor:
        if self.w_bits is None or not self.use_wq:
            if self.weight is None:
                raise RuntimeError("this layer holds no FP weight (prepared for the kernel backend, or loaded from a "
                                   "quantized folder): only weight-quantized runs work; load the FP16 model to switch "
                                   "weight quantization off")
            return self.weight
        if self.weight is None and not hasattr(self, "w_dtype_ref"):
            raise RuntimeError("this layer was prepared for the kernel backend (FP weights freed): only the fully "
                               "quantized state runs; reload the model to switch quantization off")
        dtype = self.weight.dtype if self.weight is not None else self.w_dtype_ref.dtype
        if self._w_fake is None or self._w_fake.device != self.w_int.device or self._w_fake.dtype != dtype:
            self._w_fake = dequantize_weight(self.w_int, self.w_scale, self.w_zero_point, dtype)
        return self._w_fake

    def _apply(self, fn, recurse=True):  # .to()/.half() invalidate the cached dequantized weight
        self._w_fake = None
        return super()._apply(fn, recurse)

    # ------------------------------------------------------------------ activations
    def quantize_input(self, x: torch.Tensor) -> torch.Tensor:
        if self.act_quant is None or not (self.use_aq or self.calibrating):
            return x
        if self.split:
            parts = (x[:, :self.split], x[:, self.split:])
            quants = (self.act_quant, self.act_quant2)
        elif self.bos and x.dim() == 3:
            parts, quants = (x[:, 1:],), (self.act_quant,)  # BOS token: excluded from the range, kept in FP
        else:
            parts, quants = (x,), (self.act_quant,)
        if self.calibrating:
            for part, q in zip(parts, quants):
                q.observe(part)
            return x
        out = [q(part) for part, q in zip(parts, quants)]
        if self.split:
            return torch.cat(out, dim=1)
        if self.bos and x.dim() == 3:
            return torch.cat([x[:, :1], out[0]], dim=1)
        return out[0]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.backend is Backend.KERNEL and not self.calibrating and self.use_wq and self.use_aq:
            return kernels.forward(self.kernel_state, x)
        x = self.quantize_input(x)
        w = self.effective_weight()
        if self.kind == "linear":
            return F.linear(x, w, self.bias)
        return F.conv2d(x, w, self.bias, self.stride, self.padding, self.dilation, self.groups)

    def storage_device(self) -> torch.device:
        return (self.w_int if self.w_bits is not None else self.weight).device

    def set_backend(self, backend: Backend | str, fp16_convs: frozenset = frozenset()) -> None:
        """`fp16_convs`: (C_in, C_out, k, stride) of convs the kernel backend keeps on cuDNN (kernels.plan)."""
        if backend not in BACKENDS:
            raise ValueError(f"backend {backend!r}: expected one of {BACKENDS}")
        backend = Backend(backend)
        if backend is Backend.KERNEL:
            if self.storage_device().type != "cuda":
                warnings.warn("kernel backend needs CUDA: falling back to the fake-quant reference on this device",
                              stacklevel=3)
                backend = Backend.FAKE
            else:
                self.prepare_kernels(fp16_convs=fp16_convs)
        self.backend = backend

    @torch.no_grad()
    def prepare_kernels(self, packed: tuple | None = None, fp16_convs: frozenset = frozenset()) -> None:
        """Build this layer's KernelState (once) and free the copies the kernels do not read: the FP weight, its bias,
        the cached dequantized weight and the unpacked integer weight (see kernels.unpacked_weight). `packed`: the
        weight already packed (bytes, format), e.g. from a quantized folder (kernels.prepare)."""
        if self.kernel_state is not None:
            return
        self.kernel_state = kernels.prepare(self, packed, fp16_convs)
        self.weight = None
        self.bias = None
        self._w_fake = None
        if self.w_bits is not None:  # the packed bytes (or the fp16 weight) now hold it
            self.w_int = torch.empty(0, dtype=torch.int8, device=self.w_int.device)

    def kernel_tensors(self) -> list[torch.Tensor]:
        """The device tensors of the kernel state (packed weights, scales, epilogue constants); none before
        prepare_kernels. With parameters() and buffers(), everything the layer holds on its device."""
        return self.kernel_state.tensors() if self.kernel_state is not None else []
