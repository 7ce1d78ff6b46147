"""Plot bench_kernels' UNet-step CSVs (`kernels_unet_*.csv`): per (resolution, batch) point, each quantized format's
step speed-up over the FP16 step of the same run and execution (the CSV's speedup_same_exec), with the FP16 step time
under each point. Several CSVs (e.g. one GPU call per group of points) are one figure; a (format, exec, point) in two
CSVs is refused. Reads the CSVs only (no model, no GPU).

Example:
    python scripts/plot_kernels.py results/kernels_unet_compile_*nvidia_h200.csv --exec compile \
        --out results/kernels_unet_compile_nvidia_h200.png
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import matplotlib  # noqa: E402

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402

from quant_utils import repo_path  # noqa: E402
from quant_utils.cli import HelpFormatter, user_errors  # noqa: E402
from quant_utils.csvio import read_provenance, read_runs  # noqa: E402
from quant_utils.errors import ConfigError  # noqa: E402

NEEDED = ["variant", "exec", "res", "batch", "p50_ms", "speedup_same_exec", "weight_ratio"]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
    p.add_argument("csv", nargs="+", help="bench_kernels kernels_unet_*.csv files")
    p.add_argument("--exec", dest="exec_mode", default="compile", help="the execution plotted (graph or compile)")
    p.add_argument("--keep", choices=["refuse", "first"], default="refuse",
                   help="a (format, point) in two CSVs: refuse, or plot the first CSV's (in the order given)")
    p.add_argument("--out", default=None, help="PNG to write (default: the first CSV's path with .png)")
    return p.parse_args(argv)


def main(args: argparse.Namespace) -> None:
    # 1. read and check: every quantized row keeps its own run's FP16 baseline (speedup_same_exec)
    srcs = [repo_path(c) for c in args.csv]
    def point(d: pd.DataFrame) -> pd.Series:  # each run times its own FP16 baseline: only quantized rows are points
        fmt = d["variant"].str.split(" ").str[0]
        name = fmt + " at " + d["res"].astype(str) + "x" + d["batch"].astype(str)
        return name.where((d["exec"] == args.exec_mode) & (fmt != "fp16"), "")

    df = read_runs(srcs, NEEDED, "bench_kernels UNet-step", point, keep_first=args.keep == "first", hint=" (--keep first)")
    df = df[df["exec"] == args.exec_mode].assign(fmt=lambda d: d["variant"].str.split(" ").str[0])
    quant = df[df["fmt"] != "fp16"]
    if quant.empty:
        raise ConfigError(f"no quantized rows with exec {args.exec_mode!r} in {[str(s) for s in srcs]}")
    fp16 = df[df["fmt"] == "fp16"].groupby(["res", "batch"])["p50_ms"].agg(lambda s: "/".join(f"{v:.1f}" for v in s))
    device = " / ".join(dict.fromkeys(read_provenance(s).get("device", "?") for s in srcs))
    # 2. one group of bars per point (by the work of a step: pixels x batch), one bar per format
    points = sorted(dict.fromkeys(zip(quant["res"], quant["batch"])), key=lambda p: (p[0] ** 2 * p[1], p[1]))
    fmts = sorted(quant["fmt"].unique(), reverse=True)  # W8A8 before W4A8
    width = 0.8 / len(fmts)
    fig, ax = plt.subplots(figsize=(1.3 * len(points) + 2.5, 4.2))
    for i, f in enumerate(fmts):
        sub = quant[quant["fmt"] == f].set_index(["res", "batch"])
        xs = [j for j, p in enumerate(points) if p in sub.index]
        ys = [float(sub.loc[points[j], "speedup_same_exec"]) for j in xs]
        ratio = float(sub["weight_ratio"].iloc[0])
        bars = ax.bar([x + (i - (len(fmts) - 1) / 2) * width for x in xs], ys, width,
                      label=f"{f} (weights {ratio:.3f}x FP16)", color=plt.get_cmap("viridis")(0.2 + 0.5 * i))
        ax.bar_label(bars, [f"{y:.2f}" for y in ys], fontsize=7)
    ax.axhline(1.0, color="k", lw=0.8)
    ax.set_xticks(range(len(points)), [f"{r}x{b}\nFP16 {fp16.get((r, b), '?')} ms" for r, b in points], fontsize=8)
    ax.set_ylabel("UNet step speed-up over FP16 (same run)")
    ax.set_ylim(0, max(1.25, quant["speedup_same_exec"].max() * 1.15))
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize=8, loc="upper left")
    ax.set_title(f"UNet step, {args.exec_mode}: {device}; points by work per step\n"
                 "each ratio against the FP16 step timed in the same run", fontsize=10)
    fig.tight_layout()
    # 3. write
    out = repo_path(args.out) if args.out else srcs[0].with_suffix(".png")
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    print(f"-> {out}")


if __name__ == "__main__":
    with user_errors():
        main(parse_args())
