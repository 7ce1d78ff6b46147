"""Encode time and body size of the service's response formats (quant_utils/serving/images.py) on this machine's CPU.

One 1024x1024 image per content (`noise`: uniform random pixels, the worst case for the body; `smooth`: gradients
with a little noise), p50 of `--repeats` encodes, each of a fresh copy (as the service encodes a new image every
time). Writes one row per (encoding, content): encoding, content, encode_p50_ms, body_mb, repeats.
    python scripts/utils/bench_encode.py --out logs/encode_cpu.csv
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from quant_utils import repo_path  # noqa: E402
from quant_utils.cli import HelpFormatter, positive_int, user_errors  # noqa: E402
from quant_utils.csvio import cpu_name, provenance, write_csv  # noqa: E402
from quant_utils.serving.images import encode_image  # noqa: E402

ENCODINGS = {"png level 0": dict(fmt="png", png_level=0), "png level 1": dict(fmt="png", png_level=1),
             "jpeg q90": dict(fmt="jpeg", jpeg_quality=90), "jpeg q80": dict(fmt="jpeg", jpeg_quality=80)}


def images(size: int, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:size, 0:size] / size
    smooth = np.stack([x, y, (x + y) / 2], -1) * 230 + rng.normal(0, 3, (size, size, 3))
    return {"noise": rng.integers(0, 256, (size, size, 3), dtype=np.uint8),
            "smooth": np.clip(smooth, 0, 255).astype(np.uint8)}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
    p.add_argument("--out", default="logs/encode_cpu.csv", help="CSV to write")
    p.add_argument("--size", type=positive_int, default=1024, help="image side, pixels")
    p.add_argument("--repeats", type=positive_int, default=15, help="encodes per (encoding, content)")
    return p.parse_args(argv)


def main(args: argparse.Namespace) -> int:
    rows, load_before = [], os.getloadavg()[0]
    for content, img in images(args.size).items():
        for name, kw in ENCODINGS.items():
            times, body = [], b""
            for _ in range(args.repeats):
                fresh = img.copy()
                t0 = time.perf_counter()
                body = encode_image(fresh, **kw)
                times.append(time.perf_counter() - t0)
            rows.append({"encoding": name, "content": content, "encode_p50_ms": round(1e3 * float(np.median(times)), 2),
                         "body_mb": round(len(body) / 1e6, 3), "repeats": args.repeats})
            print(rows[-1])
    write_csv(pd.DataFrame(rows), repo_path(args.out),
              provenance(script="scripts/utils/bench_encode.py", device=f"cpu: {cpu_name()}", cores=os.cpu_count(),
                         weights="none (synthetic images, no model)", backend="none (CPU image encoders: zlib, Pillow)",
                         loadavg_1min_before=round(load_before, 2), loadavg_1min_after=round(os.getloadavg()[0], 2),
                         size=args.size))
    return 0


if __name__ == "__main__":
    with user_errors():
        sys.exit(main(parse_args()))
