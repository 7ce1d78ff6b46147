"""Serving policies (quant_utils/serving/policies.py) on hand-built queues: static, adaptive with hysteresis,
SLO-predictive, admission control, quality order."""
import pandas as pd
import pytest

from quant_utils.errors import ConfigError
from quant_utils.serving import workloads as wl
from quant_utils.serving.policies import (Adaptive, AdmissionControl, Option, Policy, SLOPredictive, Static,
                                          build_policy, default_thresholds, quality_order)
from quant_utils.serving.simulator import ServerConfig, simulate


W8 = "w8a8"


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
