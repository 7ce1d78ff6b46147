"""Argument groups and start-up shared by the scripts (so every script spells a flag the same way)."""
from __future__ import annotations

import argparse
import math
import os
import sys
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterator

from . import repo_path
from .errors import ConfigError, UserError
from .fusion import FUSE_QKV
from .decoders import VAE_ATTENTION, VAE_FUSE, VAE_UPSAMPLE
from .layer_plan import DENSE_BUDGET, LAYER_PLANS
from .norms import DECODER_GROUP_NORMS, GROUP_NORMS
from .modes import DECODERS
from .pipeline import ModelConfig, check_resolution, check_steps, load_model_config
from .qlayers import BACKENDS
from .runtime import COMPILE_REGION_CHOICES, VAE_CONV_OUTPUTS, VAE_EXEC

DEFAULT_CONFIG = "configs/stable-diffusion/sdxl_turbo_tiny.yaml"
DEFAULT_PROMPTS = "scripts/utils/prompts.txt"
PROMPTS_32 = "scripts/utils/prompts_32.txt"  # a diverse 32-prompt subset: calibration and quick runs


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    """--help lists every flag's default and keeps the docstring's layout (its example commands)."""


def bounded(kind: type[int] | type[float], minimum: int | float, strict: bool = False) -> Callable[[str], int | float]:
    """An argparse type: a finite `kind` (int or float) >= minimum (> minimum when `strict`); 0 never means 'the
    default'. Errors read 'must be >= 1, got 0' (integers) or 'must be a finite number > 0, got nan' (floats)."""
    noun = "an integer" if kind is int else "a number"
    bound = f"{'>' if strict else '>='} {minimum}"

    def parse(text: str) -> int | float:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {noun}, got {text!r}") from None
        if not math.isfinite(value) or value < minimum or (strict and value == minimum):
            raise argparse.ArgumentTypeError(f"must be {bound}, got {value}" if kind is int else
                                             f"must be a finite number {bound}, got {text}")
        return value

    parse.__name__ = f"{kind.__name__} {bound}"  # argparse names the type by it
    return parse


positive_int = bounded(int, 1)
nonnegative_int = bounded(int, 0)
positive_float = bounded(float, 0, strict=True)
nonnegative_float = bounded(float, 0)


def add_model_args(p: argparse.ArgumentParser, resolution: bool = True, quantized: bool = True,
                   **overrides: dict) -> None:
    """The model group. `overrides`: per flag (its dest, e.g. seed=dict(default=None, help=...)), add_argument
    settings a script words its own way."""
    g = p.add_argument_group("model")

    def add(*flags: str, **kw) -> None:
        g.add_argument(*flags, **{**kw, **overrides.get(kw.get("dest") or flags[0].lstrip("-"), {})})

    add("--config", default=DEFAULT_CONFIG,
        help="model config YAML (real: configs/stable-diffusion/sdxl_turbo.yaml; default: the embedded tiny model)")
    if quantized:
        add("--quantized", default=None, metavar="DIR",
            help="take the UNet from this quantized model folder (quant_txt2img.py --save_quantized): the "
                 "FP16 UNet is not loaded and nothing is calibrated; text encoders and VAE come from --config; "
                 "run with --backend where the script has it, else fake")
    add("--random_weights", action="store_true",
        help="full-size architecture with random weights instead of the real weights (latency/memory only)")
    add("--device", default="auto", help="cpu, cuda, cuda:N or auto (CUDA when available)")
    add("--fp16", action="store_true", help="run in float16 (default: the config's dtype)")
    add("--seed", type=int, default=42, help="image i uses seed + i")
    add("--exec", dest="exec_mode", default="auto", choices=["auto", "eager", "graph", "compile"],
        help="auto: compile on CUDA, eager on a CPU. eager PyTorch; graph: CUDA graphs per (batch, resolution) "
             "bucket; compile: the UNet's resnet/transformer blocks torch.compile'd (fused norms, elementwise "
             "and activation quantization) and the VAE compiled, then CUDA graphs (graph/compile: CUDA only)")
    add("--vae_exec", default="static", choices=VAE_EXEC,
        help="with --exec graph/compile, the VAE decode is torch.compile'd first: static (one compile per "
             "bucket, the fastest decode measured), static-nchw (static with the convolutions kept NCHW: Inductor's "
             "layout optimisation off; not yet measured), dynamic shapes (one compile for all buckets, slower "
             "decodes), or eager")
    add("--compile_shapes", default="static", choices=["dynamic", "static"],
        help="with --exec compile, the UNet blocks are compiled per bucket (static: the fastest code) or once "
             "with symbolic batch/height/width (dynamic: cheap new buckets, slower steps)")
    add("--compile_regions", default="auto", choices=list(COMPILE_REGION_CHOICES),
        help="with --exec compile, what is compiled one by one: transformers = resnets and whole transformers; "
             "blocks = resnets, each transformer block (ten identical blocks traced once) and each transformer's "
             "input/output parts: a warm first call half as long; auto = blocks for quantized UNets (same image "
             "time on the H200), transformers for FP16 (faster at 1024x4); docs/performance.md")
    add("--layer_plan", default="auto", choices=LAYER_PLANS,
        help="quantized UNets on CUDA: at each bucket's first call, time every low-bit kernel layer against "
             "cuBLAS/cuDNN and run the ones that lose dense there (dequantized fp16 weight kept beside the packed "
             "one: quant_utils/layer_plan.py); off: every layer on its kernel")
    add("--vae_attention", default="auto", choices=VAE_ATTENTION,
        help="the decoder's self-attention: auto = per decode bucket on CUDA, PyTorch's SDPA or explicit score "
             "matrices, whichever is faster (the SDXL VAE's one head of 512 is beyond flash attention); sdpa = always SDPA")
    add("--group_norm", default="native", choices=GROUP_NORMS,
        help="the UNet's GroupNorms: native = PyTorch's; split = statistics in two steps (quant_utils/norms.py); "
             "triton = split with the per-channel statistics from a Triton kernel; triton-affine = the per-channel "
             "scale and shift from Triton kernels too (CUDA; both unmeasured in the UNet)")
    add("--vae_group_norm", default="auto", choices=DECODER_GROUP_NORMS,
        help="the decoder's GroupNorms, same forms: auto = triton-affine for a decoder compiled on CUDA, the FP16 one "
             "and the int8 one with channels_last conv outputs (measured fastest: H200, 1024x4 decode FP16 131 -> 90 "
             "ms, int8 85 -> 72 ms), native otherwise")
    add("--vae_conv_out", default="auto", choices=VAE_CONV_OUTPUTS,
        help="the int8 decoder's conv outputs: nchw, or nhwc (channels_last: the next conv's quantize reads them "
             "without a transpose; docs/kernels.md); auto = nhwc when the decode is compiled on CUDA, else nchw")
    add("--vae_fuse", default="auto", choices=VAE_FUSE,
        help="the int8 decoder's resnets and upsamplers with GroupNorm apply + SiLU (or the upsample) + quantize in one "
             "kernel and the residual add in the int8 conv's epilogue (quant_utils/decoders.py): auto = on CUDA")
    add("--vae_upsample", default="auto", choices=VAE_UPSAMPLE,
        help="the decoder's upsamplers (nearest 2x + 3x3 conv): nearest, or subpixel = four 2x2 phase convs on the "
             "input before the upsample (2.25x fewer multiply-adds; FP16: a transposed conv, int8: its fused blocks' "
             "kernel on folded weights requantized to 8 bits; quant_utils/decoders.py); auto = subpixel on CUDA (H200, "
             "1024x4 decode: FP16 90 -> 80 ms, int8 60.5 -> 54.6 ms)")
    add("--fuse_qkv", default="auto", choices=FUSE_QKV,
        help="attention projections in one GEMM (q/k/v; cross-attention's k/v; quant_utils/fusion.py): auto = with --exec "
             "compile (FP16, and quantized layers where exactly fusable); on = also uncompiled; off")
    add("--dense_budget", type=nonnegative_float, default=DENSE_BUDGET,
        help="with --layer_plan auto, the most dense fp16 weights the UNet may keep over all buckets, as a fraction "
             "of its kernel layers' weights in fp16 (the biggest time saved per byte goes dense first)")
    add("--compile_cache", default=None,
        help="torch.compile artifacts (torch's mega-cache): loaded first if the file exists, written at exit; "
             "carries a warm compile to another machine of the same GPU, torch and Triton. Within one machine "
             "Inductor's on-disk cache ($TORCHINDUCTOR_CACHE_DIR, default ~/.cache/mixdq/inductor) is reused anyway")
    add("--vae", default="fp16", choices=DECODERS,
        help="image decoder: the SDXL VAE in FP16; the same VAE with W8A8 int8 convs (calibrated on 4 of "
             "--calib_prompts at the first resolution); or the tiny TAESD-XL decoder (AutoencoderTiny)")
    add("--steps", type=positive_int, default=None, help="denoising steps, 1-4 (default: the config's)")
    add("--guidance_scale", type=float, default=None, help="CFG scale; <=1 disables (default: config's)")
    if resolution:
        add("--res", type=positive_int, default=None, help="square resolution; sets --height and --width")
        add("--height", type=positive_int, default=None, help="image height (multiple of 8; default: config's)")
        add("--width", type=positive_int, default=None, help="image width (multiple of 8; default: config's)")


VAE_CALIB_PROMPTS = 4


def check_device_for_exec(args: argparse.Namespace) -> None:
    """--exec graph/compile need CUDA: say so before any model is built (auto falls back to eager on a CPU)."""
    import torch

    if getattr(args, "exec_mode", None) in ("graph", "compile") and (
            not torch.cuda.is_available() or str(getattr(args, "device", "auto")).startswith("cpu")):
        raise ConfigError(f"--exec {args.exec_mode} runs CUDA graphs and needs a CUDA GPU; this machine has none "
                          f"(use --exec auto or eager)")


def decoder_from_args(pipe, args: argparse.Namespace, res: int | None = None):
    """The decoder module --vae names (None for the pipeline's own FP16 VAE): the tiny decoder (real weights from
    the config's tiny_vae_id unless the model is tiny or --random_weights) or the int8 VAE, calibrated on latents
    of the first VAE_CALIB_PROMPTS calibration prompts at `res` (default: the config's resolution)."""
    kind = getattr(args, "vae", "fp16")
    if kind == "fp16":
        return None
    import torch

    from . import decoders
    from .generation import read_prompts
    from .pipeline import architecture_configs

    cfg = model_config_from_args(args)
    device, dtype = pipe.unet.device, pipe.unet.dtype
    if kind == "tiny":
        arch = architecture_configs(cfg).get("vae_tiny")
        if arch is None:
            raise ConfigError(f"{cfg.arch_dir}/vae_tiny.json is missing: the tiny decoder's architecture")
        real = cfg.source != "tiny" and not args.random_weights
        return decoders.build_tiny_vae(arch, device, dtype, cfg.tiny_vae_id if real else None, seed=cfg.seed)
    from .runtime import Runner

    if pipe.vae.config.get("force_upcast", False) and not args.random_weights and cfg.source != "tiny":
        print("warning: this VAE overflows in fp16 (force_upcast); the int8 decoder computes in fp16: use an "
              "fp16-safe VAE (e.g. madebyollin/sdxl-vae-fp16-fix) with --vae int8")
    res = res or cfg.height
    prompts = read_prompts(repo_path(getattr(args, "calib_prompts", None) or PROMPTS_32))
    prompts = prompts[:VAE_CALIB_PROMPTS]
    latents = [Runner(pipe, "eager").denoise(prompts, [args.seed + i for i in range(len(prompts))], res, res,
                                             args.steps or cfg.steps)]
    from .qlayers import Backend

    with torch.no_grad():  # in the UNet's dtype (fp16 on a GPU), whatever the VAE's own
        return decoders.make_int8_decoder(pipe.vae, latents, backend=Backend.for_device(device), dtype=dtype)


def compile_cache_from_args(args: argparse.Namespace) -> str:
    """Load --compile_cache if it exists and save this process's compile artifacts there at exit (CUDA only);
    returns what was loaded, for provenance."""
    import atexit
    import signal

    import torch

    from .runtime import load_compile_cache, save_compile_cache

    path = getattr(args, "compile_cache", None)
    if not path or not torch.cuda.is_available():
        return "none"
    path = repo_path(path)
    loaded = load_compile_cache(path) if path.is_file() else "none (cold)"
    atexit.register(save_compile_cache, path)
    # a job's `timeout` ends the process with SIGTERM, which skips atexit: exit through Python instead, so what
    # compiled so far is still saved
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(128 + signal.SIGTERM))
    return loaded


def runner_from_args(pipe, args: argparse.Namespace, res: int | None = None):
    """The generation Runner for --exec / --vae_exec / --compile_shapes / --vae / --compile_cache (`res`: the int8
    decoder's calibration resolution)."""
    from .runtime import Runner

    compile_cache_from_args(args)
    return Runner(pipe, args.exec_mode, vae_exec=getattr(args, "vae_exec", "static"),
                  vae=decoder_from_args(pipe, args, res), vae_kind=getattr(args, "vae", "fp16"),
                  compile_shapes=getattr(args, "compile_shapes", "static"),
                  compile_regions=getattr(args, "compile_regions", "auto"),
                  vae_conv_out=getattr(args, "vae_conv_out", "auto"),
                  layer_plan=getattr(args, "layer_plan", "auto"),
                  dense_budget=getattr(args, "dense_budget", DENSE_BUDGET),
                  vae_attention=getattr(args, "vae_attention", "auto"),
                  group_norm=getattr(args, "group_norm", "native"),
                  vae_group_norm=getattr(args, "vae_group_norm", "auto"),
                  fuse_qkv=getattr(args, "fuse_qkv", "auto"), vae_fuse=getattr(args, "vae_fuse", "auto"),
                  vae_upsample=getattr(args, "vae_upsample", "auto"))


def sampling_from_args(args: argparse.Namespace, cfg: ModelConfig) -> dict:
    """height/width/steps/guidance from flags, else from the config; validated."""
    res, h, w = (getattr(args, k, None) for k in ("res", "height", "width"))
    if res is not None and (h is not None or w is not None):
        raise ConfigError("give either --res or --height/--width, not both")
    height = res if res is not None else (h if h is not None else cfg.height)
    width = res if res is not None else (w if w is not None else cfg.width)
    steps = cfg.steps if args.steps is None else args.steps
    check_resolution(height, width)
    check_steps(steps)
    guidance = cfg.guidance_scale if args.guidance_scale is None else args.guidance_scale
    return dict(height=height, width=width, steps=steps, guidance_scale=guidance)


def model_config_from_args(args: argparse.Namespace) -> ModelConfig:
    return load_model_config(repo_path(args.config))


def add_image_folder_args(p: argparse.ArgumentParser) -> None:
    """How many images and from which prompts (txt2img, quant_txt2img)."""
    p.add_argument("--num_imgs", type=positive_int, default=8, help="number of images")
    p.add_argument("--batch_size", type=positive_int, default=4, help="images per forward pass")
    p.add_argument("--prompt", default=None, help="a single prompt used for every image (overrides --prompts_file)")
    p.add_argument("--prompts_file", default=DEFAULT_PROMPTS, help="one prompt per line; image i uses line i mod N")


def image_folder_inputs(args: argparse.Namespace) -> tuple[ModelConfig, dict, list[str]]:
    """The model config, the validated sampling settings and the prompts of an image-folder run; raises (before any
    model is built) on a device the execution cannot run on, a bad resolution or steps, or a bad prompts file."""
    check_device_for_exec(args)
    cfg = model_config_from_args(args)
    sampling = sampling_from_args(args, cfg)
    from .generation import read_prompts

    prompts = [args.prompt] if args.prompt else read_prompts(repo_path(args.prompts_file))
    return cfg, sampling, prompts


@contextmanager
def user_errors() -> Iterator[None]:
    """Turn every user error (errors.UserError: bad arguments, bad or missing input files, missing weights) into
    one `error: <reason>` line on stderr and exit code 2; any other exception is a bug and keeps its traceback."""
    try:
        yield
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)


def pipeline_from_args(args: argparse.Namespace):
    """(config, pipeline, device) for the model flags; the dtype is float16 with --fp16, else the config's."""
    import torch

    from .pipeline import build_pipeline, resolve_device

    cfg = model_config_from_args(args)
    device = resolve_device(args.device)
    # compiled code survives reboots (Inductor's default, /tmp/torchinductor_<user>, does not)
    os.environ.setdefault("TORCHINDUCTOR_CACHE_DIR", str(Path.home() / ".cache" / "mixdq" / "inductor"))
    dtype = torch.float16 if args.fp16 else cfg.torch_dtype
    unet = None
    if getattr(args, "quantized", None):  # the UNet from its quantized folder; the FP16 one is never built
        from .quantized_io import check_architecture, load_quantized, read_config

        folder = repo_path(args.quantized)
        check_architecture(read_config(folder), unet_architecture(cfg), folder)
        unet = load_quantized(folder, device, dtype, backend=getattr(args, "backend", "fake"))
        print(f"UNet from quantized folder {folder}")
    return cfg, build_pipeline(cfg, device=device, dtype=dtype, random_weights=args.random_weights, unet=unet), device


def unet_architecture(cfg: ModelConfig) -> dict:
    """The config's UNet architecture: a local model folder's unet/config.json, else arch_dir's (with overrides)."""
    import json

    from .pipeline import architecture_configs

    local = repo_path(cfg.local_path) / "unet" / "config.json" if cfg.source == "pretrained" and cfg.local_path else None
    return json.loads(local.read_text()) if local and local.is_file() else architecture_configs(cfg)["unet"]


def weights_label(cfg: ModelConfig, args: argparse.Namespace) -> str:
    from .pipeline import weights_kind

    return weights_kind(cfg, args.random_weights)


def add_quant_args(p: argparse.ArgumentParser, wbits: bool = True) -> None:
    g = p.add_argument_group("quantization (MixDQ)")
    if wbits:
        g.add_argument("--wbits", type=int, default=None,
                       help="weight bits: picks final_config/weight/weight_N.00.yaml if shipped, else uniform_N.yaml")
    g.add_argument("--abits", type=int, default=8, help="uniform activation bits when --config_act_mp is not given")
    g.add_argument("--config_weight_mp", default=None, help="weight bit config YAML (layer: bits)")
    g.add_argument("--config_act_mp", default=None, help="activation bit config YAML (layer: bits)")
    g.add_argument("--act_protect", default=None, help="layers whose activations stay FP16 (.pt list, YAML or txt)")
    g.add_argument("--strict", action=argparse.BooleanOptionalAction, default=False,
                   help="layers missing from a bit config are an error (default: 8 bits with a warning)")
    g.add_argument("--w_method", default="mse", choices=["minmax", "mse"], help="weight range search")
    g.add_argument("--a_method", default="mse", choices=["minmax", "percentile", "mse"], help="activation range method")
    g.add_argument("--no_bos", action="store_true", help="disable BOS-aware quantization of cross-attention K/V inputs")
    g.add_argument("--no_split", action="store_true", help="disable split quantization of up-block skip concatenations")
    g.add_argument("--calib_prompts", default=PROMPTS_32, help="calibration prompts file")
    g.add_argument("--calib_num", type=positive_int, default=32, help="number of calibration prompts")
    g.add_argument("--backend", default="fake", choices=BACKENDS,
                   help="fake: simulated quantization; kernel: real low-bit CUDA kernels (falls back to fake on CPU)")


def quant_request_from_args(args: argparse.Namespace, cfg: ModelConfig, wbits: int | None = None):
    """The QuantRequest the quantization flags describe (`wbits` overrides --wbits)."""
    from .mixdq import QuantRequest

    return QuantRequest(model_name=cfg.name, wbits=wbits or getattr(args, "wbits", None), abits=args.abits, config_weight_mp=args.config_weight_mp,
                        config_act_mp=args.config_act_mp, act_protect=args.act_protect, strict=args.strict,
                        w_method=args.w_method, a_method=args.a_method, bos=not args.no_bos, split=not args.no_split)


def check_quant_args(args: argparse.Namespace, wbits: list[int] | None = None) -> None:
    """Everything the quantization flags name, checked before any model is built: bit-widths in range, the
    bit configs, protect list and calibration prompts readable and well-formed (`wbits`: a grid's bit-widths,
    16 = FP16; default --wbits)."""
    from .bitconfig import ACT_BITS, WEIGHT_BITS, read_bit_config, read_protect_list, weight_config_for_bits
    from .generation import read_prompts

    (wlo, whi), (alo, ahi) = WEIGHT_BITS, ACT_BITS
    grid = [getattr(args, "wbits", None)] if wbits is None else [b for b in wbits if b != 16]
    grid = [b for b in grid if b is not None]
    bad = [b for b in grid if not wlo <= b <= whi]
    if bad:
        raise ConfigError(f"--wbits {bad[0]}: weight bits must be {wlo}..{whi}" + (" (or 16 for FP16)" if wbits else ""))
    if args.config_act_mp is None and args.abits is not None and not alo <= args.abits <= ahi:
        raise ConfigError(f"--abits {args.abits}: activation bits must be {alo}..{ahi}")
    if args.config_weight_mp:
        read_bit_config(args.config_weight_mp)
    elif grid:
        name = model_config_from_args(args).name
        for b in grid:
            weight_config_for_bits(name, b)
    if args.config_act_mp:
        read_bit_config(args.config_act_mp)
    if args.act_protect:
        read_protect_list(args.act_protect)
    read_prompts(repo_path(args.calib_prompts))
