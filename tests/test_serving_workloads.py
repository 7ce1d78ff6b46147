"""Arrival workloads (quant_utils/serving/workloads.py): Poisson/gamma rates and seeds, closed-loop bursts,
trace files."""
import numpy as np
import pandas as pd
import pytest

from quant_utils.errors import ConfigError
from quant_utils.serving import workloads as wl


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
