import json

import numpy as np
import pandas as pd
import pytest

from conftest import run_main
from quant_utils.csvio import provenance, read_csv, read_provenance, write_csv
from quant_utils.perf_model import (FEATURES, SYNTHETIC_BASE, SYNTHETIC_PARAMS, PerfModel, feature_columns,
                                    leave_one_out, synthetic_latency_frame)
from quant_utils.errors import ConfigError


def true_p50(mode: str, res, batch, steps=1) -> np.ndarray:
    """Ground truth of synthetic_latency_frame (noise-free)."""
    cols = feature_columns(res, res, batch, steps)
    st = {s: sum(v * cols[k] for k, v in SYNTHETIC_BASE[s].items()) for s in ("text", "unet", "vae", "overhead")}
    st["unet"] = st["unet"] * SYNTHETIC_PARAMS[mode]["unet_scale"]
    return sum(st.values())


@pytest.fixture(scope="module")
def noisy_model():
    return PerfModel.fit(synthetic_latency_frame(noise=0.02, seed=1))


def test_recovers_known_parameters_exactly_without_noise():
    m = PerfModel.fit(synthetic_latency_frame(noise=0.0), with_loo=False)
    for mode, par in SYNTHETIC_PARAMS.items():
        g = m.group(mode)
        for stage in ("text", "vae", "overhead"):
            for k, v in SYNTHETIC_BASE[stage].items():
                assert g.p50[stage].coef[k] == pytest.approx(v, rel=1e-6, abs=1e-9), (mode, stage, k)
        for k, v in SYNTHETIC_BASE["unet"].items():
            assert g.p50["unet"].coef[k] == pytest.approx(v * par["unet_scale"], rel=1e-6), (mode, k)
        for k in ("mpix1", "mpix"):
            assert g.memory.coef[k] == pytest.approx(SYNTHETIC_BASE["memory"][k], rel=1e-6)
        assert g.memory.coef["fixed"] == pytest.approx(SYNTHETIC_BASE["memory"]["fixed"] + par["unet_gib"], rel=1e-6)
        assert g.spread["total"].rel == pytest.approx(SYNTHETIC_BASE["spread"]["rel"], rel=1e-6)


def test_recovers_parameters_and_unmeasured_resolutions_with_noise(noisy_model):
    for mode, par in SYNTHETIC_PARAMS.items():
        g = noisy_model.group(mode)
        # the dominant work terms come back within a few percent despite 2% noise per cell
        assert g.p50["unet"].coef["steps_mpix"] == pytest.approx(SYNTHETIC_BASE["unet"]["steps_mpix"] * par["unet_scale"], rel=0.1)
        assert g.p50["vae"].coef["mpix"] == pytest.approx(SYNTHETIC_BASE["vae"]["mpix"], rel=0.1)
        # and the total at resolutions never measured (640, 896, 1152) is within 4% of the truth
        res = np.array([640, 896, 1152, 640, 896])
        batch = np.array([1, 1, 1, 3, 6])
        pred = noisy_model.predict(mode, res, res, batch)["total_p50_ms"]
        np.testing.assert_allclose(pred, true_p50(mode, res, batch), rtol=0.04)


def test_predictions_monotone_in_pixels_and_batch(noisy_model):
    res = np.arange(256, 1537, 64)
    for mode in noisy_model.modes:
        for b in (1, 2, 3, 8, 16):
            p = noisy_model.predict(mode, res, res, np.full_like(res, b))
            for key, v in p.items():
                assert np.all(np.diff(v) >= 0), (mode, b, key)
        for r in (512, 832, 1024):
            batches = np.arange(1, 17)
            p = noisy_model.predict(mode, np.full_like(batches, r), np.full_like(batches, r), batches)
            for key, v in p.items():
                assert np.all(np.diff(v) >= 0), (mode, r, key)
            assert np.all(p["total_p95_ms"] >= p["total_p50_ms"])


def test_capacity_is_batch_over_latency_and_batching_helps(noisy_model):
    for b in (1, 4):
        p = noisy_model.predict("w8a8", 768, 768, b)["total_p50_ms"]
        assert noisy_model.capacity("w8a8", 768, b) == pytest.approx(b / p * 1000)
    assert noisy_model.capacity("w8a8", 512, 8) > noisy_model.capacity("w8a8", 512, 1)  # fixed costs amortised
    assert noisy_model.capacity("w8a8", (512, 768), 1) > noisy_model.capacity("w8a8", 768, 1)


def test_json_round_trip(tmp_path, noisy_model):
    noisy_model.sources = ["results/latency_fp16.csv"]
    path = noisy_model.save(tmp_path / "pm.json")
    back = PerfModel.load(path)
    d = json.loads(path.read_text())
    assert d["synthetic"] is True and d["gpu"] == "synthetic" and d["sources"] == ["results/latency_fp16.csv"]
    assert {r["target"] for r in d["fit_error"]} >= {"total_p50_ms", "unet_p50_ms", "peak_mem_gib"}
    assert back.modes == noisy_model.modes == ["fp16", "w8a8", "w6a8", "w4a8"]
    for mode in back.modes:
        a = noisy_model.predict(mode, [512, 896], [512, 896], [1, 4])
        b = back.predict(mode, [512, 896], [512, 896], [1, 4])
        assert a.keys() == b.keys()
        for k in a:
            np.testing.assert_allclose(a[k], b[k], rtol=1e-8)  # the file keeps 10 significant digits
    pd.testing.assert_frame_equal(back.fit_error(), noisy_model.fit_error(), check_exact=False, rtol=1e-8)
    # the file keeps 10 significant digits (a refit elsewhere differs in the 15th): the bits beyond are not written
    coefs = [v for g in d["models"]["fp16"].values() for v in json.dumps(g).replace(",", " ").split()
             if v.replace(".", "").replace("-", "").replace("e", "").isdigit() and "." in v]
    assert coefs and all(len(v.split("e")[0].replace("-", "").replace(".", "").lstrip("0")) <= 10 for v in coefs)


def test_leave_one_out_on_synthetic():
    df = synthetic_latency_frame(modes=("w8a8",), noise=0.02, seed=3)
    loo = leave_one_out(df)
    assert set(loo["target"]) == {"text_p50_ms", "unet_p50_ms", "vae_p50_ms", "total_p50_ms", "total_p95_ms", "peak_mem_gib"}
    tot = loo[loo["target"] == "total_p50_ms"]["err_pct"].abs()
    assert len(tot) == 12 and tot.median() < 5 and tot.max() < 15
    # noise-free data: held-out cells are predicted exactly
    exact = leave_one_out(synthetic_latency_frame(modes=("w8a8",), noise=0.0))
    assert exact["err_pct"].abs().max() < 1e-6
    # a corrupted cell shows up as a large held-out error
    bad = df.copy()
    bad.loc[5, "total_p50_ms"] *= 1.5
    err = leave_one_out(bad)
    worst = err[err["target"] == "total_p50_ms"].set_index(["height", "batch"])["err_pct"].abs()
    assert worst.idxmax() == (int(bad.loc[5, "height"]), int(bad.loc[5, "batch"])) and worst.max() > 25


def test_total_only_tables_and_unidentifiable_features():
    # a live calibration has only totals, batch 1 only: 'batch' cannot be told from 'fixed' and is dropped
    df = synthetic_latency_frame(modes=("w8a8",), batches=(1,), noise=0.0)
    df = df.drop(columns=[c for c in df.columns if c.split("_")[0] in ("text", "unet", "vae")] + ["peak_mem_gib"])
    g = PerfModel.fit(df).group("w8a8")
    assert not g.staged and g.p50["total"].coef["batch"] == 0.0 and g.memory is None
    p = PerfModel.fit(df).predict("w8a8", 768, 768, 1)
    assert set(p) == {"total_p50_ms", "total_p95_ms"}
    assert p["total_p50_ms"] == pytest.approx(df.loc[df["height"] == 768, "total_p50_ms"].item(), rel=1e-6)
    assert set(FEATURES["total"]) == set(g.p50["total"].coef)


def test_clear_errors(tmp_path, noisy_model):
    with pytest.raises(ConfigError, match="w5a8.*fp16"):
        noisy_model.predict("w5a8", 512, 512)
    with pytest.raises(ConfigError, match="multiples of 8"):
        noisy_model.predict("w8a8", 500, 512)
    with pytest.raises(ConfigError, match="exec 'eager'"):
        noisy_model.predict("w8a8", 512, 512, exec="eager")
    with pytest.raises(ConfigError, match="fit_perf_model.py"):
        PerfModel.load(tmp_path / "absent.json")
    with pytest.raises(ConfigError, match="total_p95_ms"):
        PerfModel.fit(synthetic_latency_frame().drop(columns=["total_p95_ms"]))


def test_fit_script_on_synthetic_csvs(tmp_path, capsys):
    df = synthetic_latency_frame(noise=0.01)
    paths = []
    for mode, g in df.groupby("mode"):
        paths.append(write_csv(g, tmp_path / f"latency_{mode}.csv", provenance(script="test", gpu="synthetic", weights="synthetic")))
    out, png = tmp_path / "pm.json", tmp_path / "latency_vs_res.png"
    assert run_main("fit_perf_model.py", "--csv", *paths, "--out", out, "--plot", png) == 0
    text = capsys.readouterr().out
    assert "median_abs_pct" in text and "SYNTHETIC" in text
    d = json.loads(out.read_text())
    assert d["synthetic"] is True and len(d["sources"]) == 4 and set(d["models"]) == set(SYNTHETIC_PARAMS)
    loo = read_csv(tmp_path / "pm_loo.csv")
    assert {"mode", "exec", "height", "batch", "target", "measured", "predicted", "err_pct"} <= set(loo.columns)
    assert read_provenance(tmp_path / "pm_loo.csv")["backend"].startswith("fp16=")  # and weights, gpu: the model's
    assert png.stat().st_size > 10_000
    assert run_main("fit_perf_model.py", "--csv", tmp_path / "missing.csv", "--out", out) == 2
    assert "does not exist" in capsys.readouterr().err
    # a rerun on the same CSVs, in any order, reproduces every file byte for byte (make report leaves results/ as is)
    files = [out, tmp_path / "pm_loo.csv", png]
    before = [f.read_bytes() for f in files]
    assert run_main("fit_perf_model.py", "--csv", *reversed(paths), paths[0], "--out", out, "--plot", png) == 0
    assert [f.read_bytes() for f in files] == before


def test_fit_script_on_bench_e2e_csvs_with_a_plot_and_a_mode_subset(tmp_path, capsys):
    """bench_e2e's columns (res, unet_exec, vae) and provenance (device, no gpu line) fit and plot like
    latency_probe's; --modes keeps only the named (mode, decoder) keys and refuses one the CSVs lack."""
    frames = []
    for vae, scale in (("fp16", 1.0), ("int8", 0.7), ("tiny", 0.1)):
        f = synthetic_latency_frame(modes=("fp16", "w8a8"), noise=0.01)
        f["vae_p50_ms"] *= scale
        frames.append(f.assign(vae=vae).rename(columns={"height": "res", "exec": "unet_exec"}).drop(columns=["width", "gpu", "backend"]))
    csv = write_csv(pd.concat(frames, ignore_index=True), tmp_path / "e2e_test.csv",
                    provenance(script="bench_e2e", device="Test GPU", weights="random-full", backend="kernel (quantized modes)"))
    out, png = tmp_path / "pm.json", tmp_path / "pm.png"
    assert run_main("fit_perf_model.py", "--csv", csv, "--modes", "fp16", "w8a8+int8", "--out", out, "--plot", png) == 0
    d = json.loads(out.read_text())
    assert set(d["models"]) == {"fp16", "w8a8+int8"} and d["gpu"] == "Test GPU"
    # the backend of each UNet mode, from the provenance line (bench_e2e has no backend column)
    assert {m: {g["backend"] for g in ex.values()} for m, ex in d["models"].items()} == {"fp16": {"none"}, "w8a8+int8": {"kernel"}}
    assert set(read_csv(tmp_path / "pm_loo.csv")["mode"]) == {"fp16", "w8a8+int8"}
    assert png.stat().st_size > 10_000
    assert "warning:" not in capsys.readouterr().out  # every group measured at every cell
    # a decoder measured at two cells: fitted, but the script says its predictions cannot be checked
    two = write_csv(pd.concat(frames).query("vae == 'tiny' and mode == 'w8a8' and batch in (1, 4) and res == 1024"),
                    tmp_path / "e2e_two.csv", provenance(script="bench_e2e", device="Test GPU"))
    assert run_main("fit_perf_model.py", "--csv", two, "--out", tmp_path / "two.json") == 0
    assert "warning: w8a8+tiny (graph): 2 cells (no held-out error), one resolution (1024 px)" in capsys.readouterr().out
    assert run_main("fit_perf_model.py", "--csv", csv, "--modes", "w4a8", "--out", out) == 2
    assert "['w4a8'] not in the CSVs" in capsys.readouterr().err


def test_docs_and_makefile_fit_one_model_from_one_list_of_csvs():
    """Every documented command that writes results/perf_model.json (README, docs/, report) fits the same latency
    CSVs as `make report`, which the README names as the way to refit it."""
    import re

    from conftest import REPO

    make = re.search(r"^LATENCY_CSVS := (.*)$", (REPO / "Makefile").read_text(), re.M).group(1).split()
    assert "--csv $(LATENCY_CSVS) --out results/perf_model.json" in (REPO / "Makefile").read_text()
    assert "make report" in (REPO / "README.md").read_text()
    pages = [REPO / "README.md", REPO / "report/README.md", *sorted((REPO / "docs").glob("*.md"))]
    text = " ".join(p.read_text().replace("\\\n", " ") for p in pages)
    lists = [sorted(re.findall(r"results/latency_\S+\.csv", cmd))
             for cmd in re.findall(r"fit_perf_model\.py --csv (.*?)--out results/perf_model\.json", text)]
    assert len(lists) >= 1 and all(lst == sorted(make) for lst in lists), (lists, make)


def test_target_on_the_committed_h100_grid():
    """Leave-one-out error of the total on the committed H100 FP16 graph grid: median <= 5 %, worst <= 15 %."""
    from quant_utils import repo_path

    path = repo_path("results/latency_fp16.csv")
    if not path.is_file():
        pytest.skip("results/latency_fp16.csv not committed yet")
    df = read_csv(path)
    err = leave_one_out(df[df["exec"] == "graph"])
    tot = err.loc[err["target"] == "total_p50_ms", "err_pct"].abs()
    assert len(tot) >= 9 and tot.median() <= 5 and tot.max() <= 15


def test_the_decoder_is_a_dimension_of_the_model_and_of_the_policy_ladder():
    """bench_e2e's table (res, unet_exec, vae) fits directly; every (mode, decoder) is its own group, keyed
    `<mode>+<decoder>`, which the simulator and the policies use like any other mode."""
    from quant_utils.perf_model import PerfModel, synthetic_latency_frame
    from quant_utils.serving.policies import Option, build_policy, quality_order

    frames = []
    for vae, scale in (("fp16", 1.0), ("int8", 0.7), ("tiny", 0.1)):
        f = synthetic_latency_frame(modes=("fp16", "w8a8"), noise=0.0)
        f["vae_p50_ms"] *= scale
        f["vae_p95_ms"] *= scale
        f["total_p50_ms"] = f[["text_p50_ms", "unet_p50_ms", "vae_p50_ms"]].sum(axis=1) + 1.0
        f["total_p95_ms"] = f["total_p50_ms"] * 1.05
        frames.append(f.assign(vae=vae).rename(columns={"height": "res", "exec": "unet_exec"}).drop(columns="width"))
    model = PerfModel.fit(pd.concat(frames, ignore_index=True), with_loo=False)
    assert set(model.groups) == {"fp16", "w8a8", "fp16+int8", "w8a8+int8", "fp16+tiny", "w8a8+tiny"}
    t = {m: model.predict(m, 1024, 1024, 4)["total_p50_ms"] for m in ("w8a8", "w8a8+int8", "w8a8+tiny")}
    assert t["w8a8+tiny"] < t["w8a8+int8"] < t["w8a8"]
    assert model.predict("w8a8+tiny", 1024, 1024, 4)["vae_p50_ms"] == pytest.approx(
        0.1 * model.predict("w8a8", 1024, 1024, 4)["vae_p50_ms"], rel=0.05)
    # quality: same resolution and bits, the FP16 decoder first, the tiny one last
    opts = [Option(1024, "w8a8+tiny"), Option(1024, "w8a8"), Option(1024, "w8a8+int8")]
    assert [o.mode for o in quality_order(opts)] == ["w8a8", "w8a8+int8", "w8a8+tiny"]
    pol = build_policy("adaptive", "w8a8", 1024, [1024, 512], bits_ladder=["w8a8+tiny"])
    assert pol.ladder == [Option(1024, "w8a8"), Option(512, "w8a8"), Option(512, "w8a8+tiny")]


def test_nnls_coefficients_at_the_bound_are_exactly_zero():
    """A feature the data does not want (negatively related to the target) gets 0.0, not round-off: the written
    model must be the same on every numpy/scipy (`make report` leaves the committed files as they are)."""
    from quant_utils.perf_model import nnls_fit

    rng = np.random.default_rng(0)
    x = rng.uniform(1, 2, size=(40, 1))
    X = np.hstack([np.ones((40, 1)), x, -x ** 2 + rng.normal(0, 1e-3, (40, 1))])
    y = 3.0 + 2.0 * x[:, 0]
    for relative in (True, False):
        c = nnls_fit(X, y, relative)
        assert c[2] == 0.0 and np.allclose(c[:2], [3.0, 2.0], rtol=1e-6), c
