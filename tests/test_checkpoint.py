"""quant_utils/checkpoint.py: ckpt.pth round trip (identical outputs), other bit configs reported, damaged or
unsafe files refused with a clear error."""
import copy

import pytest
import torch

from conftest import fresh_pipe, unet_inputs
from quant_utils.checkpoint import load_quant_params, save_quant_params
from quant_utils.errors import ConfigError
from quant_utils.quantize import make_spec, quantize_unet, uniform_bits


def test_checkpoint_round_trip_gives_identical_outputs(w8a8, tmp_path):
    pipe, _ = w8a8
    path = save_quant_params(pipe.unet, tmp_path / "ckpt.pth")
    other = fresh_pipe()
    quantize_unet(other.unet, pipe.unet.mixdq_spec, search=False)
    load_quant_params(other.unet, path)
    inputs = unet_inputs(pipe)
    with torch.no_grad():
        assert torch.equal(other.unet(**inputs).sample, pipe.unet(**inputs).sample)


def test_checkpoint_with_other_bits_is_reported(w8a8, tmp_path):
    pipe, _ = w8a8
    path = save_quant_params(pipe.unet, tmp_path / "ckpt.pth")
    other = fresh_pipe()
    bits = uniform_bits(other.unet, 8)
    bits["conv_in"] = 4
    quantize_unet(other.unet, make_spec(other.unet, bits, uniform_bits(other.unet, 8)), search=False)
    with pytest.raises(ConfigError, match="other quantization settings(.|\n)*conv_in"):
        load_quant_params(other.unet, path)


def test_damaged_or_unsafe_checkpoint_is_a_clear_error(w8a8, tmp_path):
    pipe, _ = w8a8
    path = save_quant_params(pipe.unet, tmp_path / "ckpt.pth")
    state = torch.load(path, weights_only=True)
    other = fresh_pipe()
    quantize_unet(other.unet, pipe.unet.mixdq_spec, search=False)
    for damage, match in ((lambda d: d.pop("spec"), r"damaged \(missing or malformed: \['spec'\]\)"),
                          (lambda d: d["layers"]["conv_in"].pop("w_scale"), "layer conv_in lacks \\['w_scale'\\]")):
        broken = copy.deepcopy(state)
        damage(broken)
        torch.save(broken, tmp_path / "broken.pth")
        with pytest.raises(ConfigError, match=match):
            load_quant_params(other.unet, tmp_path / "broken.pth")

    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))
    torch.save({**state, "x": Evil()}, tmp_path / "evil.pth")
    with pytest.raises(ConfigError, match="not a plain tensor/list file.*not loaded, for safety") as e:
        load_quant_params(other.unet, tmp_path / "evil.pth")
    assert "weights_only" not in str(e.value)
    (tmp_path / "truncated.pth").write_bytes(path.read_bytes()[:500])
    with pytest.raises(ConfigError, match="not a readable torch file"):
        load_quant_params(other.unet, tmp_path / "truncated.pth")
