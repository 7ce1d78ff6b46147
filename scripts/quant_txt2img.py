r"""MixDQ generation: quantize the SDXL-Turbo UNet with mixed-precision bit configs, then generate (README 1.2).

Example (embedded tiny model, CPU, W8A8):
    python scripts/quant_txt2img.py --base_path logs/demo/w8a8 --wbits 8 --num_imgs 8
Real model, MixDQ's W4A8 config with protected activations:
    python scripts/quant_txt2img.py --config configs/stable-diffusion/sdxl_turbo.yaml --fp16 \
        --base_path logs/sdxl_mixdq --image_folder logs/sdxl_mixdq/images --num_imgs 1000 --batch_size 8 \
        --config_weight_mp mixed_precision_scripts/mixed_percision_config/sdxl_turbo/final_config/weight/weight_4.00.yaml \
        --config_act_mp mixed_precision_scripts/mixed_percision_config/sdxl_turbo/final_config/act/act_7.77.yaml \
        --act_protect "mixed_precision_scripts/mixed_percision_config/sdxl_turbo/final_config/act/act_sensitivie_a8_1%.pt"

The first run calibrates activation ranges and writes <base_path>/ckpt.pth; later runs load it.
Images use the same prompts and seeds as txt2img.py, so the folders pair up one to one. A rerun into an image
folder made with other settings (bits, configs, resolution, steps, seed, prompts, ...) is refused.

Ship a quantized model: --save_quantized DIR writes the packed-integer UNet (config.json + safetensors);
--quantized DIR (on every script that takes a model) loads it without the FP16 UNet and without calibration:
    python scripts/quant_txt2img.py --wbits 4 --base_path logs/demo/w4a8 --save_quantized logs/demo/w4a8_packed
    python scripts/quant_txt2img.py --quantized logs/demo/w4a8_packed --base_path logs/demo/w4a8_loaded
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from quant_utils import repo_path  # noqa: E402
from quant_utils.cli import (HelpFormatter, add_image_folder_args, add_model_args, add_quant_args,  # noqa: E402
                             check_quant_args, image_folder_inputs, pipeline_from_args, quant_request_from_args,
                             runner_from_args, user_errors, weights_label)
from quant_utils.csvio import provenance  # noqa: E402
from quant_utils.generation import check_folder, generate_folder, latency_report, read_prompts  # noqa: E402
from quant_utils.mixdq import config_sources, folder_settings, quantize_pipeline  # noqa: E402
from quant_utils.quantized_io import read_config  # noqa: E402


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
    add_model_args(p)
    add_quant_args(p)
    p.add_argument("--base_path", default="logs/sdxl_mixdq", help="run folder: ckpt.pth lives here")
    p.add_argument("--image_folder", default=None, help="where images go (default <base_path>/generated_images)")
    add_image_folder_args(p)
    p.add_argument("--save_quantized", default=None, metavar="DIR",
                   help="also write the quantized UNet to this folder (packed integer weights; load it with --quantized)")
    args = p.parse_args(argv)
    if args.quantized:
        given = [f for f, v in (("--wbits", args.wbits), ("--config_weight_mp", args.config_weight_mp),
                                ("--config_act_mp", args.config_act_mp), ("--act_protect", args.act_protect),
                                ("--save_quantized", args.save_quantized)) if v is not None]
        if given:
            p.error(f"--quantized takes the bit configs from its folder: drop {', '.join(given)}")
    elif args.wbits is None and args.config_weight_mp is None:
        p.error("give --wbits N or --config_weight_mp <yaml> (or --quantized DIR)")
    # everything checkable is checked before the model is built and calibrated
    image_folder_inputs(args)
    if args.quantized:
        read_config(repo_path(args.quantized))
    else:
        check_quant_args(args)
    return args


def main(args: argparse.Namespace) -> None:
    # 1. inputs; an image folder made with other settings is refused before the model is built and calibrated
    cfg, sampling, prompts = image_folder_inputs(args)
    calib = read_prompts(repo_path(args.calib_prompts))[: args.calib_num]
    base = repo_path(args.base_path)
    out_dir = repo_path(args.image_folder) if args.image_folder else base / "generated_images"
    if args.quantized:  # the bit configs and options the folder was made with
        quant = folder_settings(read_config(repo_path(args.quantized)))
    else:
        sources = config_sources(quant_request_from_args(args, cfg))
        quant = dict(weight_config=sources["weight"], act_config=sources["act"], act_protect=sources["act_protect"],
                     w_method=args.w_method, a_method=args.a_method, bos=not args.no_bos, split=not args.no_split)
    settings = dict(model=cfg.name, weights=weights_label(cfg, args), precision="fp16" if args.fp16 else cfg.dtype,
                    backend=args.backend, **quant)
    check_folder(out_dir, prompts, args.seed, **sampling, settings=settings)
    cfg, pipe, device = pipeline_from_args(args)
    # 2. quantize: load <base_path>/ckpt.pth or calibrate and write it (--quantized: the folder's UNet as it is)
    summary = quantize_pipeline(pipe, quant_request_from_args(args, cfg), base / "ckpt.pth", calib, args.seed,
                                sampling["height"], sampling["width"], sampling["steps"], sampling["guidance_scale"],
                                backend=args.backend, save_quantized=args.save_quantized and repo_path(args.save_quantized))
    print(f"{summary['origin']}\nW avg {summary['avg_wbits']:.2f} bits ({summary['layers_per_wbits']}), "
          f"A avg {summary['avg_abits']:.2f} bits ({summary['act_fp_layers']} FP layers); UNet weights "
          f"{summary['weight_bytes'] / 2**20:.2f} MiB at these bits vs {summary['fp16_bytes'] / 2**20:.2f} MiB FP16 "
          f"({summary['size_ratio']:.3f}x)")
    # 3. generate
    settings.update(avg_wbits=round(summary["avg_wbits"], 3), avg_abits=round(summary["avg_abits"], 3))
    manifest = generate_folder(runner_from_args(pipe, args), prompts, out_dir, args.num_imgs, args.batch_size, args.seed,
                               meta=provenance(script="quant_txt2img", seed=args.seed, quantized_folder=args.quantized or ""),
                               settings=settings,
                               desc="quant_txt2img", **sampling)
    print(f"{len(manifest)} images in {out_dir} on {device} ({args.backend} backend); {latency_report(manifest)}")


if __name__ == "__main__":
    with user_errors():
        main(parse_args())
