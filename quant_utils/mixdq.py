"""A MixDQ-quantized pipeline from bit configs: resolve configs, quantize, load or calibrate, pick backend.

The one place scripts go through to get a quantized model (quant_txt2img, latency_probe,
eval_grid, load_test_stub --live), so they all read bit configs and checkpoints the same way.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from . import repo_path
from .bitconfig import read_bit_config, read_protect_list, weight_config_for_bits
from .calibrate import calibrate
from .checkpoint import load_quant_params, save_quant_params
from .pipeline import ConfigError
from .quantize import QuantSpec, bit_summary, make_spec, quantize_unet, set_backend, uniform_bits
from .quantized_io import save_quantized as save_quantized_folder
from .runtime import Runner

MODES = {"fp16": (16, 16), "w8a8": (8, 8), "w6a8": (6, 8), "w4a8": (4, 8)}


@dataclass(frozen=True)
class QuantRequest:
    """What the user asked for on the command line."""
    model_name: str                    # config name: picks the shipped bit-config folder
    wbits: int | None = None           # --wbits N: weight_N.00.yaml or uniform_N.yaml
    abits: int | None = 8              # uniform activation bits when no act config (None: FP activations)
    config_weight_mp: str | None = None
    config_act_mp: str | None = None
    act_protect: str | None = None
    strict: bool = False
    w_method: str = "mse"
    a_method: str = "mse"
    w_symmetric: bool = True
    bos: bool = True
    split: bool = True

    @classmethod
    def from_mode(cls, mode: str, model_name: str, **kw) -> "QuantRequest | None":
        if mode not in MODES:
            raise ConfigError(f"mode {mode!r}: expected one of {sorted(MODES)}")
        if mode == "fp16":
            return None
        wbits, abits = MODES[mode]
        return cls(model_name=model_name, wbits=wbits if not kw.get("config_weight_mp") else None, abits=abits, **kw)


def folder_summary(unet) -> dict:
    """What quantize_pipeline reports, for a UNet loaded from a quantized folder (quantized_io.load_quantized)."""
    sources = unet.mixdq_spec.sources
    return {**bit_summary(unet), "origin": f"loaded quantized folder {unet.mixdq_folder}",
            **{f"{k}_config": sources.get(k, "") for k in ("weight", "act", "act_protect")}}


def mode_label(unet) -> str:
    """A quantized UNet's precision as a mode name: 'w4a8' for uniform bits, else 'w3.66a7.38' (average weight bits
    over parameters, activation bits over layers)."""
    spec, s = unet.mixdq_spec, bit_summary(unet)
    w, a = set(spec.weight_bits.values()), set(spec.act_bits.values())
    if len(w) == 1 and len(a) == 1 and not spec.act_protect:
        return f"w{w.pop()}a{a.pop()}"
    return f"w{s['avg_wbits']:.2f}a{s['avg_abits']:.2f}"


def resolve_spec(unet, req: QuantRequest) -> QuantSpec:
    """Read and validate the bit configs a request names against this UNet."""
    if req.config_weight_mp:
        wpath = repo_path(req.config_weight_mp)
    elif req.wbits is not None:
        wpath = weight_config_for_bits(req.model_name, req.wbits)
        print(f"--wbits {req.wbits}: using {wpath.relative_to(repo_path('.')) if wpath.is_relative_to(repo_path('.')) else wpath}")
    else:
        raise ConfigError("give --wbits N or --config_weight_mp <yaml>")
    weight_cfg = read_bit_config(wpath)
    if req.config_act_mp:
        act_cfg = read_bit_config(req.config_act_mp)
    elif req.abits is not None:
        act_cfg = {n: req.abits for n in uniform_bits(unet, req.abits)}
    else:
        act_cfg = None
    protect = read_protect_list(req.act_protect) if req.act_protect else []
    if req.act_protect and not req.config_act_mp:
        act_cfg = {k: v for k, v in (act_cfg or {}).items() if k not in set(protect)}
    sources = {"weight": str(wpath), "act": str(req.config_act_mp or f"uniform {req.abits}"),
               "act_protect": str(req.act_protect or "")}
    return make_spec(unet, weight_cfg, act_cfg, protect, strict=req.strict, sources=sources,
                     w_symmetric=req.w_symmetric, w_method=req.w_method, a_method=req.a_method,
                     bos=req.bos, split=req.split)


def quantize_pipeline(pipe, req: QuantRequest, ckpt: str | Path | None, calib_prompts: list[str], calib_seed: int,
                      height: int, width: int, steps: int, guidance_scale: float = 0.0, calib_batch: int = 4,
                      backend: str = "fake", save_quantized: str | Path | None = None) -> dict:
    """Quantize pipe.unet in place; load `ckpt` if it exists, else calibrate and save it there; with
    `save_quantized`, also write the quantized folder (packed weights, quantized_io.py) before the backend switch.

    A UNet loaded from a quantized folder (--quantized) is used as it is: its bit configs are the folder's.
    Returns the bit summary plus where the parameters came from.
    """
    if getattr(pipe.unet, "mixdq_folder", None) is not None:
        if save_quantized:
            raise ConfigError("this UNet was loaded from a quantized folder: it is already saved (drop --save_quantized)")
        return folder_summary(pipe.unet)
    spec = resolve_spec(pipe.unet, req)
    ckpt = Path(ckpt) if ckpt else None
    quantize_unet(pipe.unet, spec, search=not (ckpt is not None and ckpt.is_file()))
    if ckpt is not None and ckpt.is_file():
        load_quant_params(pipe.unet, ckpt)
        origin = f"loaded {ckpt}"
    else:
        n = calibrate(Runner(pipe), calib_prompts, calib_seed, height, width, steps, guidance_scale, calib_batch)
        origin = f"calibrated {n} layers on {len(calib_prompts)} prompts"
        if ckpt is not None:
            save_quant_params(pipe.unet, ckpt, extra={"calib_prompts": len(calib_prompts), "calib_res": [height, width]})
            origin += f", saved {ckpt}"
    if save_quantized:
        save_quantized_folder(pipe.unet, save_quantized, created={
            "model": req.model_name, "calib_prompts": len(calib_prompts), "calib_res": [height, width],
            "params_from": origin})
        origin += f"; quantized folder written to {save_quantized}"
    set_backend(pipe.unet, backend)
    return {**bit_summary(pipe.unet), "origin": origin, **{f"{k}_config": v for k, v in spec.sources.items()}}
