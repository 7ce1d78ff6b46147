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
                      backend: str = "fake") -> dict:
    """Quantize pipe.unet in place; load `ckpt` if it exists, else calibrate and save it there.

    Returns the bit summary plus where the parameters came from.
    """
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
    set_backend(pipe.unet, backend)
    return {**bit_summary(pipe.unet), "origin": origin, **{f"{k}_config": v for k, v in spec.sources.items()}}


def quantized_copy(pipe, mode: str, model_name: str, ckpt: str | Path | None, calib_prompts: list[str],
                   calib_seed: int, height: int, width: int, steps: int, guidance_scale: float = 0.0,
                   backend: str = "fake"):
    """A MixDQ-quantized copy of pipe's UNet for `mode` (w<b>a8), sharing pipe's text encoders, VAE and scheduler.

    Returns (a pipeline-like namespace that `Runner` accepts, quantize_pipeline's summary); `pipe` is untouched."""
    import copy
    from types import SimpleNamespace

    req = QuantRequest.from_mode(mode, model_name)
    if req is None:
        raise ConfigError(f"mode {mode!r} is not a quantized mode")
    parts = ("tokenizer", "tokenizer_2", "text_encoder", "text_encoder_2", "vae", "scheduler")
    qpipe = SimpleNamespace(**{k: getattr(pipe, k) for k in parts}, unet=copy.deepcopy(pipe.unet))
    info = quantize_pipeline(qpipe, req, ckpt, calib_prompts, calib_seed, height, width, steps, guidance_scale,
                             backend=backend)
    return qpipe, info
