r"""VAE decode speed: eager vs CUDA graph vs cuDNN autotuning / channels_last / torch.compile, with PSNR vs eager.

    python scripts/bench_vae.py --config configs/stable-diffusion/sdxl_turbo.yaml --random_weights \
        --res 1024 512 768 --out results/vae_decode_h100.csv

Needs a CUDA GPU (checked before the model is built). Default output: logs/vae_decode.csv.

Every variant decodes the same latents; `psnr_db_vs_eager` compares its image with the eager decode. `--vae int8`
times the int8 decoder (calibrated on pipeline latents, quant_utils/decoders.py) instead of the FP16 one; on both the
decoder's attention takes the path the Runner would measure and pick (`vae_attention` column). The `*-split-gn`
variants compute the GroupNorms as quant_utils/norms.py's two-step reductions, the `*-triton-gn` ones with their
per-channel statistics from its Triton kernel (`group_norm` column). The `*-nhwc-conv*` variants (int8 decoder) have
its int8 convs write channels_last outputs (`--vae_conv_out nhwc` in the Runner; the others NCHW: `int8_conv_out`
column). `compile-fused-blocks` (int8 decoder) is the Runner's default on CUDA: its resnets and upsamplers through the
one-pass GroupNorm-apply/SiLU/upsample/quantize kernel and the conv's residual epilogue (`--vae_fuse`,
quant_utils/decoders.py; `fused_blocks` column: how many blocks). The `*-subpixel` variants run the upsamplers as
four 2x2 phase convs of the input before the upsample (`--vae_upsample subpixel`; `subpixel_upsamplers` column).
`--profile_out` also writes one decode's GPU time by kernel category (torch.profiler) for eager and the
compiled variant at the first resolution, to show where the time goes, and `<stem>_kernels.csv` beside it with
one row per distinct kernel (name, category, gpu_ms, count).
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import NamedTuple

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import torch  # noqa: E402

from quant_utils import repo_path  # noqa: E402
from quant_utils.cli import (HelpFormatter, add_model_args, check_device_for_exec, decoder_from_args,  # noqa: E402
                             pipeline_from_args, positive_int, user_errors, weights_label)
from quant_utils.csvio import device_name, provenance, write_csv  # noqa: E402
from quant_utils.decoders import (attention_path, plan_decoder_attention, use_fused_blocks,  # noqa: E402
                                  use_subpixel_upsample)
from quant_utils.errors import ConfigError  # noqa: E402
from quant_utils.kernels.backend import conv_out_channels_last, use_conv_outputs  # noqa: E402
from quant_utils.norms import use_group_norm  # noqa: E402
from quant_utils.pipeline import check_resolution  # noqa: E402
from quant_utils.runtime import _GraphCache  # noqa: E402

class Variant(NamedTuple):
    graph: bool                  # CUDA graph replay
    mode: str | None             # torch.compile mode (None: not compiled)
    channels_last: bool
    benchmark: bool              # cudnn.benchmark
    dynamic: bool = False        # dynamic shapes
    group_norm: str = "native"   # quant_utils/norms.py
    inductor: tuple = ()         # Inductor settings the variant compiles under
    conv_nhwc: bool = False      # the int8 convs write channels_last outputs (kernels.backend.use_conv_outputs)
    fused: bool = False          # the int8 decoder's fused blocks (decoders.use_fused_blocks)
    subpixel: bool = False       # upsamplers as 2x2 phase convs (decoders.use_subpixel_upsample)


VARIANTS = {
    "eager": Variant(False, None, False, False),
    "graph": Variant(True, None, False, False),
    "graph-cudnn-benchmark": Variant(True, None, False, True),
    "graph-channels-last": Variant(True, None, True, True),
    "compile": Variant(True, "default", False, True),
    "compile-split-gn": Variant(True, "default", False, True, group_norm="split"),
    "compile-triton-gn": Variant(True, "default", False, True, group_norm="triton"),
    "compile-triton-affine-gn": Variant(True, "default", False, True, group_norm="triton-affine"),
    "compile-nhwc-conv": Variant(True, "default", False, True, conv_nhwc=True),
    "compile-nhwc-conv-triton-gn": Variant(True, "default", False, True, group_norm="triton", conv_nhwc=True),
    "compile-nhwc-conv-triton-affine-gn": Variant(True, "default", False, True, group_norm="triton-affine",
                                                  conv_nhwc=True),
    # the Runner's default int8 decode on CUDA (--vae_fuse auto): the blocks' elementwise passes in the int8 kernels
    "compile-fused-blocks": Variant(True, "default", False, True, group_norm="triton-affine", conv_nhwc=True,
                                    fused=True),
    # the upsamplers as phase convs (--vae_upsample subpixel): the FP16 decoder's Runner form, the int8 one's
    "compile-triton-affine-gn-subpixel": Variant(True, "default", False, True, group_norm="triton-affine",
                                                 subpixel=True),
    "compile-fused-blocks-subpixel": Variant(True, "default", False, True, group_norm="triton-affine", conv_nhwc=True,
                                             fused=True, subpixel=True),
    "compile-channels-last": Variant(True, "default", True, True),
    "compile-dynamic": Variant(True, "default", False, False, dynamic=True),  # what Runner's graph mode runs
    "compile-max-autotune": Variant(True, "max-autotune-no-cudagraphs", True, True),
    # the convolutions kept NCHW: Inductor's layout optimisation otherwise runs them channels_last (cuDNN's NHWC
    # kernels), and the GroupNorms between them reduce over strided channels (--vae_exec static-nchw in the Runner)
    "compile-nchw": Variant(True, "default", False, True, inductor=(("layout_optimization", False),)),
}

PROFILED = ("eager", "compile", "compile-split-gn", "compile-triton-gn", "compile-triton-affine-gn", "compile-nchw",
            "compile-channels-last", "compile-nhwc-conv", "compile-nhwc-conv-triton-gn",
            "compile-nhwc-conv-triton-affine-gn", "compile-fused-blocks", "compile-triton-affine-gn-subpixel",
            "compile-fused-blocks-subpixel")


def mismatch(variant: Variant, vae: str) -> str | None:
    """Why `variant` does not apply to the `vae` decoder (None: it does)."""
    if variant.channels_last and vae == "int8":
        return "the channels_last variants are for the FP16 decoder (the int8 convs take NCHW)"
    if (variant.conv_nhwc or variant.fused) and vae != "int8":
        return "the *-nhwc-conv and *-fused-blocks variants are for the int8 decoder (its int8 convs)"
    if variant.subpixel and not variant.fused and vae == "int8":
        return "the int8 decoder's upsamplers run as phase convs in its fused blocks only (compile-fused-blocks-subpixel)"
    return None


def default_variants(vae: str) -> list[str]:
    """Every variant that applies to the `vae` decoder; compile-max-autotune only when asked (minutes of autotuning)."""
    return [name for name, v in VARIANTS.items() if name != "compile-max-autotune" and mismatch(v, vae) is None]


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
    add_model_args(p, resolution=False)
    p.add_argument("--res", type=positive_int, nargs="+", default=[1024, 512, 768],
                   help="square resolutions (pixels) of the decoded images, in this order")
    p.add_argument("--batch", type=positive_int, default=1, help="latents decoded per call")
    p.add_argument("--variants", nargs="+", default=None, choices=list(VARIANTS), metavar="VARIANT",
                   help=f"decode variants to time, each against the eager decode (choices: {', '.join(VARIANTS)}; "
                        "default: every one that applies to --vae but compile-max-autotune)")
    p.add_argument("--repeats", type=positive_int, default=20, help="timed decodes per (variant, resolution)")
    p.add_argument("--out", default="logs/vae_decode.csv", help="output CSV (one row per variant and resolution)")
    p.add_argument("--profile_out", default=None, help="CSV of GPU time by kernel category (eager and compile); "
                   "<stem>_kernels.csv beside it: one row per distinct kernel")
    args = p.parse_args(argv)
    # a GPU benchmark: say so before building the (full-size) model
    import torch

    if not torch.cuda.is_available() or args.device == "cpu":
        raise ConfigError("bench_vae times CUDA kernels: run it on a GPU (no CUDA device here or --device cpu)")
    check_device_for_exec(args)
    for r in args.res:
        check_resolution(r, r)
    if args.variants is None:
        args.variants = default_variants(args.vae)
    # the variants' settings against the decoder, before it is built and calibrated
    for name in args.variants:
        why = mismatch(VARIANTS[name], args.vae)
        if why:
            raise ConfigError(f"--vae {args.vae}: {why}; drop {name} from --variants")
    if args.vae == "int8" and conv_out_channels_last():
        raise ConfigError("MIXDQ_CONV_NHWC=1 makes every variant's int8 convs NHWC: unset it (the *-nhwc-conv "
                          "variants set the layout per variant)")
    return args


def time_ms(fn, repeats: int) -> list[float]:
    out = []
    for _ in range(repeats):
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record()
        fn()
        b.record()
        torch.cuda.synchronize()
        out.append(a.elapsed_time(b))
    return out


def main(args) -> None:
    args.fp16 = True
    cfg, pipe, device = pipeline_from_args(args)
    if not device.startswith("cuda"):
        raise ConfigError("bench_vae times CUDA kernels: run it on a GPU")
    from quant_utils.kernel_bench import profile_step

    torch._dynamo.config.cache_size_limit = 64  # one graph per (variant, resolution)
    vae = decoder_from_args(pipe, args, args.res[0]) or pipe.vae

    def decode(z):
        return vae.decode(z / vae.config.scaling_factor).sample

    meta = provenance(script="bench_vae", weights=weights_label(cfg, args),
                      backend="kernel (the int8 decoder's convs)" if args.vae == "int8" else "none")
    prof_meta = {**meta, "timing": "torch.profiler"}
    rows, prof_rows, kernel_rows = [], [], []
    for res in args.res:
        z0 = torch.randn(args.batch, 4, res // 8, res // 8, device=device, dtype=torch.float16,
                         generator=torch.Generator(device).manual_seed(0))
        plan_decoder_attention(vae, tuple(z0.shape))  # what a Runner on CUDA would pick for this bucket
        attention = attention_path(vae, tuple(z0.shape))
        with torch.no_grad():
            use_group_norm(vae, "native")
            use_fused_blocks(vae, False)
            ref = decode(z0).float()
            for name in args.variants:
                graph, mode, channels_last, benchmark, dynamic, group_norm, inductor, conv_nhwc, fused, subpixel = \
                    VARIANTS[name]
                use_conv_outputs(vae, "nhwc" if conv_nhwc else "nchw")  # (no int8 convs in the FP16 decoder)
                fused_blocks = use_fused_blocks(vae, fused)
                subpixel_upsamplers = use_subpixel_upsample(vae, subpixel)
                fmt = torch.channels_last if channels_last else torch.contiguous_format
                torch.backends.cudnn.benchmark = benchmark
                vae.to(memory_format=fmt)
                use_group_norm(vae, group_norm)
                z = z0.contiguous(memory_format=fmt)
                fn = decode
                if mode:
                    torch._dynamo.reset()  # a fresh trace: the GroupNorms' form and the memory format are part of it
                    fn = torch.compile(decode, dynamic=dynamic, mode=mode)
                graphs = _GraphCache()
                run = (lambda f=fn: graphs.run(("vae",), f, [z])) if graph else (lambda f=fn: f(z))
                t0 = time.perf_counter()
                with torch._inductor.config.patch(dict(inductor)):
                    out = run().float()  # first call: compile / autotune / capture
                torch.cuda.synchronize()
                first_s = time.perf_counter() - t0
                mse = (out - ref).pow(2).mean().item()
                psnr = float("inf") if mse == 0 else 10 * np.log10(4.0 / mse)  # images in [-1, 1]: peak-to-peak 2
                t = time_ms(run, args.repeats)
                rows.append({"variant": name, "vae": args.vae, "vae_attention": attention, "group_norm": group_norm,
                             "int8_conv_out": ("nhwc" if conv_nhwc else "nchw") if args.vae == "int8" else "",
                             "fused_blocks": fused_blocks, "subpixel_upsamplers": subpixel_upsamplers,
                             "height": res, "width": res, "batch": args.batch,
                             "p50_ms": float(np.median(t)), "p95_ms": float(np.percentile(t, 95)),
                             "first_call_s": round(first_s, 2), "psnr_db_vs_eager": psnr,
                             "peak_mem_gib": torch.cuda.max_memory_allocated() / 2**30, "gpu": device_name(),
                             "weights": weights_label(cfg, args)})
                print(rows[-1], flush=True)
                if args.profile_out and res == args.res[0] and name in PROFILED:
                    cell, per_kernel = dict(variant=name, height=res, width=res, batch=args.batch), []
                    prof_rows += [dict(cell, **r) for r in profile_step(lambda f=fn: f(z), per_kernel)]
                    kernel_rows += [dict(cell, **r) for r in per_kernel]
                # after every variant: partial results survive a later variant's failure or timeout
                write_csv(pd.DataFrame(rows), repo_path(args.out), meta)
                if prof_rows:
                    out = repo_path(args.profile_out)
                    write_csv(pd.DataFrame(prof_rows), out, prof_meta)
                    write_csv(pd.DataFrame(kernel_rows), out.with_name(f"{out.stem}_kernels{out.suffix}"), prof_meta)
        vae.to(memory_format=torch.contiguous_format)
        use_group_norm(vae, "native")
        use_conv_outputs(vae, "nchw")
        use_fused_blocks(vae, False)
        use_subpixel_upsample(vae, False)
        torch.backends.cudnn.benchmark = False
    print(pd.DataFrame(rows).round(2).to_string(index=False))


if __name__ == "__main__":
    with user_errors():
        main(parse_args())
