"""The image decoders a Runner can use (`--vae fp16|int8|tiny`).

- `fp16`: the pipeline's SDXL VAE (AutoencoderKL), as MixDQ leaves it.
- `int8`: a copy of that VAE whose decoder convs are W8A8 QuantLayers: per-channel 8-bit weights (MSE range
  search), static per-tensor 8-bit activation ranges calibrated on latents the pipeline itself produced, run by
  the project's int8 implicit-GEMM conv kernels (`kernel` backend on CUDA; the fake-quant reference elsewhere).
  Layers that stay FP16 are named by `int8_fp16_layers` (the 4-channel conv_in, the 3-channel conv_out, the
  mid-block attention's projections, post_quant_conv).
- `tiny`: diffusers' AutoencoderTiny with the TAESD-XL architecture (`configs/.../vae_tiny.json`); users load
  the real `madebyollin/taesdxl` weights (local Hugging Face cache), random weights otherwise (timing only).
Nothing here knows about the UNet or the serving code.
"""
from __future__ import annotations

import copy
import math
import os
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .errors import ConfigError, WeightsNotFoundError


# ----------------------------------------------------------------------------------------------- tiny
def build_tiny_vae(arch: dict, device: str | torch.device, dtype: torch.dtype, pretrained_id: str | None = None,
                   seed: int = 0) -> nn.Module:
    """AutoencoderTiny: `pretrained_id` from the local cache (a clear error when absent), else random weights
    from the architecture config `arch` (TAESD-XL at full size; toy width for the tiny model)."""
    from diffusers import AutoencoderTiny

    if pretrained_id is None:
        torch.manual_seed(seed)
        with torch.device(device):
            vae = AutoencoderTiny.from_config({k: v for k, v in arch.items() if not k.startswith("_")})
        return vae.to(device=device, dtype=dtype).eval()
    offline = os.environ.get("HF_HUB_OFFLINE", "0") not in ("0", "", "false", "False")
    allow = os.environ.get("MIXDQ_ALLOW_DOWNLOAD", "0") == "1"
    try:
        vae = AutoencoderTiny.from_pretrained(pretrained_id, torch_dtype=dtype, local_files_only=offline or not allow)
    except (OSError, ValueError) as e:
        raise WeightsNotFoundError(
            f"--vae tiny: could not load the tiny decoder '{pretrained_id}' from the local Hugging Face cache "
            f"(HF_HOME={os.environ.get('HF_HOME', '~/.cache/huggingface')}): {str(e).splitlines()[0]}\n"
            f"  - download it where there is network (`hf download {pretrained_id}`) and copy HF_HOME here;\n"
            f"  - or pass --random_weights (random decoder weights: timing only), or use --vae fp16."
        ) from None
    return vae.to(device).eval()


# ----------------------------------------------------------------------------------------------- int8
def int8_fp16_layers(vae: nn.Module) -> dict[str, str]:
    """Decoder layers the int8 decoder keeps in FP16, with the reason (names relative to the VAE)."""
    keep = {"post_quant_conv": "4 -> 4 channels 1x1 conv (no int8 tile; negligible time)"}
    for name, m in vae.decoder.named_modules():
        full = f"decoder.{name}"
        if isinstance(m, nn.Linear):
            keep[full] = "mid-block attention projection (attention stays FP16)"
        elif isinstance(m, nn.Conv2d) and (m.in_channels % 16 or m.out_channels % 8 or m.groups != 1):
            keep[full] = f"{m.in_channels} -> {m.out_channels} channels (int8 kernels need in % 16, out % 8)"
    return keep


def quantize_vae_decoder(vae: nn.Module, wbits: int = 8, abits: int = 8, w_method: str = "mse",
                         a_method: str = "mse", dtype: torch.dtype | None = None) -> nn.Module:
    """A copy of `vae` for decoding only (no encoder), in `dtype` (default: vae's), whose decoder convs are
    W{wbits}A{abits} QuantLayers (fake backend, activation ranges not yet calibrated: see calibrate_decoder)."""
    from .qlayers import QuantLayer

    keep = int8_fp16_layers(vae)
    encoder = vae.encoder
    vae.encoder = None  # not copied: the decode path never reads it
    try:
        q = copy.deepcopy(vae)
    finally:
        vae.encoder = encoder
    q.to(dtype or vae.dtype)  # the real SDXL VAE runs in fp32 (force_upcast); the int8 kernels compute in fp16
    for name, m in list(q.decoder.named_modules()):
        if isinstance(m, nn.Conv2d) and f"decoder.{name}" not in keep:
            parent, _, child = name.rpartition(".")
            setattr(q.decoder.get_submodule(parent) if parent else q.decoder, child,
                    QuantLayer(m, wbits, abits, w_method=w_method, a_method=a_method))
    return q


@torch.no_grad()
def calibrate_decoder(vae_q: nn.Module, latents: list[torch.Tensor]) -> int:
    """Set the activation ranges of every quantized decoder layer from decodes of `latents` (a list of batches
    of pipeline latents); returns the number of layers calibrated."""
    from .calibrate import observing
    from .runtime import decode_images

    with observing(vae_q.decoder) as n:
        for z in latents:
            decode_images(vae_q, z)
    return n


def make_int8_decoder(vae: nn.Module, latents: list[torch.Tensor], backend: str = "kernel",
                      dtype: torch.dtype | None = None) -> nn.Module:
    """quantize_vae_decoder (in `dtype`) + calibrate_decoder + the backend ('kernel' on CUDA, reference elsewhere)."""
    from .quantize import set_backend

    if not latents:
        raise ConfigError("the int8 decoder needs calibration latents (at least one batch)")
    q = quantize_vae_decoder(vae, dtype=dtype)
    calibrate_decoder(q, latents)
    set_backend(q.decoder, backend)
    return q


# ----------------------------------------------------------------------------------------------- fused blocks
# The int8 decoder's resnets and upsamplers with their elementwise passes folded into two kernels per conv
# (`--vae_fuse`, use_fused_blocks): GroupNorm's scale/shift (mixdq::group_affine), then its apply + SiLU (or the
# nearest 2x upsample) + quantize + zero pad in one kernel (mixdq::norm_act_quant), and the resnet's residual add and
# output scale in the int8 conv's epilogue. Why: in the compiled int8 decode at 1024x4 Inductor's fused apply/quantize
# kernels ran at ~2.6x a read-once-write-once pass, the residual adds and the upsample+quantize were passes of their
# own (report section 1). The classes are swapped in place (parameters and state-dict keys unchanged), as
# norms.use_group_norm swaps GroupNorms; a block runs diffusers' forward where its input is not on CUDA (or the
# Triton interpreter). Forward hooks on a fused block's convs do not fire (fused_conv runs their kernel state;
# decoder_errors hooks the FP16 decoder instead).
VAE_FUSE = ("auto", "on", "off")


def _fused_resnet_forward(self, input_tensor: torch.Tensor, temb: torch.Tensor | None = None, *args, **kwargs):
    from .kernels.backend import _use_triton, fused_conv

    if temb is not None or not _use_triton(input_tensor):
        return super(type(self), self).forward(input_tensor, temb, *args, **kwargs)
    from .kernels import ops

    def affine(norm: nn.GroupNorm, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return ops.group_affine(x, norm.num_groups, norm.weight, norm.bias, norm.eps)

    h = fused_conv(self.conv1.kernel_state, input_tensor, affine(self.norm1, input_tensor), silu=True)
    shortcut = input_tensor if self.conv_shortcut is None else self.conv_shortcut(input_tensor)
    return fused_conv(self.conv2.kernel_state, h, affine(self.norm2, h), silu=True, residual=shortcut,
                      out_scale=1.0 / self.output_scale_factor)


def _fused_upsample_forward(self, hidden_states: torch.Tensor, output_size: int | None = None, *args, **kwargs):
    from .kernels.backend import _use_triton, fused_conv

    if output_size is not None or not _use_triton(hidden_states):
        return super(type(self), self).forward(hidden_states, output_size, *args, **kwargs)
    return fused_conv(self.conv.kernel_state, hidden_states, up=2)


_FUSED_CLASSES: dict[type, type] = {}


def _fused_classes() -> dict[type, type]:
    """{diffusers class: its fused subclass} (built on first use: diffusers is imported lazily)."""
    if not _FUSED_CLASSES:
        from diffusers.models.resnet import ResnetBlock2D
        from diffusers.models.upsampling import Upsample2D

        _FUSED_CLASSES[ResnetBlock2D] = type("FusedResnetBlock2D", (ResnetBlock2D,), {"forward": _fused_resnet_forward})
        _FUSED_CLASSES[Upsample2D] = type("FusedUpsample2D", (Upsample2D,), {"forward": _fused_upsample_forward})
    return _FUSED_CLASSES


def _int_conv(m: nn.Module | None) -> bool:
    from .kernels.backend import fusable_conv
    from .qlayers import Backend, QuantLayer

    return isinstance(m, QuantLayer) and m.backend is Backend.KERNEL and m.use_wq and m.use_aq \
        and fusable_conv(m.kernel_state)


def _fusable(m: nn.Module) -> bool:
    """A decoder block whose convs all run the int8 kernels and whose forward the fused one computes exactly."""
    base = next((b for b in _fused_classes() if isinstance(m, b)), None)
    if base is None:
        return False
    if base.__name__ == "ResnetBlock2D":  # (the VAE's: no time embedding, GroupNorm + SiLU, no resampling)
        return (_int_conv(m.conv1) and _int_conv(m.conv2) and m.upsample is None and m.downsample is None
                and m.time_emb_proj is None and isinstance(m.norm1, nn.GroupNorm) and isinstance(m.norm2, nn.GroupNorm)
                and isinstance(m.nonlinearity, nn.SiLU) and not m.dropout.p)
    return (m.use_conv and not m.use_conv_transpose and m.interpolate and m.norm is None and m.name == "conv"
            and _int_conv(m.conv))


def wants_fused_blocks(choice: str, vae_kind: str, on_cuda: bool) -> bool:
    """`--vae_fuse`: on, off, or auto = the int8 decoder on CUDA (its kernels run there; elsewhere nothing to fuse)."""
    if choice not in VAE_FUSE:
        raise ValueError(f"vae_fuse={choice!r}, expected one of {VAE_FUSE}")
    return choice == "on" or (choice == "auto" and vae_kind == "int8" and on_cuda)


def use_fused_blocks(vae: nn.Module, on: bool) -> int:
    """Every fusable resnet and upsampler of `vae`'s decoder runs fused (`on`) or as diffusers wrote it, in place;
    returns how many blocks run fused. Call after the kernels are prepared (set_backend) and before compiling."""
    classes = _fused_classes()
    n = 0
    for m in vae.decoder.modules():
        base = next((b for b, f in classes.items() if type(m) in (b, f)), None)  # (never a subclass of diffusers')
        if base is None:
            continue
        fuse = on and _fusable(m)
        m.__class__ = classes[base] if fuse else base
        n += fuse
    return n


# ----------------------------------------------------------------------------------------------- subpixel upsamplers
# A nearest 2x upsample then a 3x3 conv (pad 1) is, for each output phase (a, b) in {0, 1}^2, a 2x2 conv of the input
# before the upsample with summed taps (rows i-1, i with [w0, w1 + w2] for a = 0; rows i, i+1 with [w0 + w1, w2] for
# a = 1; columns alike): 16 multiply-adds per output pixel and channel pair instead of 36, and the 4x larger
# upsampled tensor is never written (`--vae_upsample subpixel`). The FP16 decoder runs it as one transposed conv
# (stride 2, 4x4 kernel, pad 1: cuDNN); the int8 decoder as its conv kernel's SUBPIXEL mode (fused blocks only) on the
# folded W8 weights, requantized to 8 bits per phase and output channel (a weight rounding of its own: the folded
# taps sum up to four codes).
VAE_UPSAMPLE = ("auto", "nearest", "subpixel")
_PHASE_TAPS = ((1.0, 0.0, 0.0), (0.0, 1.0, 1.0)), ((1.0, 1.0, 0.0), (0.0, 0.0, 1.0))  # [phase][2x2 tap][3x3 tap]
_TRANSPOSED_TAPS = ((0.0, 0.0, 1.0), (0.0, 1.0, 1.0), (1.0, 1.0, 0.0), (1.0, 0.0, 0.0))  # [4x4 tap][3x3 tap]


def subpixel_weights(w: torch.Tensor) -> torch.Tensor:
    """[N, C, 3, 3] conv weight -> [4, N, C, 2, 2]: phase 2a + b's 2x2 kernel on the padded input from (i + a, j + b)."""
    f = torch.tensor(_PHASE_TAPS, dtype=w.dtype, device=w.device)
    return torch.einsum("aph,nchw,bqw->abncpq", f, w, f).reshape(4, *w.shape[:2], 2, 2)


def transposed_weight(w: torch.Tensor) -> torch.Tensor:
    """[N, C, 3, 3] conv weight -> [C, N, 4, 4]: conv_transpose2d(x, ., stride=2, padding=1) = conv(upsample2x(x))."""
    t = torch.tensor(_TRANSPOSED_TAPS, dtype=w.dtype, device=w.device)
    return torch.einsum("kh,nchw,lw->cnkl", t, w, t).contiguous()


def _subpixel_upsample_forward(self, hidden_states: torch.Tensor, output_size: int | None = None, *args, **kwargs):
    if output_size is not None:
        return super(type(self), self).forward(hidden_states, output_size, *args, **kwargs)
    w = self.subpixel_weight.to(hidden_states.dtype)
    b = self.conv.bias.to(hidden_states.dtype) if self.conv.bias is not None else None
    return F.conv_transpose2d(hidden_states, w, b, stride=2, padding=1)


_SUBPIXEL_CLASSES: dict[type, type] = {}


def _subpixel_class() -> tuple[type, type]:
    """(diffusers' Upsample2D, its transposed-conv subclass), built on first use."""
    if not _SUBPIXEL_CLASSES:
        from diffusers.models.upsampling import Upsample2D

        _SUBPIXEL_CLASSES[Upsample2D] = type("SubpixelUpsample2D", (Upsample2D,), {"forward": _subpixel_upsample_forward})
    return next(iter(_SUBPIXEL_CLASSES.items()))


def _int8_subpixel_state(conv: nn.Module):
    """The KernelState of a prepared int8 3x3 conv's four phase convs (8-bit, MSE ranges per phase and channel)."""
    from .kernels import packing
    from .kernels.backend import KernelState, Plan, pack_state, unpacked_weight
    from .quantizers import quantize_weight, weight_qparams

    st = conv.kernel_state
    w = unpacked_weight(st).double() * st.w_scale.double().view(-1, 1, 1, 1)  # the layer's W8 weights (symmetric)
    folded = subpixel_weights(w).reshape(4 * st.n, -1, 2, 2).float()
    scale, zp = weight_qparams(folded, 8, True, "mse")
    sub = KernelState(path="int", kind="conv", n=4 * st.n, shape=tuple(folded.shape), act1=st.act1, qt=st.qt,
                      stride=1, pad=1)
    c = folded.shape[1]
    pack_state(sub, Plan("int", "", 8, packing.group_size(8, [c]), (c,)), quantize_weight(folded, scale, zp, 8), scale,
          st.bias, st.bias.device)
    return sub


def _subpixel_kind(m: nn.Module) -> str | None:
    """'int8' / 'fp16' for a decoder upsampler that is a nearest 2x upsample + 3x3 conv (stride 1, pad 1) whose conv
    runs the int8 kernels / is an FP16 nn.Conv2d; None otherwise."""
    from .qlayers import QuantLayer

    if not (getattr(m, "use_conv", False) and not m.use_conv_transpose and m.interpolate and m.norm is None
            and m.name == "conv"):
        return None
    conv = m.conv
    if isinstance(conv, QuantLayer):  # (its fp weight may be freed once the kernels are prepared)
        return "int8" if _int_conv(conv) and conv.w_bits == 8 and tuple(conv.kernel_state.shape[2:]) == (3, 3) \
            and (conv.kernel_state.stride, conv.kernel_state.pad) == (1, 1) else None
    if tuple(conv.weight.shape[2:]) != (3, 3) or tuple(conv.stride) != (1, 1) or tuple(conv.padding) != (1, 1) \
            or conv.groups != 1:
        return None
    return "fp16" if isinstance(conv, nn.Conv2d) else None


def wants_subpixel(choice: str, on_cuda: bool) -> bool:
    """`--vae_upsample`: subpixel, nearest, or auto = subpixel on CUDA (H200, 1024x4 decode: FP16 90.1 -> 80.3 ms in
    one process, results/vae_subpixel_fp16_nvidia_h200.csv; int8 60.5 -> 54.6 ms across two runs, results/e2e_v12_*)."""
    if choice not in VAE_UPSAMPLE:
        raise ValueError(f"vae_upsample={choice!r}, expected one of {VAE_UPSAMPLE}")
    return choice == "subpixel" or (choice == "auto" and on_cuda)


def use_subpixel_upsample(vae: nn.Module, on: bool) -> int:
    """Every eligible upsampler of `vae`'s decoder (_subpixel_kind) runs as its phase convs (`on`) or as diffusers
    wrote it, in place; returns how many. The int8 decoder's take effect in its fused blocks (use_fused_blocks: call
    this after set_backend, before compiling); state-dict keys are unchanged either way. The folded weights are built
    once per layer and kept when switched off: switching back and forth never moves a tensor that a compiled graph or
    a captured CUDA graph of another Runner on the same decoder may hold."""
    base, sub_cls = _subpixel_class()
    n = 0
    for m in vae.decoder.modules():
        kind = _subpixel_kind(m) if isinstance(m, base) else None
        if kind == "int8":
            st, cached = m.conv.kernel_state, getattr(m.conv, "subpixel_cache", None)
            if on and (cached is None or cached[0] is not st):  # (kernels prepared again: fold their weights again)
                m.conv.subpixel_cache = cached = (st, _int8_subpixel_state(m.conv))
            st.sub = cached[1] if on else None
            kind = kind if type(m) is _fused_classes()[base] else None  # (unfused: still upsample + 3x3 conv)
        elif kind == "fp16" or type(m) is sub_cls:
            if on and kind == "fp16" and "subpixel_weight" not in m._buffers:
                m.register_buffer("subpixel_weight", transposed_weight(m.conv.weight.detach()), persistent=False)
            m.__class__ = sub_cls if on and kind == "fp16" else base
        n += on and kind is not None
    return n


# ----------------------------------------------------------------------------------------------- attention
# How a decoder's self-attention runs (`--vae_attention`): `auto` measures PyTorch's SDPA against `math` (explicit
# score matrices) per decode bucket on CUDA and keeps the faster; `sdpa` always SDPA (diffusers' default).
# Why: SDPA's flash and cuDNN kernels take head dims up to 256; the SDXL VAE's mid-block attention has one head of
# 512, so SDPA falls back to its memory-efficient kernel (3.7 ms of a 1024x1 FP16 image on the H200,
# results/e2e_budget1_w8a8_profile_kernels_nvidia_h200.csv), where two cuBLAS GEMMs and a softmax may be faster.
VAE_ATTENTION = ("auto", "sdpa")
ATTENTION_MARGIN = 0.05  # `math` must beat SDPA by this much


@torch.library.custom_op("mixdq::attention_math", mutates_args=())
def attention_math(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """softmax(q k^T / sqrt(d)) v for [B, heads, L, d] tensors with explicit score matrices, one image at a time
    (an image's scores at 1024 px: 16384^2 fp16 values, 512 MB). A custom op, so torch.compile keeps it as written
    instead of matching the pattern back to SDPA."""
    out = torch.empty_like(q)
    scale = q.shape[-1] ** -0.5
    for i in range(q.shape[0]):
        scores = torch.matmul(q[i] * scale, k[i].transpose(-1, -2))
        if scores.is_cuda:
            from .kernels.triton_kernels import softmax_

            probs = softmax_(scores)  # in place: one read and one write of the scores
        else:
            probs = torch.softmax(scores, dim=-1)  # accumulates in fp32 for fp16 input, as the kernel does
        out[i] = torch.matmul(probs, v[i])
    return out


@attention_math.register_fake
def _(q, k, v):
    return torch.empty_like(q)


class DecoderAttnProcessor:
    """diffusers' self-attention of a VAE block (group norm, q/k/v, attention, output projection, residual,
    rescale: as AttnProcessor2_0 computes it) with the attention op chosen per query shape in `paths`
    ("math" -> attention_math; anything else SDPA). Any other use of the block (cross-attention, a mask, spatial
    norm, q/k norms, non-NCHW input) goes to diffusers' AttnProcessor2_0 unchanged."""

    def __init__(self):
        from diffusers.models.attention_processor import AttnProcessor2_0

        self.paths: dict[tuple[int, ...], str] = {}
        self.times: dict[tuple[int, ...], dict[str, float]] = {}  # microseconds measured per path, per shape
        self.fallback = AttnProcessor2_0()

    def __call__(self, attn, hidden_states: torch.Tensor, encoder_hidden_states=None, attention_mask=None,
                 temb=None, *args, **kwargs) -> torch.Tensor:
        if encoder_hidden_states is not None or attention_mask is not None or attn.spatial_norm is not None \
                or hidden_states.ndim != 4 or attn.norm_q is not None or attn.norm_k is not None:
            return self.fallback(attn, hidden_states, encoder_hidden_states, attention_mask, temb, *args, **kwargs)
        residual = hidden_states
        b, c, h, w = hidden_states.shape
        x = hidden_states.view(b, c, h * w).transpose(1, 2)
        if attn.group_norm is not None:
            x = attn.group_norm(x.transpose(1, 2)).transpose(1, 2)
        heads = attn.heads
        q, k, v = (proj(x) for proj in (attn.to_q, attn.to_k, attn.to_v))
        d = k.shape[-1] // heads
        q, k, v = (t.view(b, -1, heads, d).transpose(1, 2) for t in (q, k, v))
        if self.paths.get(tuple(q.shape)) == "math":
            out = attention_math(q, k, v)
        else:
            out = F.scaled_dot_product_attention(q, k, v)
        out = out.transpose(1, 2).reshape(b, -1, heads * d).to(q.dtype)
        out = attn.to_out[1](attn.to_out[0](out))
        out = out.transpose(-1, -2).reshape(b, c, h, w)
        if attn.residual_connection:
            out = out + residual
        return out / attn.rescale_output_factor


def decoder_attentions(vae: nn.Module) -> list[nn.Module]:
    """The decoder's self-attention modules (diffusers Attention; the SDXL VAE: its mid block's one)."""
    from diffusers.models.attention_processor import Attention

    return [m for m in vae.decoder.modules() if isinstance(m, Attention)]


def install_decoder_attention(vae: nn.Module) -> list[DecoderAttnProcessor]:
    """Give every decoder attention a DecoderAttnProcessor (idempotent; SDPA until a plan says otherwise)."""
    procs = []
    for attn in decoder_attentions(vae):
        if not isinstance(attn.processor, DecoderAttnProcessor):
            attn.set_processor(DecoderAttnProcessor())
        procs.append(attn.processor)
    return procs


def _query_shape(attn, latent_shape: tuple[int, ...]) -> tuple[int, int, int, int]:
    """The query shape at a mid-block attention (it runs at the latent's resolution) for latents [B, C, H, W]."""
    b, _, h, w = latent_shape
    return (b, attn.heads, h * w, attn.inner_dim // attn.heads)


def measure_attention(shape: tuple[int, ...], device, dtype=torch.float16) -> dict[str, float]:
    """GPU microseconds of SDPA and of attention_math on random q/k/v of `shape` (CUDA-graph replays)."""
    from .kernels.launch import graph_bench_ms

    q, k, v = (torch.randn(shape, device=device, dtype=dtype) for _ in range(3))
    return {"sdpa": graph_bench_ms(lambda: F.scaled_dot_product_attention(q, k, v)) * 1e3,
            "math": graph_bench_ms(lambda: attention_math(q, k, v)) * 1e3}


def plan_decoder_attention(vae: nn.Module, latent_shape: tuple[int, ...],
                           measure: Callable[[tuple, object], dict] | None = None) -> list[dict]:
    """At a decode bucket's first call: time SDPA and `math` for each decoder attention at its query shape, keep
    `math` where it wins by more than ATTENTION_MARGIN (before compile and capture: the choice is a static shape
    test). Idempotent per shape; returns one row per attention (query shape, both times, the path)."""
    measure = measure or (lambda shape, dev: measure_attention(shape, dev, vae.dtype))
    rows = []
    for attn, proc in zip(decoder_attentions(vae), install_decoder_attention(vae)):
        shape = _query_shape(attn, latent_shape)
        if shape not in proc.paths:
            times = measure(shape, next(attn.parameters()).device)
            proc.paths[shape] = "math" if times["math"] * (1 + ATTENTION_MARGIN) < times["sdpa"] else "sdpa"
            proc.times[shape] = times
        t = proc.times.get(shape, {})
        rows.append({"q_shape": "x".join(map(str, shape)), "sdpa_us": t.get("sdpa", math.nan),
                     "math_us": t.get("math", math.nan), "path": proc.paths[shape]})
    return rows


def attention_path(vae: nn.Module, latent_shape: tuple[int, ...]) -> str:
    """The decoder's attention path at this latent shape: `sdpa`, `math` (either planned), or `none` (no attention,
    e.g. the tiny decoder); several attentions are joined with '+'."""
    paths = [getattr(a.processor, "paths", {}).get(_query_shape(a, latent_shape), "sdpa")
             for a in decoder_attentions(vae)]
    return "+".join(paths) or "none"


# ----------------------------------------------------------------------------------------------- errors
def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.float() - b.float()).norm() / b.float().norm().clamp_min(1e-12))


@torch.no_grad()
def decoder_errors(vae_ref: nn.Module, vae_q: nn.Module, latents: torch.Tensor) -> list[dict]:
    """Relative L2 error of the int8 decoder against the FP16 one: per quantized layer (the layer alone, fed the
    input the FP16 decoder gives that layer, so errors do not accumulate; an upsampler running as phase convs,
    use_subpixel_upsample, as its whole block: `<name>.conv (subpixel)`) and per image (the whole decode). The FP16
    reference decodes as diffusers wrote it (its own phase-conv form, if on, is switched off meanwhile)."""
    from .qlayers import QuantLayer
    from .runtime import decode_images

    base, sub_cls = _subpixel_class()
    phase = {n: m for n, m in vae_q.decoder.named_modules() if type(m) is _fused_classes()[base]
             and getattr(m.conv, "kernel_state", None) is not None and m.conv.kernel_state.sub is not None}
    qlayers = {n: m for n, m in vae_q.decoder.named_modules() if isinstance(m, QuantLayer)
               and n.rpartition(".")[0] not in phase}
    ref_mods = dict(vae_ref.decoder.named_modules())
    inputs: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}

    def keep(name: str):
        def hook(mod, args, out) -> None:  # returns None: the output is left as it is
            inputs.setdefault(name, (args[0], out))
        return hook

    ref_subpixel = any(type(m) is sub_cls for m in vae_ref.decoder.modules())
    use_subpixel_upsample(vae_ref, False)  # (its convs' hooks fire only in diffusers' forward)
    hooks = [ref_mods[n].register_forward_hook(keep(n)) for n in [*qlayers, *phase]]
    try:
        ref = decode_images(vae_ref, latents).float()
    finally:
        for h in hooks:
            h.remove()
        use_subpixel_upsample(vae_ref, ref_subpixel)
    rows = [{"kind": "layer", "name": f"decoder.{n}" + (".conv (subpixel)" if n in phase else ""),
             "rel_err": _rel(m(inputs[n][0]), inputs[n][1]), "psnr_db": float("nan")}
            for n, m in {**qlayers, **phase}.items() if n in inputs]
    out = decode_images(vae_q, latents).float()
    for i in range(out.shape[0]):
        mse = float((out[i] - ref[i]).pow(2).mean())
        rows.append({"kind": "image", "name": f"image {i}", "rel_err": _rel(out[i], ref[i]),
                     "psnr_db": float("inf") if mse == 0 else float(10 * np.log10(1.0 / mse))})
    return rows
