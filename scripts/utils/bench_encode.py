"""Encode time and body size of the service's response formats (quant_utils/serving/images.py) on this machine's CPU.

One 1024x1024 image per content (`noise`: uniform random pixels, the worst case for the body; `smooth`: gradients
with a little noise), p50 of `--repeats` encodes, each of a fresh copy (as the service encodes a new image every
time). Each encode also counts the page faults it took (fresh multi-MB buffers fault in ~770 pages per 3 MB), in a worker thread as in the service. With
`--heaps default kept` (the default) the whole sweep runs twice: glibc's default heap, then with freed blocks kept
in the heap (quant_utils/serving/images.keep_freed_heap, the service's --keep_freed_heap; irreversible, so second).
`--device cuda` adds the service's `--encode_on device` encoders on that device, for one image and a batch of 4 (heap
`device`; the pixels start on the device, the body ends on the host, synchronised): JPEG by torchvision (nvJPEG), and
PNG level 0 made whole on the device (its CRC-32 too), then copied into the body on the CPU.
Writes one row per (heap, encoding, content): heap, encoding, content, encode_p50_ms (per call: per batch for the
batch rows), encode_faults_p50, body_mb, repeats.
    python scripts/utils/bench_encode.py --out logs/encode_cpu.csv
"""
from __future__ import annotations

import argparse
import os
import itertools
import math
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import torch  # noqa: E402

from quant_utils import repo_path  # noqa: E402
from quant_utils.cli import HelpFormatter, positive_int, user_errors  # noqa: E402
from quant_utils.csvio import cpu_name, provenance, write_csv  # noqa: E402
from quant_utils.serving.images import (PngOnHost, encode_image_timed, encode_jpeg_on_device, encode_png_on_device,  # noqa: E402
                                         keep_freed_heap)

ENCODINGS = {"png level 0": dict(fmt="png", png_level=0), "png level 1": dict(fmt="png", png_level=1),
             "jpeg q90": dict(fmt="jpeg", jpeg_quality=90), "jpeg q80": dict(fmt="jpeg", jpeg_quality=80)}


def images(size: int, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:size, 0:size] / size
    smooth = np.stack([x, y, (x + y) / 2], -1) * 230 + rng.normal(0, 3, (size, size, 3))
    return {"noise": rng.integers(0, 256, (size, size, 3), dtype=np.uint8),
            "smooth": np.clip(smooth, 0, 255).astype(np.uint8)}


def png_on_device(batch: torch.Tensor, crc_on_device: bool) -> list[bytes]:
    """--encode_on device PNG: the file made on the device (its CRC-32 there too, or on the host as the service does:
    PngOnHost), one copy to the host, one into the body."""
    if crc_on_device:
        return [bytes(f) for f in encode_png_on_device(batch)]
    return [PngOnHost(f).body() for f in encode_png_on_device(batch, crc_on_device=False)]


def device_rows(args: argparse.Namespace) -> list[dict]:
    """The service's --encode_on device encoders on args.device (JPEG q90 by torchvision; PNG level 0 made there, its
    CRC-32 on the host as the service does, or there too), one image and a batch of 4, after one warm-up (encoder
    start-up). Wall time of the whole encode: device work, the copy to the host and the host's part."""
    dev = torch.device(args.device)
    sync = torch.cuda.synchronize if dev.type == "cuda" else (lambda: None)
    encoders = {f"jpeg q90 on {dev.type} (torchvision)": lambda b: encode_jpeg_on_device(b, 90),
                f"png level 0 on {dev.type}, crc on cpu": lambda b: png_on_device(b, False),
                f"png level 0 on {dev.type}, crc there too": lambda b: png_on_device(b, True)}
    rows = []
    for content, img in images(args.size).items():
        one = torch.from_numpy(img).permute(2, 0, 1).contiguous().to(dev)[None]
        for (name, encode), (suffix, batch) in itertools.product(
                encoders.items(), (("", one), (", batch of 4", one.expand(4, -1, -1, -1).contiguous()))):
            label = name + suffix
            encode(batch)
            ms, bodies = [], []
            for _ in range(args.repeats):
                sync()
                t = time.perf_counter()
                bodies = encode(batch)
                ms.append((time.perf_counter() - t) * 1e3)
            rows.append({"heap": "device", "encoding": label, "content": content,
                         "encode_p50_ms": round(float(np.median(ms)), 2), "encode_faults_p50": math.nan,
                         "body_mb": round(len(bodies[0]) / 1e6, 3), "repeats": args.repeats})
            print(rows[-1])
    return rows


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
    p.add_argument("--out", default="logs/encode_cpu.csv", help="CSV to write")
    p.add_argument("--size", type=positive_int, default=1024, help="image side, pixels")
    p.add_argument("--repeats", type=positive_int, default=15, help="encodes per (encoding, content)")
    p.add_argument("--heaps", nargs="+", choices=["default", "kept"], default=["default", "kept"],
                   help="heap settings, in this order ('kept' cannot be undone: it stays for the rest of the run)")
    p.add_argument("--device", default=None, help="also time JPEG encoded on this torch device (e.g. cuda)")
    args = p.parse_args(argv)
    if args.heaps[-1] == "default" and "kept" in args.heaps:
        p.error("--heaps: 'kept' cannot be undone, so it must come last")
    return args


def main(args: argparse.Namespace) -> int:
    rows, load_before = [], os.getloadavg()[0]
    encoder = ThreadPoolExecutor(1, thread_name_prefix="encode")  # the service encodes in its own threads too
    for heap in args.heaps:
        if heap == "kept" and not keep_freed_heap():
            print("note: this C library has no mallopt (not glibc): 'kept' rows are the default heap")
            heap = "kept (no mallopt)"
        for content, img in images(args.size).items():
            for name, kw in ENCODINGS.items():
                ms, faults, body_mb = [], [], 0.0
                for _ in range(args.repeats):  # each body freed before the next encode, as in the service
                    t = encoder.submit(encode_image_timed, img.copy(), **kw).result()
                    ms.append(t.ms)
                    faults.append(t.faults)
                    body_mb = len(t.body) / 1e6
                rows.append({"heap": heap, "encoding": name, "content": content,
                             "encode_p50_ms": round(float(np.median(ms)), 2),
                             "encode_faults_p50": float(np.median(faults)), "body_mb": round(body_mb, 3),
                             "repeats": args.repeats})
                print(rows[-1])
    if args.device:
        rows += device_rows(args)
    gpu = f"; {torch.cuda.get_device_name()} for the device rows" if args.device and "cuda" in args.device else ""
    write_csv(pd.DataFrame(rows), repo_path(args.out),
              provenance(script="scripts/utils/bench_encode.py", device=f"cpu: {cpu_name()}{gpu}", cores=os.cpu_count(),
                         weights="none (synthetic images, no model)",
                         backend="none (CPU image encoders: zlib, Pillow)" + (
                             f"; torchvision encode_jpeg and the PNG file (its CRC-32 on the host, or there too) on {args.device}" if args.device else ""),
                         loadavg_1min_before=round(load_before, 2), loadavg_1min_after=round(os.getloadavg()[0], 2),
                         size=args.size))
    return 0


if __name__ == "__main__":
    with user_errors():
        sys.exit(main(parse_args()))
