"""The kernel backend of QuantLayer: a layer's state built once (`prepare`), the forward pass, the weight bytes.

The contract, one way: qlayers.QuantLayer calls `prepare(layer)`, which reads the layer (the attributes LayerSpec.of
lists, plus w_int, w_scale, w_zero_point, weight, bias, act_quant, act_quant2) and returns a KernelState; the layer
owns that state (and frees its own FP weights), and calls `forward(state, x)`. `plan(spec)` decides from shapes and
bits alone what prepare will do, so a benchmark can ask it with a LayerSpec and no weights.

A prepared layer runs on one of three paths (KernelState.path):
- `int`:   activations quantized to int8 codes (one fused pass; under torch.compile plain torch ops that
           Inductor fuses into the producer), packed 8/6/4/2-bit weights, int8 tensor-core GEMM or
           implicit-GEMM conv with the dequantization, zero-point correction and bias in the epilogue;
           BOS rows of cross-attention K/V go through the same kernel with fp16 input.
- `wonly`: linear with protected (FP16) activations: fp16 input x the same packed weights (A_FP16 kernel).
- `fp16`:  cuBLAS/cuDNN with the dequantized weight kept in fp16 (activations fake-quantized in one pass
           when the layer quantizes them): FP16-weight layers, asymmetric weights, convs with a protected
           input, convs a caller keeps on cuDNN (`fp16_convs`), and shapes the kernels don't take.
A bucket may send an `int`/`wonly` layer down another path for one input size (KernelState.bucket_paths, measured
by quant_utils/layer_plan.py where its kernel loses at that size): `wonly` for an int linear (the same packed weight,
fp16 activations, one launch even with BOS rows) or `dense` (the dequantized weight kept in fp16 beside the packed
one, cuBLAS/cuDNN, activations not quantized). Under torch.compile with static shapes the choice is resolved while
tracing.
On the CPU (no CUDA) `forward` computes the integer reference (reference.py) instead, with a warning,
unless TRITON_INTERPRET=1 (then the Triton kernels themselves run on the CPU, for tests).
"""
from __future__ import annotations

import itertools
import os
import warnings
import weakref
from dataclasses import dataclass, replace
from typing import Callable

import torch
import torch.nn.functional as F

from . import packing
from . import reference as ref

# Convs a caller may keep on cuDNN fp16 (dequantized weights), e.g. where bench_kernels --fp16_convs auto measured
# the int8 kernel slower than cuDNN: (in_channels, out_channels, kernel, stride).
ConvKey = tuple[int, int, int, int]


@dataclass(frozen=True)
class LayerSpec:
    """What plan() needs of a layer: kind, shapes and bits (no weights). `LayerSpec.of(layer)` reads a QuantLayer;
    a benchmark builds one from a recorded layer call."""
    kind: str                              # linear | conv
    in_features: int
    out_features: int
    weight_shape: tuple[int, ...]
    w_bits: int | None
    a_bits: int | None
    split: int | None = None               # input channel where a conv's second activation quantizer starts
    bos: bool = False                      # cross-attention K/V: token 0 of each sequence stays unquantized
    stride: tuple[int, int] = (1, 1)
    padding: tuple[int, int] | str = (0, 0)
    dilation: tuple[int, int] = (1, 1)
    groups: int = 1
    asymmetric: bool = False               # weights with non-zero zero points

    @classmethod
    def of(cls, layer) -> "LayerSpec":
        zp = getattr(layer, "w_zero_point", None) if layer.w_bits is not None else None
        weight = layer.w_int if layer.w_bits is not None else layer.weight
        conv = dict(stride=tuple(layer.stride), padding=layer.padding if isinstance(layer.padding, str) else
                    tuple(layer.padding), dilation=tuple(layer.dilation), groups=layer.groups) if layer.kind == "conv" else {}
        return cls(layer.kind, layer.in_features, layer.out_features, tuple(weight.shape), layer.w_bits, layer.a_bits,
                   layer.split if layer.a_bits is not None and layer.split else None, bool(layer.bos),
                   asymmetric=zp is not None and zp.numel() > 0 and bool((zp != 0).any()), **conv)


@dataclass
class KernelState:
    path: str                                  # int | wonly | fp16
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
    bias16: torch.Tensor | None = None         # fp16 bias for the fp16 path
    fp16_weight: torch.Tensor | None = None
    act1: ref.ActQuant | None = None
    act2: ref.ActQuant | None = None
    split: int | None = None
    bos: bool = False
    stride: int = 1
    pad: int = 0
    why: str = ""                              # why a layer is not on the `int` path
    # (scale, zero, qmin, qmax) of act1 then act2 (act1 again when there is none), float32 [8] on the device:
    # under torch.compile the quantize ops read these instead of Python numbers, so a compiled block never bakes
    # a layer's numbers in as constants, whatever dynamo's specialization settings (with torch 2.14's defaults
    # plain numbers also share graphs: tests/test_kernels.py, compiled regions)
    qt: torch.Tensor | None = None
    # (input rows, "wonly" | "dense") for the buckets whose measured plan overrides `path`: rows = tokens x batch of a
    # linear's input, batch x H x W of a conv's (module docstring). A tuple of Python ints and
    # strings: dynamo guards it by value, so same-shape blocks with the same plan still share one compiled graph.
    bucket_paths: tuple = ()
    out_nhwc: bool = False                     # conv: output in channels_last memory (use_conv_outputs)
    # an upsampler's 3x3 conv as four 2x2 phase convs on the input before the 2x upsample (decoders.use_subpixel_upsample)
    sub: "KernelState | None" = None

    def tensors(self) -> list[torch.Tensor]:
        return [t for t in (self.packed, self.w_scale, self.scale1, self.zc1, self.scale2, self.zc2, self.bias,
                            self.bias16, self.fp16_weight, self.qt) if t is not None] + (
            self.sub.tensors() if self.sub is not None else [])

    def qparams(self, which: int) -> tuple:
        a = self.act1 if which == 1 or self.act2 is None else self.act2
        return (a.scale, a.zero, a.qmin, a.qmax)


@dataclass(frozen=True)
class Plan:
    """What prepare() will do with a layer, decided from its LayerSpec alone (no weights needed)."""
    path: str                 # int | wonly | fp16
    why: str                  # why not int ('' when int)
    bits: int | None = None   # packed storage format
    group: int | None = None  # K-group size of the packed format
    seg: tuple = ()           # input-channel segments (conv split) or (K,) for a linear


def plan(spec: LayerSpec, fp16_convs: frozenset[ConvKey] = frozenset()) -> Plan:
    """The path and packed format of a layer; convs in `fp16_convs` stay on cuDNN."""
    if spec.w_bits is None:
        return Plan("fp16", "fp16 weights")
    if spec.asymmetric:
        return Plan("fp16", "asymmetric weights")
    c_in, n, split = spec.in_features, spec.out_features, spec.split
    why = ""
    if spec.kind == "conv":
        if spec.groups != 1 or tuple(spec.dilation) != (1, 1):
            why = "grouped/dilated conv"
        elif isinstance(spec.padding, str) or len(set(spec.stride)) != 1 or len(set(spec.padding)) != 1:
            why = "non-square stride/padding"
        elif c_in % 16 or (split and split % 16) or n % 8:
            why = "channels not multiples of 16 (in) / 8 (out)"
        elif (c_in, n, spec.weight_shape[2], spec.stride[0]) in fp16_convs:
            why = "fp16_convs policy (cuDNN faster)"
        elif spec.a_bits is None:
            why = "protected input (conv)"
        seg = (c_in,) if split is None else (split, c_in - split)
    else:
        if c_in % 16 or n % 8:
            why = "K not a multiple of 16 or N not a multiple of 8"
        seg = (c_in,)
    if why:
        return Plan("fp16", why)
    bits = packing.storage_bits(spec.w_bits)
    return Plan("int" if spec.a_bits is not None else "wonly", "", bits, packing.group_size(bits, list(seg)), seg)


@torch.no_grad()
def prepare(layer, packed: tuple[torch.Tensor, packing.PackedFormat] | None = None,
            fp16_convs: frozenset[ConvKey] = frozenset()) -> KernelState:
    """The kernel state of a layer (packed weights, epilogue constants), on the layer's device; the layer is only read.

    `packed`: the weight already packed as this layer's plan stores it (bytes on the layer's device, format), e.g.
    read from a quantized model folder; used as is instead of packing `w_int` again (`w_int` must still hold the
    codes: the epilogue's column sums and the fp16 path read them)."""
    dev = layer.w_int.device if layer.w_bits is not None else layer.weight.device
    spec = LayerSpec.of(layer)
    pl = plan(spec, fp16_convs)
    st = KernelState(path=pl.path, kind=spec.kind, n=spec.out_features, why=pl.why, shape=spec.weight_shape)
    if spec.kind == "conv":
        st.stride, st.pad = int(spec.stride[0]), int(spec.padding[0])
    if layer.a_bits is not None:
        st.act1 = ref.ActQuant.from_module(layer.act_quant)
        st.act2 = ref.ActQuant.from_module(layer.act_quant2) if layer.act_quant2 is not None else None
        st.split = layer.split if st.act2 is not None else None
        st.qt = torch.tensor(st.qparams(1) + st.qparams(2), dtype=torch.float32, device=dev)
    st.bos = spec.bos and spec.kind == "linear" and st.act1 is not None
    if st.path == "fp16":
        if layer.w_bits is None:
            st.fp16_weight = layer.weight.detach().half()
        else:  # dequantized, exactly as the fake path computes it
            st.fp16_weight = _dequantized(layer.w_int, layer.w_scale, getattr(layer, "w_zero_point", None))
        st.bias16 = layer.bias.detach().half() if layer.bias is not None else None
    else:
        pack_state(st, pl, layer.w_int, layer.w_scale, layer.bias.detach().float() if layer.bias is not None else None,
              dev, packed)
    return st


def pack_state(st: KernelState, pl: Plan, q_w: torch.Tensor, w_scale: torch.Tensor, bias: torch.Tensor | None, dev,
               packed: tuple | None = None) -> None:
    """Fill `st` with integer weights `q_w` packed as `pl` says, their scales, the bias and (int path) the epilogue's
    scale and zero-point column sums; `packed`: bytes packed beforehand (prepare's docstring)."""
    st.bits = pl.bits
    if packed is None:
        packed, st.fmt = packing.pack_weight(q_w, st.bits, st.split)  # on the layer's device
    else:
        packed, st.fmt = packed
        if (st.fmt.bits, st.fmt.group) != (st.bits, pl.group) or packed.shape[0] != st.n:
            raise ValueError(f"packed weight ({st.fmt}, {tuple(packed.shape)}) is not this layer's format "
                             f"({st.bits} bits, group {pl.group}, {st.n} rows)")
    st.packed = packed.to(dev)
    st.w_scale = w_scale.detach().float().to(dev).contiguous()
    # always a bias (zeros when the layer has none): one compiled kernel variant fewer per tile config
    st.bias = bias.to(dev).contiguous() if bias is not None else torch.zeros(st.n, device=dev)
    if st.path != "int":
        return
    w64 = q_w.to(torch.int64).reshape(q_w.shape[0], q_w.shape[1], -1)  # [N, C, taps]
    parts = [(st.act1, w64 if st.split is None else w64[:, :st.split])]
    if st.split is not None:
        parts.append((st.act2, w64[:, st.split:]))
    for i, (aq, w) in enumerate(parts, start=1):
        colsum = w.sum(dim=(1, 2))
        setattr(st, f"scale{i}", (st.w_scale.double() * aq.scale).float().contiguous())
        setattr(st, f"zc{i}", (colsum * aq.zero).to(torch.int32).to(dev).contiguous())


def unpacked_weight(st: KernelState) -> torch.Tensor:
    """The int8 weight [N, K] / [N, C, kh, kw] of a prepared layer, rebuilt from its packed bytes."""
    if st.packed is None:
        raise ValueError("this layer keeps an fp16 weight, not packed integers")
    return packing.unpack_weight(st.packed.cpu(), st.fmt, st.shape, st.split).to(st.packed.device)


def _dequantized(w_int: torch.Tensor, w_scale: torch.Tensor, zero_point: torch.Tensor | None = None) -> torch.Tensor:
    """The fp16 weight of per-output-channel integer codes, computed in float32 as the fake path does."""
    shape = (-1,) + (1,) * (w_int.dim() - 1)
    zp = zero_point.view(shape) if zero_point is not None else 0
    return ((w_int.float() - zp) * w_scale.view(shape)).half()


def input_rows(st: KernelState, x: torch.Tensor) -> int:
    """The size a bucket plan is keyed on: rows of a linear's GEMM, batch x H x W of a conv's input."""
    return x.numel() // x.shape[-1] if st.kind == "linear" else x.shape[0] * x.shape[2] * x.shape[3]


def path_for(st: KernelState, x: torch.Tensor) -> str:
    """The path this input takes: the layer's own, or its bucket plan's override for this input size."""
    rows = input_rows(st, x) if st.bucket_paths else -1
    for r, p in st.bucket_paths:
        if r == rows:
            return p
    return st.path


@torch.no_grad()
def set_bucket_path(st: KernelState, rows: int, path: str) -> int:
    """Make inputs of `rows` rows take `path`: `dense` (cuBLAS/cuDNN on the dequantized weight, built here once and
    kept beside the packed one), `wonly` (an int linear's packed weight with fp16 activations: no extra memory) or
    the layer's own path (removes the override). Returns the device bytes this added (the dense weight, once)."""
    if st.path not in ("int", "wonly"):
        raise ValueError(f"only layers on the int/wonly path take bucket overrides, this one is on {st.path!r}")
    allowed = bucket_paths(st)
    if path not in allowed:
        raise ValueError(f"path {path!r}: expected one of {allowed} (the layer's own first)")
    added = 0
    if path == "dense" and st.fp16_weight is None:  # symmetric weights (int/wonly paths): no zero point
        st.fp16_weight = _dense_layout(_dequantized(packing.unpack_weight(st.packed, st.fmt, st.shape, st.split),
                                                    st.w_scale))
        st.bias16 = st.bias.half()
        added = dense_bytes(st)
    others = tuple((r, p) for r, p in st.bucket_paths if r != rows)
    st.bucket_paths = others if path == st.path else others + ((int(rows), path),)
    return added


CONV_OUTPUTS = ("nchw", "nhwc")


def conv_out_channels_last() -> bool:
    """Every int8 conv of the process writes channels_last outputs (MIXDQ_CONV_NHWC=1; opt-in: untimed in the UNet;
    per model: use_conv_outputs, the compiled int8 decoder's default): the next layer's quantize to padded NHWC codes
    (and cuDNN's channels_last kernels) then read them without a transpose. Why: in the compiled int8 decoder the NCHW
    outputs were transposed again by every fused GroupNorm/SiLU/quantize kernel (17 ms of its 82 ms decode at 1024x4,
    results/vae_profile_gn_v7_int8_kernels_nvidia_h200.csv)."""
    return os.environ.get("MIXDQ_CONV_NHWC", "0") == "1"


def use_conv_outputs(model: torch.nn.Module, layout: str) -> int:
    """Every int8 conv of `model` (kernel backend, prepared) writes its output in `layout` from now on: `nchw`, or
    `nhwc` (the same tensor in channels_last memory, which the next conv's NHWC quantize reads without a transpose:
    docs/kernels.md). MIXDQ_CONV_NHWC=1 gives every int8 conv of the process `nhwc`. Returns how many convs were set."""
    if layout not in CONV_OUTPUTS:
        raise ValueError(f"conv output layout {layout!r}: expected one of {CONV_OUTPUTS}")
    convs = [m.kernel_state for m in model.modules()
             if getattr(m, "kernel_state", None) is not None and m.kernel_state.kind == "conv"]
    for st in convs:
        st.out_nhwc = layout == "nhwc"
    return len(convs)


def bucket_paths(st: KernelState) -> tuple[str, ...]:
    """The paths a bucket plan may give this layer, its own first."""
    return (st.path,) + (("wonly",) if st.kind == "linear" and st.path == "int" else ()) + ("dense",)


def dense_bytes(st: KernelState) -> int:
    """Device bytes of the dequantized fp16 weight an int/wonly layer holds for its `dense` bucket overrides."""
    if st.path == "fp16" or st.fp16_weight is None:
        return 0
    return sum(t.numel() * t.element_size() for t in (st.fp16_weight, st.bias16))


def path_candidates(st: KernelState, x: torch.Tensor, copies: int = 1) -> dict[str, Callable[[], torch.Tensor]]:
    """The paths an int/wonly layer could take for input `x` (fp16, on its GPU), as callables to time (bucket_paths):
    `int` the GEMM/conv on codes quantized beforehand (under torch.compile the quantize pass fuses into the producer
    of x), `wonly` for linears, `dense` cuBLAS/cuDNN on a random fp16 weight of the layer's shape (time does not
    depend on values; nothing is dequantized until a plan picks it). `copies` > 1: each call of a path reads the next
    of that many copies of its weight, in turn (the same x and codes each time), so that timing many calls in a row
    reads the weights from memory, as a UNet step does, while the input stays in the L2 cache it was written to."""
    from . import ops

    def cycle(make: Callable[[int], Callable[[], torch.Tensor]]) -> Callable[[], torch.Tensor]:
        fns = itertools.cycle([make(i) for i in range(copies)])
        return lambda: next(fns)()

    packed = [st] + [replace(st, packed=st.packed.clone()) for _ in range(copies - 1)]
    out = {}
    if st.path == "int":
        q = _quantize(st, x, ops)
        out["int"] = cycle(lambda i: lambda: _int_core(packed[i], x, q, ops))
    if st.kind == "linear":
        out["wonly"] = cycle(lambda i: lambda: _wonly_forward(packed[i], x, ops))
    ws = [_dense_layout(torch.randn(st.shape, device=x.device, dtype=torch.float16)) for _ in range(copies)]
    b = st.bias.half()
    if st.kind == "linear":
        out["dense"] = cycle(lambda i: lambda: F.linear(x, ws[i], b))
    else:
        x_cl = x.contiguous(memory_format=torch.channels_last)
        out["dense"] = cycle(lambda i: lambda: F.conv2d(x_cl, ws[i], b, st.stride, st.pad))
    return out


def _dense_layout(w: torch.Tensor) -> torch.Tensor:
    """A dense weight as the compiled FP16 UNet runs it: conv weights channels_last (Inductor lays its convs out
    NHWC; cuDNN on NCHW tensors took 2-3x longer per conv on the H200, which made the plan keep int8 convs that
    lose in situ: results/e2e_budget1_w8a8_profile_kernels_nvidia_h200.csv)."""
    return w.contiguous(memory_format=torch.channels_last) if w.dim() == 4 else w


def weight_bytes(st: KernelState) -> int:
    """Bytes of a prepared layer's weights on the device (packed + scales + epilogue constants + bias)."""
    return sum(t.numel() * t.element_size() for t in st.tensors())


# ----------------------------------------------------------------------------------------------- forward


def _use_triton(x: torch.Tensor) -> bool:
    return x.is_cuda or os.environ.get("TRITON_INTERPRET") == "1"  # interpreter: the kernels run on the CPU


def forward(st: KernelState, x: torch.Tensor) -> torch.Tensor:
    """A prepared layer's output (fp16) through the kernels; the integer reference on a CPU (warned about once per
    call site, by Python's default warning filter)."""
    if not _use_triton(x):
        warnings.warn("kernel backend on a CPU: computing the integer reference instead of the CUDA kernels",
                      stacklevel=2)
        return reference_forward(st, x)
    from . import ops

    path = path_for(st, x)
    if path == "fp16":
        return _fp16_forward(st, x.half(), ops)
    if path == "dense":
        return _dense_forward(st, x.half())
    if path == "wonly":
        return _wonly_forward(st, x, ops)
    q = _quantize(st, x, ops)
    return _int_core(st, x, q, ops)


def _compiling() -> bool:
    return torch.compiler.is_compiling()


def _fp16_forward(st: KernelState, x: torch.Tensor, ops) -> torch.Tensor:
    if st.act1 is not None:
        if st.bos and x.dim() == 3:
            xq = _fake_quant(st, x[:, 1:], ops)
            x = torch.cat([x[:, :1], xq], dim=1)
        else:
            x = _fake_quant(st, x, ops)
    return _dense_forward(st, x)


def _dense_forward(st: KernelState, x: torch.Tensor) -> torch.Tensor:
    """cuBLAS/cuDNN on the fp16 weight (a bucket's `dense` override as is: activations not quantized)."""
    if st.kind == "linear":
        return F.linear(x, st.fp16_weight, st.bias16)
    return F.conv2d(x, st.fp16_weight, st.bias16, st.stride, st.pad)


def _fake_quant(st: KernelState, x: torch.Tensor, ops) -> torch.Tensor:
    split = st.split if st.split is not None else 1 << 30
    if _compiling():
        return ops.fake_quant_torch(x, split, st.qt[:4], st.qt[4:])
    return ops.fake_quant(x.contiguous(), split, *st.qparams(1), *st.qparams(2))


def _wonly_forward(st: KernelState, x: torch.Tensor, ops) -> torch.Tensor:
    lead, k = x.shape[:-1], x.shape[-1]
    y = ops.qlinear(x.reshape(-1, k).half(), st.packed, st.w_scale, None, st.bias, st.bits, st.fmt.group, st.n)
    return y.reshape(*lead, st.n)


def _quantize(st: KernelState, x: torch.Tensor, ops) -> torch.Tensor:
    """The int8 codes the `int` path's GEMM/conv reads: [rows, K] for a linear, zero-padded NHWC for a conv."""
    if st.kind == "linear":
        x2 = x.reshape(-1, x.shape[-1]).half()
        if _compiling():  # contiguous: Inductor may lay a pointwise output out like its (permuted) input
            return ops.quant_torch(x2, *st.qt[:4]).contiguous()
        return _quantize_once(x, x2, st.qparams(1), ops)
    split = st.split if st.split is not None else x.shape[1]
    if _compiling():
        return ops.quant_nhwc_torch(x.half(), split, st.pad, st.qt[:4], st.qt[4:])
    return ops.quant_nhwc(x.half().contiguous(), split, st.pad, *st.qparams(1), *st.qparams(2))


def _int_core(st: KernelState, x: torch.Tensor, q: torch.Tensor, ops) -> torch.Tensor:
    """The `int` path after quantization: int8 GEMM / implicit-GEMM conv with the epilogue (x: the fp16 input, for
    the shapes and the BOS rows)."""
    if st.kind == "conv":
        split = st.split if st.split is not None else x.shape[1]
        kh, kw = st.shape[2], st.shape[3]
        return ops.qconv(q, st.packed, st.scale1, st.zc1, st.scale2, st.zc2, st.bias, st.bits, st.fmt.group, st.n,
                         split, kh, kw, st.stride, st.pad, st.out_nhwc or conv_out_channels_last())
    y = ops.qlinear(q, st.packed, st.scale1, st.zc1, st.bias, st.bits, st.fmt.group, st.n)
    y = y.reshape(*x.shape[:-1], st.n)
    if st.bos and x.dim() == 3:  # token 0 of each sequence: fp16 input through the same packed weights
        y_bos = ops.qlinear(x[:, 0, :].half(), st.packed, st.w_scale, None, st.bias, st.bits, st.fmt.group, st.n)
        y = torch.cat([y_bos.unsqueeze(1), y[:, 1:]], dim=1)
    return y


def fusable_conv(st: KernelState | None) -> bool:
    """A conv whose input can come from norm_act_quant (fused_conv): the `int` path on one activation quantizer,
    no bucket overrides."""
    return st is not None and st.kind == "conv" and st.path == "int" and st.split is None and not st.bucket_paths


def fused_conv(st: KernelState, x: torch.Tensor, affine: tuple[torch.Tensor, torch.Tensor] | None = None,
               silu: bool = False, up: int = 1, residual: torch.Tensor | None = None,
               out_scale: float = 1.0) -> torch.Tensor:
    """The conv of `st` (fusable_conv) on silu(x * scale + shift) upsampled `up`x (nearest), plus `residual` times
    `out_scale`: two kernels (ops.norm_act_quant, ops.qconv with its residual epilogue) where the unfused modules
    run a GroupNorm apply, SiLU, upsample and quantize pass and a residual add pass (decoders.use_fused_blocks).
    A 2x upsample with `st.sub` set runs as its four phase convs on x itself (decoders.use_subpixel_upsample)."""
    from . import ops

    scale, shift = affine if affine is not None else (None, None)
    k = st.sub if up == 2 and st.sub is not None else st
    q = ops.norm_act_quant(x.half(), scale, shift, silu, 1 if k is not st else up, st.pad, *st.qparams(1))
    return ops.qconv(q, k.packed, k.scale1, k.zc1, k.scale2, k.zc2, k.bias, k.bits, k.fmt.group, st.n,
                     x.shape[1], k.shape[2], k.shape[3], st.stride, st.pad, st.out_nhwc or conv_out_channels_last(),
                     residual, out_scale, k is not st)


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


# ----------------------------------------------------------------------------------------------- CPU reference


def reference_forward(st: KernelState, x: torch.Tensor) -> torch.Tensor:
    """The integer reference of a prepared layer's kernel output (float64 math, cast to x's dtype)."""
    path = path_for(st, x)
    if path in ("fp16", "dense"):  # dense: a bucket's override, activations not quantized
        xf = x
        if path == "fp16" and st.act1 is not None:
            if st.bos and x.dim() == 3:
                xf = torch.cat([x[:, :1], ref.fake_quant(x[:, 1:], st.act1)], dim=1)
            else:
                xf = ref.fake_quant(x, st.act1, st.act2, st.split)
        w = st.fp16_weight.to(x.dtype)
        b = st.bias16.to(x.dtype) if st.bias16 is not None else None
        return F.linear(xf, w, b) if st.kind == "linear" else F.conv2d(xf, w, b, st.stride, st.pad)
    w_int = packing.unpack_weight(st.packed.cpu(), st.fmt, st.shape, st.split).to(x.device)
    if st.kind == "linear":
        if path == "wonly":
            return ref.linear_wonly(x, w_int, st.w_scale, st.bias).to(x.dtype)
        y = ref.linear_int(ref.quantize_act(x, st.act1), w_int, st.w_scale, st.act1, st.bias)
        if st.bos and x.dim() == 3:
            y[:, 0] = ref.linear_wonly(x[:, 0], w_int, st.w_scale, st.bias)
        return y.to(x.dtype)
    q = ref.quantize_act_split(x, st.act1, st.act2, st.split)
    return ref.conv_int(q, w_int, st.w_scale, st.act1, st.act2, st.split, st.bias, st.stride, st.pad).to(x.dtype)
