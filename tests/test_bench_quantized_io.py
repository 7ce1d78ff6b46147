"""scripts/bench_quantized_io.py at tiny size on the CPU (the device job runs it at full size on a GPU)."""

from conftest import run_script
from quant_utils.csvio import read_csv, read_provenance


def test_bench_writes_sizes_and_cold_process_times(tmp_path):
    proc = run_script("bench_quantized_io.py", "--formats", "W8A8", "--today", "W8A8",
                      "--work_dir", tmp_path / "work", "--out_dir", tmp_path)
    csv = tmp_path / "quantized_size_cpu.csv"
    df = read_csv(csv)
    assert list(df["variant"]) == ["fp-folder", "quantized-folder", "fp-then-quantize"]
    assert list(df["format"]) == ["float32", "W8A8", "W8A8"] and (df["run"] == 1).all()
    for col in ("file_bytes", "fp_file_bytes", "size_ratio", "process_s", "startup_s", "load_s", "first_image_s",
                "load_to_first_image_s", "unet_device_gib", "mem_after_load_gib", "peak_mem_gib"):
        assert col in df.columns, col
    folder = lambda name: sum(p.stat().st_size for p in (tmp_path / "work" / name).iterdir())  # noqa: E731
    fp, q, today = df.to_dict("records")
    assert q["file_bytes"] == folder("W8A8") and fp["file_bytes"] == fp["fp_file_bytes"] == folder("fp_unet")
    assert today["file_bytes"] == fp["file_bytes"] + (tmp_path / "work" / "W8A8.ckpt.pth").stat().st_size
    assert 0.25 < q["size_ratio"] < 0.4  # packed 8-bit codes: a quarter of the float32 weights, plus norms/biases
    assert q["unet_device_gib"] < 0.4 * fp["unet_device_gib"]  # int8 codes at rest, no FP weight
    assert (df["process_s"] > df["load_s"] + df["first_image_s"]).all() and (df["load_s"] > 0).all()
    prov = read_provenance(csv)
    assert prov["script"] == "bench_quantized_io" and prov["weights"] == "random-tiny" and prov["backend"] == "fake"
    assert "-> " in proc.stdout

