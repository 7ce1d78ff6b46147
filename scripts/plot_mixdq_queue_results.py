"""Plot a load-test run from its CSVs (README section 3.policy).

Example:
    python scripts/plot_mixdq_queue_results.py logs/sdxl_mixdq_eval/queue_tests/<run_name>/mixdq_queue_results.csv

Reads mixdq_queue_results.csv and the mixdq_queue_requests.csv beside it (never runs a model) and writes
PNGs to <same folder>/plots/: p95/p99 vs λ per bit-width and policy, SLO attainment and goodput vs load,
Δp95 (policy − static), closed-loop burst bars, latency CDFs at the highest load, and the queue length and
chosen resolution over time for one run (--run_id, default: the adaptive run with the longest mean queue); for a
run against the HTTP service (load_test_stub --target), where each request's overhead went (mixdq_queue_http_split.csv).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import pandas as pd  # noqa: E402

from quant_utils import repo_path  # noqa: E402
from quant_utils.cli import HelpFormatter, user_errors  # noqa: E402
from quant_utils.csvio import read_csv, read_provenance  # noqa: E402
from quant_utils.errors import ConfigError  # noqa: E402
from quant_utils.serving import plots  # noqa: E402
from quant_utils.serving.sweep import NEWER_COLUMNS, RESULT_COLUMNS  # noqa: E402


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
    p.add_argument("csv", help="mixdq_queue_results.csv written by scripts/load_test_stub.py")
    p.add_argument("--requests_csv", default=None, help="per-request CSV (default: mixdq_queue_requests.csv beside csv)")
    p.add_argument("--run_id", default=None, help="run for the time-series plot (default: picked automatically)")
    return p.parse_args(argv)


def main(args: argparse.Namespace) -> None:
    # 1. read the CSVs
    path = repo_path(args.csv)
    if not path.is_file():
        raise ConfigError(f"{path} does not exist (scripts/load_test_stub.py writes it)")
    results = read_csv(path)
    missing = [c for c in RESULT_COLUMNS if c not in results and c not in NEWER_COLUMNS]
    if missing:
        raise ConfigError(f"{path} is not a load_test_stub results CSV (missing columns {missing})")
    req_path = repo_path(args.requests_csv) if args.requests_csv else path.with_name("mixdq_queue_requests.csv")
    requests = read_csv(req_path) if req_path.is_file() else pd.DataFrame()
    out = path.parent / "plots"
    prov = read_provenance(path)
    synthetic = prov.get("perf_synthetic", "False") == "True"
    tag = (f"sim: {'SYNTHETIC ' if synthetic else ''}performance model of {prov.get('perf_gpu', '?')}"
           + ("; live: measured on " + prov.get("device", "?") if "live" in set(results["source"]) else ""))
    # 2. one figure per question
    written = [plots.plot_latency_vs_rate(results, out, tag), plots.plot_slo_goodput(results, out, tag),
               plots.plot_delta_p95(results, out, tag), plots.plot_burst(results, out, tag)]
    if not requests.empty:
        written.append(plots.plot_cdfs(results, requests, out, tag))
        run_id = args.run_id or plots.pick_timeseries_run(results)
        if run_id not in set(results["run_id"]):
            raise ConfigError(f"--run_id {run_id!r} is not in {path.name} (it has e.g. {results['run_id'].iloc[0]!r})")
        written.append(plots.plot_timeseries(requests, run_id, out, tag=tag))
    else:
        print(f"no per-request CSV at {req_path}: skipping the CDF and time-series plots")
    split_path = path.with_name("mixdq_queue_http_split.csv")
    if split_path.is_file():
        service = prov.get("service", "")
        written.append(plots.plot_http_split(read_csv(split_path), out, f"service: {service}" if service else ""))
    # 3. report
    print("Wrote plots:")
    for p in written:
        if p is not None:
            print(" -", p)


if __name__ == "__main__":
    with user_errors():
        main(parse_args())
