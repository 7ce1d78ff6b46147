"""Model configs and loading: the real, the tiny, and the full-size random-weight SDXL-Turbo.

`load_model_config(path)` reads and validates a config YAML; `build_pipeline(cfg, ...)` returns a
diffusers `StableDiffusionXLPipeline` with SDXL-Turbo's scheduler settings. Nothing here touches
the network unless the real model is asked for and the cache allows it.
"""
from __future__ import annotations

import copy
import gzip
import json
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import torch
import yaml

from . import repo_path
from .errors import ConfigError, WeightsNotFoundError, reading  # noqa: F401 - re-exported

DTYPES = {"float16": torch.float16, "bfloat16": torch.bfloat16, "float32": torch.float32}
SOURCES = ("pretrained", "tiny")
MAX_STEPS = 4
COMPONENTS = ("unet", "vae", "text_encoder", "text_encoder_2")
OPTIONAL_COMPONENTS = ("vae_tiny",)  # the tiny decoder (--vae tiny): architecture of madebyollin/taesdxl

_MODEL_KEYS = {"source", "id", "path", "revision", "variant", "arch_dir", "dtype", "seed", "overrides", "tiny_vae_id"}
_SAMPLING_KEYS = {"steps", "guidance_scale", "height", "width"}


@dataclass(frozen=True)
class ModelConfig:
    path: str
    source: str
    id: str | None
    local_path: str | None
    revision: str | None
    variant: str | None
    arch_dir: Path
    dtype: str
    seed: int
    overrides: dict = field(default_factory=dict)
    tiny_vae_id: str = "madebyollin/taesdxl"  # --vae tiny with real weights
    steps: int = 1
    guidance_scale: float = 0.0
    height: int = 512
    width: int = 512

    @property
    def torch_dtype(self) -> torch.dtype:
        return DTYPES[self.dtype]

    @property
    def name(self) -> str:
        return Path(self.path).stem


def check_resolution(height: int, width: int) -> None:
    """SDXL's VAE downsamples by 8 and the UNet by 4 more: sides must be positive multiples of 8."""
    for side, v in (("height", height), ("width", width)):
        if not isinstance(v, int) or v <= 0 or v % 8:
            raise ConfigError(f"{side}={v}: image sides must be positive multiples of 8 (e.g. 512, 768, 1024)")


def load_model_config(path: str | Path) -> ModelConfig:
    """Read a model config YAML; unknown keys and bad values are errors that name the key."""
    p = repo_path(path)
    if not p.is_file():
        raise ConfigError(f"model config {p} does not exist (try configs/stable-diffusion/sdxl_turbo_tiny.yaml)")
    with reading(p, "model config"):
        raw = yaml.safe_load(p.read_text()) or {}
    if not isinstance(raw, dict) or set(raw) - {"model", "sampling"}:
        raise ConfigError(f"{p}: top-level keys must be 'model' and 'sampling', got {sorted(raw) if isinstance(raw, dict) else raw!r}")
    model, sampling = raw.get("model") or {}, raw.get("sampling") or {}
    for section, keys, allowed in (("model", model, _MODEL_KEYS), ("sampling", sampling, _SAMPLING_KEYS)):
        unknown = set(keys) - allowed
        if unknown:
            raise ConfigError(f"{p}: unknown key(s) {sorted(unknown)} in '{section}' (allowed: {sorted(allowed)})")
    source = model.get("source", "pretrained")
    if source not in SOURCES:
        raise ConfigError(f"{p}: model.source={source!r}, expected one of {SOURCES}")
    dtype = model.get("dtype", "float16")
    if dtype not in DTYPES:
        raise ConfigError(f"{p}: model.dtype={dtype!r}, expected one of {sorted(DTYPES)}")
    overrides = model.get("overrides") or {}
    if set(overrides) - set(COMPONENTS + OPTIONAL_COMPONENTS):
        raise ConfigError(f"{p}: model.overrides may only name {COMPONENTS + OPTIONAL_COMPONENTS}, got {sorted(overrides)}")
    cfg = ModelConfig(
        path=str(p), source=source, id=model.get("id"), local_path=model.get("path"),
        revision=model.get("revision"), variant=model.get("variant"),
        arch_dir=repo_path(model.get("arch_dir", "configs/stable-diffusion/sdxl_turbo_arch")),
        dtype=dtype, seed=int(model.get("seed", 0)), overrides=overrides,
        tiny_vae_id=str(model.get("tiny_vae_id", "madebyollin/taesdxl")),
        steps=int(sampling.get("steps", 1)), guidance_scale=float(sampling.get("guidance_scale", 0.0)),
        height=int(sampling.get("height", 512)), width=int(sampling.get("width", 512)),
    )
    check_steps(cfg.steps)
    check_resolution(cfg.height, cfg.width)
    if source == "pretrained" and not (cfg.id or cfg.local_path):
        raise ConfigError(f"{p}: a pretrained model needs model.id or model.path")
    return cfg


def check_steps(steps: int) -> None:
    if not 1 <= steps <= MAX_STEPS:
        raise ConfigError(f"steps={steps}: SDXL-Turbo runs 1 to {MAX_STEPS} steps")


# --------------------------------------------------------------------------- tokenizer
def clip_bpe() -> tuple[dict[str, int], list[str]]:
    """CLIP's real BPE vocabulary and merges, from the copy open_clip ships in its wheel.

    open_clip's `bpe_simple_vocab_16e6.txt.gz` is the BPE table of OpenAI's CLIP and of SDXL's
    two tokenizers; the vocabulary is laid out exactly as CLIP's (bytes, bytes+</w>, merges, then
    the two special tokens), so ids match the real tokenizer's.
    """
    import open_clip.tokenizer as oct

    merges = gzip.open(oct.default_bpe()).read().decode("utf-8").split("\n")[1:49152 - 256 - 2 + 1]
    byte_chars = list(oct.bytes_to_unicode().values())
    tokens = byte_chars + [c + "</w>" for c in byte_chars] + ["".join(m.split()) for m in merges]
    tokens += ["<|startoftext|>", "<|endoftext|>"]
    return {tok: i for i, tok in enumerate(tokens)}, merges


def build_clip_tokenizers():
    """The two SDXL tokenizers, built offline (tokenizer_2 pads with '!' as SDXL's does)."""
    import inspect

    from transformers import CLIPTokenizer

    vocab, merges = clip_bpe()
    if "vocab" in inspect.signature(CLIPTokenizer.__init__).parameters:  # transformers >= 5
        make = lambda **kw: CLIPTokenizer(vocab=vocab, merges=[tuple(m.split()) for m in merges], model_max_length=77, **kw)  # noqa: E731
        return make(), make(pad_token="!")
    with tempfile.TemporaryDirectory() as d:  # transformers 4 reads files
        (Path(d) / "vocab.json").write_text(json.dumps(vocab))
        (Path(d) / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n")
        kw = dict(vocab_file=f"{d}/vocab.json", merges_file=f"{d}/merges.txt", model_max_length=77)
        return CLIPTokenizer(**kw), CLIPTokenizer(**kw, pad_token="!")


# --------------------------------------------------------------------------- builders
def _deep_update(base: dict, upd: dict) -> dict:
    out = copy.deepcopy(base)
    for k, v in upd.items():
        out[k] = _deep_update(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def architecture_configs(cfg: ModelConfig) -> dict[str, dict]:
    """Full-size component configs from arch_dir, with the config's overrides applied."""
    out = {}
    for comp in COMPONENTS + ("scheduler",) + OPTIONAL_COMPONENTS:
        f = cfg.arch_dir / f"{comp}.json"
        if not f.is_file():
            if comp in OPTIONAL_COMPONENTS:
                continue
            raise ConfigError(f"architecture config {f} is missing")
        out[comp] = _deep_update(json.loads(f.read_text()), cfg.overrides.get(comp, {}))
    return out


def make_scheduler(scheduler_cfg: dict | None = None):
    """SDXL-Turbo's scheduler: Euler ancestral with trailing timestep spacing."""
    from diffusers import EulerAncestralDiscreteScheduler

    if scheduler_cfg is None:
        scheduler_cfg = json.loads((repo_path("configs/stable-diffusion/sdxl_turbo_arch") / "scheduler.json").read_text())
    sched_cfg = {k: v for k, v in scheduler_cfg.items() if not k.startswith("_")}
    return EulerAncestralDiscreteScheduler.from_config({**sched_cfg, "timestep_spacing": "trailing"})


def build_unet_skeleton(cfg: ModelConfig):
    """The config's UNet on the meta device: its structure and layer names, no memory, no weights."""
    from diffusers import UNet2DConditionModel

    arch = architecture_configs(cfg)["unet"]
    with torch.device("meta"):
        return UNet2DConditionModel.from_config({k: v for k, v in arch.items() if not k.startswith("_")})


def build_random_pipeline(cfg: ModelConfig, device: str | torch.device = "cpu", dtype: torch.dtype | None = None,
                          unet=None):
    """SDXL-Turbo architecture (tiny or full size) with random weights drawn from cfg.seed, offline.

    `unet`: use this UNet (e.g. one loaded from a quantized folder, already on `device`) instead of drawing one;
    the other components' weights are the same either way (they are drawn from their own seed)."""
    from diffusers import AutoencoderKL, StableDiffusionXLPipeline, UNet2DConditionModel
    from diffusers.utils import logging as diffusers_logging
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    diffusers_logging.set_verbosity_error()  # silences a casting notice that does not apply to random weights

    dtype = dtype or cfg.torch_dtype
    arch = architecture_configs(cfg)
    strip = lambda d: {k: v for k, v in d.items() if not k.startswith("_") and k != "architectures"}  # noqa: E731
    with torch.device(device):  # initialise where the weights will live: full size on a GPU takes seconds, not minutes
        if unet is None:
            torch.manual_seed(cfg.seed)
            unet = UNet2DConditionModel.from_config(strip(arch["unet"])).to(dtype=dtype)
        torch.manual_seed(cfg.seed + 1)
        vae = AutoencoderKL.from_config(strip(arch["vae"]))
        te1 = CLIPTextModel(CLIPTextConfig(**strip(arch["text_encoder"])))
        te2 = CLIPTextModelWithProjection(CLIPTextConfig(**strip(arch["text_encoder_2"])))
    tok1, tok2 = build_clip_tokenizers()
    return StableDiffusionXLPipeline(  # the UNet is not cast here: a quantized one keeps its float32 quantizer params
        vae=vae.to(dtype=dtype), text_encoder=te1.to(dtype=dtype), text_encoder_2=te2.to(dtype=dtype),
        tokenizer=tok1, tokenizer_2=tok2, unet=unet, scheduler=make_scheduler(arch["scheduler"]),
    )


def build_pretrained_pipeline(cfg: ModelConfig, device: str | torch.device = "cpu", dtype: torch.dtype | None = None,
                              unet=None):
    """The real SDXL-Turbo from a local folder or the local HF cache; a clear error if absent.

    `unet`: use this UNet (already on `device`): the model's unet subfolder is then not read."""
    from diffusers import StableDiffusionXLPipeline

    dtype = dtype or cfg.torch_dtype
    src = cfg.local_path or cfg.id
    if cfg.local_path and not repo_path(cfg.local_path).is_dir():
        raise WeightsNotFoundError(f"model.path={cfg.local_path} in {cfg.path} is not a folder")
    offline = os.environ.get("HF_HUB_OFFLINE", "0") not in ("0", "", "false", "False")
    try:
        pipe = StableDiffusionXLPipeline.from_pretrained(
            str(repo_path(src)) if cfg.local_path else src, revision=cfg.revision, variant=cfg.variant,
            dtype=dtype, local_files_only=offline or not network_allowed(), **({"unet": unet} if unet is not None else {}),
        )
    except (OSError, ValueError) as e:
        hf_home = os.environ.get("HF_HOME", "~/.cache/huggingface")
        raise WeightsNotFoundError(
            f"could not load the weights of '{src}' (revision {cfg.revision}, variant {cfg.variant}) from "
            f"{'that folder' if cfg.local_path else f'the local Hugging Face cache (HF_HOME={hf_home})'}: "
            f"{str(e).splitlines()[0]}\n"
            f"  - download it where there is network (`hf download {cfg.id}`) and copy HF_HOME here, "
            f"or set model.path in {cfg.path} to a local diffusers folder;\n"
            f"  - or pass --random_weights for the full-size architecture with random weights (latency/memory only);\n"
            f"  - or use --config configs/stable-diffusion/sdxl_turbo_tiny.yaml (embedded tiny model)."
        ) from None
    pipe.scheduler = make_scheduler(dict(pipe.scheduler.config))
    pipe = pipe.to(device)
    if dtype == torch.float16 and pipe.vae.config.get("force_upcast", False):
        pipe.vae.to(torch.float32)  # the real SDXL VAE overflows in fp16; diffusers decodes it in fp32 too
    return pipe


def network_allowed() -> bool:
    """Downloads (model, Inception, CLIP weights) only when MIXDQ_ALLOW_DOWNLOAD=1: offline by default."""
    return os.environ.get("MIXDQ_ALLOW_DOWNLOAD", "0") == "1"


def build_pipeline(cfg: ModelConfig, device: str | torch.device = "cpu", dtype: torch.dtype | None = None,
                   random_weights: bool = False, unet=None):
    """The pipeline a config describes: tiny, full-size random (`random_weights`), or real weights.

    `unet`: a UNet to use instead of the config's (e.g. from a quantized folder): its weights are then not loaded."""
    if cfg.source == "tiny" or random_weights:
        pipe = build_random_pipeline(cfg, device, dtype, unet)
    else:
        pipe = build_pretrained_pipeline(cfg, device, dtype, unet)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def weights_kind(cfg: ModelConfig, random_weights: bool) -> str:
    """What goes into CSV provenance: 'real', 'random-full' or 'random-tiny'."""
    if cfg.source == "tiny":
        return "random-tiny"
    return "random-full" if random_weights else "real"


def resolve_device(device: str | None) -> str:
    """'auto' (or None) means CUDA when present, else CPU; an unavailable CUDA is an error."""
    if device in (None, "auto"):
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"--device {device}: CUDA is not available on this machine (use --device cpu)")
    return device
