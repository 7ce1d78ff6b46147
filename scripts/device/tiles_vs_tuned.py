"""Kernels v5 (issue 15): the opt-in tile configs against the tuned config, per shape. Linears (int8 activations,
8-bit weights): `--tiles fixup` (split-K reduced in the kernel). (Kernels v4's `--tiles tma` and v5's `persist` lost
on every linear shape, results/kernels_tma_vs_tuned_nvidia_h200.csv and kernels_persist_fixup_vs_tuned_nvidia_h200.csv,
and v6's conv tiles, `--tiles wide`, on every decoder conv, results/kernels_wide_vs_tuned_nvidia_h200.csv: all three
removed.)

For every such shape the committed tuning files know (the real SDXL layer shapes of the measured cells), a random
layer is built (tests/gpu/kernel_selfcheck.build_layer), its kernel is timed with the tuned config and with each
candidate of those kinds in its size class (CUDA-graph replays, launch.graph_bench_ms), and each candidate's output
must equal the tuned config's (integer sums: the same fp16 values). Writes
  <out>.csv   key, m, n, k, tuned config and us, best candidate's kind, config and us, speedup, outputs equal
  <out>.json  a tuning file: the tuned configs with the winners (>= `--min_gain` faster and equal) swapped in
GPU only:  python scripts/device/tiles_vs_tuned.py --tiles fixup --out /tmp/out/fixup_vs_tuned
(the seventh session's TMA run was this script as tma_vs_tuned.py; its CSV kept the tma_* column names)
"""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path[:0] = [str(ROOT), str(ROOT / "tests" / "gpu")]

import pandas as pd  # noqa: E402
import torch  # noqa: E402

import kernel_selfcheck as selfcheck  # noqa: E402
from quant_utils.csvio import provenance, write_csv  # noqa: E402
from quant_utils.kernels import launch  # noqa: E402
from quant_utils.kernels.launch import parse_key, tile_name  # noqa: E402
from quant_utils.kernels import triton_kernels as tk  # noqa: E402
from quant_utils.kernels.tuning import Tuning  # noqa: E402


# --tiles -> (the tile-config flag, the environment variable that enables those configs)
TILES = {"fixup": ("FIXUP", "MIXDQ_FIXUP")}


def linear_problems(tuning: Tuning, kind_of: dict):
    """(key, sizes, tuned config, run(config), candidates) of every int8, 8-bit-weight linear shape with opt-in candidates."""
    keys = sorted(k for k in tuning.configs if k.startswith("linear|") and k.endswith("|a=int8") and "|b=8|" in k
                  and parse_key(k)["m"] > 64
                  and any(launch.opt_in_kind(c) in kind_of for c in launch.linear_candidates(parse_key(k)["m"], False, 8)))
    for key in keys:
        s = parse_key(key)
        st = selfcheck.build_layer(selfcheck.Case("linear", s["n"], s["k"], 8, 8, rows=s["m"], batch=1), "cuda", 0)
        q = torch.randint(-128, 128, (s["m"], s["k"]), dtype=torch.int8, device="cuda")
        ks = st.kernel_state

        def run(c: dict, ks=ks, q=q) -> torch.Tensor:
            return tk.qlinear(q, ks.packed, ks.scale1, ks.zc1, ks.bias, ks.bits, ks.fmt.group, ks.n, c)

        yield key, {"m": s["m"], "n": s["n"], "k": s["k"]}, tuning.configs[key], run, launch.linear_candidates(s["m"], False, 8)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", required=True, help="output stem (.csv and .json are added)")
    p.add_argument("--tiles", nargs="+", choices=sorted(TILES), default=["fixup"], help="which opt-in tile configs to time")
    p.add_argument("--min_gain", type=float, default=1.03, help="a candidate replaces the tuned config if this much faster")
    return p.parse_args(argv)


def main(args: argparse.Namespace) -> int:
    for kind in args.tiles:
        os.environ[TILES[kind][1]] = "1"  # (read at each candidate listing: launch.linear_candidates)
    kind_of = {TILES[kind][0]: kind for kind in args.tiles}  # tile-config flag -> kind
    if not torch.cuda.is_available():
        print("needs a CUDA GPU")
        return 2
    tuning = Tuning.standard(ROOT / "results")
    rows, winners = [], {}
    for key, sizes, tuned, run, candidates in linear_problems(tuning, kind_of):
        tuned = launch._strip(tuned)
        ref = run(tuned)
        tuned_us = 1e3 * launch.graph_bench_ms(lambda: run(tuned), n_inner=20, reps=7)
        best = (None, float("inf"), True)
        for c in candidates:
            if launch.opt_in_kind(c) not in kind_of:
                continue
            try:
                equal = bool(torch.equal(run(c), ref))
                us = 1e3 * launch.graph_bench_ms(lambda: run(c), n_inner=20, reps=7)
            except Exception as e:  # a config that does not fit: say so, go on
                print(f"{key}: {tile_name(c)} failed: {type(e).__name__}: {str(e)[:100]}")
                continue
            if us < best[1]:
                best = (c, us, equal)
        c, us, equal = best
        rows.append({"key": key, **sizes, "tuned_config": tile_name(tuned),
                     "tuned_us": round(tuned_us, 2), "tiles": kind_of[launch.opt_in_kind(c)] if c else "",
                     "candidate_config": tile_name(c) if c else "",
                     "candidate_us": round(us, 2) if c else float("nan"),
                     "speedup": round(tuned_us / us, 3) if c else float("nan"), "candidate_equal": equal})
        if c is not None and equal and tuned_us / us >= args.min_gain:
            winners[key] = dict(c, ms=round(us / 1e3, 5))
        print(f"{key:<52} tuned {tile_name(tuned):<18} {tuned_us:8.1f} us | {rows[-1]['tiles']:<7} {rows[-1]['candidate_config']:<20} "
              f"{us:8.1f} us  x{tuned_us / us:.2f}  equal={equal}")
    df = pd.DataFrame(rows)
    write_csv(df, f"{args.out}.csv", provenance(script="scripts/device/tiles_vs_tuned.py", weights="random (one layer per shape)",
                                                backend="kernel (Triton GEMM, no model)"))
    Tuning(configs={**tuning.configs, **winners}).save(f"{args.out}.json")
    bad = int((~df.candidate_equal).sum()) if len(df) else 0
    print(f"{len(rows)} shapes, {'/'.join(args.tiles)} faster (>= x{args.min_gain}) at {len(winners)}, outputs differ at {bad}")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main(parse_args()))
