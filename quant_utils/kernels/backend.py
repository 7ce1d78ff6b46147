"""The kernel backend of QuantLayer: per-layer state built once (`prepare`), the forward pass, the weight bytes.

A prepared layer runs in one of three modes (KernelState.mode):
- `int`:   activations quantized to int8 codes (one fused pass; under torch.compile plain torch ops that
           Inductor fuses into the producer), packed 8/6/4/2-bit weights, int8 tensor-core GEMM or
           implicit-GEMM conv with the dequantization, zero-point correction and bias in the epilogue;
           BOS rows of cross-attention K/V go through the same kernel with fp16 input.
- `wonly`: linear with protected (FP16) activations: fp16 input x the same packed weights (A_FP16 kernel).
- `fp16`:  cuBLAS/cuDNN with the dequantized weight kept in fp16 (activations fake-quantized in one pass
           when the layer quantizes them): FP16-weight layers, asymmetric weights, convs with a protected
           input, convs that the FP16 policy (`FP16_CONVS`) keeps on cuDNN, and shapes the kernels don't take.
On the CPU (no CUDA) `forward` computes the integer reference (reference.py) instead, with a warning,
unless TRITON_INTERPRET=1 (then the Triton kernels themselves run on the CPU, for tests).
"""
from __future__ import annotations

import os
import warnings
import weakref
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from . import packing
from . import reference as ref

# Convs kept on cuDNN fp16 (dequantized weights): (in_channels, out_channels, kernel, stride) where the
# measured int8 kernel was slower than cuDNN on the H100 (see results/kernels_notes.md); edit with care.
FP16_CONVS: set[tuple[int, int, int, int]] = set()


@dataclass
class KernelState:
    mode: str                                  # int | wonly | fp16
    kind: str                                  # linear | conv
    n: int
    shape: tuple                               # original weight shape
    bits: int | None = None                    # storage format
    fmt: packing.PackedFormat | None = None
    packed: torch.Tensor | None = None
    w_scale: torch.Tensor | None = None        # float32 [N]
    scale1: torch.Tensor | None = None         # s1 * w_scale (float32 [N])
    zc1: torch.Tensor | None = None            # z1 * colsum over segment 1 (int32 [N])
    scale2: torch.Tensor | None = None
    zc2: torch.Tensor | None = None
    bias: torch.Tensor | None = None           # float32 [N]
    bias16: torch.Tensor | None = None         # fp16 bias for the fp16 mode
    fp16_weight: torch.Tensor | None = None
    act1: ref.ActQuant | None = None
    act2: ref.ActQuant | None = None
    split: int | None = None
    bos: bool = False
    stride: int = 1
    pad: int = 0
    why: str = ""                              # why a layer is not in `int` mode
    # (scale, zero, qmin, qmax) of act1 then act2 (act1 again when there is none), float32 [8] on the device:
    # under torch.compile the quantize ops read these instead of Python numbers, so a compiled block never bakes
    # a layer's numbers in as constants, whatever dynamo's specialization settings (with torch 2.14's defaults
    # plain numbers also share graphs: tests/test_kernels.py, compiled regions)
    qt: torch.Tensor | None = None
    extra: dict = field(default_factory=dict)

    def tensors(self) -> list[torch.Tensor]:
        return [t for t in (self.packed, self.w_scale, self.scale1, self.zc1, self.scale2, self.zc2, self.bias,
                            self.bias16, self.fp16_weight, self.qt) if t is not None]

    def qparams(self, which: int) -> tuple:
        a = self.act1 if which == 1 or self.act2 is None else self.act2
        return (a.scale, a.zero, a.qmin, a.qmax)


@dataclass(frozen=True)
class Plan:
    """What prepare() will do with a layer, decided from its shapes and bits alone (no weights needed)."""
    mode: str                 # int | wonly | fp16
    why: str                  # why not int ('' when int)
    bits: int | None = None   # packed storage format
    group: int | None = None  # K-group size of the packed format
    seg: tuple = ()           # input-channel segments (conv split) or (K,) for a linear


def plan(layer) -> Plan:
    """Mode and packed format for anything with the contract's attributes (a QuantLayer, or a namespace with
    kind, w_bits, a_bits, split, in_features, out_features, weight_shape, and for convs stride/padding/groups/dilation)."""
    if layer.w_bits is None:
        return Plan("fp16", "fp16 weights")
    zp = getattr(layer, "w_zero_point", None)
    if zp is not None and zp.numel() and bool((zp != 0).any()):
        return Plan("fp16", "asymmetric weights")
    c_in, n = layer.in_features, layer.out_features
    split = layer.split if layer.a_bits is not None and layer.split else None
    why = ""
    if layer.kind == "conv":
        shape = tuple(getattr(layer, "weight_shape", None) or layer.w_int.shape)
        if layer.groups != 1 or tuple(layer.dilation) != (1, 1):
            why = "grouped/dilated conv"
        elif isinstance(layer.padding, str) or len(set(layer.stride)) != 1 or len(set(layer.padding)) != 1:
            why = "non-square stride/padding"
        elif c_in % 16 or (split and split % 16) or n % 8:
            why = "channels not multiples of 16 (in) / 8 (out)"
        elif (c_in, n, shape[2], layer.stride[0]) in FP16_CONVS:
            why = "FP16_CONVS policy (cuDNN faster)"
        elif layer.a_bits is None:
            why = "protected input (conv)"
        seg = (c_in,) if split is None else (split, c_in - split)
    else:
        if c_in % 16 or n % 8:
            why = "K not a multiple of 16 or N not a multiple of 8"
        seg = (c_in,)
    if why:
        return Plan("fp16", why)
    bits = packing.storage_bits(layer.w_bits)
    return Plan("int" if layer.a_bits is not None else "wonly", "", bits, packing.group_size(bits, list(seg)), seg)


@torch.no_grad()
def prepare(layer, packed: tuple[torch.Tensor, packing.PackedFormat] | None = None) -> None:
    """Build layer.kernel_state (packed weights, epilogue constants) and free the FP/int8 weight copies.

    `packed`: the weight already packed as this layer's plan stores it (bytes on the layer's device, format), e.g.
    read from a quantized model folder; used as is instead of packing `w_int` again (`w_int` must still hold the
    codes: the epilogue's column sums and the fp16 mode read them)."""
    if getattr(layer, "kernel_state", None) is not None:
        return
    dev = layer.w_int.device if layer.w_bits is not None else layer.weight.device
    pl = plan(layer)
    st = KernelState(mode=pl.mode, kind=layer.kind, n=layer.out_features, why=pl.why,
                     shape=tuple((layer.w_int if layer.w_bits is not None else layer.weight).shape))
    if layer.kind == "conv":
        st.stride, st.pad = int(layer.stride[0]), int(layer.padding[0])
    if layer.a_bits is not None:
        st.act1 = ref.ActQuant.from_module(layer.act_quant)
        st.act2 = ref.ActQuant.from_module(layer.act_quant2) if layer.act_quant2 is not None else None
        st.split = layer.split if st.act2 is not None else None
        st.qt = torch.tensor(st.qparams(1) + st.qparams(2), dtype=torch.float32, device=dev)
    st.bos = bool(layer.bos) and layer.kind == "linear" and st.act1 is not None
    if st.mode == "fp16":
        if layer.w_bits is None:
            st.fp16_weight = layer.weight.detach().half()
        else:  # dequantized, exactly as the fake path computes it
            shape = (-1,) + (1,) * (layer.w_int.dim() - 1)
            zp = layer.w_zero_point.view(shape) if getattr(layer, "w_zero_point", None) is not None else 0
            st.fp16_weight = ((layer.w_int.float() - zp) * layer.w_scale.view(shape)).half()
        st.bias16 = layer.bias.detach().half() if layer.bias is not None else None
    else:
        _pack(st, layer, layer.bias.detach().float() if layer.bias is not None else None, dev, packed)
    layer.kernel_state = st
    # free the copies the kernels don't read: the FP weight, its bias, and the unpacked int8 weight
    layer.weight = None
    layer.bias = None
    if hasattr(layer, "_w_fake"):
        layer._w_fake = None  # qlayers' cached dequantized weight
    if layer.w_bits is not None:  # the packed bytes (or the fp16 weight) now hold it; see unpacked_weight()
        layer.w_int = torch.empty(0, dtype=torch.int8, device=dev)


def _pack(st: KernelState, layer, bias: torch.Tensor | None, dev, packed: tuple | None = None) -> None:
    q_w = layer.w_int
    st.bits = packing.storage_bits(layer.w_bits)
    if packed is None:
        packed, st.fmt = packing.pack_weight(q_w, st.bits, st.split)  # on the layer's device
    else:
        packed, st.fmt = packed
        pl = plan(layer)
        if (st.fmt.bits, st.fmt.group) != (st.bits, pl.group) or packed.shape[0] != st.n:
            raise ValueError(f"packed weight ({st.fmt}, {tuple(packed.shape)}) is not this layer's format "
                             f"({st.bits} bits, group {pl.group}, {st.n} rows)")
    st.packed = packed.to(dev)
    st.w_scale = layer.w_scale.detach().float().to(dev).contiguous()
    # always a bias (zeros when the layer has none): one compiled kernel variant fewer per tile config
    st.bias = bias.to(dev).contiguous() if bias is not None else torch.zeros(st.n, device=dev)
    if st.mode != "int":
        return
    w64 = q_w.to(torch.int64).reshape(q_w.shape[0], q_w.shape[1], -1)  # [N, C, taps]
    parts = [(st.act1, w64 if st.split is None else w64[:, :st.split])]
    if st.split is not None:
        parts.append((st.act2, w64[:, st.split:]))
    for i, (aq, w) in enumerate(parts, start=1):
        colsum = w.sum(dim=(1, 2))
        setattr(st, f"scale{i}", (st.w_scale.double() * aq.scale).float().contiguous())
        setattr(st, f"zc{i}", (colsum * aq.zero).to(torch.int32).to(dev).contiguous())


def unpacked_weight(layer) -> torch.Tensor:
    """The int8 weight [N, K] / [N, C, kh, kw] of a prepared layer, rebuilt from its packed bytes."""
    st = layer.kernel_state
    if st.packed is None:
        raise ValueError("this layer keeps an fp16 weight, not packed integers")
    return packing.unpack_weight(st.packed.cpu(), st.fmt, st.shape, st.split).to(st.packed.device)


def weight_bytes(layer) -> int:
    """Bytes of this layer's weights on the device in kernel mode (packed + scales + epilogue constants + bias)."""
    st = getattr(layer, "kernel_state", None)
    if st is None:
        raise ValueError("layer not prepared for the kernel backend")
    return sum(t.numel() * t.element_size() for t in st.tensors())


# ----------------------------------------------------------------------------------------------- forward

_warned = False


def _use_triton(x: torch.Tensor) -> bool:
    return x.is_cuda or os.environ.get("TRITON_INTERPRET") == "1"  # interpreter: the kernels run on the CPU


def forward(layer, x: torch.Tensor) -> torch.Tensor:
    """The layer's output (fp16) through the kernels; the integer reference on a CPU."""
    if getattr(layer, "kernel_state", None) is None:
        prepare(layer)
    st = layer.kernel_state
    if not _use_triton(x):
        global _warned
        if not _warned:
            warnings.warn("kernel backend on a CPU: computing the integer reference instead of the CUDA kernels",
                          stacklevel=2)
            _warned = True
        return reference_forward(layer, x)
    from . import ops

    if st.mode == "fp16":
        return _fp16_forward(st, x.half(), ops)
    if st.kind == "linear":
        return _linear_forward(st, x, ops)
    return _conv_forward(st, x, ops)


def _compiling() -> bool:
    return torch.compiler.is_compiling()


def _fp16_forward(st: KernelState, x: torch.Tensor, ops) -> torch.Tensor:
    if st.act1 is not None:
        if st.bos and x.dim() == 3:
            xq = _fake_quant(st, x[:, 1:], ops)
            x = torch.cat([x[:, :1], xq], dim=1)
        else:
            x = _fake_quant(st, x, ops)
    if st.kind == "linear":
        return F.linear(x, st.fp16_weight, st.bias16)
    return F.conv2d(x, st.fp16_weight, st.bias16, st.stride, st.pad)


def _fake_quant(st: KernelState, x: torch.Tensor, ops) -> torch.Tensor:
    split = st.split if st.split is not None else 1 << 30
    if _compiling():
        return ops.fake_quant_torch(x, split, st.qt[:4], st.qt[4:])
    return ops.fake_quant(x.contiguous(), split, *st.qparams(1), *st.qparams(2))


def _linear_forward(st: KernelState, x: torch.Tensor, ops) -> torch.Tensor:
    lead, k = x.shape[:-1], x.shape[-1]
    x2 = x.reshape(-1, k).half()
    if st.mode == "wonly":
        y = ops.qlinear(x2, st.packed, st.w_scale, None, st.bias, st.bits, st.fmt.group, st.n)
        return y.reshape(*lead, st.n)
    if _compiling():  # contiguous: Inductor may lay a pointwise output out like its (permuted) input
        q = ops.quant_torch(x2, *st.qt[:4]).contiguous()
    else:
        q = _quantize_once(x, x2, st.qparams(1), ops)
    y = ops.qlinear(q, st.packed, st.scale1, st.zc1, st.bias, st.bits, st.fmt.group, st.n)
    y = y.reshape(*lead, st.n)
    if st.bos and x.dim() == 3:  # token 0 of each sequence: fp16 input through the same packed weights
        y_bos = ops.qlinear(x[:, 0, :].half(), st.packed, st.w_scale, None, st.bias, st.bits, st.fmt.group, st.n)
        y = torch.cat([y_bos.unsqueeze(1), y[:, 1:]], dim=1)
    return y


_last_codes: tuple | None = None  # (weakref to the input, its version, quant params, int8 codes)


def _quantize_once(x: torch.Tensor, x2: torch.Tensor, p: tuple, ops) -> torch.Tensor:
    """The int8 codes of x, reused when the previous layer quantized the same tensor with the same parameters
    (attention's to_q/to_k/to_v read one input: one quantize pass instead of three). The input is held by a
    weak reference and its version counter, so a freed or modified tensor never matches."""
    global _last_codes
    if _last_codes is not None:
        ref_, version, params, q = _last_codes
        if ref_() is x and x._version == version and params == p:
            return q
    q = ops.quant(x2.contiguous(), *p)
    _last_codes = (weakref.ref(x), x._version, p, q)
    return q


def _conv_forward(st: KernelState, x: torch.Tensor, ops) -> torch.Tensor:
    c = x.shape[1]
    split = st.split if st.split is not None else c
    x = x.half()
    if _compiling():
        q = ops.quant_nhwc_torch(x, split, st.pad, st.qt[:4], st.qt[4:])
    else:
        q = ops.quant_nhwc(x.contiguous(), split, st.pad, *st.qparams(1), *st.qparams(2))
    kh, kw = st.shape[2], st.shape[3]
    return ops.qconv(q, st.packed, st.scale1, st.zc1, st.scale2, st.zc2, st.bias, st.bits, st.fmt.group, st.n,
                     split, kh, kw, st.stride, st.pad)


# ----------------------------------------------------------------------------------------------- CPU reference


def reference_forward(layer, x: torch.Tensor) -> torch.Tensor:
    """The integer reference of the layer's kernel-mode output (float64 math, cast to x's dtype)."""
    st = layer.kernel_state
    if st.mode == "fp16":
        xf = x
        if st.act1 is not None:
            if st.bos and x.dim() == 3:
                xf = torch.cat([x[:, :1], ref.fake_quant(x[:, 1:], st.act1)], dim=1)
            else:
                xf = ref.fake_quant(x, st.act1, st.act2, st.split)
        w = st.fp16_weight.to(x.dtype)
        b = st.bias16.to(x.dtype) if st.bias16 is not None else None
        return F.linear(xf, w, b) if st.kind == "linear" else F.conv2d(xf, w, b, st.stride, st.pad)
    w_int = packing.unpack_weight(st.packed.cpu(), st.fmt, st.shape, st.split).to(x.device)
    if st.kind == "linear":
        if st.mode == "wonly":
            return ref.linear_wonly(x, w_int, st.w_scale, st.bias).to(x.dtype)
        y = ref.linear_int(ref.quantize_act(x, st.act1), w_int, st.w_scale, st.act1, st.bias)
        if st.bos and x.dim() == 3:
            y[:, 0] = ref.linear_wonly(x[:, 0], w_int, st.w_scale, st.bias)
        return y.to(x.dtype)
    q = ref.quantize_act_split(x, st.act1, st.act2, st.split)
    return ref.conv_int(q, w_int, st.w_scale, st.act1, st.act2, st.split, st.bias, st.stride, st.pad).to(x.dtype)
