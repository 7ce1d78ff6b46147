import os

import numpy as np
from PIL import Image

from conftest import run_main, run_script
from quant_utils.csvio import read_csv, read_provenance


def test_txt2img_writes_images_and_manifest_and_resumes(tmp_path, prompts_file, capsys):
    base = tmp_path / "fp16"
    first = run_script("txt2img.py", "--base_path", base, "--num_imgs", 5, "--batch_size", 2, "--prompts_file",
                       prompts_file)
    folder = base / "generated_images"
    pngs = sorted(p.name for p in folder.glob("*.png"))
    assert pngs == [f"{i:05d}.png" for i in range(5)]
    m = read_csv(folder / "manifest.csv")
    assert list(m.columns) == ["index", "file", "prompt", "seed", "height", "width", "steps", "guidance_scale",
                               "batch_size", "latency_ms", "first_call"]
    assert m["seed"].tolist() == [42 + i for i in range(5)] and (m["height"] == 64).all()
    assert m["prompt"][3] == "a red bicycle leaning on a wall"
    assert read_provenance(folder / "manifest.csv")["weights"] == "random-tiny"
    # the first call (compile/capture/autotune on a GPU) is reported apart from the warm mean
    assert m["first_call"].tolist() == [True, True, False, False, False]
    assert "first call" in first.stdout and "warm mean" in first.stdout and "over 3 image(s)" in first.stdout
    # resume: delete one image, rerun with another batch size; only it is regenerated, identically
    before = np.asarray(Image.open(folder / "00003.png"), dtype=int)
    os.remove(folder / "00003.png")
    mtime0 = (folder / "00000.png").stat().st_mtime_ns
    run_script("txt2img.py", "--base_path", base, "--num_imgs", 5, "--batch_size", 4, "--prompts_file", prompts_file)
    assert (folder / "00000.png").stat().st_mtime_ns == mtime0
    after = np.asarray(Image.open(folder / "00003.png"), dtype=int)
    assert np.abs(after - before).max() <= 1  # batch 2 then batch 1: same image up to float rounding
    assert not list(folder.glob(".*tmp*"))
    # a rerun with other settings never mixes them into the folder: refused, the differences named
    capsys.readouterr()
    assert run_main("txt2img.py", "--base_path", base, "--num_imgs", 6, "--seed", 7, "--res", 32,
                    "--prompts_file", prompts_file) == 2
    err = capsys.readouterr().err
    assert "other settings" in err and "seed: image 0 has 42, this run would give 7" in err
    assert "height: image 0 has 64" in err and "width" in err and not (folder / "00005.png").exists()
    assert run_main("txt2img.py", "--base_path", base, "--num_imgs", 6, "--prompt", "a cat") == 2
    assert "prompt: image 0 has" in capsys.readouterr().err
    assert run_main("txt2img.py", "--base_path", base, "--num_imgs", 6, "--fp16", "--prompts_file", prompts_file) == 2
    assert "precision: folder 'float32', now 'fp16'" in capsys.readouterr().err


def test_txt2img_bad_inputs_are_clear_errors(tmp_path):
    empty = tmp_path / "empty.txt"
    empty.write_text("\n# only a comment\n")
    p = run_script("txt2img.py", "--base_path", tmp_path, "--prompts_file", empty, check=False)
    assert p.returncode == 2 and "no prompts" in p.stderr and "Traceback" not in p.stderr
    p = run_script("txt2img.py", "--base_path", tmp_path, "--res", 100, check=False)
    assert p.returncode == 2 and "multiples of 8" in p.stderr


def test_zero_or_negative_is_an_error_not_the_default(tmp_path, capsys):
    for flag, value in (("--res", 0), ("--height", 0), ("--width", -8), ("--steps", 0), ("--num_imgs", 0),
                        ("--batch_size", -1)):
        assert run_main("txt2img.py", "--base_path", tmp_path, flag, value) == 2, flag
        assert f"argument {flag}: must be >= 1, got {value}" in capsys.readouterr().err
    assert not (tmp_path / "generated_images").exists()
