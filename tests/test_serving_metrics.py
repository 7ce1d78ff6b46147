"""Run metrics (quant_utils/serving/metrics.py) on a hand-built run."""
import numpy as np
import pytest

from quant_utils.serving.metrics import SUMMARY_COLUMNS, queue_stats, summarize
from quant_utils.serving.policies import Option
from quant_utils.serving.simulator import REQUEST_COLUMNS, RunResult, request_frame


W8 = "w8a8"


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
