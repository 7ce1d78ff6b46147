r"""FP16 (full-precision) image generation with SDXL-Turbo (README section 1.1).

Example (embedded tiny model, CPU):
    python scripts/txt2img.py --base_path logs/demo/fp16 --num_imgs 8 --batch_size 4
Real model (weights in the local HF cache):
    python scripts/txt2img.py --config configs/stable-diffusion/sdxl_turbo.yaml --base_path logs/sdxl_fp16 \
        --num_imgs 1000 --batch_size 8 --fp16

Writes <base_path>/generated_images/00000.png ... and <base_path>/generated_images/manifest.csv.
Reruns skip images already written; a rerun with other settings (model, resolution, steps, seed, prompts, ...)
into the same folder is refused, naming the differences.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from quant_utils import repo_path  # noqa: E402
from quant_utils.cli import (HelpFormatter, add_image_folder_args, add_model_args, image_folder_inputs,  # noqa: E402
                             pipeline_from_args, runner_from_args, user_errors, weights_label)
from quant_utils.csvio import provenance  # noqa: E402
from quant_utils.generation import check_folder, generate_folder, latency_report  # noqa: E402


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
    add_model_args(p)
    p.add_argument("--base_path", default="logs/sdxl_fp16", help="output folder (images go to <base_path>/generated_images)")
    add_image_folder_args(p)
    args = p.parse_args(argv)
    image_folder_inputs(args)  # everything checkable is checked before the model is built
    return args


def main(args: argparse.Namespace) -> None:
    # 1. inputs; a folder made with other settings is refused before the model is built
    cfg, sampling, prompts = image_folder_inputs(args)
    out_dir = repo_path(args.base_path) / "generated_images"
    settings = dict(model=cfg.name, weights=weights_label(cfg, args), precision="fp16" if args.fp16 else cfg.dtype,
                    backend="none")
    if args.quantized:  # the UNet of a quantized folder (fake backend: txt2img has no --backend)
        settings.update(backend="fake", quantized_folder=str(args.quantized))
    check_folder(out_dir, prompts, args.seed, **sampling, settings=settings)
    cfg, pipe, device = pipeline_from_args(args)
    # 2. generate
    manifest = generate_folder(runner_from_args(pipe, args), prompts, out_dir, args.num_imgs, args.batch_size, args.seed,
                               meta=provenance(script="txt2img", seed=args.seed), settings=settings, desc="txt2img",
                               **sampling)
    # 3. report
    print(f"{len(manifest)} images in {out_dir} ({sampling['height']}x{sampling['width']}, {sampling['steps']} step(s)) "
          f"on {device}; {latency_report(manifest)}")


if __name__ == "__main__":
    with user_errors():
        main(parse_args())
