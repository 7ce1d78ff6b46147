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
import os

import numpy as np
import torch
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


# ----------------------------------------------------------------------------------------------- errors
def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.float() - b.float()).norm() / b.float().norm().clamp_min(1e-12))


@torch.no_grad()
def decoder_errors(vae_ref: nn.Module, vae_q: nn.Module, latents: torch.Tensor) -> list[dict]:
    """Relative L2 error of the int8 decoder against the FP16 one: per quantized layer (the layer alone, fed the
    input the FP16 decoder gives that layer, so errors do not accumulate) and per image (the whole decode)."""
    from .qlayers import QuantLayer
    from .runtime import decode_images

    qlayers = {n: m for n, m in vae_q.decoder.named_modules() if isinstance(m, QuantLayer)}
    ref_mods = dict(vae_ref.decoder.named_modules())
    inputs: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}

    def keep(name: str):
        def hook(mod, args, out) -> None:  # returns None: the output is left as it is
            inputs.setdefault(name, (args[0], out))
        return hook

    hooks = [ref_mods[n].register_forward_hook(keep(n)) for n in qlayers]
    try:
        ref = decode_images(vae_ref, latents).float()
    finally:
        for h in hooks:
            h.remove()
    rows = [{"kind": "layer", "name": f"decoder.{n}", "rel_err": _rel(m(inputs[n][0]), inputs[n][1]),
             "psnr_db": float("nan")} for n, m in qlayers.items() if n in inputs]
    out = decode_images(vae_q, latents).float()
    for i in range(out.shape[0]):
        mse = float((out[i] - ref[i]).pow(2).mean())
        rows.append({"kind": "image", "name": f"image {i}", "rel_err": _rel(out[i], ref[i]),
                     "psnr_db": float("inf") if mse == 0 else float(10 * np.log10(1.0 / mse))})
    return rows
