"""Tile sweep of the int8 decoder's memory-bound passes at the SDXL VAE's 1024 px shapes (GPU only): the GroupNorm
statistics (channel_moments_partials: BLOCK_C, BLOCK_P, CHUNK, warps), the one-pass norm/SiLU/upsample/quantize
(norm_act_quant: BC, BW, warps) on channels_last fp16 inputs as the fused decoder feeds them, and the attention's row
softmax (softmax_ against torch.softmax). CUDA-graph replays (launch.graph_bench_ms); one row per (pass, shape,
config): calls per decode, us, GB/s (bytes read + written), default (the shipped config). Why: both passes ran at
~3.3 TB/s in the v9 profile (results/e2e_v9_ptx_vae_profile_kernels_nvidia_h200.csv), ~70 % of the H200's HBM.

    python scripts/device/decoder_pass_sweep.py --batch 4 --out /tmp/out/decoder_pass_sweep.csv
"""
from __future__ import annotations

import argparse
import itertools
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

import pandas as pd  # noqa: E402
import torch  # noqa: E402

from quant_utils.csvio import provenance, write_csv  # noqa: E402
from quant_utils.kernels import triton_kernels as tk  # noqa: E402
from quant_utils.kernels.launch import graph_bench_ms  # noqa: E402

# (channels, side, calls per decode) of the SDXL VAE decoder's GroupNorms at a 1024 px image (latent 128)
GN_SHAPES = [(512, 128, 11), (512, 256, 6), (512, 512, 1), (256, 512, 5), (256, 1024, 1), (128, 1024, 6)]
UP_SHAPES = [(512, 128, 1), (512, 256, 1), (256, 512, 1)]  # the upsamplers' inputs (2x nearest, no norm)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--batch", type=int, default=4, help="images per decode (the shapes' N)")
    ap.add_argument("--out", required=True, help="CSV path")
    return ap.parse_args(argv)


def main(args: argparse.Namespace) -> None:
    if not torch.cuda.is_available():
        print("error: decoder_pass_sweep.py: times CUDA kernels, and this machine has no GPU", file=sys.stderr)
        sys.exit(2)
    b, rows = args.batch, []

    def row(pass_, shape, calls, cfg, ms, nbytes, default):
        rows.append({"pass": pass_, "shape": shape, "calls": calls, "config": cfg, "us": round(ms * 1e3, 2),
                     "gb_per_s": round(nbytes / ms / 1e6, 1), "default": default})
        print(rows[-1], flush=True)

    for c, side, calls in GN_SHAPES:
        x = torch.randn(b, c, side, side, device="cuda", dtype=torch.float16).contiguous(memory_format=torch.channels_last)
        strides = (x.stride(0), x.stride(1), x.stride(3))
        default = tk.moments_config(b, c, side * side, block_p=32)  # channels_last's
        for cfg in itertools.product([32, 64, 128], [32, 64, 128], [2048, 4096, 16384], [4, 8]):
            if cfg[0] > c or cfg[2] < cfg[1]:
                continue
            ms = graph_bench_ms(lambda: tk.channel_moments_partials(x, *strides, num_warps=cfg[3], config=cfg[:3]))
            row("moments", f"{b}x{c}x{side}x{side}", calls, "x".join(map(str, cfg)), ms, x.numel() * 2,
                cfg[:3] == default and cfg[3] == 4)
        sc, sh = torch.rand(b, c, device="cuda") + 0.5, torch.randn(b, c, device="cuda")
        for shape_calls, up, aff in [(calls, 1, True)] + [(n, 2, False) for cc, s, n in UP_SHAPES if (cc, s) == (c, side)]:
            out_bytes = b * (side * up + 2) ** 2 * c
            dflt = (min(c, 128), max((8192 if aff else 4096) // min(c, 128), 16), 4)
            for cfg in itertools.product([32, 64, 128], [2048, 4096, 8192], [4, 8]):
                tile = (cfg[0], max(cfg[1] // cfg[0], 16), cfg[2])
                if tile[0] > c:
                    continue
                ms = graph_bench_ms(lambda: tk.norm_act_quant(x, sc if aff else None, sh if aff else None, aff, up, 1,
                                                              (0.05, 3, -128, 127), config=tile))
                row("norm_act_quant" if aff else "upsample_quant", f"{b}x{c}x{side}x{side}", shape_calls,
                    "x".join(map(str, tile)), ms, x.numel() * 2 + out_bytes, tile == dflt)
    s = torch.randn(16384, 16384, device="cuda", dtype=torch.float16) * 4
    row("softmax", "16384x16384", b, "torch", graph_bench_ms(lambda: torch.softmax(s, -1)), s.numel() * 4, False)
    for w in (4, 8, 16, 32):
        row("softmax", "16384x16384", b, f"warps{w}", graph_bench_ms(lambda: tk.softmax_(s, num_warps=w)),
            s.numel() * 4, w == 16)
    write_csv(pd.DataFrame(rows), args.out, provenance(script="decoder_pass_sweep", timing="CUDA-graph replays"))


if __name__ == "__main__":
    main(parse_args())
