"""Plot bench_e2e's CSVs: per cell, each (UNet, decoder)'s image time stacked by stage, with its speedup over the
fastest FP16 image of the same run (the CSV's speedup_vs_fp16). Several CSVs (e.g. one GPU call per cell) give one
panel per cell of each: a cell found in two CSVs gets a panel per CSV, titled with the file (each against its own
run's FP16); the same file twice is refused. Reads the CSVs only (no model, no GPU).

Example:
    python scripts/plot_e2e.py results/e2e_nvidia_h200.csv --out results/e2e_nvidia_h200.png
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
from quant_utils.csvio import read_provenance, read_table  # noqa: E402
from quant_utils.errors import ConfigError  # noqa: E402

STAGES = (("text_p50_ms", "text encoders", "#9aa5b1"), ("unet_p50_ms", "UNet", "#3b6ea8"),
          ("vae_p50_ms", "decoder", "#d98c3f"))
NEEDED = ["mode", "unet_exec", "vae", "res", "batch", "total_p50_ms", "speedup_vs_fp16"] + [s for s, _, _ in STAGES]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
    p.add_argument("csv", nargs="+", help="bench_e2e output CSVs")
    p.add_argument("--out", default=None, help="PNG to write (default: the first CSV's path with .png)")
    return p.parse_args(argv)


def main(args: argparse.Namespace) -> None:
    # 1. read and check
    srcs = [repo_path(c) for c in args.csv]
    if len(set(srcs)) < len(srcs):
        raise ConfigError(f"a CSV given twice: {[str(s) for s in srcs if srcs.count(s) > 1][0]}")
    # speedups are per run: a cell from two runs gets two panels, never one with mixed baselines
    df = pd.concat([read_table(s, NEEDED, "bench_e2e").assign(run=i) for i, s in enumerate(srcs)], ignore_index=True)
    provs = [read_provenance(src) for src in srcs]
    device = " / ".join(dict.fromkeys(p.get("device", "?") for p in provs))
    weights = " / ".join(dict.fromkeys(p.get("weights", "?") for p in provs))
    # 2. one panel per cell, one bar per (UNet mode, exec, decoder), stages stacked
    panels = list(dict.fromkeys(zip(df["run"], df["res"], df["batch"])))
    repeated = {(r, b) for _, r, b in panels if sum((r, b) == (r2, b2) for _, r2, b2 in panels) > 1}
    in_panel = lambda run, res, batch: (df["run"] == run) & (df["res"] == res) & (df["batch"] == batch)  # noqa: E731
    widths = [max(3, 0.45 * in_panel(*k).sum() + 1) for k in panels]
    fig, axes = plt.subplots(1, len(panels), figsize=(max(sum(widths), 6.5), 4.6), squeeze=False,
                             gridspec_kw={"width_ratios": widths})
    for ax, (run, res, batch) in zip(axes[0], panels):
        sub = df[in_panel(run, res, batch)].reset_index(drop=True)
        labels = [f"{m.upper() if m != 'fp16' else 'FP16'}{'' if e == 'compile' else f' ({e})'}\n{v} dec."
                  for m, e, v in zip(sub["mode"], sub["unet_exec"], sub["vae"])]
        bottom = 0
        for col, name, color in STAGES:
            ax.bar(range(len(sub)), sub[col], bottom=bottom, color=color, label=name)
            bottom = bottom + sub[col]
        for i, r in sub.iterrows():
            ax.text(i, r["total_p50_ms"], f"{r['speedup_vs_fp16']:.2f}x", ha="center", va="bottom", fontsize=8)
        ax.set_xticks(range(len(sub)), labels, fontsize=7, rotation=60, ha="right")
        if (res, batch) in repeated:  # which run's panel: the file
            ax.set_title(f"{res} px, batch {batch}\n{srcs[run].stem}", fontsize=7)
        else:
            ax.set_title(f"{res} px, batch {batch}")
        ax.set_ylabel("ms per call (p50)")
        ax.grid(axis="y", alpha=0.3)
    fig.legend(*axes[0][0].get_legend_handles_labels(), loc="lower center", ncol=len(STAGES), fontsize=8)
    fig.suptitle(f"Whole image per (UNet, decoder): {device}, weights {weights}\n"
                 f"labels: speedup over the fastest FP16 image of the same run", fontsize=10)
    fig.tight_layout(rect=(0, 0.05, 1, 1))
    # 3. write
    out = repo_path(args.out) if args.out else srcs[0].with_suffix(".png")
    fig.savefig(out, dpi=110)
    print(f"-> {out}")


if __name__ == "__main__":
    with user_errors():
        main(parse_args())
