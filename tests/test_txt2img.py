import os

import numpy as np
from PIL import Image

from conftest import run_script
from quant_utils.csvio import read_csv, read_provenance


def test_txt2img_writes_images_and_manifest_and_resumes(tmp_path, prompts_file):
    base = tmp_path / "fp16"
    run_script("txt2img.py", "--base_path", base, "--num_imgs", 5, "--batch_size", 2, "--prompts_file", prompts_file)
    folder = base / "generated_images"
    pngs = sorted(p.name for p in folder.glob("*.png"))
    assert pngs == [f"{i:05d}.png" for i in range(5)]
    m = read_csv(folder / "manifest.csv")
    assert list(m.columns) == ["index", "file", "prompt", "seed", "height", "width", "steps", "guidance_scale",
                               "batch_size", "latency_ms", "first_call"]
    assert m["seed"].tolist() == [42 + i for i in range(5)] and (m["height"] == 64).all()
    assert m["prompt"][3] == "a red bicycle leaning on a wall"
    assert read_provenance(folder / "manifest.csv")["weights"] == "random-tiny"
    # resume: delete one image, rerun with another batch size; only it is regenerated, identically
    before = np.asarray(Image.open(folder / "00003.png"), dtype=int)
    os.remove(folder / "00003.png")
    mtime0 = (folder / "00000.png").stat().st_mtime_ns
    run_script("txt2img.py", "--base_path", base, "--num_imgs", 5, "--batch_size", 4, "--prompts_file", prompts_file)
    assert (folder / "00000.png").stat().st_mtime_ns == mtime0
    after = np.asarray(Image.open(folder / "00003.png"), dtype=int)
    assert np.abs(after - before).max() <= 1  # batch 2 then batch 1: same image up to float rounding
    assert not list(folder.glob(".*tmp*"))


def test_txt2img_bad_inputs_are_clear_errors(tmp_path):
    empty = tmp_path / "empty.txt"
    empty.write_text("\n# only a comment\n")
    p = run_script("txt2img.py", "--base_path", tmp_path, "--prompts_file", empty, check=False)
    assert p.returncode == 2 and "no prompts" in p.stderr and "Traceback" not in p.stderr
    p = run_script("txt2img.py", "--base_path", tmp_path, "--res", 100, check=False)
    assert p.returncode == 2 and "multiples of 8" in p.stderr
