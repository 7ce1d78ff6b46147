"""GPUs (replicas) needed for an arrival rate at a latency SLO, per precision mode, from the simulator (issue 20).

For every mode x resolution x max batch x SLO x rate: the fewest replicas whose simulated p95 (--quantile) under
Poisson arrivals meets the SLO (static policy, no admission control), with the performance model's GPU in every
row. Simulated, not measured: check it against a live multi-replica run (scripts/device/serve_multi_job.sh).
    python scripts/gpus_needed.py                           # FP16/W8A8/W4A8 at 1024 px, SLO 1 s, 1-50 req/s
    python scripts/gpus_needed.py --res 512 1024 --max_batch 1 4 --slo_ms 500 1000 --out results/gpus_needed_h100.csv
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from quant_utils import repo_path  # noqa: E402
from quant_utils.cli import user_errors  # noqa: E402
from quant_utils.csvio import provenance, write_csv  # noqa: E402
from quant_utils.errors import ConfigError  # noqa: E402
from quant_utils.perf_model import PerfModel  # noqa: E402
from quant_utils.serving.capacity import gpus_needed_table  # noqa: E402
from quant_utils.serving.simulator import DISPATCH  # noqa: E402


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--perf_model", default="results/perf_model.json", help="performance model JSON (fit_perf_model.py)")
    p.add_argument("--modes", nargs="+", default=["fp16", "w8a8", "w4a8"], help="precision modes to compare")
    p.add_argument("--res", nargs="+", type=int, default=[1024], help="resolutions (square)")
    p.add_argument("--rates", nargs="+", type=float, default=[1, 2, 5, 10, 20, 50], help="arrival rates, req/s")
    p.add_argument("--slo_ms", nargs="+", type=float, default=[1000.0], help="latency SLOs, ms")
    p.add_argument("--quantile", type=float, default=95, help="latency percentile that must meet the SLO")
    p.add_argument("--max_batch", nargs="+", type=int, default=[1], help="largest batch a replica serves")
    p.add_argument("--dispatch", default="jsq", choices=DISPATCH, help="jsq (~ Ray Serve's pow2 routing) or rr")
    p.add_argument("--num_requests", type=int, default=2000, help="simulated requests per point")
    p.add_argument("--max_gpus", type=int, default=64, help="give up above this many replicas")
    p.add_argument("--seed", type=int, default=0, help="arrival and service-noise seed")
    p.add_argument("--out", default="logs/gpus_needed.csv", help="CSV to write (results/... only when asked)")
    args = p.parse_args(argv)
    if min(args.rates) <= 0 or min(args.slo_ms) <= 0 or not 0 < args.quantile < 100 or args.num_requests < 10:
        p.error("rates and SLOs must be > 0, 0 < quantile < 100, num_requests >= 10")
    return args


def main(args: argparse.Namespace) -> None:
    # 1. the model
    perf = PerfModel.load(repo_path(args.perf_model))
    missing = [m for m in args.modes if m not in perf.groups]
    if missing:
        raise ConfigError(f"modes {missing} are not in {args.perf_model} (it has {perf.modes})")
    # 2. the search, one simulation per candidate replica count
    df = gpus_needed_table(perf, args.modes, args.res, args.rates, args.slo_ms, args.max_batch, quantile=args.quantile,
                           dispatch=args.dispatch, n=args.num_requests, seed=args.seed, max_gpus=args.max_gpus)
    # 3. write, print one table per (res, max batch, SLO): rate x mode -> GPUs
    meta = provenance(script="gpus_needed", perf_model=args.perf_model, perf_gpu=perf.gpu,
                      weights=f"simulated only: {perf.weights} (performance model)",
                      backend=f"simulated only: {perf.backends_label()} (performance model)",
                      perf_synthetic=perf.synthetic, source="simulated", seed=args.seed, num_requests=args.num_requests)
    write_csv(df, repo_path(args.out), meta)
    for (res, b, slo), g in df.groupby(["res", "max_batch", "slo_ms"]):
        print(f"\nGPUs needed at p{args.quantile:g} <= {slo:g} ms, {res} px, max batch {b} (simulated, {perf.gpu}):")
        print(g.pivot(index="rate_rps", columns="mode", values="gpus_needed")[args.modes].to_string())
    print(f"\nWrote {args.out}")


if __name__ == "__main__":
    with user_errors():
        main(parse_args())
