r"""Quality/latency grid: CLIP score, latency and memory over weight bits x resolution (README section 2).

Example (real weights, GPU):
    python scripts/eval_grid.py --config configs/stable-diffusion/sdxl_turbo.yaml --fp16 --exec graph \
        --prompts_file scripts/utils/prompts_32.txt --res 512 768 1024 --wbits 16 8 6 4 --out_csv results/eval_grid.csv
Tiny model on the CPU:
    python scripts/eval_grid.py --res 64 --wbits 16 8 4 --num_prompts 4 --out_csv logs/demo/eval_grid.csv

The model is loaded once; each weight bit-width quantizes a copy of the FP16 UNet (loading
--ckpt's file for that width when present, else calibrating and writing it). wbits 16 is FP16.
Latency: the first call of each cell (graph capture, compile, autotuning) is `first_call_ms`; p50/p95 and
ms_per_image are over the other (warm) calls.
"""
from __future__ import annotations

import argparse
import copy
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import torch  # noqa: E402
from tqdm import tqdm  # noqa: E402

from quant_utils import repo_path  # noqa: E402
from quant_utils.cli import (PROMPTS_32, HelpFormatter, add_model_args, add_quant_args, check_device_for_exec,  # noqa: E402
                             check_quant_args, pipeline_from_args, positive_int, quant_request_from_args,
                             runner_from_args, user_errors, weights_label)
from quant_utils.csvio import device_name, provenance, write_csv  # noqa: E402
from quant_utils.generation import read_prompts  # noqa: E402
from quant_utils.mixdq import folder_summary, quantize_pipeline  # noqa: E402
from quant_utils.errors import ConfigError, WeightsNotFoundError  # noqa: E402
from quant_utils.pipeline import check_resolution  # noqa: E402
from quant_utils.runtime import StageTimes  # noqa: E402


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
    add_model_args(p, resolution=False)
    add_quant_args(p, wbits=False)
    p.add_argument("--wbits", dest="grid_wbits", type=int, nargs="+", default=[16, 8, 6, 4],
                   help="weight bit-widths of the grid (16 = FP16); each picks weight_N.00.yaml or uniform_N.yaml")
    p.add_argument("--res", type=positive_int, nargs="+", default=[512, 768, 1024], help="square resolutions")
    p.add_argument("--prompts_file", default=PROMPTS_32, help="prompts to generate and score")
    p.add_argument("--num_prompts", type=positive_int, default=32, help="how many prompts of the file")
    p.add_argument("--batch_size", type=positive_int, default=4, help="images per call")
    p.add_argument("--ckpt", default="logs/eval_grid/ckpt_w{wbits}.pth", help="checkpoint path per bit-width ({wbits})")
    p.add_argument("--clip_model", default="ViT-B-32", help="open_clip model")
    p.add_argument("--clip_pretrained", default="laion2b_s34b_b79k", help="open_clip tag or weights file; none = random")
    p.add_argument("--out_csv", default="logs/eval_grid/eval_grid.csv", help="output CSV")
    args = p.parse_args(argv)
    for r in args.res:
        check_resolution(r, r)
    if "{wbits}" not in args.ckpt:
        p.error("--ckpt must contain {wbits}, e.g. logs/eval_grid/ckpt_w{wbits}.pth")
    # everything checkable is checked before the model is built
    check_device_for_exec(args)
    check_quant_args(args, wbits=args.grid_wbits)
    read_prompts(repo_path(args.prompts_file))
    return args


def load_scorer(args, device: str):
    """open_clip scorer, or (None, reason) when its weights are not available offline."""
    from quant_utils.evaluation import load_clip

    try:
        return load_clip(args.clip_model, args.clip_pretrained, device), ""
    except WeightsNotFoundError as e:
        return None, str(e).splitlines()[0]


def main(args: argparse.Namespace) -> None:
    # 1. one model load; CLIP once
    cfg, pipe, device = pipeline_from_args(args)
    prompts = read_prompts(repo_path(args.prompts_file))[: args.num_prompts]
    calib = read_prompts(repo_path(args.calib_prompts))[: args.calib_num]
    scorer, clip_note = load_scorer(args, device)
    if scorer is not None and scorer.label.endswith("random-init"):
        clip_note = "plumbing check: random CLIP weights"
    fp_unet, rows = pipe.unet, []
    steps = cfg.steps if args.steps is None else args.steps
    # 2. the grid
    for wbits in [None] if args.quantized else args.grid_wbits:  # --quantized: the folder's UNet only
        pipe.unet = fp_unet
        summary = {"avg_wbits": 16.0, "avg_abits": 16.0}
        backend = "none"
        if args.quantized:
            summary, backend = folder_summary(pipe.unet), pipe.unet.conv_in.backend
            wbits = round(summary["avg_wbits"], 2)
        elif wbits != 16:
            pipe.unet = copy.deepcopy(fp_unet)
            summary = quantize_pipeline(pipe, quant_request_from_args(args, cfg, wbits), repo_path(args.ckpt.format(wbits=wbits)),
                                        calib, args.seed, args.res[0], args.res[0], steps,
                                        backend=args.backend)
            backend = pipe.unet.conv_in.backend
        runner = runner_from_args(pipe, args)
        for res in args.res:
            if device.startswith("cuda"):
                torch.cuda.reset_peak_memory_stats()
            times, images = [], []
            for start in tqdm(range(0, len(prompts), args.batch_size), desc=f"w{wbits} {res}px", unit="batch"):
                batch = prompts[start:start + args.batch_size]
                t = StageTimes()
                images.extend(runner(batch, [args.seed + start + i for i in range(len(batch))], res, res,
                                     steps, times=t))
                times.append(t.total_ms)
            timed = times[1:] if len(times) > 1 else times  # the first call also captures graphs / tunes kernels
            scores = scorer(images, prompts, args.batch_size) if scorer is not None else np.array([np.nan])
            rows.append({"wbits": wbits, "avg_wbits": round(summary["avg_wbits"], 3), "abits": round(summary["avg_abits"], 3),
                         "backend": backend, "exec": runner.exec_mode, "vae": runner.vae_kind, "height": res, "width": res,
                         "n_images": len(images), "batch_size": args.batch_size, "first_call_ms": times[0],
                         "n_warm_calls": len(times) - 1,
                         "p50_ms": float(np.percentile(timed, 50)), "p95_ms": float(np.percentile(timed, 95)),
                         "ms_per_image": float(np.mean(timed)) / args.batch_size,
                         "peak_mem_gib": torch.cuda.max_memory_allocated() / 2**30 if device.startswith("cuda") else float("nan"),
                         "clip_score": float(np.mean(scores)), "clip_std": float(np.std(scores)),
                         "clip_note": clip_note, "gpu": device_name(), "weights": weights_label(cfg, args)})
    # 3. write and print
    if not rows:
        raise ConfigError("empty grid")
    df = pd.DataFrame(rows)
    write_csv(df, repo_path(args.out_csv), provenance(script="eval_grid", weights=weights_label(cfg, args),
                                                      backend=args.backend, model=cfg.name, seed=args.seed,
                                                      clip=scorer.label if scorer else f"unavailable: {clip_note}"))
    print(df[["wbits", "avg_wbits", "height", "first_call_ms", "p50_ms", "p95_ms", "peak_mem_gib", "clip_score"]]
          .round(3).to_string(index=False))
    if (df["n_warm_calls"] == 0).any():
        print("note: a cell with a single call has no warm calls: its p50/p95 repeat the first call "
              "(use more --num_prompts than --batch_size)")
    if clip_note:
        print(f"note: CLIP score {'NaN' if scorer is None else 'not meaningful'}: {clip_note}")
    print(f"wrote {repo_path(args.out_csv)}")


if __name__ == "__main__":
    with user_errors():
        main(parse_args())
