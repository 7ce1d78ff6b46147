r"""Latency and memory of one precision mode over resolution x batch (README section 3).

Example (on a GPU, full-size architecture with random weights, real kernels, CUDA graphs):
    python scripts/latency_probe.py --config configs/stable-diffusion/sdxl_turbo.yaml --random_weights \
        --mode w4a8 --backend kernel --exec graph --res 512 768 1024 --batch 1 2 4 8 --out results/latency_w4a8.csv
Tiny model on the CPU (what the tests run):
    python scripts/latency_probe.py --mode w8a8 --res 64 --batch 1 --repeats 2

One row per (resolution, batch) cell, in --out (default logs/latency/latency_<mode>.csv; results/ only when
given); columns are listed in the README. Quantized modes load <base_path>/<mode>/ckpt.pth or calibrate and
write it first. `first_call_ms` is each cell's first call (graph capture, compile, autotuning), kept apart
from the timed calls.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import pandas as pd  # noqa: E402
from tqdm import tqdm  # noqa: E402

from quant_utils import repo_path  # noqa: E402
from quant_utils.cli import (HelpFormatter, DEFAULT_PROMPTS, add_model_args, add_quant_args,  # noqa: E402
                             check_device_for_exec, check_quant_args, nonnegative_int, pipeline_from_args,
                             positive_int, quant_request_from_args, runner_from_args, user_errors, weights_label)
from quant_utils.csvio import device_name, provenance, write_csv  # noqa: E402
from quant_utils.fusion import fusion_label  # noqa: E402
from quant_utils.generation import read_prompts  # noqa: E402
from quant_utils.latency import device_weight_bytes, measure_cell  # noqa: E402
from quant_utils.mixdq import folder_summary, mode_label, quantize_pipeline  # noqa: E402
from quant_utils.modes import BITS  # noqa: E402
from quant_utils.qlayers import Backend  # noqa: E402
from quant_utils.runtime import StageTimes  # noqa: E402
from quant_utils.errors import ConfigError  # noqa: E402
from quant_utils.pipeline import check_resolution, resolve_device  # noqa: E402


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
    add_model_args(p, resolution=False)
    add_quant_args(p)
    p.add_argument("--mode", default="fp16", choices=sorted(BITS), help="precision: fp16 or WxA8")
    p.add_argument("--res", type=positive_int, nargs="+", default=[512, 768, 1024], help="square resolutions")
    p.add_argument("--batch", type=positive_int, nargs="+", default=[1, 2, 4, 8], help="batch sizes")
    p.add_argument("--repeats", type=positive_int, default=30, help="timed calls per cell")
    p.add_argument("--warmup", type=nonnegative_int, default=3,
                   help="untimed calls per cell (graph capture, autotuning); the first is reported as first_call_ms")
    p.add_argument("--base_path", default="logs/latency", help="quantized modes keep <base_path>/<mode>/ckpt.pth here")
    p.add_argument("--ckpt", default=None, help="use this existing checkpoint (an error if missing) instead of "
                   "<base_path>/<mode>/ckpt.pth, which is calibrated when absent")
    p.add_argument("--prompts_file", default=DEFAULT_PROMPTS, help="prompts (latency does not depend on them)")
    p.add_argument("--out", default=None, help="output CSV (default logs/latency/latency_<mode>.csv)")
    args = p.parse_args(argv)
    for r in args.res:
        check_resolution(r, r)
    # everything checkable is checked before the model is built
    check_device_for_exec(args)
    if args.mode != "fp16":
        check_quant_args(args, wbits=[] if args.config_weight_mp else [args.wbits or BITS[args.mode][0]])
    read_prompts(repo_path(args.prompts_file))
    if args.ckpt and not repo_path(args.ckpt).is_file():
        raise ConfigError(f"--ckpt {args.ckpt} does not exist (omit it to calibrate into {args.base_path}/{args.mode}/)")
    return args


def main(args: argparse.Namespace) -> None:
    # 1. model (FP16 on a GPU; --fp16 is implied there), quantized unless --mode fp16
    if resolve_device(args.device).startswith("cuda"):
        args.fp16 = True
    cfg, pipe, device = pipeline_from_args(args)
    if args.mode != "fp16" and device == "cpu" and args.backend == Backend.KERNEL:
        print("note: no CUDA here, the kernel backend falls back to fake quantization")
    prompts = read_prompts(repo_path(args.prompts_file))
    summary = {"avg_wbits": 16.0, "avg_abits": 16.0}
    backend = "none"
    if args.quantized:  # the folder's UNet as it is, labelled by its bits unless --mode names it
        args.mode = args.mode if args.mode != "fp16" else mode_label(pipe.unet)
        summary, backend = folder_summary(pipe.unet), pipe.unet.conv_in.backend
    elif args.mode != "fp16":
        if args.wbits is None and args.config_weight_mp is None:
            args.wbits = BITS[args.mode][0]
        args.abits = BITS[args.mode][1] if args.config_act_mp is None else args.abits
        calib = read_prompts(repo_path(args.calib_prompts))[: args.calib_num]
        r0 = args.res[0]
        ckpt = repo_path(args.ckpt) if args.ckpt else repo_path(args.base_path) / args.mode / "ckpt.pth"
        summary = quantize_pipeline(pipe, quant_request_from_args(args, cfg), ckpt,
                                    calib, args.seed, r0, r0, cfg.steps if args.steps is None else args.steps,
                                    backend=args.backend)
        print(f"{args.mode}: {summary['origin']}; W avg {summary['avg_wbits']:.2f}, A avg {summary['avg_abits']:.2f}")
        backend = pipe.unet.conv_in.backend  # 'fake' when the kernel backend fell back on a CPU
    runner = runner_from_args(pipe, args, res=args.res[0])
    weight_bytes = device_weight_bytes(pipe.unet)
    # 2. the grid; the CSV is rewritten after every cell, so a run stopped by a timeout keeps what it measured
    rows = []
    out = repo_path(args.out or f"logs/latency/latency_{args.mode}.csv")
    vae, vae_exec = runner.vae_kind, runner.vae_exec
    meta = provenance(script="latency_probe", weights=weights_label(cfg, args), backend=backend, mode=args.mode,
                      exec=runner.exec_mode, vae=vae, vae_exec=vae_exec, model=cfg.name, seed=args.seed,
                      fused_qkv=fusion_label(runner.fused))
    cells = [(r, b) for r in args.res for b in args.batch]
    for res, batch in tqdm(cells, desc=f"latency {args.mode}", unit="cell"):
        steps = cfg.steps if args.steps is None else args.steps
        try:
            first_ms = float("nan")
            if args.warmup:  # the first call of a cell (capture/compile/autotune), timed apart from the others
                t = StageTimes()
                runner([prompts[i % len(prompts)] for i in range(batch)], [args.seed + i for i in range(batch)],
                       res, res, steps, times=t)
                first_ms = t.total_ms
            m = measure_cell(runner, prompts, res, res, batch, steps, max(args.warmup - 1, 0), args.repeats, args.seed)
        except RuntimeError as e:  # out of memory: record the cell as missing, keep going
            if "out of memory" not in str(e):
                raise
            import torch

            torch.cuda.empty_cache()
            print(f"  {res}px batch {batch}: out of memory, skipped")
            continue
        rows.append({"mode": args.mode, "wbits": round(summary["avg_wbits"], 3), "abits": round(summary["avg_abits"], 3),
                     "backend": backend, "exec": runner.exec_mode, "vae": vae, "vae_exec": vae_exec, "height": res, "width": res, "batch": batch,
                     "steps": steps, "repeats": args.repeats, **m, "first_call_ms": first_ms,
                     "unet_weight_bytes": weight_bytes, "gpu": device_name(), "weights": weights_label(cfg, args)})
        write_csv(pd.DataFrame(rows), out, meta)
    if not rows:
        raise ConfigError("no cell could be measured")
    # 3. print
    df = pd.DataFrame(rows)
    cols = ["height", "batch", "first_call_ms", "text_p50_ms", "unet_p50_ms", "vae_p50_ms", "total_p50_ms", "total_p95_ms",
            "images_per_s", "peak_mem_gib"]
    print(df[cols].round(2).to_string(index=False))
    note = (" (fake quantization keeps the FP weights plus quantizer state, so this is not the packed low-bit size: "
            f"{summary['weight_bytes'] / 2**20:.1f} MiB at these bits)" if backend == Backend.FAKE else "")
    print(f"UNet weights on device: {weight_bytes / 2**20:.1f} MiB{note}")
    print(f"wrote {out}")


if __name__ == "__main__":
    with user_errors():
        main(parse_args())
