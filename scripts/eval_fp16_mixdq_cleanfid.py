r"""FID and CLIP score of FP16 vs MixDQ images, plus paired PSNR/SSIM (README section 1.3).

Example (COCO reference from scripts/utils/coco_sample.py, real weights cached):
    python scripts/eval_fp16_mixdq_cleanfid.py --ref_folder logs/coco/ref_images \
        --fp16_folder logs/sdxl_fp16/generated_images --mixdq_folder logs/sdxl_w8a8/images \
        --prompts_file logs/coco/prompts.txt --num_samples 1000 --out logs/eval/fid_clip.csv
Offline plumbing check (random feature extractor, random CLIP, synthetic reference; numbers mean nothing):
    python scripts/eval_fp16_mixdq_cleanfid.py --fp16_folder logs/demo/fp16/generated_images \
        --mixdq_folder logs/demo/w8a8/images --ref_folder logs/demo/eval/synthetic_ref --synthetic_ref 8 \
        --feature_extractor random --clip_pretrained none --out logs/demo/eval/fid_clip.csv

Computes FID(fp16, ref), FID(mixdq, ref), FID(mixdq, fp16) with clean-fid, the CLIP score of every
folder against its manifest prompts with open_clip, and PSNR/SSIM of each FP16/MixDQ pair (same
index, seed and prompt). Writes one row per (folder, metric) to --out (.csv or .json) and the
per-pair table to <out stem>_pairs.csv, all at the end: nothing is half-written.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from quant_utils import repo_path  # noqa: E402
from quant_utils.cli import HelpFormatter, user_errors  # noqa: E402
from quant_utils.csvio import atomic_write_text, provenance, write_csv  # noqa: E402
from quant_utils.evaluation import (FID_KINDS, check_images, check_prompts, evaluate, inception_extractor,  # noqa: E402
                                    load_clip, load_image_set, load_rgb, random_extractor, write_synthetic_reference)
from quant_utils.generation import read_prompts  # noqa: E402
from quant_utils.errors import ConfigError  # noqa: E402
from quant_utils.pipeline import resolve_device  # noqa: E402

METRICS = ("fid", "clip", "pixel")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
    p.add_argument("--ref_folder", default=None, help="reference images (e.g. COCO, from scripts/utils/coco_sample.py); "
                   "its manifest.csv is used when present, else its image files in name order")
    p.add_argument("--fp16_folder", default=None, help="FP16 images + manifest.csv (txt2img.py: <base_path>/generated_images)")
    p.add_argument("--mixdq_folder", default=None, help="MixDQ images + manifest.csv (quant_txt2img.py --image_folder)")
    p.add_argument("--prompts_file", default=None,
                   help="optional check: every manifest prompt of image i must be line i mod N of this file")
    p.add_argument("--num_samples", type=int, default=None,
                   help="images per folder: the first N by manifest index (default: all; folders must then be equal)")
    p.add_argument("--metrics", nargs="+", default=list(METRICS), choices=METRICS, help="what to compute")
    p.add_argument("--batch_size", type=int, default=32, help="images per feature/CLIP batch")
    p.add_argument("--device", default="auto", help="cpu, cuda, cuda:N or auto")
    p.add_argument("--num_workers", type=int, default=0, help="DataLoader workers for clean-fid's resizing")
    p.add_argument("--out", default="logs/eval/fid_clip.csv", help="summary file (.csv or .json)")
    p.add_argument("--fid_mode", default="clean", choices=FID_KINDS, help="clean-fid resizing/Inception variant")
    p.add_argument("--feature_extractor", default="inception", choices=["inception", "random"],
                   help="FID features: clean-fid's Inception, or 'random' (offline plumbing check; FID meaningless)")
    p.add_argument("--clip_model", default="ViT-B-32", help="open_clip architecture")
    p.add_argument("--clip_pretrained", default="laion2b_s34b_b79k",
                   help="open_clip tag or local weights file; 'none' = random weights (plumbing check)")
    p.add_argument("--synthetic_ref", type=int, default=None, metavar="N",
                   help="first write N smooth-noise PNGs + manifest into --ref_folder (offline demo; FID vs ref meaningless)")
    p.add_argument("--seed", type=int, default=42, help="seed of the synthetic reference and of random weights")
    args = p.parse_args(argv)
    if not (args.fp16_folder or args.mixdq_folder):
        p.error("give --fp16_folder and/or --mixdq_folder")
    if args.synthetic_ref and not args.ref_folder:
        p.error("--synthetic_ref needs --ref_folder (where to write it)")
    if args.num_samples is not None and args.num_samples < 1 or args.batch_size < 1:
        p.error("--num_samples and --batch_size must be >= 1")
    return args


def main(args: argparse.Namespace) -> None:
    device = resolve_device(args.device)
    out = repo_path(args.out)
    if out.suffix not in (".csv", ".json"):
        raise ConfigError(f"--out {out}: use a .csv or .json file name")
    # 1. image sets (pairing and prompts checked before any model is loaded)
    sets = {k: load_image_set(k, repo_path(getattr(args, f"{k}_folder")), args.num_samples)
            for k in ("fp16", "mixdq") if getattr(args, f"{k}_folder")}
    if args.synthetic_ref:
        h, w = load_rgb(next(iter(sets.values())).paths[0]).shape[:2]
        write_synthetic_reference(repo_path(args.ref_folder), args.synthetic_ref, h, w, args.seed,
                                  provenance(script="eval_fp16_mixdq_cleanfid", note="synthetic reference"))
    if args.ref_folder:
        sets = {"ref": load_image_set("ref", repo_path(args.ref_folder), args.num_samples, require_manifest=False), **sets}
    if args.prompts_file:
        prompts = read_prompts(repo_path(args.prompts_file))
        for k in ("fp16", "mixdq"):
            if k in sets:
                check_prompts(sets[k], prompts)
    for s in sets.values():
        check_images(s)
    # 2. models (missing weights stop the run here, before the long part)
    plumbing = {k: [] for k in ("all", "fid", "fid_ref", "clip")}  # why a number would mean nothing
    extractor = None
    if "fid" in args.metrics:
        if args.feature_extractor == "random":
            extractor = random_extractor(seed=args.seed, device=device)
            plumbing["fid"].append("random feature extractor")
        else:
            extractor = inception_extractor(args.fid_mode, device)
    if "ref" in sets and sets["ref"].synthetic:
        plumbing["fid_ref"].append("synthetic reference")
    clip = None
    if "clip" in args.metrics:
        clip = load_clip(args.clip_model, args.clip_pretrained, device, args.seed)
        if clip.label.endswith("random-init"):
            plumbing["clip"].append("random CLIP weights")
    weights = sorted({sets[k].meta.get("weights", "unknown") for k in ("fp16", "mixdq") if k in sets})
    if set(weights) - {"real"}:
        plumbing["all"].append(f"images from {'/'.join(weights)} weights")
    # 3. metrics
    summary, pairs = evaluate(sets, args.metrics, extractor, args.fid_mode,
                              "inception_v3" if args.feature_extractor == "inception" else "random", clip,
                              args.batch_size, device, args.num_workers, plumbing)
    # 4. write (only now, all at once) and report
    meta = provenance(script="eval_fp16_mixdq_cleanfid", weights="/".join(weights),
                      backend=sets["mixdq"].meta.get("backend", "unknown") if "mixdq" in sets else "none",
                      seed=args.seed, fid_mode=args.fid_mode, feature_extractor=args.feature_extractor,
                      clip=clip.label if clip else "none", num_samples=args.num_samples,
                      **{f"{k}_folder": str(s.folder) for k, s in sets.items()},
                      **{f"mixdq_{k}": v for k, v in (sets["mixdq"].meta if "mixdq" in sets else {}).items()
                         if k in ("avg_wbits", "avg_abits", "weight_config", "act_config")})  # which bit config
    if pairs is not None:  # first, so that a summary on disk always comes with its pairs
        write_csv(pairs, out.with_name(out.stem + "_pairs.csv"), meta)
    if out.suffix == ".json":
        # Python's json writes NaN (std of FID) and Infinity (PSNR of identical images) as such
        atomic_write_text(out, json.dumps({"provenance": meta, "rows": summary.to_dict(orient="records")},
                                          indent=1, default=float))
    else:
        write_csv(summary, out, meta)
    print(summary.drop(columns="note").to_string(index=False, float_format=lambda v: f"{v:.4g}"))
    if summary["note"].str.contains("plumbing").any():
        print("NOTE: rows marked in the 'note' column are plumbing checks (random weights or synthetic data), not real numbers")
    print(f"wrote {out}" + (f" and {out.with_name(out.stem + '_pairs.csv')}" if pairs is not None else ""))


if __name__ == "__main__":
    with user_errors():
        main(parse_args())
