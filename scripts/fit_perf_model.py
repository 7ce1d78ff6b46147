"""Fit the latency/memory performance model from latency_probe CSVs (README section 3.policy).

Example (after scripts/latency_probe.py has written the GPU grid):
    python scripts/fit_perf_model.py --csv results/latency_fp16.csv results/latency_w8a8.csv \
        results/latency_w6a8.csv results/latency_w4a8.csv --out results/perf_model.json --plot results/latency_vs_res.png
Without measurements (a labelled synthetic model, for trying the load test out):
    python scripts/fit_perf_model.py --synthetic --out logs/perf_model_synthetic.json

Writes the model JSON (default logs/perf_model.json; results/ only when given), a per-cell leave-one-out CSV next
to it (<out stem>_loo.csv) and, with --plot, latency per stage and peak memory vs resolution: measured points and
model curves. Prints the fit error. The CSVs are read in sorted order, and a rerun on the same CSVs reproduces
every output byte for byte (`make report` leaves the committed files as they are).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from quant_utils import repo_path  # noqa: E402
from quant_utils.cli import HelpFormatter, user_errors  # noqa: E402
from quant_utils.csvio import provenance, read_csv, write_csv  # noqa: E402
from quant_utils.perf_model import STAGES, PerfModel, normalize_latency_frame, synthetic_latency_frame  # noqa: E402


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
    p.add_argument("--csv", nargs="+", default=None, help="latency_probe CSVs (results/latency_<mode>.csv)")
    p.add_argument("--synthetic", action="store_true",
                   help="no measurements: fit a synthetic table made from the model's own form (+2%% noise); labelled synthetic")
    p.add_argument("--out", default="logs/perf_model.json", help="model JSON to write")
    p.add_argument("--plot", default=None, help="PNG of latency per stage and memory vs resolution (optional)")
    p.add_argument("--plot_exec", default=None, help="exec mode to plot (default: graph when measured)")
    p.add_argument("--modes", nargs="+", default=None,
                   help="fit only these modes (keys as the model names them: fp16, w8a8, w8a8+int8, ...); e.g. to leave "
                        "out a decoder measured at too few cells to tell resolution from batch")
    args = p.parse_args(argv)
    if bool(args.csv) == args.synthetic:
        p.error("give either --csv FILES or --synthetic")
    return args


def plot_model(model: PerfModel, df, path: Path, exec_mode: str | None) -> None:
    """One column per stage (+ total, memory), one row per batch size: measured points, model curves."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    exec_mode = exec_mode or ("graph" if (df["exec"] == "graph").any() else df["exec"].iloc[0])
    df = df[df["exec"] == exec_mode]
    targets = [f"{s}_p50_ms" for s in STAGES if f"{s}_p50_ms" in df and df[f"{s}_p50_ms"].notna().any()]
    targets += ["total_p50_ms", "total_p95_ms"] + (["peak_mem_gib"] if "peak_mem_gib" in df else [])
    batches = sorted(df["batch"].unique())
    res = np.arange(max(256, df["height"].min() * 0.5) // 32 * 32, df["height"].max() * 1.25 + 1, 32)
    modes = sorted(df["mode"].unique(), key=lambda m: -model.group(m, exec_mode).wbits)
    fig, axes = plt.subplots(len(batches), len(targets), figsize=(3.6 * len(targets), 2.9 * len(batches)), squeeze=False)
    for r, b in enumerate(batches):
        for c, t in enumerate(targets):
            ax = axes[r][c]
            for i, m in enumerate(modes):
                color = plt.get_cmap("viridis")(i / max(len(modes) - 1, 1) * 0.85)
                pts = df[(df["mode"] == m) & (df["batch"] == b)]
                ax.plot(pts["height"], pts[t], "o", color=color, ms=4)
                pred = model.group(m, exec_mode).predict(res, res, np.full_like(res, b))
                if t in pred:
                    ax.plot(res, pred[t], "-", color=color, lw=1, label=m)
            ax.grid(alpha=0.3)
            ax.set_title(f"{t.replace('_', ' ')}, batch {b}", fontsize=9)
            ax.set_ylabel("GiB" if t.endswith("gib") else "ms")
            if r == len(batches) - 1:
                ax.set_xlabel("resolution (px, square)")
    axes[0][0].legend(fontsize=7)
    tag = "SYNTHETIC — " if model.synthetic else ""
    fig.suptitle(f"{tag}{model.gpu}, {exec_mode}, weights {model.weights}: points measured, lines model", fontsize=11)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(args: argparse.Namespace) -> None:
    # 1. the latency table
    out = repo_path(args.out)
    if args.synthetic:
        src = out.with_name(out.stem + "_synthetic_latency.csv")
        write_csv(synthetic_latency_frame(), src, provenance(script="fit_perf_model --synthetic", gpu="synthetic",
                                                              weights="synthetic", note="SYNTHETIC: not a measurement"),
                  keep_unchanged=True)
        paths = [src]
    else:
        paths = sorted(dict.fromkeys(repo_path(p) for p in args.csv))  # the same model whatever the order or glob
    # 2. fit (with leave-one-out error) and save
    model = PerfModel.fit_csvs(paths, modes=args.modes)
    model.save(out)
    df = normalize_latency_frame(pd.concat([read_csv(p) for p in paths], ignore_index=True))  # bench_e2e's too
    df = df[df["mode"].isin(model.modes)]
    write_csv(model.loo_cells, out.with_name(out.stem + "_loo.csv"),
              provenance(script="fit_perf_model", gpu=model.gpu, weights=model.weights, synthetic=model.synthetic,
                         backend=f"{model.backends_label()} (the fitted grids')"),
              keep_unchanged=True, float_format="%.6g")
    # 3. plot and report
    if args.plot:
        plot_model(model, df, repo_path(args.plot), args.plot_exec)
    err = model.fit_error()
    print(f"performance model of {model.gpu} ({'SYNTHETIC' if model.synthetic else 'weights ' + model.weights}) "
          f"from {len(df)} cells -> {out}")
    print("leave-one-out error over measured cells (% of measured):")
    print(err.to_string(index=False, float_format=lambda x: f"{x:.2f}"))
    for line in model.thin_data():
        print(f"warning: {line}")
    if args.plot:
        print(f"plot: {args.plot}")


if __name__ == "__main__":
    with user_errors():
        main(parse_args())
