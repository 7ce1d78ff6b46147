from conftest import run_main, run_script
from quant_utils.csvio import read_csv, read_provenance


def test_quant_txt2img_end_to_end_then_loads_ckpt(tmp_path, prompts_file, capsys):
    base = tmp_path / "w8a8"
    common = ["--base_path", base, "--num_imgs", 2, "--batch_size", 2, "--prompts_file", prompts_file,
              "--calib_prompts", prompts_file, "--calib_num", 3]
    first = run_script("quant_txt2img.py", "--wbits", 8, *common)
    assert "calibrated" in first.stdout and (base / "ckpt.pth").is_file()
    assert "W avg 8.00 bits" in first.stdout
    m = read_csv(base / "generated_images" / "manifest.csv")
    assert m["seed"].tolist() == [42, 43] and m["prompt"][0] == "a red bicycle leaning on a wall"
    prov = read_provenance(base / "generated_images" / "manifest.csv")
    assert prov["backend"] == "fake" and prov["avg_wbits"] == "8.0"
    assert run_main("quant_txt2img.py", "--wbits", 8, *common[:4], "--num_imgs", 3, *common[6:]) == 0
    assert "loaded" in capsys.readouterr().out and len(list((base / "generated_images").glob("*.png"))) == 3
    # the same checkpoint with other bits is refused, naming the difference
    assert run_main("quant_txt2img.py", "--wbits", 4, *common) == 2
    assert "other quantization settings" in capsys.readouterr().err


def test_quant_txt2img_bad_bit_config(tmp_path, prompts_file, capsys):
    bad = tmp_path / "w.yaml"
    bad.write_text("model.conv_in: 8\nmodel.down_blocks.7.nope: 4\n")
    assert run_main("quant_txt2img.py", "--config_weight_mp", bad, "--base_path", tmp_path,
                    "--prompts_file", prompts_file) == 2
    assert "down_blocks.7.nope" in capsys.readouterr().err
