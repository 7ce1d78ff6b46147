"""Tile sweep of the int8 decoder's memory-bound passes at the SDXL VAE's 1024 px shapes (GPU only): the GroupNorm
statistics (channel_moments_partials: BLOCK_C, BLOCK_P, CHUNK, warps), the one-pass norm/SiLU/upsample/quantize
(norm_act_quant: BC, BW, warps) on channels_last fp16 inputs as the fused decoder feeds them, and the attention's row
softmax (softmax_ against torch.softmax), and (`--passes convs`) the int8 convs' tiles: every decoder conv shape the
committed tuning files know at this batch, its tuned tile against tiles with more CTAs per SM (64-row tiles, 4 warps,
2 stages), none of which the autotuner's large-M class tries, outputs checked equal to the tuned tile's. CUDA-graph
replays (launch.graph_bench_ms); one row per (pass, shape, config): calls per decode, us, GB/s (bytes read +
written), TOPS (convs), default (the shipped config), equal (convs). `--tuning_out`: the committed tuning with each
conv's fastest equal tile swapped in where it wins by >= 3 % (e2e_job.sh's TILES=1 reads /tmp/tiles_vs_tuned.json).
Why: the memory-bound passes ran at ~3.3 TB/s in the v9 profile (results/e2e_v9_ptx_vae_profile_kernels_nvidia_h200.csv),
~70 % of the H200's HBM; the 128-channel 3x3 convs at 1024 px at 875 int8 TOPS against 1100-1200 for the others.

    python scripts/device/decoder_pass_sweep.py --batch 4 --out /tmp/out/decoder_pass_sweep.csv
    python scripts/device/decoder_pass_sweep.py --passes convs --batch 4 1 --out $OUT/decoder_convs.csv --tuning_out $OUT/tiles.json
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
from quant_utils.kernels import packing  # noqa: E402
from quant_utils.kernels import triton_kernels as tk  # noqa: E402
from quant_utils.kernels.launch import _cfg, _strip, graph_bench_ms, parse_key, tile_name  # noqa: E402
from quant_utils.kernels.tuning import Tuning  # noqa: E402

# (channels, side, calls per decode) of the SDXL VAE decoder's GroupNorms at a 1024 px image (latent 128)
GN_SHAPES = [(512, 128, 11), (512, 256, 6), (512, 512, 1), (256, 512, 5), (256, 1024, 1), (128, 1024, 6)]
UP_SHAPES = [(512, 128, 1), (512, 256, 1), (256, 512, 1)]  # the upsamplers' inputs (2x nearest, no norm)
PASSES = ("moments", "norm", "softmax", "convs")
DEVICE = "cuda"  # (a CPU test sets "cpu", interprets the kernels and stubs the timer)
# conv tiles beside the tuned one: more CTAs per SM, so one tile's epilogue overlaps another's K loop (short K loops)
CONV_TILES = [_cfg(64, 128, 4, 3, True), _cfg(64, 128, 4, 4, True), _cfg(64, 128, 4, 4), _cfg(128, 128, 8, 2, True),
              _cfg(128, 128, 4, 3, True), _cfg(128, 64, 4, 4, True)]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--batch", type=int, nargs="+", default=[4], help="images per decode (the shapes' N); several: each")
    ap.add_argument("--out", required=True, help="CSV path")
    ap.add_argument("--passes", nargs="+", choices=PASSES, default=list(PASSES[:3]), help="what to sweep")
    ap.add_argument("--tuning_out", help="convs: the committed tuning with the winning tiles swapped in (JSON)")
    return ap.parse_args(argv)


def decoder_conv_keys(tuning: Tuning, batch: int) -> list[str]:
    """The SDXL VAE decoder's int8 conv shapes (channels_last outputs) in the tuning at this batch: 128-512 input channels at >= 128 px
    latents (the UNet's convs have 320+ channels only below 130 px or split inputs, so none match)."""
    keys = []
    for key in sorted(tuning.configs):
        if not key.startswith("conv|") or "|b=8|" not in key or not key.endswith("|o=nhwc"):  # the shipped layout
            continue
        f = parse_key(key)
        b, hp, _, c = map(int, f["x"].split("x"))
        if b == batch and hp >= 130 and c in (128, 256, 512) and f["c1"] == c:
            keys.append(key)
    return keys


def sweep_convs(batches: list[int], row, tuning_out: str | None) -> None:
    """Time each decoder conv shape's tuned tile and CONV_TILES; writes the committed tuning with the winners swapped
    in (equal outputs, >= 3 % faster) to tuning_out after each win, so a run cut short keeps the ones it found."""
    tuning, winners = Tuning.standard(ROOT / "results"), {}
    for key in [k for b in batches for k in decoder_conv_keys(tuning, b)]:
        f = parse_key(key)
        b, hp, wp, c = map(int, f["x"].split("x"))
        n, k, stride, nhwc = f["n"], f["k"], f["s"], f.get("o") == "nhwc"
        x = torch.randint(-128, 128, (b, hp, wp, c), dtype=torch.int8, device=DEVICE)
        w, fmt = packing.pack_weight(torch.randint(-127, 128, (n, c, k, k), dtype=torch.int8), 8)
        w, scale = w.to(DEVICE), torch.rand(n, device=DEVICE) / 100
        zc, bias = torch.randint(-9, 9, (n,), dtype=torch.int32, device=DEVICE), torch.rand(n, device=DEVICE)
        oh, ow = (hp - k) // stride + 1, (wp - k) // stride + 1
        ops = 2 * b * oh * ow * n * c * k * k

        def run(cfg: dict, x=x, w=w, scale=scale, zc=zc, bias=bias, n=n, c=c, k=k, stride=stride, nhwc=nhwc):
            return tk.qconv(x, w, scale, zc, None, None, bias, 8, fmt.group, n, c, k, k, stride, (k - 1) // 2, cfg, nhwc)

        tuned = _strip(tuning.configs[key])
        ref, best = run(tuned), (None, float("inf"))
        tuned_ms = graph_bench_ms(lambda: run(tuned))
        shape = key.split("|", 1)[1]
        row("conv", shape, 1, tile_name(tuned), tuned_ms, 0, True, ops, True)
        for cfg in CONV_TILES:
            if cfg["BN"] > n or tile_name(cfg) == tile_name(tuned):
                continue
            equal = bool(torch.equal(run(cfg), ref))
            ms = graph_bench_ms(lambda: run(cfg))
            row("conv", shape, 1, tile_name(cfg), ms, 0, False, ops, equal)
            if equal and ms < best[1]:
                best = (cfg, ms)
        if best[0] is not None and tuned_ms / best[1] >= 1.03:
            winners[key] = dict(best[0], ms=round(best[1], 5))
            if tuning_out:
                Tuning(configs={**tuning.configs, **winners}).save(tuning_out)
                print(f"-> {tuning_out} ({len(winners)} winning conv tiles swapped in)", flush=True)


def main(args: argparse.Namespace) -> None:
    if DEVICE == "cuda" and not torch.cuda.is_available():
        print("error: decoder_pass_sweep.py: times CUDA kernels, and this machine has no GPU", file=sys.stderr)
        sys.exit(2)
    rows = []

    def row(pass_, shape, calls, cfg, ms, nbytes, default, ops=0, equal=None):
        rows.append({"pass": pass_, "shape": shape, "calls": calls, "config": cfg, "us": round(ms * 1e3, 2),
                     "gb_per_s": round(nbytes / ms / 1e6, 1) if nbytes else float("nan"),
                     "tops": round(ops / ms / 1e9, 2) if ops else float("nan"), "default": default, "equal": equal})
        print(rows[-1], flush=True)

    for b, (c, side, calls) in itertools.product(args.batch, GN_SHAPES if {"moments", "norm"} & set(args.passes) else []):
        x = torch.randn(b, c, side, side, device=DEVICE, dtype=torch.float16).contiguous(memory_format=torch.channels_last)
        strides = (x.stride(0), x.stride(1), x.stride(3))
        default = tk.moments_config(b, c, side * side, block_p=32)  # channels_last's
        for cfg in itertools.product([32, 64, 128], [32, 64, 128], [2048, 4096, 16384], [4, 8]):
            if "moments" not in args.passes or cfg[0] > c or cfg[2] < cfg[1]:
                continue
            ms = graph_bench_ms(lambda: tk.channel_moments_partials(x, *strides, num_warps=cfg[3], config=cfg[:3]))
            row("moments", f"{b}x{c}x{side}x{side}", calls, "x".join(map(str, cfg)), ms, x.numel() * 2,
                cfg[:3] == default and cfg[3] == 4)
        sc, sh = torch.rand(b, c, device=DEVICE) + 0.5, torch.randn(b, c, device=DEVICE)
        for shape_calls, up, aff in ([(calls, 1, True)] + [(n, 2, False) for cc, s, n in UP_SHAPES if (cc, s) == (c, side)]
                                     if "norm" in args.passes else []):
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
    for b in args.batch if "softmax" in args.passes else []:
        s = torch.randn(16384, 16384, device=DEVICE, dtype=torch.float16) * 4
        row("softmax", "16384x16384", b, "torch", graph_bench_ms(lambda: torch.softmax(s, -1)), s.numel() * 4, False)
        for w in (4, 8, 16, 32):
            row("softmax", "16384x16384", b, f"warps{w}", graph_bench_ms(lambda: tk.softmax_(s, num_warps=w)),
                s.numel() * 4, w == 16)
    if "convs" in args.passes:
        sweep_convs(args.batch, row, args.tuning_out)
    write_csv(pd.DataFrame(rows), args.out, provenance(script="decoder_pass_sweep", timing="CUDA-graph replays",
                                                         weights="none (random tensors of the decoder's shapes)",
                                                         backend="kernel (Triton), torch.softmax beside the softmax rows"))


if __name__ == "__main__":
    main(parse_args())
