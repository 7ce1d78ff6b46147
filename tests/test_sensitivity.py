import numpy as np
import pytest
import torch
import yaml
from torch import nn

from conftest import run_script
from test_bit_allocation import run_mp
from quant_utils.bit_allocation import load_sensitivity
from quant_utils.bitconfig import read_bit_config
from quant_utils.errors import ConfigError
from quant_utils.quantize import quantizable_layers
from quant_utils.runtime import Runner
from quant_utils.sensitivity import SQNR_CAP_DB, SensitivitySetup, measure, select_layers, sqnr_db

LAYERS = ["conv_in", "mid_block.attentions.0.transformer_blocks.0.ff.net.2"]


def test_sqnr_db_and_layer_selection():
    ref = [torch.ones(4), torch.full((4,), 2.0)]
    noisy = [r + 0.1 for r in ref]
    assert sqnr_db(ref, noisy) == pytest.approx(10 * np.log10((4 + 16) / (8 * 0.01)))
    assert sqnr_db(ref, ref) == SQNR_CAP_DB
    names = ["conv_in", "down_blocks.0.resnets.0.conv1", "mid_block.attentions.0.proj_in"]
    assert select_layers(names, "resnets|conv_in") == names[:2]
    assert select_layers(names, None) == names
    with pytest.raises(ConfigError, match="matches none"):
        select_layers(names, "nothing_like_this")
    with pytest.raises(ConfigError, match="regular expression"):
        select_layers(names, "(")


def setup_for(prompts_file, bits=(4, 8), kind="weight"):
    prompts = tuple(prompts_file.read_text().splitlines()[:1])
    return SensitivitySetup("sdxl_turbo_tiny", kind, bits, prompts, seed=0, height=64, width=64, steps=1,
                            guidance_scale=0.0, batch_size=1, calib_prompts=prompts if kind == "act" else ())


def test_measure_writes_yaml_restores_unet_and_resumes(tiny_pipe, prompts_file, tmp_path):
    runner = Runner(tiny_pipe)
    before = runner(["a cat"], [0], 64, 64)
    setup = setup_for(prompts_file)
    counts = measure(tiny_pipe, setup, LAYERS[:1], tmp_path)
    assert counts == {"measured": 2, "reused": 0, "complete": 1}
    # the UNet is the FP one again: no quantized layer left, same image
    assert all(isinstance(m, (nn.Linear, nn.Conv2d)) for m in quantizable_layers(tiny_pipe.unet).values())
    assert np.array_equal(runner(["a cat"], [0], 64, 64), before)
    # resume: only the new layer is measured
    counts = measure(tiny_pipe, setup, LAYERS, tmp_path)
    assert counts == {"measured": 2, "reused": 2, "complete": 2}
    sqnr = yaml.safe_load((tmp_path / "weight" / "sqnr" / "sensitivity.yaml").read_text())
    assert sorted(sqnr) == sorted("model." + n for n in LAYERS)
    assert sqnr["model.conv_in"][1] > sqnr["model.conv_in"][0]  # 8-bit weights disturb less than 4-bit
    sens = load_sensitivity(tmp_path, "weight")  # what the allocator reads
    assert sens.bits == (4, 8) and set(sens.ssim) == set(LAYERS)
    assert all(0 < v <= 1 for vals in sens.ssim.values() for v in vals)
    assert sens.sizes["conv_in"] == 1.0 or min(sens.sizes.values()) > 0
    with pytest.raises(ConfigError, match="other settings"):
        measure(tiny_pipe, setup_for(prompts_file, bits=(2, 8)), LAYERS, tmp_path)


def test_act_sensitivity_calibrates_and_scores(tiny_pipe, prompts_file, tmp_path):
    counts = measure(tiny_pipe, setup_for(prompts_file, kind="act"), ["conv_in"], tmp_path)
    assert counts["complete"] == 1
    sens = load_sensitivity(tmp_path, "act")
    assert sens.sqnr["conv_in"][0] < sens.sqnr["conv_in"][1] < SQNR_CAP_DB
    assert all(isinstance(m, (nn.Linear, nn.Conv2d)) for m in quantizable_layers(tiny_pipe.unet).values())


def test_pipeline_sensitivity_allocation_quant_txt2img(tmp_path, prompts_file):
    """The README's numbered commands on the tiny model: sensitivity -> ILP -> generation."""
    sens_dir, cfg_dir = tmp_path / "sens", tmp_path / "cfg"
    p = run_mp("sensitivity.py", "--kind", "weight", "--bits", 4, 8, "--layers", "^conv_in$|mid_block.*blocks.0.ff.net.2",
           "--num_imgs", 1, "--prompts_file", prompts_file, "--out_dir", sens_dir)
    assert p.returncode == 0, p.stderr[-2000:]
    p = run_mp("bit_allocation.py", "--sensitivity_dir", sens_dir, "--target_bits", 4.0, "--out_dir", cfg_dir)
    assert p.returncode == 0, p.stderr[-2000:]
    cfg = read_bit_config(cfg_dir / "weight_4.00.yaml")
    assert cfg == {"conv_in": 4, "mid_block.attentions.0.transformer_blocks.0.ff.net.2": 4}
    out = run_script("quant_txt2img.py", "--base_path", tmp_path / "q", "--config_weight_mp", cfg_dir / "weight_4.00.yaml",
                     "--num_imgs", 1, "--batch_size", 1, "--calib_num", 1, "--prompts_file", prompts_file,
                     "--w_method", "minmax", "--a_method", "minmax")
    assert "4: 2" in out.stdout  # the two allocated layers run at 4 bits, the rest default to 8
    assert (tmp_path / "q" / "generated_images" / "00000.png").is_file()
