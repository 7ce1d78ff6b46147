"""The discrete-event simulator (quant_utils/serving/simulator.py): exactly the FIFO queue, queueing theory,
batches, buckets, replicas, closed loops and their retries."""
import numpy as np
import pytest

from quant_utils.serving import workloads as wl
from quant_utils.serving.metrics import queue_stats, summarize
from quant_utils.serving.policies import AdmissionControl, Option, Static, build_policy
from quant_utils.serving.simulator import ServerConfig, draw_noise, simulate


W8 = "w8a8"


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


def test_simulator_queue_tracking_matches_the_request_table(perf):
    run = simulate(wl.poisson(3000, 9.0, seed=4), build_policy("adaptive", W8, 1024, [1024, 768, 512]), perf,
                   ServerConfig(max_batch=2))
    assert (run.mean_queue_len, run.max_queue_len) == (pytest.approx(queue_stats(run.requests)[0]), queue_stats(run.requests)[1])
    assert 0 < summarize(run, 1000)["utilisation"] < 1


def test_transport_delays_responses_and_closed_loop_sends_not_the_replica(perf):
    """transport_ms + encode_ms (an HTTP service's proxy + network time and its replica's encode): open loop, every
    latency grows by exactly their sum and the GPU schedule is unchanged; closed loop, a client's next request
    leaves that much later."""
    S = perf.predict(W8, 512, 512, 1)["total_p50_ms"]
    policy = Static(Option(512, W8))
    work = wl.poisson(2000, 0.7 / S * 1e3, seed=1)
    base = simulate(work, policy, perf, ServerConfig(noise="lognormal"), seed=4).requests
    slow = simulate(work, policy, perf, ServerConfig(noise="lognormal", transport_ms=30.0, encode_ms=10.0), seed=4).requests
    np.testing.assert_allclose(slow["start_s"], base["start_s"], atol=1e-12)
    np.testing.assert_allclose(slow["latency_ms"] - base["latency_ms"], 40.0, atol=1e-6)
    one = simulate(wl.closed_loop(10, 1), policy, perf, ServerConfig(noise="none", encode_ms=25.0)).requests
    np.testing.assert_allclose(np.diff(one["arrival_s"]), (S + 25.0) / 1e3, rtol=1e-9)
    np.testing.assert_allclose(one["latency_ms"], S + 25.0, rtol=1e-9)
    for bad in (dict(transport_ms=-1.0), dict(encode_ms=-1.0), dict(handoff_ms=-1.0), dict(hold_ms=-1.0),
                dict(gap_ms=-1.0)):
        with pytest.raises(Exception, match="must be >= 0"):
            ServerConfig(**bad)


def test_hold_keeps_the_replica_busy_after_each_batch(perf):
    """hold_ms (a device-side encode after each batch, in the replica's GPU thread): unlike encode_ms it delays the
    next batch too: requests arriving at once start S + hold apart, and each response comes hold later."""
    S = perf.predict(W8, 512, 512, 1)["total_p50_ms"]
    policy = Static(Option(512, W8))
    burst = wl.Workload("test", 3, arrival_s=np.zeros(3))
    held = simulate(burst, policy, perf, ServerConfig(noise="none", hold_ms=2.0)).requests
    np.testing.assert_allclose(np.diff(held["start_s"]), (S + 2.0) / 1e3, rtol=1e-9)
    np.testing.assert_allclose(held["latency_ms"], (S + 2.0) * np.arange(1, 4), rtol=1e-9)
    enc = simulate(burst, policy, perf, ServerConfig(noise="none", encode_ms=2.0)).requests  # off the GPU thread
    np.testing.assert_allclose(np.diff(enc["start_s"]), S / 1e3, rtol=1e-9)
    np.testing.assert_allclose(enc["latency_ms"], S * np.arange(1, 4) + 2.0, rtol=1e-9)


def test_gap_delays_the_next_batch_not_the_responses(perf):
    """gap_ms (the replica's hand-offs between batches, its slow-down while responses are sent): requests arriving
    at once start S + hold + gap apart, and each response comes when its batch (and hold) ends, not gap later; a
    closed-loop client's next request leaves at its response and waits out the gap."""
    S = perf.predict(W8, 512, 512, 1)["total_p50_ms"]
    policy = Static(Option(512, W8))
    burst = wl.Workload("test", 3, arrival_s=np.zeros(3))
    run = simulate(burst, policy, perf, ServerConfig(noise="none", hold_ms=2.0, gap_ms=3.0)).requests
    np.testing.assert_allclose(np.diff(run["start_s"]), (S + 5.0) / 1e3, rtol=1e-9)
    np.testing.assert_allclose(run["latency_ms"], (S + 5.0) * np.arange(3) + S + 2.0, rtol=1e-9)
    one = simulate(wl.closed_loop(10, 1), policy, perf, ServerConfig(noise="none", gap_ms=7.0)).requests
    np.testing.assert_allclose(one["arrival_s"][1] - one["arrival_s"][0], S / 1e3, rtol=1e-9)  # sent at its response
    np.testing.assert_allclose(np.diff(one["start_s"]), (S + 7.0) / 1e3, rtol=1e-9)  # ... which waits for the replica
    np.testing.assert_allclose(one["latency_ms"][1:], S + 7.0, rtol=1e-9)


def test_handoff_delays_each_request_into_its_queue(perf):
    """handoff_ms (the replica's handling before a request can join a batch): at an idle replica a request waits
    exactly that long; one that waits behind a busy GPU longer than that starts when it would have anyway; arrival
    times stay the clients' send times; a closed-loop client's next request joins the queue that much later."""
    S = perf.predict(W8, 512, 512, 1)["total_p50_ms"]
    policy = Static(Option(512, W8))
    sparse = wl.Workload("test", 5, arrival_s=np.arange(5) * 10 * S / 1e3)  # 10 service times apart: idle at each
    run = simulate(sparse, policy, perf, ServerConfig(noise="none", handoff_ms=4.0)).requests
    np.testing.assert_allclose(run["arrival_s"], sparse.arrival_s, atol=1e-12)
    np.testing.assert_allclose(run["wait_ms"], 4.0, atol=1e-6)
    np.testing.assert_allclose(run["latency_ms"], S + 4.0, atol=1e-6)
    burst = wl.Workload("test", 3, arrival_s=np.zeros(3))  # three at once: the second and third wait behind the first
    both = [simulate(burst, policy, perf, ServerConfig(noise="none", handoff_ms=h)).requests for h in (0.0, 4.0)]
    np.testing.assert_allclose(both[1]["start_s"] - both[0]["start_s"], 4.0 / 1e3, atol=1e-9)  # the whole schedule shifts
    one = simulate(wl.closed_loop(10, 1), policy, perf, ServerConfig(noise="none", handoff_ms=4.0)).requests
    np.testing.assert_allclose(np.diff(one["arrival_s"]), (S + 4.0) / 1e3, rtol=1e-9)
    np.testing.assert_allclose(one["latency_ms"], S + 4.0, rtol=1e-9)
