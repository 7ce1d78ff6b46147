"""Speed of the serving simulator on this CPU: 10^6 requests per scenario, pinned to one core.

Example:
    python scripts/bench_simulator.py --out results/bench_simulator.csv

Times `simulate()` (event loop + per-request table) with the process CPU clock and the wall clock, per scenario:
static and adaptive at one replica, batch 1; SLO-predictive with admission control on 4 replicas (JSQ, batches of
4); a closed loop of 8 clients. Service times come from a synthetic performance model unless --perf_model is given
(the speed does not depend on the numbers). The CSV says which CPU, and the load average when it ran: other
processes on the machine slow the wall clock, less so the CPU clock.
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):  # one core: no BLAS thread pools
    os.environ.setdefault(var, "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import pandas as pd  # noqa: E402

from quant_utils import repo_path  # noqa: E402
from quant_utils.cli import HelpFormatter, positive_int, user_errors  # noqa: E402
from quant_utils.csvio import cpu_name, git_sha, write_csv  # noqa: E402
from quant_utils.perf_model import PerfModel, synthetic_latency_frame  # noqa: E402
from quant_utils.serving import workloads as wl  # noqa: E402
from quant_utils.serving.policies import build_policy  # noqa: E402
from quant_utils.serving.simulator import ServerConfig, simulate  # noqa: E402

# name: (policy, replicas, max_batch, dispatch, workload)
SCENARIOS = {
    "poisson-static-1rep-b1": ("static", 1, 1, "rr", "poisson"),
    "poisson-adaptive-1rep-b1": ("adaptive", 1, 1, "rr", "poisson"),
    "poisson-slo+admission-4rep-b4-jsq": ("slo", 4, 4, "jsq", "poisson"),
    "closed8-adaptive-1rep-b4": ("adaptive", 1, 4, "rr", "closed"),
}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
    p.add_argument("--out", default="logs/bench_simulator.csv", help="CSV to write")
    p.add_argument("--num_requests", type=positive_int, default=1_000_000, help="requests per scenario")
    p.add_argument("--load", type=float, default=0.8, help="Poisson rate as a fraction of the replicas' capacity")
    p.add_argument("--perf_model", default=None, help="performance model JSON (default: a synthetic one, in memory)")
    p.add_argument("--seed", type=int, default=0, help="arrival and noise seed")
    return p.parse_args(argv)


def main(args: argparse.Namespace) -> None:
    # 1. a performance model (a bad file stops the run first), one core
    perf = PerfModel.load(repo_path(args.perf_model)) if args.perf_model else PerfModel.fit(synthetic_latency_frame(), with_loo=False)
    if hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})
    load_before = os.getloadavg()[0]
    # 2. time each scenario
    rows = []
    for name, (pol, reps, batch, dispatch, kind) in SCENARIOS.items():
        lam = args.load * perf.capacity("w8a8", 1024, batch) * reps
        work = wl.poisson(args.num_requests, lam, args.seed) if kind == "poisson" else wl.closed_loop(args.num_requests, 8)
        policy = build_policy(pol, "w8a8", 1024, [1024, 768, 512], slo_ms=1000.0, admission=pol == "slo")
        c0, w0 = time.process_time(), time.perf_counter()
        run = simulate(work, policy, perf, ServerConfig(reps, batch, dispatch), args.seed)
        cpu_s, wall_s = time.process_time() - c0, time.perf_counter() - w0
        rows.append(dict(scenario=name, n_requests=args.num_requests, replicas=reps, max_batch=batch,
                         load=args.load if kind == "poisson" else None,
                         cpu_s=round(cpu_s, 3), wall_s=round(wall_s, 3), requests_per_cpu_s=round(args.num_requests / cpu_s),
                         under_10s_per_1e6=cpu_s * 1e6 / args.num_requests < 10, served=int((~run.requests["rejected"]).sum())))
        print(f"{name:36s} {cpu_s:6.2f} s CPU  {wall_s:6.2f} s wall  {args.num_requests / cpu_s:10,.0f} req/s")
    # 3. write, labelled with this CPU
    meta = {"script": "bench_simulator", "git_sha": git_sha(), "command": " ".join(["bench_simulator.py"] + sys.argv[1:]),
            "date_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "cpu": cpu_name(),
            "cores_visible": os.cpu_count(), "pinned_to_one_core": hasattr(os, "sched_setaffinity"),
            "python": sys.version.split()[0], "loadavg_1min_before": round(load_before, 2),
            "loadavg_1min_after": round(os.getloadavg()[0], 2),
            "perf_model": args.perf_model or "synthetic (in memory; speed does not depend on it)"}
    write_csv(pd.DataFrame(rows), repo_path(args.out), meta)
    print(f"Wrote {args.out} (CPU: {meta['cpu']}, load average {meta['loadavg_1min_before']} -> {meta['loadavg_1min_after']})")


if __name__ == "__main__":
    with user_errors():
        main(parse_args())
