"""Sample a COCO 2014 reference set: N (image, caption) pairs -> prompts file + centre-cropped reference images.

Example (COCO val2014 unpacked under data/coco):
    python scripts/utils/coco_sample.py --captions data/coco/annotations/captions_val2014.json \
        --images data/coco/val2014 --num_samples 1000 --seed 42 --res 512 \
        --out_prompts logs/coco/prompts_1000.txt --out_ref logs/coco/ref_512

Writes <out_ref>/00000.png ... (res x res) and <out_ref>/manifest.csv, and <out_prompts> with caption i
on line i, so `txt2img.py --prompts_file <out_prompts>` makes image i from the caption of reference image i.
One caption per image, images distinct; the same seed gives the same set. Reruns replace <out_ref> whole.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from quant_utils import repo_path  # noqa: E402
from quant_utils.cli import HelpFormatter, user_errors  # noqa: E402
from quant_utils.coco import load_captions, sample_pairs, write_reference_set  # noqa: E402
from quant_utils.csvio import provenance  # noqa: E402


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
    p.add_argument("--captions", default="data/coco/annotations/captions_val2014.json", help="COCO captions JSON")
    p.add_argument("--images", default="data/coco/val2014", help="folder holding the COCO images named in the JSON")
    p.add_argument("--num_samples", type=int, default=1000, help="number of distinct images (one caption each)")
    p.add_argument("--seed", type=int, default=42, help="sampling seed (images and the caption chosen per image)")
    p.add_argument("--res", type=int, default=512, help="reference images are resized and centre-cropped to res x res")
    p.add_argument("--out_prompts", default="logs/coco/prompts.txt", help="output prompts file, caption i on line i")
    p.add_argument("--out_ref", default="logs/coco/ref_images", help="output folder of reference PNGs + manifest.csv")
    return p.parse_args(argv)


def main(args: argparse.Namespace) -> None:
    # 1. read and sample the captions
    captions_path = repo_path(args.captions)
    files, captions = load_captions(captions_path)
    pairs = sample_pairs(files, captions, args.num_samples, args.seed)
    # 2. write the reference folder (atomic) and the prompts file
    meta = provenance(script="coco_sample", weights="none", backend="none", seed=args.seed,
                      source=captions_path.name, num_samples=args.num_samples, res=args.res)
    out_ref = repo_path(args.out_ref)
    manifest = write_reference_set(pairs, repo_path(args.images), out_ref, repo_path(args.out_prompts), args.res, meta)
    # 3. report
    print(f"{len(manifest)} reference images ({args.res}x{args.res}) in {out_ref}; prompts in {repo_path(args.out_prompts)}")


if __name__ == "__main__":
    with user_errors():
        main(parse_args())
