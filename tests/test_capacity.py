"""Capacity planning with the simulator (quant_utils/serving/capacity.py, scripts/gpus_needed.py, serve_scaleout.py)."""
import numpy as np
import pandas as pd

from conftest import run_main
from quant_utils.csvio import read_csv, read_provenance, write_csv
from quant_utils.perf_model import PerfModel, synthetic_latency_frame
from quant_utils.serving.capacity import GPUS_COLUMNS, SCALEOUT_COLUMNS, gpus_needed, scaleout_table
from quant_utils.serving.sweep import RESULT_COLUMNS


def synthetic_perf():
    return PerfModel.fit(synthetic_latency_frame(), gpu="synthetic", with_loo=False)


def test_gpus_needed_is_the_fewest_that_meet_the_slo():
    perf = synthetic_perf()
    cap = perf.capacity("w8a8", 1024, 1)
    one = perf.predict("w8a8", 1024, 1024, 1)["total_p50_ms"]
    row = gpus_needed(perf, "w8a8", 1024, 3.3 * cap, slo_ms=4 * one, n=1500)
    assert row["gpus_needed"] >= 4 and row["p_ms"] <= 4 * one and row["utilisation"] < 1
    assert np.isnan(row["p_ms_one_fewer"]) or row["p_ms_one_fewer"] > 4 * one  # one fewer misses it (or overloads)
    fewer = gpus_needed(perf, "w8a8", 1024, 0.3 * cap, slo_ms=4 * one, n=1500)
    assert fewer["gpus_needed"] == 1
    never = gpus_needed(perf, "w8a8", 1024, 0.3 * cap, slo_ms=0.5 * one, n=500, max_gpus=4)
    assert np.isnan(never["gpus_needed"])  # one image alone is slower than the SLO


def test_gpus_needed_script(tmp_path, capsys):
    pm = tmp_path / "pm.json"
    synthetic_perf().save(pm)
    out = tmp_path / "g.csv"
    assert run_main("gpus_needed.py", "--perf_model", pm, "--modes", "fp16", "w4a8", "--rates", 1, 30, "--num_requests",
                    500, "--out", out) == 0
    df = read_csv(out)
    assert list(df.columns) == GPUS_COLUMNS and len(df) == 4 and read_provenance(out)["source"] == "simulated"
    meta = read_provenance(out)  # what every results CSV says: the weights and backend its numbers come from
    assert meta["weights"].startswith("simulated only") and meta["backend"].startswith("simulated only: fp16=")
    assert (df.groupby("mode")["gpus_needed"].apply(lambda g: g.is_monotonic_increasing)).all()
    assert "GPUs needed at p95" in capsys.readouterr().out
    assert run_main("gpus_needed.py", "--perf_model", pm, "--modes", "w5a8", "--out", out) == 2


def test_scaleout_efficiency_and_fidelity(tmp_path):
    def results(n, goodput, p95):
        rows = []
        for src, p in (("sim", p95 * 1.05), ("http", p95)):
            rows.append({c: np.nan for c in RESULT_COLUMNS} | dict(
                run_id="poisson-load0.8-w8a8-static", source=src, pattern="poisson", mode="w8a8", load=0.8,
                lam=10.0 * n, p50_ms=p / 2, p95_ms=p, goodput_rps=goodput, throughput_rps=goodput, n_requests=100,
                n_done=100, n_rejected=0, n_error=0, n_timeout=0))
        return pd.DataFrame(rows)
    df = scaleout_table({1: results(1, 8.0, 400), 2: results(2, 15.2, 420)})
    assert list(df.columns) == SCALEOUT_COLUMNS and len(df) == 2
    two = df[df["replicas"] == 2].iloc[0]
    assert two["efficiency"] == np.float64(15.2 / 16) and abs(two["p95_err_pct"] - 5.0) < 1e-9
    for n, g, p in ((1, 8.0, 400), (2, 15.2, 420)):
        write_csv(results(n, g, p), tmp_path / f"n{n}" / "mixdq_queue_results.csv")
    assert run_main("serve_scaleout.py", "--runs", f"1={tmp_path / 'n1'}", f"2={tmp_path / 'n2'}",
                    "--out_dir", tmp_path / "so") == 0
    assert (tmp_path / "so" / "serve_scaleout.csv").is_file()
    assert (tmp_path / "so" / "plots" / "scaleout_goodput_vs_replicas.png").is_file()
    assert run_main("serve_scaleout.py", "--runs", f"2={tmp_path / 'n2'}") == 2  # needs the one-replica run
