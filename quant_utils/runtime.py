"""The generation path a service runs: text encode -> UNet step(s) -> VAE decode, timed per stage.

`Runner(pipe, exec_mode)` works for the FP16 and every quantized UNet alike:
- `eager`: plain PyTorch (the reference; at batch 1 on a GPU it mostly measures Python overhead);
- `graph`: each stage captured as a CUDA graph per (batch, height, width) bucket, with static
  input buffers and warm-up on a bucket's first use (CUDA only). The VAE decode, GPU-bound (graphs
  alone do not speed it up), is compiled by torch.compile first (`vae_exec`): `static` (default) one
  compile per bucket (the fastest decodes), `dynamic` one compile with symbolic shapes for every bucket
  (new buckets cost no compile, decodes are slower; measured: results/vae_decode*.csv), `eager` captured
  as is, for comparison;
- `compile` (the default on CUDA, `auto`): the UNet's resnet and transformer blocks compiled by torch.compile
  (`compile_unet_regions`: Inductor fuses norms, elementwise ops and the activation quantization into their
  producers; blocks of one shape share one compiled graph; `compile_shapes="dynamic"` compiles each block once
  with symbolic batch/height/width, so a new bucket costs a CUDA-graph capture, not a compile, apart from
  batch 1, which torch specialises) and the VAE decode compiled as in `graph`, then everything captured.
On CUDA a quantized UNet's layers are planned per bucket before it is compiled (`layer_plan="auto"`,
quant_utils/layer_plan.py): a layer whose low-bit kernel loses to cuBLAS/cuDNN at that bucket's size runs dense there.
The decoder is the pipeline's VAE unless another is given (`vae=`, see quant_utils/decoders.py: the SDXL VAE
with int8 convs, or a tiny decoder); its kind is reported as `vae_kind` (fp16 | int8 | tiny).
On CUDA the decoder's self-attention op is chosen per decode bucket (`vae_attention="auto"`, measured: PyTorch's
SDPA or explicit score matrices, quant_utils/decoders.py), for every decoder alike (the FP16 one too).
`fuse_qkv` (quant_utils/fusion.py): `auto` fuses the attention projections (q/k/v in one GEMM; quantized layers where
exact) under `compile`, measured faster there for FP16 and W8A8 on the H200 (report section 1); `on` also uncompiled,
`off` never. In place, like compiling.
`group_norm` (the UNet's) and `vae_group_norm` (the decoder's) switch GroupNorms in place to quant_utils/norms.py's
forms: `native` is PyTorch's (the UNet's default), `split` the two-step form (measured slower in the compiled decode),
`triton` the same with the Triton statistics kernel, `triton-affine` with the per-channel scale and shift from Triton
too; `vae_group_norm="auto"` gives `triton-affine` to the FP16 decoder compiled on CUDA and to the int8 one whose
convs write channels_last (measured fastest in the 1024x4 decode), `native` to the others.
`vae_conv_out` (decoder_conv_out): `auto` = `nhwc` for the int8 decoder compiled on CUDA (its convs write
channels_last outputs, so the next conv's quantize reads them without a transpose: measured faster), else `nchw`.
`vae_exec="static-nchw"` compiles the decoder with NCHW convs (measured: no gain).
On CUDA a Runner owns the kernels' tile-config Tuning (`tuning=`, else the standard one: kernels/tuning.py, loaded
once per process) and installs it for the kernel backend's launches.
Compiled code is cached by Inductor on disk and reused by later processes; `save_compile_cache` /
`load_compile_cache` carry it to another machine of the same GPU and software (torch's mega-cache).

Latents and ancestral noise come from one CPU generator per image (seeded `seed`), so an image
depends on its own seed only, never on the batch it was generated in.
"""
from __future__ import annotations

import functools
import time
from collections import defaultdict
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from types import MethodType
from typing import Callable

import numpy as np
import torch

from . import REPO_ROOT
from .csvio import atomic_file
from .kernels.backend import CONV_OUTPUTS, conv_out_channels_last, use_conv_outputs
from .kernels.tuning import Tuning, tuning_installed, use_tuning
from .decoders import (VAE_ATTENTION, plan_decoder_attention, use_fused_blocks, use_subpixel_upsample,
                       wants_fused_blocks, wants_subpixel)
from .layer_plan import DENSE_BUDGET, LAYER_PLANS, kernel_layers, plan_bucket
from . import fusion
from .norms import decoder_group_norm, use_group_norm

EXEC_MODES = ("eager", "graph", "compile")
EXEC_CHOICES = ("auto",) + EXEC_MODES   # auto: compile on CUDA (the fastest path), eager on a CPU
VAE_EXEC = ("dynamic", "static", "static-nchw", "eager")
COMPILE_SHAPES = ("dynamic", "static")
# The UNet's repeated blocks, compiled one by one (regional compilation): same-shape blocks reuse one compiled
# graph (weights and quantizer parameters are graph inputs), so the compile costs a few blocks, not 70.
# `transformers`: resnets and whole Transformer2DModels (their 1-10 transformer blocks traced inline: Inductor may
# fuse across block boundaries, but every block is traced again); `blocks`: resnets, each BasicTransformerBlock (a
# model's ten identical blocks traced once, as diffusers' compile_repeated_blocks does) and each Transformer2DModel's
# input part (GroupNorm, proj_in) and output part (proj_out, residual), so its norm still fuses with the proj_in
# quantize. `auto` (resolve_regions): blocks for a UNet with low-bit kernel layers, transformers otherwise. Measured on
# the H200 (results/e2e_v7_blocks_*_nvidia_h200.csv, one process per cell): W8A8's warm first call at 512x1 8.7 s with
# blocks against 16.8 s (20.0 s in v6), its image 0.3-0.6% slower at 512x1 and equal at 1024x4; FP16's image equal
# at 512x1 but 2.7% slower at 1024x4 with blocks, so FP16 keeps transformers (the fastest FP16 stays the baseline).
COMPILE_REGIONS = {"transformers": ("ResnetBlock2D", "Transformer2DModel"),
                   "blocks": ("ResnetBlock2D", "BasicTransformerBlock")}
COMPILE_REGION_CHOICES = ("auto",) + tuple(COMPILE_REGIONS)
# the int8 decoder's conv output layout (kernels/backend.use_conv_outputs), decoder_conv_out
VAE_CONV_OUTPUTS = ("auto",) + CONV_OUTPUTS
_T2D_PARTS = ("_operate_on_continuous_inputs", "_get_output_for_continuous_inputs")  # diffusers' Transformer2DModel


def decoder_conv_out(choice: str, vae_kind: str, compiled_on_cuda: bool) -> str:
    """The int8 decoder's conv output layout for `--vae_conv_out choice`: auto = `nhwc` when its decode is compiled on
    CUDA (with its GroupNorms in `triton-affine` form, norms.decoder_group_norm: H200, 1024x4 decode 84.7 -> 71.9 ms;
    report section 1), else `nchw` (uncompiled: unmeasured; the other decoders have no int8 convs). MIXDQ_CONV_NHWC=1
    makes it `nhwc` whatever was asked."""
    if choice not in VAE_CONV_OUTPUTS:
        raise ValueError(f"vae_conv_out={choice!r}, expected one of {VAE_CONV_OUTPUTS}")
    if conv_out_channels_last():
        return "nhwc"
    if choice != "auto":
        return choice
    return "nhwc" if vae_kind == "int8" and compiled_on_cuda else "nchw"


def _allow_recompiles() -> None:
    """One compiled graph per distinct (block or decoder, input shape): dynamo's default limit of 8 per code object
    would silently fall back to eager after a few buckets."""
    cfg = torch._dynamo.config
    cfg.recompile_limit = max(cfg.recompile_limit, 256)
    cfg.accumulated_recompile_limit = max(cfg.accumulated_recompile_limit, 1024)


def resolve_exec(exec_mode: str, device: str | torch.device) -> str:
    """`auto` -> `compile` on CUDA (compiled blocks + compiled VAE + CUDA graphs), `eager` elsewhere."""
    if exec_mode not in EXEC_CHOICES:
        raise ValueError(f"exec_mode={exec_mode!r}, expected one of {EXEC_CHOICES}")
    if exec_mode == "auto":
        return "compile" if torch.device(device).type == "cuda" else "eager"
    return exec_mode


def resolve_regions(choice: str, unet: torch.nn.Module) -> str:
    """`auto` -> `blocks` for a UNet with low-bit kernel layers (its first call half as long, same image time),
    `transformers` otherwise (FP16: faster at 1024x4); an explicit choice is kept."""
    if choice not in COMPILE_REGION_CHOICES:
        raise ValueError(f"compile_regions={choice!r}, expected one of {list(COMPILE_REGION_CHOICES)}")
    if choice != "auto":
        return choice
    has_kernels = isinstance(unet, torch.nn.Module) and kernel_layers(unet)  # (tests' stand-in pipelines: no)
    return "blocks" if has_kernels else "transformers"


def compile_unet_regions(unet: torch.nn.Module, regions: str = "transformers", backend: str = "inductor",
                         dynamic: bool = False) -> int:
    """torch.compile the UNet's `regions` (COMPILE_REGIONS), in place: every later call of this UNet, from any Runner,
    runs the compiled parts (deep-copy the UNet first to keep an uncompiled one). `dynamic`: symbolic
    batch/height/width (one compile serves every bucket but batch 1); else one compile per input shape.
    Returns how many modules were compiled (a Transformer2DModel's two parts count as one)."""
    if regions not in COMPILE_REGIONS:
        raise ValueError(f"regions={regions!r}, expected one of {list(COMPILE_REGIONS)}")
    _allow_recompiles()
    types = COMPILE_REGIONS[regions]
    mods = [m for m in unet.modules() if type(m).__name__ in types]
    for m in mods:
        m.compile(dynamic=dynamic, backend=backend)
    if regions == "blocks":
        t2d = [m for m in unet.modules() if type(m).__name__ == "Transformer2DModel"]
        for m in t2d:
            for name in _T2D_PARTS:  # one compiled function per part, bound to each model (deepcopy rebinds it)
                setattr(m, name, MethodType(_compiled_part(type(m), name, backend, dynamic), m))
        mods += t2d
    return len(mods)


@functools.cache
def _compiled_part(cls: type, name: str, backend: str, dynamic: bool) -> Callable:
    return torch.compile(getattr(cls, name), backend=backend, dynamic=dynamic)


def compile_counters() -> dict[str, float]:
    """torch.compile's work so far in this process: distinct Dynamo graphs, seconds in Dynamo's frame compiles (trace,
    guards and the backend: Inductor's compile or its cache load) and in the backend alone. Differences of two calls
    say what a first call spent."""
    from torch._dynamo.utils import compilation_time_metrics, counters

    return {"graphs": counters["stats"]["unique_graphs"],
            "dynamo_s": sum(compilation_time_metrics.get("_compile.compile_inner", [])),
            "backend_s": sum(compilation_time_metrics.get("OutputGraph.call_user_compiler", []))}


def decode_images(vae: torch.nn.Module, latents: torch.Tensor) -> torch.Tensor:
    """Latents -> images in [0, 1] (NCHW, the decoder's dtype); any diffusers VAE (AutoencoderKL, AutoencoderTiny)."""
    image = vae.decode(latents.to(vae.dtype) / vae.config.scaling_factor).sample
    return (image / 2 + 0.5).clamp(0, 1)


# One compiled decode per (decoder, vae_exec), shared by every Runner of a process: a second Runner on the same
# decoder (another UNet mode in a benchmark, a service's second variant) reuses the compiled code, no re-trace.
_COMPILED_DECODES: dict[tuple[int, str], Callable] = {}


def compiled_decode(vae: torch.nn.Module, vae_exec: str) -> Callable:
    key = (id(vae), vae_exec)  # the cached closure keeps `vae` alive, so its id is never reused meanwhile
    if key not in _COMPILED_DECODES:
        _allow_recompiles()
        # static-nchw: Inductor's layout optimisation off, so the convolutions stay NCHW (on, it runs them channels_last
        # and the GroupNorms between them reduce over strided channels: the FP16 decoder's largest cost, v5 profile)
        opts = {"options": {"layout_optimization": False}} if vae_exec == "static-nchw" else {}
        _COMPILED_DECODES[key] = torch.compile(lambda z: decode_images(vae, z), dynamic=vae_exec == "dynamic", **opts)
    return _COMPILED_DECODES[key]


def save_compile_cache(path: str | Path) -> int:
    """Write everything torch.compile compiled in this process (Inductor/Triton artifacts) to `path`; returns bytes."""
    art = torch.compiler.save_cache_artifacts()
    if not art:
        return 0
    data, _ = art
    with atomic_file(path) as tmp:  # a crash while writing never leaves a truncated cache to load next time
        tmp.write_bytes(data)
    return len(data)


def load_compile_cache(path: str | Path) -> str:
    """Load a cache written by save_compile_cache (same GPU model, torch and Triton); returns a one-line summary."""
    info = torch.compiler.load_cache_artifacts(Path(path).read_bytes())
    n = sum(len(v) for v in vars(info).values() if isinstance(v, list)) if info is not None else 0
    return f"{n} compile artifacts from {path}"


@dataclass
class StageTimes:
    """Per-stage milliseconds of one call (GPU stages timed with CUDA events)."""
    text_ms: float = 0.0
    unet_ms: float = 0.0
    vae_ms: float = 0.0
    total_ms: float = 0.0
    _events: list = field(default_factory=list, repr=False)


def to_host_images(images: torch.Tensor) -> np.ndarray:
    """uint8 [B, 3, H, W] on any device -> uint8 [B, H, W, 3] numpy, channels last made contiguous on the device: a
    strided array would make every consumer (the service's PNG/JPEG encoder) copy it element by element, 3-5x its
    encode time at 1024 px."""
    return images.permute(0, 2, 3, 1).contiguous().cpu().numpy()


class _StageClock:
    """Times stages with CUDA events on GPU (no sync inside the call) and perf_counter on CPU."""

    def __init__(self, device: torch.device):
        self.cuda = device.type == "cuda"
        self.marks: list[tuple[str, object]] = []

    def mark(self, name: str) -> None:
        if self.cuda:
            ev = torch.cuda.Event(enable_timing=True)
            ev.record()
            self.marks.append((name, ev))
        else:
            self.marks.append((name, time.perf_counter()))

    def elapsed(self) -> dict[str, float]:
        if self.cuda:
            torch.cuda.synchronize()
        out = {}
        for (_, a), (name, b) in zip(self.marks, self.marks[1:]):
            out[name] = a.elapsed_time(b) if self.cuda else (b - a) * 1e3
        return out


class _GraphCache:
    """One CUDA graph per (stage, input shapes); all share one memory pool. `setup_s` (the owner's, or its own) adds
    up the seconds new keys spent in their warm-up runs (compilation, tile autotuning, cuDNN plans) and capture."""

    def __init__(self, setup_s: dict[str, float] | None = None):
        self.graphs: dict = {}
        self.pool = None
        self.setup_s = setup_s if setup_s is not None else defaultdict(float)

    def run(self, key, fn: Callable, inputs: list[torch.Tensor]):
        if key not in self.graphs:
            t0 = time.perf_counter()
            self.pool = self.pool or torch.cuda.graph_pool_handle()
            static_in = [x.clone() for x in inputs]
            stream = torch.cuda.Stream()
            stream.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(stream):
                for _ in range(2):  # warm-up: autotuning, cuDNN plans, lazy inits stay out of the graph
                    fn(*static_in)
            torch.cuda.current_stream().wait_stream(stream)
            torch.cuda.synchronize()
            t1 = time.perf_counter()
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph, pool=self.pool):
                static_out = fn(*static_in)
            self.graphs[key] = (graph, static_in, static_out)
            self.setup_s["warmup"] += t1 - t0
            self.setup_s["capture"] += time.perf_counter() - t1
        graph, static_in, static_out = self.graphs[key]
        for dst, src in zip(static_in, inputs):
            dst.copy_(src)
        graph.replay()
        return static_out


class Runner:
    """Prompt -> image with per-stage timing; `exec_mode` picks eager, CUDA-graph or compiled execution."""

    def __init__(self, pipe, exec_mode: str = "eager", vae_exec: str = "static", vae: torch.nn.Module | None = None,
                 vae_kind: str = "fp16", compile_shapes: str = "static", tuning: Tuning | None = None,
                 layer_plan: str = "auto", dense_budget: float = DENSE_BUDGET, vae_attention: str = "auto",
                 group_norm: str = "native", fuse_qkv: str = "auto", vae_group_norm: str = "auto",
                 compile_regions: str = "auto", vae_conv_out: str = "auto", vae_fuse: str = "auto",
                 vae_upsample: str = "auto"):
        self.pipe = pipe
        self.device = pipe.unet.device
        self.dtype = pipe.unet.dtype
        exec_mode = resolve_exec(exec_mode, self.device)
        if vae_exec not in VAE_EXEC:
            raise ValueError(f"vae_exec={vae_exec!r}, expected one of {VAE_EXEC}")
        if compile_shapes not in COMPILE_SHAPES:
            raise ValueError(f"compile_shapes={compile_shapes!r}, expected one of {COMPILE_SHAPES}")
        self.compile_regions = resolve_regions(compile_regions, pipe.unet)  # (raises on an unknown choice)
        if layer_plan not in LAYER_PLANS:
            raise ValueError(f"layer_plan={layer_plan!r}, expected one of {LAYER_PLANS}")
        # measured per bucket on the GPU, for UNets with low-bit kernel layers (quant_utils/layer_plan.py)
        self.layer_plan = layer_plan if self.device.type == "cuda" else "off"
        if dense_budget < 0:
            raise ValueError(f"dense_budget={dense_budget}: expected >= 0 (a fraction of the UNet's weights in fp16)")
        self.dense_budget = dense_budget
        if vae_attention not in VAE_ATTENTION:
            raise ValueError(f"vae_attention={vae_attention!r}, expected one of {VAE_ATTENTION}")
        # the decoder's attention op, measured per decode bucket on CUDA (quant_utils/decoders.py)
        self.vae_attention = vae_attention if self.device.type == "cuda" else "sdpa"
        self._decode_buckets: set[torch.Size] = set()  # latent shapes whose decoder attention is planned
        self._plan_buckets: set[tuple] = set()  # UNet buckets whose layer plan is installed
        if exec_mode != "eager" and self.device.type != "cuda":
            raise ValueError(f"exec_mode={exec_mode!r} needs a CUDA device")
        self.exec_mode = exec_mode
        if self.device.type == "cuda" and (tuning is not None or not tuning_installed()):
            use_tuning(tuning or Tuning.standard(REPO_ROOT / "results"))
        self.setup_s: dict[str, float] = defaultdict(float)  # one-time work of new buckets, by phase (pop_setup_s)
        self.graphs = _GraphCache(self.setup_s)
        self.vae = vae if vae is not None else pipe.vae
        self.vae_kind = vae_kind
        self.vae_dtype = self.vae.dtype
        # before anything is compiled: the GroupNorms' form is part of the traced code
        compiled_decode_on_cuda = self.device.type == "cuda" and exec_mode != "eager" and vae_exec != "eager"
        self.vae_conv_out = decoder_conv_out(vae_conv_out, vae_kind, compiled_decode_on_cuda)
        if isinstance(self.vae, torch.nn.Module):  # the int8 decoder's convs (no-op for the others), before tracing
            use_conv_outputs(self.vae, self.vae_conv_out)
        self.vae_group_norm = decoder_group_norm(vae_group_norm, vae_kind, compiled_decode_on_cuda, self.vae_conv_out)
        for model, kind in ((pipe.unet, group_norm), (self.vae, self.vae_group_norm)):
            if isinstance(model, torch.nn.Module):  # (tests' stand-in pipelines are not)
                use_group_norm(model, kind)  # (raises on an unknown kind)
        self.group_norm = group_norm
        # the int8 decoder's blocks with their elementwise passes in its kernels (decoders.use_fused_blocks)
        fuse = wants_fused_blocks(vae_fuse, vae_kind, self.device.type == "cuda")  # (raises on an unknown choice)
        self.vae_fused_blocks = use_fused_blocks(self.vae, fuse) if hasattr(self.vae, "decoder") else 0
        # the decoder's upsamplers as phase convs (decoders.use_subpixel_upsample; the int8 ones in fused blocks)
        subpixel = wants_subpixel(vae_upsample, self.device.type == "cuda")  # (raises on an unknown choice)
        self.vae_subpixel = use_subpixel_upsample(self.vae, subpixel) if hasattr(self.vae, "decoder") else 0
        self.vae_upsample = "subpixel" if self.vae_subpixel else "nearest"
        # before compiling: the fused layers are what gets traced
        self.fused = fusion.fuse_qkv(pipe.unet) if fusion.wants_fusion(fuse_qkv, exec_mode == "compile", pipe.unet) else None
        self.stage_fns = {"text": self._encode_ids, "unet": self._unet, "vae": lambda z: decode_images(self.vae, z)}
        if exec_mode == "compile":
            compile_unet_regions(pipe.unet, self.compile_regions, dynamic=compile_shapes == "dynamic")
        if exec_mode != "eager" and vae_exec != "eager":
            self.stage_fns["vae"] = compiled_decode(self.vae, vae_exec)
        # how the decode runs: eager (also inside a CUDA graph), compiled (symbolic shapes), compiled-static(-nchw)
        self.vae_exec = "eager" if exec_mode == "eager" or vae_exec == "eager" else \
            "compiled" if vae_exec == "dynamic" else f"compiled-{vae_exec}"
        self.vae_label = self.vae_exec  # older name, kept for callers that print it

    def pop_setup_s(self) -> dict[str, float]:
        """Seconds spent since the last call of this in one-time work of new buckets, by phase: `plan` (the layer plan
        and the decoder attention plan: measurements), `warmup` (the warm-up runs before a CUDA graph: compilation,
        tile autotuning, cuDNN plans), `capture` (CUDA graph capture); zeros for phases that did not happen."""
        out = {k: self.setup_s.get(k, 0.0) for k in ("plan", "warmup", "capture")}
        self.setup_s.clear()
        return out

    @cached_property
    def _has_kernel_layers(self) -> bool:
        return bool(kernel_layers(self.pipe.unet))

    def unet_bucket(self, images: int, height: int, width: int, guidance_scale: float = 0.0) -> tuple[int, ...]:
        """The shape of the UNet's input for a call (CFG doubles the batch): the key of its CUDA graph, compiled
        code and layer plan."""
        return (images * (2 if guidance_scale > 1.0 else 1), self.pipe.unet.config.in_channels, height // 8, width // 8)

    # ------------------------------------------------------------------ stages
    def _tokenize(self, prompts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        ids = [tok(prompts, padding="max_length", max_length=tok.model_max_length, truncation=True,
                   return_tensors="pt").input_ids.to(self.device)
               for tok in (self.pipe.tokenizer, self.pipe.tokenizer_2)]
        return ids[0], ids[1]

    def _encode_ids(self, ids1: torch.Tensor, ids2: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        # SDXL: penultimate hidden states of both encoders, concatenated; pooled text_embeds of encoder 2.
        out1 = self.pipe.text_encoder(ids1, output_hidden_states=True)
        out2 = self.pipe.text_encoder_2(ids2, output_hidden_states=True)
        embeds = torch.cat([out1.hidden_states[-2], out2.hidden_states[-2]], dim=-1)
        return embeds.to(self.dtype), out2.text_embeds.to(self.dtype)

    def _unet(self, latents, t, embeds, pooled, time_ids):
        return self.pipe.unet(latents, t, encoder_hidden_states=embeds,
                              added_cond_kwargs={"text_embeds": pooled, "time_ids": time_ids}).sample

    def _call(self, stage: str, *inputs):
        fn = self.stage_fns[stage]
        if self.exec_mode == "eager":
            return fn(*inputs)
        return self.graphs.run((stage, *(tuple(x.shape) for x in inputs)), fn, list(inputs))

    def encode(self, prompts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        ids1, ids2 = self._tokenize(prompts)
        return self._call("text", ids1, ids2)

    # ------------------------------------------------------------------ full call
    @torch.no_grad()
    def __call__(self, prompts: list[str], seeds: list[int], height: int, width: int, steps: int = 1,
                 guidance_scale: float = 0.0, times: StageTimes | None = None,
                 keep_on_device: bool = False) -> np.ndarray | torch.Tensor:
        """Generate one image per prompt; returns uint8 [B, H, W, 3] on the host, or with `keep_on_device` uint8
        [B, 3, H, W] on the device, finished (for an encoder that runs there; `to_host_images` brings it back).
        Fills `times` if given."""
        if len(prompts) != len(seeds):
            raise ValueError(f"{len(prompts)} prompts but {len(seeds)} seeds")
        t0 = time.perf_counter()
        clock = _StageClock(self.device)
        clock.mark("start")
        latents = self._denoise(prompts, seeds, height, width, steps, guidance_scale, clock)
        if self.vae_attention == "auto" and latents.shape not in self._decode_buckets:  # before compile and capture
            t_plan = time.perf_counter()
            plan_decoder_attention(self.vae, tuple(latents.shape))
            self._decode_buckets.add(latents.shape)
            self.setup_s["plan"] += time.perf_counter() - t_plan
        images = self._call("vae", latents.to(self.vae_dtype))
        images = (images.float() * 255).round().to(torch.uint8)
        if keep_on_device:
            if self.device.type == "cuda":
                torch.cuda.synchronize(self.device)  # finished, as the host copy below would be
        else:
            images = to_host_images(images)
        clock.mark("vae_ms")
        if times is not None:
            for k, v in clock.elapsed().items():
                setattr(times, k, v)
            times.total_ms = (time.perf_counter() - t0) * 1e3
        return images

    @torch.no_grad()
    def denoise(self, prompts: list[str], seeds: list[int], height: int, width: int, steps: int = 1,
                guidance_scale: float = 0.0) -> torch.Tensor:
        """The latents the decoder would get (text encode + UNet steps), float32 [B, 4, H/8, W/8]."""
        return self._denoise(prompts, seeds, height, width, steps, guidance_scale, None).clone()

    def _denoise(self, prompts, seeds, height, width, steps, guidance_scale, clock) -> torch.Tensor:
        mark = clock.mark if clock is not None else (lambda name: None)
        cfg = guidance_scale > 1.0
        embeds, pooled = self.encode(list(prompts))
        if cfg:  # SDXL-Turbo's pipeline zeroes the unconditional embeddings (force_zeros_for_empty_prompt)
            embeds = torch.cat([torch.zeros_like(embeds), embeds])
            pooled = torch.cat([torch.zeros_like(pooled), pooled])
        mark("text_ms")

        sched = self.pipe.scheduler
        sched.set_timesteps(steps, device=self.device)
        gens = [torch.Generator("cpu").manual_seed(int(s)) for s in seeds]
        shape = (4, height // 8, width // 8)
        latents = torch.stack([torch.randn(shape, generator=g) for g in gens]).to(self.device, torch.float32)
        latents = latents * sched.init_noise_sigma
        time_ids = torch.tensor([[height, width, 0, 0, height, width]], device=self.device, dtype=self.dtype)
        time_ids = time_ids.repeat(embeds.shape[0], 1)
        for t in sched.timesteps:
            x = sched.scale_model_input(latents, t)
            x = torch.cat([x, x]) if cfg else x
            t_in = t.to(self.device, torch.float32).expand(x.shape[0]).contiguous()
            x = x.to(self.dtype)
            bucket = self.unet_bucket(len(seeds), height, width, guidance_scale)
            if self.layer_plan == "auto" and self._has_kernel_layers and bucket not in self._plan_buckets:
                t_plan = time.perf_counter()  # once per bucket, before compile and capture
                plan_bucket(self.pipe.unet, lambda: self._unet(x, t_in, embeds, pooled, time_ids), bucket,
                            dense_budget=self.dense_budget, info={"height": height, "width": width, "batch": x.shape[0]})
                self._plan_buckets.add(bucket)
                self.setup_s["plan"] += time.perf_counter() - t_plan
            noise = self._call("unet", x, t_in, embeds, pooled, time_ids).float()
            if cfg:
                uncond, cond = noise.chunk(2)
                noise = uncond + guidance_scale * (cond - uncond)
            latents = sched.step(noise, t, latents, generator=gens).prev_sample
        mark("unet_ms")
        return latents
