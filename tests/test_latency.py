import argparse

import numpy as np
import pandas as pd
import pytest
import torch

from conftest import REPO, run_main
from quant_utils.csvio import read_csv, read_provenance

LATENCY_COLUMNS = ["mode", "wbits", "abits", "backend", "exec", "vae", "vae_exec", "height", "width", "batch", "steps", "repeats",
                   "text_p50_ms", "text_p95_ms", "unet_p50_ms", "unet_p95_ms", "vae_p50_ms", "vae_p95_ms",
                   "total_p50_ms", "total_p95_ms", "total_mean_ms", "images_per_s", "peak_mem_gib",
                   "first_call_ms", "unet_weight_bytes", "gpu", "weights"]


def test_latency_probe_writes_the_documented_schema(tmp_path, prompts_file, capsys):
    out = tmp_path / "lat.csv"
    assert run_main("latency_probe.py", "--mode", "w8a8", "--res", 64, 128, "--batch", 1, 2, "--repeats", 2,
                    "--warmup", 1, "--calib_prompts", prompts_file, "--calib_num", 2, "--base_path", tmp_path,
                    "--prompts_file", prompts_file, "--out", out) == 0
    df = read_csv(out)
    assert list(df.columns) == LATENCY_COLUMNS
    assert (df["first_call_ms"] > 0).all()  # the first call of each cell, kept apart from the timed ones
    stdout = capsys.readouterr().out
    assert "fake quantization keeps the FP weights" in stdout and f"wrote {out}" in stdout
    assert len(df) == 4 and set(df["height"]) == {64, 128} and set(df["batch"]) == {1, 2}
    assert (df["total_p50_ms"] >= df["unet_p50_ms"]).all() and (df["total_p95_ms"] >= df["total_p50_ms"]).all()
    assert (df["wbits"] == 8).all() and (df["backend"] == "fake").all() and (df["weights"] == "random-tiny").all()
    assert (df["vae"] == "fp16").all() and (df["vae_exec"] == "eager").all()  # auto on a CPU: eager, nothing compiled
    assert (df["exec"] == "eager").all()
    assert read_provenance(out)["mode"] == "w8a8"
    assert (tmp_path / "w8a8" / "ckpt.pth").is_file()


def test_latency_probe_bad_inputs(tmp_path, capsys):
    assert run_main("latency_probe.py", "--res", 100, "--out", tmp_path / "x.csv") == 2
    assert "multiples of 8" in capsys.readouterr().err
    assert run_main("latency_probe.py", "--mode", "w4a8", "--ckpt", tmp_path / "missing.pth", "--res", 64,
                    "--out", tmp_path / "x.csv") == 2
    assert "does not exist" in capsys.readouterr().err


def test_latency_probe_writes_under_logs_by_default(prompts_file, monkeypatch, tmp_path):
    """Without --out the CSV goes to logs/latency/, never over a committed results/ table."""
    import quant_utils.csvio as csvio

    written = []
    real = csvio.write_csv
    monkeypatch.setattr(csvio, "write_csv", lambda df, path, meta=None, **kw: written.append(str(path)) or
                        real(df, tmp_path / "lat.csv", meta, **kw))
    assert run_main("latency_probe.py", "--res", 64, "--batch", 1, "--repeats", 1, "--warmup", 0,
                    "--prompts_file", prompts_file) == 0
    assert written and all(w.endswith("logs/latency/latency_fp16.csv") for w in written)


def test_eval_grid_one_row_per_cell(tmp_path, prompts_file, capsys):
    out = tmp_path / "grid.csv"
    assert run_main("eval_grid.py", "--res", 64, "--wbits", 16, 4, "--prompts_file", prompts_file, "--num_prompts", 3,
                    "--batch_size", 2, "--calib_prompts", prompts_file, "--calib_num", 2, "--clip_pretrained", "none",
                    "--ckpt", str(tmp_path / "ckpt_w{wbits}.pth"), "--out_csv", out) == 0
    assert f"wrote {out}" in capsys.readouterr().out
    df = read_csv(out)
    assert df[["wbits", "height"]].values.tolist() == [[16, 64], [4, 64]]
    assert (df["first_call_ms"] > 0).all() and (df["n_warm_calls"] == 1).all()  # 3 prompts, batches of 2: 2 calls
    assert df["avg_wbits"].tolist()[0] == 16 and df["avg_wbits"].tolist()[1] < 8
    assert df["clip_note"].str.contains("plumbing").all() and pd.notna(df["clip_score"]).all()
    assert (tmp_path / "ckpt_w4.pth").is_file()


E2E_COLUMNS = ["mode", "wbits", "abits", "unet_exec", "compile_regions", "vae", "vae_exec", "vae_attention", "group_norm", "vae_group_norm", "vae_conv_out", "vae_fused_blocks", "vae_upsample", "res", "batch", "text_p50_ms", "text_p95_ms",
               "unet_p50_ms", "unet_p95_ms", "vae_p50_ms", "vae_p95_ms", "total_p50_ms", "total_p95_ms",
               "total_mean_ms", "images_per_s", "drift_pct", "repeats", "first_call_s", "first_call_plan_s", "first_call_warmup_s",
               "first_call_capture_s", "first_call_graphs", "first_call_dynamo_s", "first_call_backend_s", "peak_mem_gib", "diff_vs_eager", "weight_bytes",
               "fused_attentions", "kernel_layers", "wonly_layers", "dense_layers", "dense_bytes", "vae_weight_bytes", "weight_config", "act_config", "gpu", "weights", "speedup_vs_fp16", "speedup_same_vae"]


def test_bench_e2e_every_mode_and_decoder_in_one_run(tmp_path, prompts_file):
    out = tmp_path / "e2e.csv"
    assert run_main("bench_e2e.py", "--modes", "fp16", "w8a8", "mixdq", "--vae_kinds", "fp16", "tiny", "int8",
                    "--vae_modes", "w8a8", "--res", 64, "--batch", 1, 2, "--repeats", 1, "--calib_num", 1,
                    "--prompts_file", prompts_file, "--calib_prompts", prompts_file, "--out", out,
                    "--vae_errors_out", tmp_path / "vae_err.csv") == 0
    df = read_csv(out)
    assert list(df.columns) == E2E_COLUMNS
    combos = set(zip(df["mode"], df["vae"]))
    assert combos == {("fp16", "fp16"), ("w8a8", "fp16"), ("w8a8", "tiny"), ("w8a8", "int8"), ("mixdq", "fp16")}
    assert len(df) == 2 * len(combos) and (df["unet_exec"] == "eager").all()
    assert (df["group_norm"] == "native").all()  # the default
    assert (df["vae_group_norm"] == "native").all()  # auto on the CPU: triton only for a decode compiled on CUDA
    assert (df["vae_fused_blocks"] == 0).all()  # auto on the CPU: the int8 decoder fuses on CUDA only
    fp16 = df[(df["mode"] == "fp16")].set_index("batch")["total_p50_ms"]
    for _, r in df.iterrows():  # the speedup is the FP16 image's time over this row's, same cell
        assert r["speedup_vs_fp16"] == pytest.approx(fp16[r["batch"]] / r["total_p50_ms"], abs=2e-3)
    assert df[df["vae"] != "fp16"]["speedup_same_vae"].isna().all()  # no FP16 UNet with those decoders here
    assert set(df[df["mode"] == "mixdq"]["act_config"]) == {"act_7.77.yaml"}
    assert (df["weight_bytes"] > 0).all() and (df["first_call_s"] >= 0).all()
    setup = ["first_call_plan_s", "first_call_warmup_s", "first_call_capture_s"]
    assert (df[setup] == 0).all().all()  # eager on a CPU: no plan, no warm-up before a graph, no capture
    assert (df[["first_call_graphs", "first_call_dynamo_s"]] == 0).all().all() and df["compile_regions"].isna().all()
    assert (df[["kernel_layers", "wonly_layers", "dense_layers", "dense_bytes"]] == 0).all().all()  # a CPU plans nothing
    assert (df["fused_attentions"] == 0).all()  # eager on a CPU: nothing fused
    assert not (tmp_path / "e2e_layer_plan.csv").exists()
    first = df[df["batch"] == 1]  # the check cell: eager vs eager here, so identical images
    assert (first["diff_vs_eager"] == 0).all() and df[df["batch"] == 2]["diff_vs_eager"].isna().all()
    err = read_csv(tmp_path / "vae_err.csv")
    assert set(err["kind"]) == {"layer", "image"} and (err["rel_err"] > 0).all()
    assert run_main("plot_e2e.py", out, "--out", tmp_path / "e2e.png") == 0  # the plot reads the CSV only
    assert (tmp_path / "e2e.png").stat().st_size > 10_000
    assert run_main("plot_e2e.py", tmp_path / "vae_err.csv") == 2  # not a bench_e2e CSV: one error line
    assert run_main("plot_e2e.py", out, out, "--out", tmp_path / "twice.png") == 2  # the same file twice: refused
    assert not (tmp_path / "twice.png").exists()
    other = tmp_path / "e2e_again.csv"  # the same cells from another run: a panel per run, each its own baseline
    other.write_text(out.read_text())
    assert run_main("plot_e2e.py", out, other, "--out", tmp_path / "two_runs.png") == 0
    assert (tmp_path / "two_runs.png").stat().st_size > (tmp_path / "e2e.png").stat().st_size


def test_bench_e2e_interleaves_the_variants_timed_calls(tmp_path, prompts_file):
    """--interleave: every variant of a cell is first called (and warmed up) in turn, then the timed calls go
    round-robin across the variants, the order reversed every other round; the rows are those of a sequential run."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("script_bench_e2e_t", REPO / "scripts" / "bench_e2e.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    calls = []

    class FakeRunner:
        device, exec_mode = torch.device("cpu"), "eager"

        def __init__(self, name, ms):
            self.name, self.ms = name, ms

        def __call__(self, prompts, seeds, h, w, steps, times=None):
            calls.append(self.name)
            if times is not None:
                times.text_ms, times.unet_ms, times.vae_ms = 1.0, self.ms, 2.0
                times.total_ms = 3.0 + self.ms + len(calls) / 1000  # a slow drift across calls
            return np.zeros((1, 8, 8, 3), np.uint8)

        def pop_setup_s(self):  # one-time work: 1.5 s of warm-up at each runner's first call, none after
            first = calls.count(self.name) == 1
            return {"plan": 0.0, "warmup": 1.5 if first else 0.0, "capture": 0.0}

    args = argparse.Namespace(warmup=1, repeats=4, seed=0)
    check = (["p"], [0], 64, 64, 1)
    group = [mod.Entry(m, "eager", "fp16", FakeRunner(m, ms), None, {}, 0, check, np.zeros((1, 8, 8, 3)))
             for m, ms in (("a", 10.0), ("b", 20.0))]
    rows = mod._measure_group(group, ["p"], 64, 1, 1, args)
    assert calls == ["a", "a", "b", "b"] + ["a", "b", "b", "a"] * 2 + ["a", "b"]  # first+warm-up each; rounds; checks
    assert [r["unet_p50_ms"] for r in rows] == [10.0, 20.0] and all(r["diff_vs_eager"] == 0 for r in rows)
    assert all(r["drift_pct"] > 0 for r in rows)  # the second half of the rounds was slower
    assert [r["first_call_warmup_s"] for r in rows] == [1.5, 1.5]  # the first call's own, not the warm-ups'

    out = tmp_path / "e2e.csv"
    assert run_main("bench_e2e.py", "--modes", "fp16", "w8a8", "--vae_kinds", "fp16", "--res", 64, "--batch", 1, 2,
                    "--repeats", 2, "--calib_num", 1, "--prompts_file", prompts_file, "--calib_prompts", prompts_file,
                    "--interleave", "--out", out) == 0
    df = read_csv(out)
    assert list(df.columns) == E2E_COLUMNS and len(df) == 4
    assert set(zip(df["mode"], df["batch"])) == {("fp16", 1), ("fp16", 2), ("w8a8", 1), ("w8a8", 2)}
    assert "# order: interleaved" in out.read_text()


def test_bench_e2e_profiles_the_image_and_its_decode_apart(tiny_pipe, monkeypatch):
    """The profile of a cell: the whole image and the decoder alone on the same latents (stage column), each
    cell's per-kernel rows too; the Runner's execution mode is restored after."""
    import importlib.util

    from quant_utils import kernel_bench
    from quant_utils.runtime import Runner

    spec = importlib.util.spec_from_file_location("script_bench_e2e_p", REPO / "scripts" / "bench_e2e.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    seen = []

    def fake_profile(fn, kernels):  # torch.profiler's CUDA view needs a GPU: record what is profiled instead
        out = fn()
        seen.append(tuple(out.shape))
        kernels.append(dict(kernel="k", category="attention", gpu_ms=1.0, count=1))
        return [dict(category="attention", gpu_ms=1.0, share=1.0, kernels=1)]

    monkeypatch.setattr(kernel_bench, "profile_step", fake_profile)
    runner, kernels = Runner(tiny_pipe), []
    entry = mod.Entry("fp16", "eager", "fp16", runner, tiny_pipe.unet, {}, 0, None, None)
    rows = mod._profile(entry, ["a cat"], 64, 2, 1, kernels)
    assert [r["stage"] for r in rows] == ["image", "decode"] == [k["stage"] for k in kernels]
    assert seen == [(2, 64, 64, 3), (2, 3, 64, 64)]  # uint8 images, then the decoder's output on the latents
    assert all(r["batch"] == 2 and r["vae"] == "fp16" for r in rows) and runner.exec_mode == "eager"


def test_bench_e2e_refuses_graph_exec_without_cuda(tmp_path, capsys):
    import torch

    if torch.cuda.is_available():
        pytest.skip("has CUDA")
    assert run_main("bench_e2e.py", "--exec", "compile", "--out", tmp_path / "x.csv") == 2
    assert "needs a CUDA GPU" in capsys.readouterr().err
    assert run_main("bench_e2e.py", "--fp16_exec", "compile-fused", "--out", tmp_path / "x.csv") == 2
    assert "need a CUDA GPU" in capsys.readouterr().err
    assert run_main("bench_e2e.py", "--quant_exec", "compile", "compile-fused", "--out", tmp_path / "x.csv") == 2
    assert "--quant_exec compile compile-fused: CUDA graphs" in capsys.readouterr().err
    assert not (tmp_path / "x.csv").exists()


def test_fused_qkv_fp16_unet_gives_the_same_images(tiny_pipe):
    """bench_e2e's compile-fused variants: fused attention projections (quant_utils/fusion.py) on a copy of the UNet,
    the same images through the Runner (one GEMM where there were three: float rounding only)."""
    import copy

    from quant_utils.fusion import fuse_qkv
    from quant_utils.mixdq import pipeline_view
    from quant_utils.runtime import Runner

    fused = pipeline_view(tiny_pipe, copy.deepcopy(tiny_pipe.unet))
    fuse_qkv(fused.unet)
    assert any("Fused" in type(p).__name__ for p in fused.unet.attn_processors.values())
    ref = Runner(tiny_pipe)(["a cat", "a dog"], [1, 2], 64, 64).astype(int)
    out = Runner(fused)(["a cat", "a dog"], [1, 2], 64, 64).astype(int)
    assert np.abs(out - ref).max() <= 1
