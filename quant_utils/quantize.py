"""quantize_unet(unet, spec): swap every Linear/Conv2d of a diffusers UNet for a QuantLayer.

The per-layer bits come from MixDQ bit configs (see bitconfig.py); BOS-aware quantization of
the cross-attention K/V inputs and split quantization of the up-blocks' skip concatenations are
switchable. `set_quant_state`, `set_backend` and `bit_summary` act on the whole UNet.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Iterator

import torch
from torch import nn
from tqdm import tqdm

from .bitconfig import resolve_layer_bits
from .errors import ConfigError
from .fusion import fused_attentions
from .qlayers import Backend, QuantLayer

_BOS_LAYER = re.compile(r"attn2\.to_[kv]$")
_SPLIT_LAYER = re.compile(r"^up_blocks\.(\d+)\.resnets\.(\d+)\.(conv1|conv_shortcut)$")


@dataclass(frozen=True)
class QuantSpec:
    """What to quantize and how. Bits maps are complete (every layer) after `resolve`."""
    weight_bits: dict[str, int]
    act_bits: dict[str, int]                     # layers absent here keep FP activations
    act_protect: tuple[str, ...] = ()
    w_symmetric: bool = True
    w_method: str = "mse"                        # minmax | mse
    a_method: str = "mse"                        # minmax | percentile | mse
    bos: bool = True                             # BOS-aware text-embedding quantization
    split: bool = True                           # split quantization of skip concatenations
    sources: dict[str, str] = field(default_factory=dict, compare=False)  # file names, for reports

    def __post_init__(self):
        overlap = set(self.act_protect) & set(self.act_bits)
        if overlap:
            raise ValueError(f"layers both protected and given activation bits: {sorted(overlap)[:5]}")

    def to_dict(self) -> dict:
        return {"weight_bits": dict(self.weight_bits), "act_bits": dict(self.act_bits),
                "act_protect": list(self.act_protect), "w_symmetric": self.w_symmetric, "w_method": self.w_method,
                "a_method": self.a_method, "bos": self.bos, "split": self.split}


def quantizable_layers(unet: nn.Module) -> dict[str, nn.Module]:
    """Every nn.Linear / nn.Conv2d (or already-swapped QuantLayer) of the UNet, by diffusers name."""
    return {n: m for n, m in unet.named_modules() if isinstance(m, (nn.Linear, nn.Conv2d, QuantLayer))}


def quant_layers(unet: nn.Module) -> Iterator[tuple[str, QuantLayer]]:
    return ((n, m) for n, m in unet.named_modules() if isinstance(m, QuantLayer))


def skip_split_points(unet: nn.Module) -> dict[str, int]:
    """Channel where an up-block resnet's input switches from the main path to the skip connection.

    diffusers' up blocks concatenate [hidden (resnet_in channels), skip] before each resnet:
    resnet_in is the previous block's output for the first resnet, the block's width after.
    """
    chans = list(reversed(unet.config.block_out_channels))
    out = {}
    for name in quantizable_layers(unet):
        m = _SPLIT_LAYER.match(name)
        if m:
            i, j = int(m.group(1)), int(m.group(2))
            out[name] = chans[max(i - 1, 0)] if j == 0 else chans[i]
    return out


def make_spec(unet: nn.Module, weight_cfg: dict[str, int], act_cfg: dict[str, int] | None, act_protect=(),
              strict: bool = False, default_bits: int = 8, sources: dict[str, str] | None = None, **options) -> QuantSpec:
    """Validate bit configs against this UNet's layers and build a complete QuantSpec."""
    layers = list(quantizable_layers(unet))
    sources = sources or {}
    protect = tuple(sorted(set(act_protect)))
    unknown = sorted(set(protect) - set(layers))
    if unknown:
        raise ConfigError(f"act protect list names {len(unknown)} layer(s) not in this UNet: {', '.join(unknown[:5])}")
    wbits = resolve_layer_bits(layers, weight_cfg, "weight", strict, default_bits, source=sources.get("weight", ""))
    abits = (resolve_layer_bits(layers, act_cfg, "act", strict, default_bits, exempt=protect, source=sources.get("act", ""))
             if act_cfg is not None else {})
    return QuantSpec(wbits, abits, protect, sources=sources, **options)


def uniform_bits(unet: nn.Module, bits: int) -> dict[str, int]:
    return {n: bits for n in quantizable_layers(unet)}


def refuse_fused(unet: nn.Module, doing: str) -> None:
    """Bit configs, checkpoints and quantized folders name to_q/to_k/to_v: a UNet whose attention projections a
    compiled Runner fused in place (quant_utils/fusion.py) is refused rather than written or read under other names."""
    if fused_attentions(unet):
        raise ValueError(f"cannot {doing} this UNet: its attention projections are fused in place "
                         "(quant_utils/fusion.py, a compiled Runner's --fuse_qkv); use the UNet from before the Runner, "
                         "or fusion.unfuse_qkv an FP one; bit configs and files name to_q/to_k/to_v")


def quantize_unet(unet: nn.Module, spec: QuantSpec, search: bool = True) -> nn.Module:
    """Replace every quantizable layer in place (weights are quantized here, once); returns the UNet.

    `search=False` skips the weight range search (min-max placeholders), for when a checkpoint's
    scales are loaded next anyway.
    """
    refuse_fused(unet, "quantize")
    splits = skip_split_points(unet) if spec.split else {}
    layers = list(quantizable_layers(unet).items())
    # minutes on a full-size UNet with the MSE range search: show progress
    for name, module in tqdm(layers, desc="quantizing weights", unit="layer"):
        if isinstance(module, QuantLayer):
            raise ValueError("this UNet is already quantized")
        layer = QuantLayer(module, spec.weight_bits.get(name), spec.act_bits.get(name),
                           w_symmetric=spec.w_symmetric, w_method=spec.w_method if search else "minmax",
                           a_method=spec.a_method,
                           split=splits.get(name), bos=spec.bos and bool(_BOS_LAYER.search(name)))
        parent_name, _, child = name.rpartition(".")
        setattr(unet.get_submodule(parent_name) if parent_name else unet, child, layer)
    unet.mixdq_spec = spec
    return unet


def set_quant_state(unet: nn.Module, weight: bool = True, act: bool = True) -> None:
    """Switch weight and activation quantization on/off for every layer (e.g. W-only ablations)."""
    for _, layer in quant_layers(unet):
        layer.use_wq, layer.use_aq = weight, act


def set_backend(unet: nn.Module, backend: str, fp16_convs: frozenset = frozenset()) -> None:
    """`fake` (simulated, any device) or `kernel` (real CUDA kernels; falls back to fake on CPU); `fp16_convs`:
    (C_in, C_out, k, stride) of convs the kernel backend keeps on cuDNN."""
    for _, layer in quant_layers(unet):
        layer.set_backend(backend, fp16_convs)


def use_kernels(model: nn.Module) -> int:
    """Every quantized layer of `model` on the kernel backend whatever its device (set_backend('kernel') falls back to
    fake-quant off CUDA, as a user wants): off CUDA a layer then computes the kernels' integer reference, or, with
    TRITON_INTERPRET=1, runs the Triton kernels themselves, interpreted. For tests and CPU tools; returns the count."""
    layers = [m for _, m in quant_layers(model)]
    for m in layers:
        m.prepare_kernels()
        m.backend = Backend.KERNEL
    return len(layers)


def bit_summary(unet: nn.Module) -> dict:
    """Average bits and weight bytes at the configured bit-widths (packed ints + fp32 scales; the rest fp16)."""
    q_params = q_bits = a_layers = a_bits = 0
    q_bytes = 0.0
    per_bits: dict[int, int] = {}
    for _, layer in quant_layers(unet):
        numel = layer.weight_numel
        if layer.w_bits is not None:
            q_params += numel
            q_bits += numel * layer.w_bits
            q_bytes += numel * layer.w_bits / 8 + layer.out_features * 4
            per_bits[layer.w_bits] = per_bits.get(layer.w_bits, 0) + 1
        if layer.a_bits is not None:
            a_layers += 1
            a_bits += layer.a_bits
    layers = [m for _, m in quant_layers(unet)]
    held = sum(m.weight.numel() for m in layers if m.weight is not None)  # the kernel backend frees FP weights
    total = sum(p.numel() for p in unet.parameters()) - held + sum(m.weight_numel for m in layers)
    other = total - q_params  # parameters outside quantized weights (norms, biases, FP layers): fp16
    weight_bytes = q_bytes + other * 2
    return {
        "layers": len(layers), "avg_wbits": q_bits / max(q_params, 1),
        "avg_abits": a_bits / max(a_layers, 1), "act_fp_layers": len(layers) - a_layers,
        "weight_bytes": int(weight_bytes), "fp16_bytes": int(total * 2), "size_ratio": weight_bytes / (total * 2),
        "layers_per_wbits": dict(sorted(per_bits.items())),
    }


@torch.no_grad()
def unet_fingerprint(unet: nn.Module) -> float:
    """A cheap checksum of the FP weights, to notice a checkpoint applied to another model."""
    total = 0.0
    for _, layer in quant_layers(unet):
        if layer.weight is not None:
            total += layer.weight.float().abs().mean().item()
    return total
