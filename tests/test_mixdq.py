"""quant_utils/mixdq.py: mode names -> quantization requests (through the mode table), the bit configs a request
resolves to, and a quantized UNet's mode label. On the tiny UNet's structure (meta device): nothing is calibrated."""
import re

import pytest
import torch

from conftest import TINY
from quant_utils import modes
from quant_utils.bitconfig import config_dir
from quant_utils.errors import ConfigError
from quant_utils.mixdq import QuantRequest, config_sources, mode_label, quantized_copy, request_for, resolve_spec
from quant_utils.pipeline import build_unet_skeleton, load_model_config
from quant_utils.quantize import quantize_unet

MODEL = "sdxl_turbo_tiny"


def skeleton():
    return build_unet_skeleton(load_model_config(TINY))


def test_requests_of_the_mode_table():
    assert request_for("fp16", MODEL) is None
    for mode in modes.QUANTIZED:
        req = request_for(mode, MODEL)
        assert (req.wbits, req.abits) == modes.BITS[mode] and req.config_weight_mp is None
    mix = request_for("mixdq", MODEL, strict=True)
    assert mix.abits is None and mix.strict
    src = config_sources(mix)
    assert src["weight"].endswith("final_config/weight/weight_4.00.yaml")
    assert src["act"].endswith("act/act_7.77.yaml") and src["act_protect"].endswith("act_sensitivie_a8_1%.pt")
    # a weight config given by file wins over the mode's bits; other names are refused by the table
    assert QuantRequest.from_mode("w4a8", MODEL, config_weight_mp="w.yaml").wbits is None
    for bad in ("w5a8", "W8A8", "int8"):
        with pytest.raises(ConfigError, match="expected one of"):
            request_for(bad, MODEL)
    with pytest.raises(ConfigError, match="not a quantized mode"):
        quantized_copy(None, "fp16", MODEL, None, [], 0, 64, 64, 1)


def test_mode_label_names_uniform_bits_or_their_averages():
    uniform4 = str(config_dir(MODEL, "weight") / "uniform_4.yaml")
    for req, pattern in ((QuantRequest(model_name=MODEL, config_weight_mp=uniform4, abits=8), r"^w4a8$"),
                         (request_for("mixdq", MODEL), r"^w\d\.\d\da\d\.\d\d$")):
        unet = skeleton()
        spec = resolve_spec(unet, req)
        with torch.device("meta"):
            quantize_unet(unet, spec, search=False)
        label = mode_label(unet)
        assert re.match(pattern, label), label
        wbits, abits = modes.mode_bits(label)  # every label parses back through the table
        assert 2 <= wbits <= 8 and 4 <= abits <= 8


def test_wbits_says_whether_the_config_is_mixed_or_uniform(capsys):
    unet = skeleton()
    resolve_spec(unet, QuantRequest(model_name="sdxl_turbo_tiny", wbits=4))
    out = capsys.readouterr().out
    assert "weight_4.00.yaml: MixDQ's mixed-precision config (layers at 2/4/8 bits" in out and "not uniform 4-bit" in out
