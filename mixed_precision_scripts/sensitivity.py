r"""Per-layer sensitivity analysis (MixDQ's metric-decoupled scores) for the bit-allocation ILP.

For each selected layer and candidate bit-width: quantize that layer alone, generate the fixed
prompts/seeds, and score SQNR (dB) of the UNet output and SSIM of the images against the FP run.
Writes <out_dir>/<kind>/{sqnr,ssim}/sensitivity.yaml (+ meta.yaml, tensor_ratio/), which
mixed_precision_scripts/bit_allocation.py reads. Resumable: a rerun skips what <kind>/state.json holds.

Example (embedded tiny model, a few layers, CPU):
    python mixed_precision_scripts/sensitivity.py --kind weight --bits 4 8 --layers "mid_block" \
        --num_imgs 2 --out_dir logs/sensitivity_tiny
Real model, all 794 layers (hours on one GPU):
    python mixed_precision_scripts/sensitivity.py --config configs/stable-diffusion/sdxl_turbo.yaml --fp16 \
        --kind weight --bits 2 4 8 --num_imgs 32 --batch_size 8 --out_dir mixed_precision_scripts/sensitivity_log/sdxl_turbo_ours
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from quant_utils import repo_path  # noqa: E402
from quant_utils.bit_allocation import load_sensitivity  # noqa: E402
from quant_utils.cli import (PROMPTS_32, HelpFormatter, add_model_args, check_device_for_exec, model_config_from_args,  # noqa: E402
                             pipeline_from_args, positive_int, sampling_from_args, user_errors)
from quant_utils.generation import read_prompts  # noqa: E402
from quant_utils.quantize import quantizable_layers  # noqa: E402
from quant_utils.sensitivity import SensitivitySetup, measure, select_layers  # noqa: E402

DEFAULT_BITS = {"weight": [2, 4, 8], "act": [4, 8]}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
    add_model_args(p, quantized=False)  # measures layers of the FP16 UNet
    p.add_argument("--kind", choices=["weight", "act"], default="weight", help="quantize weights or input activations")
    p.add_argument("--bits", type=int, nargs="+", default=None, help="candidate bit-widths (default: weight 2 4 8, act 4 8)")
    p.add_argument("--layers", default=None, help="regex over diffusers layer names (re.search); default: all layers")
    p.add_argument("--num_imgs", type=positive_int, default=8, help="images per measurement (prompt i, seed --seed + i)")
    p.add_argument("--batch_size", type=positive_int, default=8, help="images per forward pass")
    p.add_argument("--prompts_file", default=PROMPTS_32, help="prompts, image i uses line i mod N")
    p.add_argument("--calib_prompts", default=PROMPTS_32, help="act only: calibration prompts")
    p.add_argument("--calib_num", type=positive_int, default=8, help="act only: number of calibration prompts")
    p.add_argument("--out_dir", default=None,
                   help="model folder for the logs (default logs/sensitivity/<config name>)")
    p.add_argument("--restart", action="store_true", help="discard an earlier run's state.json instead of resuming")
    args = p.parse_args(argv)
    check_device_for_exec(args)
    sampling_from_args(args, model_config_from_args(args))
    read_prompts(repo_path(args.prompts_file))
    if args.kind == "act":
        read_prompts(repo_path(args.calib_prompts))
    return args


def main(args: argparse.Namespace) -> dict:
    # 1. model, prompts, settings
    cfg, pipe, device = pipeline_from_args(args)
    sampling = sampling_from_args(args, cfg)
    prompts = read_prompts(repo_path(args.prompts_file))
    calib = read_prompts(repo_path(args.calib_prompts))[: args.calib_num] if args.kind == "act" else []
    setup = SensitivitySetup(model=cfg.name, kind=args.kind, bits=tuple(args.bits or DEFAULT_BITS[args.kind]),
                             prompts=tuple(prompts[i % len(prompts)] for i in range(args.num_imgs)), seed=args.seed,
                             height=sampling["height"], width=sampling["width"], steps=sampling["steps"],
                             guidance_scale=sampling["guidance_scale"], batch_size=args.batch_size,
                             calib_prompts=tuple(calib), dtype=str(pipe.unet.dtype).replace("torch.", ""))
    layers = select_layers(list(quantizable_layers(pipe.unet)), args.layers)
    out_dir = repo_path(args.out_dir or f"logs/sensitivity/{cfg.name}")

    # 2. measure (resumes from <out_dir>/<kind>/state.json)
    counts = measure(pipe, setup, layers, out_dir, restart=args.restart)

    # 3. report: the most sensitive layers at the lowest bit-width
    sens = load_sensitivity(out_dir, args.kind)
    low = min(setup.bits)
    print(f"{counts['measured']} measured, {counts['reused']} reused from an earlier run; {counts['complete']} layers "
          f"complete in {out_dir / args.kind} ({device})")
    for metric, table in (("sqnr", sens.sqnr), ("ssim", sens.ssim)):
        worst = sorted(table, key=lambda n: table[n][setup.bits.index(low)])[:5]
        print(f"most sensitive by {metric} at {low} bits: " +
              ", ".join(f"{n} ({table[n][setup.bits.index(low)]:.4g})" for n in worst))
    return counts


if __name__ == "__main__":
    with user_errors():
        main(parse_args())
