import pandas as pd

from conftest import run_main
from quant_utils.csvio import read_csv, read_provenance

LATENCY_COLUMNS = ["mode", "wbits", "abits", "backend", "exec", "vae", "height", "width", "batch", "steps", "repeats",
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
    assert (df["vae"] == "eager").all()  # --exec eager: nothing compiled
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
