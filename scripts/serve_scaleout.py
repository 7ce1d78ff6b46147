r"""Scale-out of the Ray Serve service: load tests of N-replica services side by side (issue 20).

Reads each N's load-test folder (load_test_stub --target, sim and http rows), writes serve_scaleout.csv (HTTP p50/p95,
goodput, scale-out efficiency = goodput(N) / (N x goodput(1)) at the same load fraction, the simulator's error) and
two plots: p95 vs load per N, goodput vs N.
    python scripts/serve_scaleout.py --runs 1=results/serve_multi_h200/n1 2=results/serve_multi_h200/n2 \
        --out_dir results/serve_multi_h200
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from quant_utils import repo_path  # noqa: E402
from quant_utils.cli import user_errors  # noqa: E402
from quant_utils.csvio import provenance, read_csv, write_csv  # noqa: E402
from quant_utils.errors import ConfigError  # noqa: E402
from quant_utils.serving.capacity import scaleout_table  # noqa: E402
from quant_utils.serving.plots import plot_scaleout  # noqa: E402


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--runs", nargs="+", required=True, help="N=DIR: load-test folder of an N-replica service")
    p.add_argument("--out_dir", default="logs/serve_scaleout", help="where the CSV and plots go")
    return p.parse_args(argv)


def main(args: argparse.Namespace) -> None:
    # 1. each N's results (sim + http rows)
    results = {}
    for spec in args.runs:
        n, sep, folder = spec.partition("=")
        path = repo_path(folder) / "mixdq_queue_results.csv"
        if not sep or not n.isdigit() or not path.is_file():
            raise ConfigError(f"--runs {spec!r}: expected N=DIR with DIR/mixdq_queue_results.csv")
        results[int(n)] = read_csv(path)
    if 1 not in results:
        raise ConfigError("--runs needs the one-replica run (1=DIR): efficiency is relative to it")
    # 2. the table and plots
    df = scaleout_table(results)
    out = repo_path(args.out_dir)
    write_csv(df, out / "serve_scaleout.csv", provenance(script="serve_scaleout", runs=" ".join(args.runs)))
    plots = plot_scaleout(df, out / "plots")
    print(df.to_string(index=False, float_format=lambda x: f"{x:.2f}"))
    print(f"\nWrote {out}/serve_scaleout.csv" + "".join(f"\n - {p}" for p in plots))


if __name__ == "__main__":
    with user_errors():
        main(parse_args())
