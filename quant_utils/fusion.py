"""Fused attention projections: a self-attention's q, k and v in one GEMM, a cross-attention's k and v in one, for
FP16 and quantized UNets alike (`fuse_qkv`).

Why: at small buckets (512x1) the UNet is bound by launches and small GEMMs; diffusers' `fuse_qkv_projections` made
the compiled FP16 UNet 9 % faster there on the H200 (report section 1, eighth session). diffusers fuses nn.Linear
only; here a group of QuantLayers fuses too when the fused layer computes exactly what the three did: same weight and
activation bits, the same activation quantizer (the layers read one input, so calibration gives them the same
range), the same BOS handling. Weights are per output channel, so the fused layer's integer codes, scales and bias
are the three concatenated along the output dimension; one activation quantize then serves all three. A layer
already prepared for the kernel backend gives back its codes from its packed bytes (kernels.unpacked_weight) and
the fused layer is prepared again. The attention then runs diffusers' FusedAttnProcessor2_0, which splits the fused
output; the fused-away layers are removed (no second copy of the weights).

A runtime transform of a loaded UNet, like compiling: checkpoints and bit configs keep the unfused names.
"""
from __future__ import annotations

import copy

import torch
from torch import nn

from .qlayers import QuantLayer

FUSE_QKV = ("auto", "on", "off")  # the Runner's choices (runtime.Runner): auto = under compile, FP16 or quantized


def _codes(layer: QuantLayer) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """(int codes [N, K], scale [N], zero point [N], bias [N] or None) of a weight-quantized linear."""
    st = layer.kernel_state
    if st is None:
        return layer.w_int, layer.w_scale, layer.w_zero_point, layer.bias
    from .kernels import backend

    return backend.unpacked_weight(st), st.w_scale, torch.zeros_like(st.w_scale), st.bias


def _act_key(layer: QuantLayer) -> tuple | None:
    q = layer.act_quant
    return None if q is None else (q.bits, float(q.scale), float(q.zero_point))


def why_not_fusable(layers: list[nn.Module]) -> str:
    """'' when `layers` (one attention's projections, same input) can be fused exactly, else the reason."""
    if all(type(m) is nn.Linear for m in layers):
        return "" if len({m.bias is None for m in layers}) == 1 else "some with a bias, some without"
    if not all(isinstance(m, QuantLayer) and m.kind == "linear" for m in layers):
        return "mixed quantized and FP layers"
    first = layers[0]
    checks = {"weight bits": lambda m: m.w_bits, "activation quantizer": _act_key, "BOS handling": lambda m: m.bos,
              "backend": lambda m: m.backend, "prepared kernels": lambda m: m.kernel_state is not None,
              "quantization switches": lambda m: (m.use_wq, m.use_aq)}
    for what, key in checks.items():
        if any(key(m) != key(first) for m in layers):
            return f"different {what}"
    if first.w_bits is None or first.act_quant is None or first.split:
        return "not a W*A* linear"
    if first.kernel_state is not None and first.kernel_state.path not in ("int", "wonly"):
        return f"kernel path {first.kernel_state.path!r}"
    return ""


def _projections(attn) -> tuple[tuple[str, ...], str]:
    """(the projections that share an input, the fused layer's name): q/k/v of a self-attention, k/v of a cross one."""
    return (("to_k", "to_v"), "to_kv") if attn.is_cross_attention else (("to_q", "to_k", "to_v"), "to_qkv")


def _linear(weight: torch.Tensor, bias: torch.Tensor | None) -> nn.Linear:
    out = nn.Linear(weight.shape[1], weight.shape[0], bias=bias is not None, device=weight.device, dtype=weight.dtype)
    out.weight.data.copy_(weight)
    if bias is not None:
        out.bias.data.copy_(bias)
    return out


def _fused_linear(layers: list[nn.Linear]) -> nn.Linear:
    bias = torch.cat([m.bias.data for m in layers]) if layers[0].bias is not None else None
    return _linear(torch.cat([m.weight.data for m in layers]), bias)


@torch.no_grad()
def _fused_quant(layers: list[QuantLayer]) -> QuantLayer:
    first = layers[0]
    codes = [_codes(m) for m in layers]
    w_int = torch.cat([c[0] for c in codes])
    shell = nn.Linear(w_int.shape[1], w_int.shape[0], bias=False, device="meta")
    out = QuantLayer(shell, first.w_bits, first.a_bits, w_symmetric=first.w_symmetric, bos=first.bos)
    out.w_int, out.w_scale, out.w_zero_point = w_int, torch.cat([c[1] for c in codes]), torch.cat([c[2] for c in codes])
    biases = [c[3] for c in codes]
    if any(b is not None for b in biases):  # a parameter, as QuantLayer holds its layer's bias (moves with .to())
        out.bias = nn.Parameter(torch.cat([b.detach() if b is not None else torch.zeros(m.out_features, device=w_int.device)
                                           for b, m in zip(biases, layers)]), requires_grad=False)
    out.weight_numel = sum(m.weight_numel for m in layers)
    if all(m.weight is not None for m in layers):
        out.weight = nn.Parameter(torch.cat([m.weight.data for m in layers]), requires_grad=False)
    else:
        dtype = next((t.dtype for m in layers for t in (m.weight, getattr(m, "w_dtype_ref", None)) if t is not None),
                     torch.float16)
        out.drop_fp_weight(dtype)
    out.act_quant = copy.deepcopy(first.act_quant)
    out.use_wq, out.use_aq = first.use_wq, first.use_aq
    if first.kernel_state is not None:
        out.prepare_kernels()
    out.backend = first.backend  # (a kernel-backend layer is always prepared: QuantLayer.set_backend)
    return out


def fused_attentions(unet: nn.Module) -> int:
    """How many attentions of `unet` run with fused projections (0: none, as bit configs and checkpoints expect)."""
    return sum(bool(getattr(m, "fused_projections", False)) for m in unet.modules())


def wants_fusion(choice: str, compiled: bool, unet: object) -> bool:
    """The Runner's --fuse_qkv: `on`, `off`, or `auto` = a compiled UNet, FP16 or quantized (measured faster compiled
    on the H200: FP16 9-10 % at 512x1, 6 % at 1024x1; W8A8 6 % at 512x1, 3 % at 1024x1; report section 1)."""
    if choice not in FUSE_QKV:
        raise ValueError(f"fuse_qkv={choice!r}, expected one of {FUSE_QKV}")
    if choice != "auto" or not isinstance(unet, nn.Module):  # (tests' stand-in pipelines have no modules)
        return choice == "on"
    return compiled


def fuse_qkv(unet: nn.Module) -> dict[str, object]:
    """Fuse every attention's projections that can be fused exactly, in place; returns how many (`self`, `cross`) and
    why the others were not (`kept`: attention name -> reason)."""
    from diffusers.models.attention_processor import Attention, FusedAttnProcessor2_0

    done = {"self": 0, "cross": 0, "kept": {}}
    for name, attn in unet.named_modules():
        if not isinstance(attn, Attention) or getattr(attn, "fused_projections", False):
            continue
        names, fused_name = _projections(attn)
        layers = [getattr(attn, n) for n in names]
        why = why_not_fusable(layers)
        if why:
            done["kept"][name] = why
            continue
        setattr(attn, fused_name, _fused_linear(layers) if type(layers[0]) is nn.Linear else _fused_quant(layers))
        for n in names:
            delattr(attn, n)
        attn.fused_projections = True
        attn.set_processor(FusedAttnProcessor2_0())
        done["cross" if attn.is_cross_attention else "self"] += 1
    return done


def unfuse_qkv(unet: nn.Module) -> int:
    """Undo fuse_qkv on FP layers, in place: to_q/to_k/to_v back from to_qkv / to_kv, diffusers' default processor
    again (layer names are what bit configs and checkpoints refer to: quantize an unfused UNet). Returns how many
    attentions were unfused; a fused QuantLayer is refused (quantize before fusing)."""
    from diffusers.models.attention_processor import Attention, AttnProcessor2_0

    n = 0
    for name, attn in unet.named_modules():
        if not isinstance(attn, Attention) or not getattr(attn, "fused_projections", False):
            continue
        names, fused_name = _projections(attn)
        fused = getattr(attn, fused_name)
        if type(fused) is not nn.Linear:
            raise ValueError(f"{name}: its fused projections are quantized ({type(fused).__name__}); fusing is a "
                             "runtime step after quantization, not undone")
        weights = fused.weight.data.chunk(len(names))
        biases = fused.bias.data.chunk(len(names)) if fused.bias is not None else [None] * len(names)
        for part, w, b in zip(names, weights, biases):
            setattr(attn, part, _linear(w, b))
        delattr(attn, fused_name)
        attn.fused_projections = False
        attn.set_processor(AttnProcessor2_0())
        n += 1
    return n


def fusion_label(done: dict | None) -> str:
    """One line for provenance: what fuse_qkv did ('none' when it did not run)."""
    if done is None:
        return "none"
    return f"{done['self']} self + {done['cross']} cross attentions fused" + (f", {len(done['kept'])} kept" if done["kept"] else "")
