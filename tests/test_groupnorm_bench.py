"""scripts/device/groupnorm_bench.py on the CPU (timer stubbed, tiny model's shapes): rows, totals, numerics."""
import sys

import pandas as pd
import pytest

from quant_utils import REPO_ROOT

sys.path.insert(0, str(REPO_ROOT / "scripts" / "device"))


def test_groupnorm_bench_rows_and_totals(tmp_path, monkeypatch):
    import groupnorm_bench as gb

    monkeypatch.setattr(gb, "DEVICE", "cpu")
    as_float = lambda fn, **kw: lambda *a: fn(*[v.float() if isinstance(v, gb.torch.Tensor) else v for v in a])  # noqa: E731
    monkeypatch.setattr(gb.torch, "compile", as_float)
    # (on the CPU the triton form takes torch's statistics: its kernel is checked in the interpreter, test_norms)
    times = iter(range(1, 10**6))
    monkeypatch.setattr(gb, "graph_bench_ms", lambda fn: (fn(), next(times) * 1e-3)[1])
    out = tmp_path / "gn.csv"
    assert gb.main(["--out", str(out), "--buckets", "64x2", "--config", "configs/stable-diffusion/sdxl_turbo_tiny.yaml"]) == 0
    df = pd.read_csv(out, comment="#")
    shapes = gb.model_shapes(gb.architecture_configs(gb.load_model_config(REPO_ROOT / "configs/stable-diffusion/sdxl_turbo_tiny.yaml")), 64, 2)
    for model, counter in shapes.items():
        rows = df[(df["model"] == model) & (df["shape"] != "total")]
        assert set(rows["layout"]) == {"nchw", "nhwc"}
        total = df[(df["model"] == model) & (df["shape"] == "total")].set_index("layout")
        assert sorted(total.index) == ["nchw", "nhwc"]
        for layout in ("nchw", "nhwc"):  # every GroupNorm call of one forward, once per layout
            assert total.loc[layout, "calls"] == sum(counter.values())
            mine = rows[(rows["layout"] == layout) | (rows["shape"].str.count("x") == 2)]
            assert total.loc[layout, "native_us"] == pytest.approx((mine["calls"] * mine["native_us"]).sum(), abs=0.2)
        assert (rows["batch"] == 2).all() and rows["shape"].str.startswith("2x").all()
    rows = df[df["shape"] != "total"]
    assert rows[["moments_torch_us", "moments_triton_us"]].gt(0).all().all()  # the statistics alone, both ways
    for form in ("triton", "triton-affine"):  # (the default forms) == native in float32; the totals' speedups from the summed times
        assert (rows[f"max_abs_diff_{form}"] < 1e-4).all() and rows[f"{form}_us"].gt(0).all()
        total = df[df["shape"] == "total"]
        assert list(total[f"speedup_{form}"]) == pytest.approx(list(total["native_us"] / total[f"{form}_us"]), rel=1e-2)
