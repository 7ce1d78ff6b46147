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
from quant_utils.cli import (DEFAULT_PROMPTS, HelpFormatter, add_model_args, check_device_for_exec,  # noqa: E402
                             model_config_from_args, pipeline_from_args, positive_int, runner_from_args,
                             sampling_from_args, user_errors, weights_label)
from quant_utils.csvio import provenance  # noqa: E402
from quant_utils.generation import check_folder, generate_folder, latency_report, read_prompts  # noqa: E402


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
    add_model_args(p)
    p.add_argument("--base_path", default="logs/sdxl_fp16", help="output folder (images go to <base_path>/generated_images)")
    p.add_argument("--num_imgs", type=positive_int, default=8, help="number of images")
    p.add_argument("--batch_size", type=positive_int, default=4, help="images per forward pass")
    p.add_argument("--prompt", default=None, help="a single prompt used for every image (overrides --prompts_file)")
    p.add_argument("--prompts_file", default=DEFAULT_PROMPTS, help="one prompt per line; image i uses line i mod N")
    args = p.parse_args(argv)
    # everything checkable is checked before the model is built
    check_device_for_exec(args)
    sampling_from_args(args, model_config_from_args(args))
    if not args.prompt:
        read_prompts(repo_path(args.prompts_file))
    return args


def main(args: argparse.Namespace) -> None:
    # 1. inputs; a folder made with other settings is refused before the model is built
    cfg = model_config_from_args(args)
    sampling = sampling_from_args(args, cfg)
    prompts = [args.prompt] if args.prompt else read_prompts(repo_path(args.prompts_file))
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
