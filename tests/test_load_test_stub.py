"""scripts/load_test_stub.py end to end: the default sweep's CSV schema and plots, loads/SLO/admission, traces
and burst retries, the live tiny model, the adaptive decoder switch; the committed sweep's numbers as quoted."""
import json

import numpy as np
import pandas as pd

from conftest import TINY, run_main, run_script
from quant_utils.csvio import read_csv, read_provenance
from quant_utils.perf_model import PerfModel, synthetic_latency_frame
from quant_utils.serving import workloads as wl
from quant_utils.serving.simulator import REQUEST_COLUMNS
from quant_utils.serving.sweep import RESULT_COLUMNS


W8 = "w8a8"


def test_load_test_default_sweep_csv_schema_and_plots(tmp_path, perf_json, capsys, monkeypatch):
    monkeypatch.setenv(wl.SEED_ENV, "123")
    args = ["--perf_model", perf_json, "--base_path", tmp_path, "--run_name", "a", "--num_requests", 200]
    assert run_main("load_test_stub.py", *args) == 0
    out = tmp_path / "queue_tests" / "a"
    res = read_csv(out / "mixdq_queue_results.csv")
    assert list(res.columns) == RESULT_COLUMNS
    # the source's sweep: burst conc 1, 2 and Poisson 0.5..4 req/s, W8/W6/W4, static vs adaptive
    assert len(res) == (2 + 4) * 3 * 2 and set(res["policy"]) == {"static", "adaptive"}
    assert sorted(res["wbits"].unique()) == [4, 6, 8] and sorted(res["lam"].dropna().unique()) == [0.5, 1, 2, 4]
    assert sorted(res["conc"].dropna().unique()) == [1, 2] and (res["source"] == "sim").all() and (res["seed"] == 123).all()
    assert (res["n_requests"] == 200).all() and res["p99_ms"].ge(res["p95_ms"]).all()
    req = read_csv(out / "mixdq_queue_requests.csv")
    assert list(req.columns) == ["run_id", "source"] + REQUEST_COLUMNS and len(req) == 200 * len(res)
    prov = read_provenance(out / "mixdq_queue_results.csv")
    assert prov["perf_synthetic"] == "True" and prov["seed"] == "123"
    assert prov["weights"].startswith("simulated only") and prov["backend"].startswith("simulated only")
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["seed"] == 123 and len(cfg["cells"]) == len(res) and "adaptive" in cfg["policies_resolved"][res["run_id"].iloc[1]]
    assert "[sim BURST W8 conc=1] STATIC p95=" in (out / "mixdq_queue_results.txt").read_text()
    # same seed, same numbers
    assert run_main("load_test_stub.py", *args[:-2], "--num_requests", 200, "--run_name", "b", "--seed", 123) == 0
    pd.testing.assert_frame_equal(res, read_csv(tmp_path / "queue_tests" / "b" / "mixdq_queue_results.csv"))
    # plots from the CSVs
    assert run_main("plot_mixdq_queue_results.py", out / "mixdq_queue_results.csv") == 0
    pngs = sorted(p.name for p in (out / "plots").glob("*.png"))
    assert {"latency_p95_p99_vs_rate.png", "slo_goodput_vs_rate.png", "delta_p95_vs_rate.png", "burst_p95_p99.png",
            "latency_cdf.png"} <= set(pngs) and any(p.startswith("timeseries_") for p in pngs)


def test_load_test_loads_slo_admission_and_errors(tmp_path, perf_json, capsys):
    args = ["--perf_model", perf_json, "--base_path", tmp_path, "--run_name", "c", "--num_requests", 400,
            "--patterns", "poisson", "gamma", "--load", 0.7, 1.3, "--wbits", 8, "--policies", "static", "adaptive", "slo",
            "--admission", "--slo_ms", 600, "--max_batch", 2, "--replicas", 2, "--dispatch", "jsq", "--adaptive_wbits", 4]
    assert run_main("load_test_stub.py", *args) == 0
    res = read_csv(tmp_path / "queue_tests" / "c" / "mixdq_queue_results.csv").set_index("run_id")
    assert res["load"].dropna().round(3).isin([0.7, 1.3]).all() and set(res["pattern"]) == {"poisson", "gamma"}
    assert set(res["policy"]) == {"static+admission", "adaptive+admission", "slo+admission"}
    over = res.loc["poisson-load1.3-w8a8-static"]
    assert over["n_rejected"] > 0 and over["utilisation"] > 0.8  # overloaded: admission control sheds load
    assert res.loc["poisson-load1.3-w8a8-slo", "mean_res"] < 1024
    capsys.readouterr()
    assert run_main("load_test_stub.py", "--perf_model", tmp_path / "absent.json", "--base_path", tmp_path) == 2
    err = capsys.readouterr().err
    assert "does not exist" in err and "fit_perf_model.py --csv results/latency_" in err
    assert run_main("load_test_stub.py", "--perf_model", perf_json, "--base_path", tmp_path, "--wbits", 5) == 2
    assert "w5a8" in capsys.readouterr().err


def test_load_test_trace_run_and_burst_retries(tmp_path, perf_json, capsys):
    trace = tmp_path / "trace.csv"
    pd.DataFrame({"arrival_s": np.arange(30) * 0.05, "resolution": [512] * 30}).to_csv(trace, index=False)
    args = ["--perf_model", perf_json, "--base_path", tmp_path, "--wbits", 8, "--policies", "static", "--admission",
            "--slo_ms", 200, "--conc", 4, "--num_requests", 100]
    assert run_main("load_test_stub.py", *args, "--patterns", "trace", "burst", "--trace", trace, "--run_name", "t") == 0
    out = tmp_path / "queue_tests" / "t"
    res = read_csv(out / "mixdq_queue_results.csv").set_index("pattern")
    assert res.loc["trace", "n_requests"] == 30 and res.loc["burst", "n_requests"] == 100
    assert res.loc["trace", "mean_res"] == 512  # the trace's `resolution` column was honoured
    assert res.loc["burst", "retry_backoff_ms"] == 100 and res.loc["burst", "n_retries"] > 0
    assert "30-100 requests per run" in (out / "mixdq_queue_results.txt").read_text()
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["num_requests"] == [30, 100] and {c["n"] for c in cfg["cells"]} == {30, 100}
    req = read_csv(out / "mixdq_queue_requests.csv")
    burst = req[req["run_id"].str.startswith("burst")]
    assert (burst["attempt"] > 1).sum() == res.loc["burst", "n_retries"]


def test_report_quotes_the_slo_policy_numbers_of_the_committed_sweep():
    """The `slo` policy's SLO attainment at 0.95-1.3x capacity, as the report states it (its one home)."""
    from conftest import REPO

    res = read_csv(REPO / "results/queue_sweep_load/mixdq_queue_results.csv")
    slo = res[(res["policy"] == "slo") & (res["load"] >= 0.95)]["slo_attainment"]
    quoted = f"{100 * slo.min():.1f}–{100 * slo.max():.1f}%"  # 67.4–94.0% when written
    assert quoted in (REPO / "report/README.md").read_text()


def test_load_test_live_on_the_tiny_model(tmp_path, perf_json):
    """--live on CPU: the tiny model at 64/32 px, a handful of requests; simulated and live rows, fidelity table."""
    run_script("load_test_stub.py", "--live", "--config", TINY, "--device", "cpu", "--res", 64, "--ladder", 64, 32,
               "--patterns", "poisson", "--load", 0.5, "--wbits", 8, 4, "--policies", "static", "adaptive",
               "--num_requests", 5, "--calibrate_repeats", 1, "--perf_model", perf_json,
               "--base_path", tmp_path, "--run_name", "live")
    out = tmp_path / "queue_tests" / "live"
    res = read_csv(out / "mixdq_queue_results.csv")
    assert list(res.columns) == RESULT_COLUMNS and set(res["source"]) == {"sim", "live"} and len(res) == 8
    live = res[res["source"] == "live"]
    assert (live["n_done"] == 5).all() and (live["p50_ms"] > 0).all() and set(live["static_res"]) == {64}
    fid = read_csv(out / "mixdq_queue_fidelity.csv")
    assert set(fid["live_model"]) == {"float32"} and set(fid["mode"]) == {"w8a8", "w4a8"}  # the tiny model ran every mode
    assert len(fid) == 4 and {"sim_p50_ms", "live_p50_ms", "p50_err_pct", "sim_p95_ms", "live_p95_ms", "p95_err_pct"} <= set(fid.columns)
    txt = (out / "mixdq_queue_results.txt").read_text()
    assert "bit-width switching is a no-op" in txt and "fidelity" in txt
    pm = json.loads((out / "perf_model_live.json").read_text())  # the synthetic model is of another device: calibrated
    assert pm["gpu"].startswith("cpu") and pm["synthetic"] is False
    req = read_csv(out / "mixdq_queue_requests.csv")
    assert set(req.loc[req["source"] == "live", "res"]) <= {64, 32}
    prov = read_provenance(out / "mixdq_queue_results.csv")  # what the measured rows ran on
    assert prov["weights"] == "random-tiny (live)" and prov["backend"] == "none (modes run the loaded model) (live)"


def test_adaptive_policy_switches_to_a_faster_decoder_under_overload(tmp_path):
    """--adaptive_vae tiny: past the resolution ladder the adaptive controller serves <mode>+tiny (a group of the
    performance model), and the per-request table says which requests got it."""
    frames = []
    for vae, scale in (("fp16", 1.0), ("tiny", 0.1)):
        f = synthetic_latency_frame(modes=("w8a8",), noise=0.0)
        f["vae_p50_ms"] *= scale
        f["total_p50_ms"] = f[["text_p50_ms", "unet_p50_ms", "vae_p50_ms"]].sum(axis=1)
        f["total_p95_ms"] = f["total_p50_ms"] * 1.05
        frames.append(f.assign(vae=vae))
    pm = PerfModel.fit(pd.concat(frames, ignore_index=True), with_loo=False, synthetic=True, note="SYNTHETIC test")
    pm.save(tmp_path / "pm.json")
    assert run_main("load_test_stub.py", "--perf_model", tmp_path / "pm.json", "--wbits", 8, "--patterns", "poisson",
                    "--load", 1.5, "--policies", "adaptive", "--adaptive_vae", "tiny", "--ladder", 1024, 512,
                    "--num_requests", 300, "--out_dir", tmp_path / "run", "--seed", 1) == 0
    req = read_csv(tmp_path / "run" / "mixdq_queue_requests.csv")
    served = set(req.loc[~req["rejected"], "mode"])
    assert "w8a8+tiny" in served and "w8a8" in served
