"""A MixDQ-quantized pipeline from bit configs: resolve configs, quantize, load or calibrate, pick backend.

The one place scripts go through to get a quantized model (quant_txt2img, latency_probe,
eval_grid, load_test_stub --live), so they all read bit configs and checkpoints the same way.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from . import REPO_ROOT, repo_path
from .bitconfig import config_dir, read_bit_config, read_protect_list, weight_config_for_bits
from .calibrate import calibrate
from .checkpoint import load_quant_params, save_quant_params
from .csvio import clean_stale_temps
from .errors import ConfigError
from .fusion import unfuse_qkv
from .modes import FP16, MIXDQ, MIXDQ_CONFIG, name_for_bits, uniform_mode_bits
from .quantize import QuantSpec, bit_summary, make_spec, quantize_unet, set_backend, uniform_bits
from .quantized_io import save_quantized as save_quantized_folder
from .runtime import Runner


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
        wbits, abits = uniform_mode_bits(mode)
        if mode == FP16:
            return None
        return cls(model_name=model_name, wbits=wbits if not kw.get("config_weight_mp") else None, abits=abits, **kw)


def _shown(path: str | Path) -> str:
    """A path as the user passed it when inside the repo (repo-relative), else absolute."""
    p = repo_path(path)
    return str(p.relative_to(REPO_ROOT)) if p.is_relative_to(REPO_ROOT) else str(p)


def weight_config_path(req: QuantRequest) -> Path:
    if req.config_weight_mp:
        return repo_path(req.config_weight_mp)
    if req.wbits is not None:
        return weight_config_for_bits(req.model_name, req.wbits)
    raise ConfigError("give --wbits N or --config_weight_mp <yaml>")


def config_sources(req: QuantRequest) -> dict[str, str]:
    """The files (or uniform bits) a request quantizes with, as recorded in provenance: weight, act, act_protect."""
    return {"weight": _shown(weight_config_path(req)),
            "act": _shown(req.config_act_mp) if req.config_act_mp else f"uniform {req.abits}",
            "act_protect": _shown(req.act_protect) if req.act_protect else ""}


def request_for(mode: str, model_name: str, **kw) -> QuantRequest | None:
    """The QuantRequest of a mode name (quant_utils/modes.py): fp16 (None), a uniform w<b>a<b> or `mixdq`."""
    if mode == MIXDQ:
        files = {k: str(config_dir(model_name, v.split("/")[0]) / v.split("/")[1]) for k, v in MIXDQ_CONFIG.items()}
        return QuantRequest(model_name=model_name, abits=None, **files, **kw)
    return QuantRequest.from_mode(mode, model_name, **kw)


def pipeline_view(pipe, unet):
    """What a Runner needs of a pipeline, with another UNet: text encoders, tokenizers, VAE, scheduler shared."""
    from types import SimpleNamespace

    parts = ("tokenizer", "tokenizer_2", "text_encoder", "text_encoder_2", "vae", "scheduler")
    return SimpleNamespace(**{k: getattr(pipe, k) for k in parts}, unet=unet)


def folder_summary(unet) -> dict:
    """What quantize_pipeline reports, for a UNet loaded from a quantized folder (quantized_io.load_quantized)."""
    sources = unet.mixdq_spec.sources
    return {**bit_summary(unet), "origin": f"loaded quantized folder {unet.mixdq_folder}",
            **{f"{k}_config": sources.get(k, "") for k in ("weight", "act", "act_protect")}}


def folder_settings(config: dict) -> dict:
    """The quantization settings a quantized folder's config.json records, as image folders record them."""
    q, src = config["quantization"], config.get("sources", {})
    return dict(weight_config=src.get("weight", ""), act_config=src.get("act", ""), act_protect=src.get("act_protect", ""),
                w_method=q["w_method"], a_method=q["a_method"], bos=q["bos"], split=q["split"])


def mode_label(unet) -> str:
    """A quantized UNet's precision as a mode name: 'w4a8' for uniform bits, else 'w3.66a7.38' (average weight bits
    over parameters, activation bits over layers)."""
    spec, s = unet.mixdq_spec, bit_summary(unet)
    w, a = set(spec.weight_bits.values()), set(spec.act_bits.values())
    if len(w) == 1 and len(a) == 1 and not spec.act_protect:
        return name_for_bits(w.pop(), a.pop())
    return name_for_bits(float(s["avg_wbits"]), float(s["avg_abits"]))


def resolve_spec(unet, req: QuantRequest) -> QuantSpec:
    """Read and validate the bit configs a request names against this UNet."""
    wpath = weight_config_path(req)
    weight_cfg = read_bit_config(wpath)
    if not req.config_weight_mp:
        widths = sorted(set(weight_cfg.values()))
        kind = (f"uniform {widths[0]}-bit" if len(widths) == 1 else
                f"MixDQ's mixed-precision config (layers at {'/'.join(map(str, widths))} bits; average below), "
                f"not uniform {req.wbits}-bit")
        print(f"--wbits {req.wbits}: using {_shown(wpath)}: {kind}")
    if req.config_act_mp:
        act_cfg = read_bit_config(req.config_act_mp)
    elif req.abits is not None:
        act_cfg = {n: req.abits for n in uniform_bits(unet, req.abits)}
    else:
        act_cfg = None
    protect = read_protect_list(req.act_protect) if req.act_protect else []
    if req.act_protect and not req.config_act_mp:
        act_cfg = {k: v for k, v in (act_cfg or {}).items() if k not in set(protect)}
    sources = config_sources(req)
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
    unfuse_qkv(pipe.unet)  # a copy of a UNet a compiled FP16 Runner fused: the bit configs name the unfused layers
    spec = resolve_spec(pipe.unet, req)
    ckpt = Path(ckpt) if ckpt else None
    if ckpt is not None and ckpt.parent.is_dir():
        clean_stale_temps(ckpt.parent)  # a save killed mid-write (kill -9) leaves its temp file behind
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


def quantized_copy(pipe, mode: str, model_name: str, ckpt: str | Path | None, calib_prompts: list[str],
                   calib_seed: int, height: int, width: int, steps: int, guidance_scale: float = 0.0,
                   backend: str = "fake"):
    """A MixDQ-quantized copy of pipe's UNet for `mode` (w<b>a<b> or mixdq), sharing pipe's text encoders, VAE and
    scheduler (pipeline_view). Returns (that view, which `Runner` accepts, quantize_pipeline's summary); `pipe` is
    untouched."""
    import copy

    req = request_for(mode, model_name)
    if req is None:
        raise ConfigError(f"mode {mode!r} is not a quantized mode")
    qpipe = pipeline_view(pipe, copy.deepcopy(pipe.unet))
    info = quantize_pipeline(qpipe, req, ckpt, calib_prompts, calib_seed, height, width, steps, guidance_scale,
                             backend=backend)
    return qpipe, info
