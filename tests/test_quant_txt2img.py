from conftest import dead_pid, run_main, run_script
from quant_utils.csvio import read_csv, read_provenance


def test_quant_txt2img_end_to_end_then_loads_ckpt(tmp_path, prompts_file, capsys):
    base = tmp_path / "w8a8"
    common = ["--base_path", base, "--num_imgs", 2, "--batch_size", 2, "--prompts_file", prompts_file,
              "--calib_prompts", prompts_file, "--calib_num", 3]
    first = run_script("quant_txt2img.py", "--wbits", 8, *common)
    assert "calibrated" in first.stdout and (base / "ckpt.pth").is_file()
    assert "W avg 8.00 bits" in first.stdout and "weight_8.00.yaml: uniform 8-bit" in first.stdout
    assert "quantizing weights" in first.stderr  # progress bar of the weight quantization
    assert "first call" in first.stdout and "warm mean n/a" in first.stdout  # one call: no warm mean to report
    m = read_csv(base / "generated_images" / "manifest.csv")
    assert m["seed"].tolist() == [42, 43] and m["prompt"][0] == "a red bicycle leaning on a wall"
    prov = read_provenance(base / "generated_images" / "manifest.csv")
    assert prov["backend"] == "fake" and prov["avg_wbits"] == "8.0"
    assert prov["weight_config"] == "mixed_precision_scripts/mixed_percision_config/sdxl_turbo_tiny/final_config/weight/weight_8.00.yaml"
    # a save killed mid-write (kill -9) left its temp file: the next run removes it; a live writer's stays
    stale, live = base / f".ckpt.pth.{dead_pid()}.x1y2.tmp", base / f".ckpt.pth.{1}.x1y2.tmp"
    stale.write_bytes(b"partial")
    live.write_bytes(b"partial")
    assert run_main("quant_txt2img.py", "--wbits", 8, *common[:4], "--num_imgs", 3, *common[6:]) == 0
    assert "loaded" in capsys.readouterr().out and len(list((base / "generated_images").glob("*.png"))) == 3
    assert not stale.exists() and live.exists()
    # the same checkpoint with other bits is refused, naming the difference
    assert run_main("quant_txt2img.py", "--wbits", 4, *common[:4], "--image_folder", tmp_path / "w4", *common[4:]) == 2
    assert "other quantization settings" in capsys.readouterr().err
    # the same image folder with other bits (another run folder) is refused before calibrating anything
    assert run_main("quant_txt2img.py", "--wbits", 4, "--base_path", tmp_path / "w4a8",
                    "--image_folder", base / "generated_images", *common[2:]) == 2
    err = capsys.readouterr().err
    assert "holds 3 image(s) made with other settings" in err and "weight_config: folder" in err and "weight_4.00.yaml" in err
    assert not (tmp_path / "w4a8" / "ckpt.pth").exists()


def test_quant_txt2img_bad_bit_config(tmp_path, prompts_file, capsys):
    bad = tmp_path / "w.yaml"
    bad.write_text("model.conv_in: 8\nmodel.down_blocks.7.nope: 4\n")
    assert run_main("quant_txt2img.py", "--config_weight_mp", bad, "--base_path", tmp_path,
                    "--prompts_file", prompts_file) == 2
    assert "down_blocks.7.nope" in capsys.readouterr().err


def test_every_argument_is_checked_before_any_work(tmp_path, prompts_file, capsys):
    """Zero counts, out-of-range bits and unreadable inputs stop the run before calibration writes ckpt.pth."""
    latin1 = tmp_path / "latin1.yaml"
    latin1.write_bytes("model.conv_in: 8  # caf\xe9\n".encode("latin-1"))
    tagged = tmp_path / "protect.yaml"
    tagged.write_text("- !!python/object/apply:os.system ['echo pwned']\n")
    cases = [(["--wbits", 8, "--num_imgs", 0], "argument --num_imgs: must be >= 1"),
             (["--wbits", 8, "--batch_size", 0], "argument --batch_size: must be >= 1"),
             (["--wbits", 8, "--calib_num", 0], "argument --calib_num: must be >= 1"),
             (["--wbits", 1], "--wbits 1: weight bits must be 2..8"),
             (["--wbits", 8, "--abits", 16], "--abits 16: activation bits must be 4..8"),
             (["--config_weight_mp", latin1], "not UTF-8"),
             (["--wbits", 8, "--act_protect", tagged], "not valid YAML")]
    for args, message in cases:
        assert run_main("quant_txt2img.py", *args, "--base_path", tmp_path, "--prompts_file", prompts_file) == 2
        err = capsys.readouterr().err
        assert message in err and "make_bit_configs" not in err, (args, err)
    assert not (tmp_path / "ckpt.pth").exists() and not (tmp_path / "generated_images").exists()
