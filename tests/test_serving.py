import json

import numpy as np
import pandas as pd
import pytest

from conftest import TINY, run_main, run_script
from quant_utils.csvio import read_csv, read_provenance
from quant_utils.perf_model import PerfModel, synthetic_latency_frame
from quant_utils.pipeline import ConfigError
from quant_utils.serving import workloads as wl
from quant_utils.serving.metrics import SUMMARY_COLUMNS, queue_stats, summarize
from quant_utils.serving.policies import (Adaptive, AdmissionControl, Option, Policy, SLOPredictive, Static,
                                          build_policy, default_thresholds, quality_order)
from quant_utils.serving.simulator import REQUEST_COLUMNS, RunResult, ServerConfig, draw_noise, request_frame, simulate
from quant_utils.serving.sweep import RESULT_COLUMNS

W8 = "w8a8"


@pytest.fixture(scope="module")
def perf():
    return PerfModel.fit(synthetic_latency_frame(noise=0.0), with_loo=False)


@pytest.fixture(scope="module")
def perf_json(tmp_path_factory, perf):
    return perf.save(tmp_path_factory.mktemp("pm") / "perf_model_synthetic.json")


# --------------------------------------------------------------------------- workloads
def test_poisson_and_gamma_rates_burstiness_and_seeds():
    p = wl.poisson(200_000, 4.0, seed=1)
    gaps = np.diff(p.arrival_s)
    assert p.pattern == "poisson" and p.arrival_s[0] == 0 and np.all(gaps >= 0)
    assert gaps.mean() == pytest.approx(0.25, rel=0.01) and gaps.std() / gaps.mean() == pytest.approx(1.0, rel=0.02)
    g = wl.gamma(200_000, 4.0, burstiness=0.25, seed=1)
    ggaps = np.diff(g.arrival_s)
    assert g.pattern == "gamma" and ggaps.mean() == pytest.approx(0.25, rel=0.02)
    assert ggaps.std() / ggaps.mean() == pytest.approx(2.0, rel=0.03)  # CV = 1/sqrt(burstiness)
    np.testing.assert_array_equal(wl.poisson(100, 2.0, seed=7).arrival_s, wl.poisson(100, 2.0, seed=7).arrival_s)
    assert not np.array_equal(wl.poisson(100, 2.0, seed=7).arrival_s, wl.poisson(100, 2.0, seed=8).arrival_s)


def test_seed_precedence(monkeypatch):
    monkeypatch.delenv(wl.SEED_ENV, raising=False)
    assert wl.resolve_seed(None) == 0 and wl.resolve_seed(5) == 5
    monkeypatch.setenv(wl.SEED_ENV, "123")
    assert wl.resolve_seed(None) == 123 and wl.resolve_seed(5) == 5
    monkeypatch.setenv(wl.SEED_ENV, "abc")
    with pytest.raises(ConfigError, match=wl.SEED_ENV):
        wl.resolve_seed(None)


def test_burst_closed_loop_and_trace(tmp_path):
    np.testing.assert_array_equal(wl.burst(7, 3, 2.0).arrival_s, [0, 0, 0, 2, 2, 2, 4])
    assert np.all(wl.burst(5).arrival_s == 0)
    c = wl.closed_loop(10, 2)
    assert c.closed and c.clients == 2 and c.arrival_s is None
    with pytest.raises(ConfigError):
        wl.closed_loop(10, 0)
    with pytest.raises(ConfigError):
        wl.poisson(10, 0.0)
    trace = tmp_path / "trace.csv"
    pd.DataFrame({"arrival_s": [5.0, 3.0, 4.5], "prompt": ["c", "a", "b"], "height": [512, 1024, 768],
                  "width": [512, 1024, 768]}).to_csv(trace, index=False)
    t = wl.read_trace(trace)
    np.testing.assert_allclose(t.arrival_s, [0.0, 1.5, 2.0])
    assert t.prompts == ["a", "b", "c"] and t.res.tolist() == [1024, 768, 512]
    pd.DataFrame({"t": [1.0]}).to_csv(trace, index=False)
    with pytest.raises(ConfigError, match="unknown column"):
        wl.read_trace(trace)


def test_trace_columns_are_checked_and_resolution_is_an_alias(tmp_path):
    trace = tmp_path / "trace.csv"
    trace.write_text("arrival_s,resolution\n0.0,512\n0.5,768\n")
    assert wl.read_trace(trace).res.tolist() == [512, 768]  # honoured, not silently served at --res
    for text, match in (("arrival_s,res,user\n0.0,512,a\n", r"unknown column\(s\) \['user'\]"),
                        ("arrival_s,res\n0.0,512\nabc,512\n", "arrival_s has a non-number, 'abc' \\(row 2\\)"),
                        ("arrival_s,res\n0.0,big\n", "res has a non-number, 'big'"),
                        ("arrival_s,res\n0.0,500\n", "multiple of 8"),
                        ("", "not a readable CSV")):
        trace.write_text(text)
        with pytest.raises(ConfigError, match=match):
            wl.read_trace(trace)


def test_closed_loop_rejected_clients_back_off_and_retries_are_counted_apart(perf):
    """Admission control rejecting a closed loop: a rejected client resends after its back-off, not at once."""
    reject_all = AdmissionControl(Static(Option(1024, W8)), slo_ms=1.0)  # nothing meets a 1 ms SLO
    run = simulate(wl.closed_loop(300, 4, retry_backoff_s=0.1), reject_all, perf, ServerConfig(noise="none"))
    r = run.requests
    assert r["rejected"].all() and r["arrival_s"].is_monotonic_increasing
    assert (r["attempt"] == 1).sum() == 4 and r["attempt"].max() == 75  # 4 clients, each retrying
    assert r["arrival_s"].max() == pytest.approx(74 * 0.1)  # 74 back-offs of 100 ms, not 300 resends in no time
    m = summarize(run, 1000)
    assert (m["n_retries"], m["n_rejected_retries"], m["n_rejected"]) == (296, 296, 300)
    # the live replay follows the same rule
    from quant_utils.serving import live
    from quant_utils.serving.simulator import ServiceTable

    calls = []
    fn = lambda pr, se, h, w: calls.append(len(pr))  # noqa: E731
    lr = live.run_live(wl.closed_loop(6, 2, retry_backoff_s=0.02), reject_all, {W8: fn}, ServiceTable(perf, 1), ["p"])
    assert not calls and lr.requests["attempt"].tolist() == [1, 1, 2, 2, 3, 3]
    assert np.diff(lr.requests["arrival_s"].to_numpy()[::2]).min() >= 0.02
    # served requests of a closed loop are first attempts
    ok = simulate(wl.closed_loop(20, 2), Static(Option(512, W8)), perf, ServerConfig(noise="none")).requests
    assert (ok["attempt"] == 1).all()


# --------------------------------------------------------------------------- policies on hand-built queues
def test_static_and_request_cap():
    s = Static(Option(1024, W8))
    assert [s.decide(0, q, 0) for q in (0, 5, 50)] == [Option(1024, W8)] * 3
    assert s.decide(0, 0, 0, requested_res=512) == Option(512, W8)  # never above what the request asked for
    assert s.decide(0, 0, 0, requested_res=2048) == Option(1024, W8)


def test_adaptive_steps_down_and_back_with_hysteresis():
    ladder = [Option(1024, W8), Option(768, W8), Option(512, W8)]
    down, up = default_thresholds(3, q_high=4, q_low=1)
    assert (down, up) == ([4, 8], [1, 5])
    a = Adaptive(ladder, down, up)
    queue = [0, 3, 4, 5, 7, 8, 9, 6, 5, 4, 2, 1, 0, 12, 0]
    got = [a.decide(0, q, 0).res for q in queue]
    assert got == [1024, 1024, 768, 768, 768, 512, 512, 512, 768, 768, 768, 1024, 1024, 512, 1024]
    a.reset()
    assert a.decide(0, 2, 0).res == 1024
    bits = build_policy("adaptive", W8, 1024, [1024, 512], bits_ladder=["w4a8"], q_high=2, q_low=0)
    assert [bits.decide(0, q, 0) for q in (0, 2, 4)] == [Option(1024, W8), Option(512, W8), Option(512, "w4a8")]
    with pytest.raises(ConfigError, match="hysteresis"):
        Adaptive(ladder, [4, 8], [4, 5])
    with pytest.raises(ConfigError, match="thresholds"):
        Adaptive(ladder, [4], [1])


def test_slo_policy_and_admission_control():
    opts = [Option(1024, W8), Option(768, W8), Option(512, W8)]
    costs = {opts[0]: 120.0, opts[1]: 70.0, opts[2]: 40.0}
    p = SLOPredictive(opts, slo_ms=200)
    p.bind(costs)
    assert p.decide(0, 0, backlog_ms=0) == opts[0]
    assert p.decide(0, 3, backlog_ms=100) == opts[1]      # 100 + 120 > 200, 100 + 70 fits
    assert p.decide(0, 5, backlog_ms=150) == opts[2]
    assert p.decide(0, 9, backlog_ms=500) == opts[2]      # nothing fits: the cheapest
    adm = AdmissionControl(Static(opts[0]), slo_ms=200)
    adm.bind(costs)
    assert adm.decide(0, 0, backlog_ms=150) == opts[0]    # the cheapest option (40 ms) would still make it
    assert adm.decide(0, 9, backlog_ms=170) is None       # even 512 px misses the SLO: reject
    assert adm.options() == [opts[0]] and adm.name == "static+admission"


def test_quality_order_default_and_from_table():
    opts = [Option(512, W8), Option(1024, "w4a8"), Option(1024, W8), Option(768, W8)]
    assert quality_order(opts) == [Option(1024, W8), Option(1024, "w4a8"), Option(768, W8), Option(512, W8)]
    table = pd.DataFrame({"height": [512, 768, 1024, 1024], "wbits": [8, 8, 8, 4], "clip_score": [30, 31, 33, 29]})
    assert quality_order(opts, table)[:2] == [Option(1024, W8), Option(768, W8)]
    assert quality_order(opts, table)[-1] == Option(1024, "w4a8")
    with pytest.raises(ConfigError, match="no clip_score"):
        quality_order(opts + [Option(640, W8)], table)


def test_a_new_policy_is_a_few_lines(perf):
    class HalfRes(Policy):
        name = "half"

        def choose(self, now_s, queue_len, backlog_ms):
            return self.ladder[0] if queue_len < 2 else self.ladder[1]

    run = simulate(wl.burst(6), HalfRes([Option(1024, W8), Option(512, W8)]), perf, ServerConfig(noise="none"))
    assert run.requests["res"].tolist() == [1024, 1024, 512, 512, 512, 512]


# --------------------------------------------------------------------------- simulator vs queueing theory
def lindley_waits(arrival: np.ndarray, service: np.ndarray) -> np.ndarray:
    """FIFO single-server waits, W[k+1] = max(0, W[k] + S[k] - A[k+1]), vectorised (prefix sums)."""
    u = np.concatenate([[0.0], np.cumsum(service[:-1] - np.diff(arrival))])
    return u - np.minimum.accumulate(np.minimum(u, 0.0))


@pytest.mark.parametrize("noise", ["none", "exponential"])
@pytest.mark.parametrize("rho", [0.5, 0.8, 0.9])
def test_event_loop_is_exactly_the_fifo_queue(perf, noise, rho):
    """Every simulated wait equals Lindley's recursion on the same arrivals and service times."""
    S = perf.predict(W8, 512, 512, 1)["total_p50_ms"] / 1e3
    run = simulate(wl.poisson(20_000, rho / S, seed=2), Static(Option(512, W8)), perf, ServerConfig(noise=noise), seed=3)
    df = run.requests
    expect = lindley_waits(df["arrival_s"].to_numpy(), df["service_ms"].to_numpy() / 1e3)
    np.testing.assert_allclose(df["wait_ms"].to_numpy() / 1e3, expect, atol=1e-9)
    if noise == "none":
        np.testing.assert_allclose(df["service_ms"], S * 1e3, rtol=1e-12)
    assert np.all(df["finish_s"] >= df["start_s"]) and np.all(df["start_s"] >= df["arrival_s"])


@pytest.mark.parametrize("noise,queue", [("none", "M/D/1"), ("exponential", "M/M/1")])
@pytest.mark.parametrize("rho,n", [(0.5, 2_000_000), (0.8, 4_000_000), (0.9, 10_000_000)])
def test_mean_wait_matches_theory(perf, noise, queue, rho, n):
    """M/D/1: Wq = rho*S / (2(1-rho)); M/M/1: Wq = rho*S / (1-rho); within 2%. The arrivals and service draws are
    the simulator's own (workloads.poisson, draw_noise, the perf model's p50); the queue is the FIFO recursion the
    event loop was shown to equal exactly above (running the event loop itself on 10^7 requests would take minutes)."""
    S = perf.predict(W8, 512, 512, 1)["total_p50_ms"] / 1e3
    arrival = wl.poisson(n, rho / S, seed=11).arrival_s
    z = draw_noise(noise, n, np.random.default_rng(12))
    service = S * (z if z is not None else np.ones(n))
    theory = rho * S / (2 * (1 - rho)) if queue == "M/D/1" else rho * S / (1 - rho)
    assert lindley_waits(arrival, service).mean() == pytest.approx(theory, rel=0.02)


def test_batches_buckets_replicas_and_closed_loop(perf):
    p50 = {b: perf.predict(W8, 512, 512, b)["total_p50_ms"] / 1e3 for b in (1, 2, 3, 4)}
    # 10 requests at once, batches of up to 4: 4 + 4 + 2, back to back
    r = simulate(wl.burst(10), Static(Option(512, W8)), perf, ServerConfig(max_batch=4, noise="none")).requests
    assert r["batch_size"].tolist() == [4] * 8 + [2] * 2
    np.testing.assert_allclose(sorted(set(r["finish_s"])), np.cumsum([p50[4], p50[4], p50[2]]))
    # two replicas, round robin: alternate; both busy from t=0
    r = simulate(wl.burst(4), Static(Option(512, W8)), perf, ServerConfig(replicas=2, noise="none")).requests
    assert r["replica"].tolist() == [0, 1, 0, 1] and r["finish_s"].max() == pytest.approx(2 * p50[1])
    # join-shortest-queue sends the next request to the idler replica
    r = simulate(wl.burst(3), Static(Option(512, W8)), perf, ServerConfig(replicas=3, dispatch="jsq", noise="none")).requests
    assert sorted(r["replica"]) == [0, 1, 2]
    # closed loop, 3 clients, batch 1: after the first round every request waits for the two ahead of it
    r = simulate(wl.closed_loop(30, 3), Static(Option(512, W8)), perf, ServerConfig(noise="none")).requests
    np.testing.assert_allclose(r["latency_ms"].to_numpy()[3:], 3 * p50[1] * 1e3)
    assert r["arrival_s"].is_monotonic_increasing


# --------------------------------------------------------------------------- metrics
def test_metrics_on_a_hand_built_run():
    opts = [Option(1024, W8), Option(512, "w4a8")]
    df = request_frame(arrival=[0, 0, 1, 2], start=[0, 0.5, 1, 2], finish=[0.5, 1.0, 3.0, 2], service=[500, 500, 2000, np.nan],
                       opt_of=[0, 1, 0, -1], bsize=[1, 1, 1, 0], replica=[0, 0, 0, 0], qlen=[0, 1, 0, 0], options=opts)
    assert list(df.columns) == REQUEST_COLUMNS and df["rejected"].tolist() == [False, False, False, True]
    mean_q, max_q = queue_stats(df)
    assert (mean_q, max_q) == (pytest.approx(0.5 / 3), 1)
    m = summarize(RunResult(df, 1, [3.0], mean_q, max_q), slo_ms=1500)
    assert list(m) == SUMMARY_COLUMNS
    assert m["n_done"] == 3 and m["n_rejected"] == 1
    assert m["p50_ms"] == pytest.approx(1000) and m["mean_ms"] == pytest.approx(3500 / 3)
    assert m["slo_attainment"] == pytest.approx(0.5)  # 2 of 4 within 1.5 s; the rejected one counts as a miss
    assert m["goodput_rps"] == pytest.approx(2 / 3) and m["throughput_rps"] == pytest.approx(1.0)
    assert m["mean_res"] == pytest.approx((1024 + 512 + 1024) / 3) and m["mean_wbits"] == pytest.approx(20 / 3)
    assert m["utilisation"] == pytest.approx(1.0) and m["duration_s"] == pytest.approx(3.0)


def test_simulator_queue_tracking_matches_the_request_table(perf):
    run = simulate(wl.poisson(3000, 9.0, seed=4), build_policy("adaptive", W8, 1024, [1024, 768, 512]), perf,
                   ServerConfig(max_batch=2))
    assert (run.mean_queue_len, run.max_queue_len) == (pytest.approx(queue_stats(run.requests)[0]), queue_stats(run.requests)[1])
    assert 0 < summarize(run, 1000)["utilisation"] < 1


# --------------------------------------------------------------------------- scripts
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
