import copy

import pytest
import torch
from torch import nn

from conftest import TINY
from quant_utils.checkpoint import load_quant_params, save_quant_params
from quant_utils.errors import ConfigError
from quant_utils.pipeline import build_pipeline, load_model_config
from quant_utils.qlayers import QuantLayer
from quant_utils.quantize import (bit_summary, make_spec, quant_layers, quantize_unet, set_backend, set_quant_state,
                                  skip_split_points, uniform_bits)
from quant_utils.runtime import Runner
from quant_utils.calibrate import calibrate

PROMPTS = ["a red bicycle leaning on a wall", "a bowl of fruit", "a dog on a beach", "a city street at night"]


def fresh_pipe():
    return build_pipeline(load_model_config(TINY))


@torch.no_grad()
def unet_inputs(pipe, batch=2):
    """The UNet's inputs at the first step of a real pipeline call (what calibration saw)."""
    embeds, pooled = Runner(pipe).encode(PROMPTS[-batch:])
    g = torch.Generator().manual_seed(0)
    return dict(sample=torch.randn(batch, 4, 8, 8, generator=g), timestep=torch.tensor([999.0] * batch),
                encoder_hidden_states=embeds,
                added_cond_kwargs={"text_embeds": pooled,
                                   "time_ids": torch.tensor([[64, 64, 0, 0, 64, 64]] * batch, dtype=torch.float32)})


def quantized(pipe, wbits=8, abits=8, **opts):
    spec = make_spec(pipe.unet, uniform_bits(pipe.unet, wbits), uniform_bits(pipe.unet, abits) if abits else None, **opts)
    quantize_unet(pipe.unet, spec)
    if abits:
        calibrate(Runner(pipe), PROMPTS, 0, 64, 64, batch_size=4)
    return pipe


@pytest.fixture(scope="module")
def w8a8():
    pipe = fresh_pipe()
    ref = copy.deepcopy(pipe.unet)
    return quantized(pipe), ref


def rel_err(a, b):
    return ((a - b).norm() / b.norm()).item()


def test_every_layer_swapped_and_calibrated(w8a8):
    pipe, ref = w8a8
    n_ref = sum(isinstance(m, (nn.Linear, nn.Conv2d)) for m in ref.modules())
    layers = dict(quant_layers(pipe.unet))
    assert len(layers) == n_ref and not any(type(m) in (nn.Linear, nn.Conv2d) for m in pipe.unet.modules())
    assert all(m.act_quant.calibrated for m in layers.values())
    splits = {n for n, m in layers.items() if m.split}
    assert splits == set(skip_split_points(pipe.unet)) and "up_blocks.0.resnets.0.conv_shortcut" in splits
    assert all(layers[n].act_quant2.calibrated for n in splits)
    assert {n for n, m in layers.items() if m.bos} == {n for n in layers if ".attn2.to_k" in n or ".attn2.to_v" in n}


def test_split_points_match_the_concatenation(w8a8):
    pipe, _ = w8a8
    seen = {}
    hooks = [m.register_forward_pre_hook(lambda mod, args, n=n: seen.__setitem__(n, args[0].shape[1]))
             for n, m in pipe.unet.named_modules() if isinstance(m, QuantLayer) and m.split]
    pipe.unet(**unet_inputs(pipe))
    for h in hooks:
        h.remove()
    chans = list(reversed(pipe.unet.config.block_out_channels))
    for name, width in seen.items():
        i, j = int(name.split(".")[1]), int(name.split(".")[3])
        skip = width - dict(quant_layers(pipe.unet))[name].split
        # the skip part is a down-block output: one of the encoder widths (or conv_in's)
        assert skip in set(chans) | {pipe.unet.config.block_out_channels[0]}, (name, i, j, width)


def test_w8a8_close_to_fp16_and_error_grows_at_w4(w8a8):
    pipe, ref = w8a8
    inputs = unet_inputs(pipe)
    with torch.no_grad():
        out_ref = ref(**inputs).sample
        err8 = rel_err(pipe.unet(**inputs).sample, out_ref)
        set_quant_state(pipe.unet, weight=False, act=False)
        err_off = rel_err(pipe.unet(**inputs).sample, out_ref)
        set_quant_state(pipe.unet, weight=True, act=True)
    w4 = quantized(fresh_pipe(), 4, 8)
    with torch.no_grad():
        err4 = rel_err(w4.unet(**inputs).sample, out_ref)
    print(f"UNet output relative error: W8A8 {err8:.4f}, W4A8 {err4:.4f}, quantization off {err_off:.2e}")
    assert err_off < 1e-5
    assert err8 < 0.1  # toy-width random weights: per-tensor 8-bit activations through ~370 layers
    assert err4 > err8


def test_bos_aware_quantization_lowers_error_on_outlier():
    torch.manual_seed(0)
    lin = nn.Linear(64, 32)
    x = torch.randn(4, 77, 64)
    x[:, 0] *= 100  # the BOS token: a huge outlier, as in CLIP's hidden states
    errs = {}
    for bos in (False, True):
        layer = QuantLayer(copy.deepcopy(lin), 8, 8, bos=bos)
        layer.calibrating = True
        layer(x)
        layer.calibrating = False
        layer.act_quant.finish_calibration()
        with torch.no_grad():
            errs[bos] = rel_err(layer(x)[:, 1:], lin(x)[:, 1:])
    assert errs[True] < 0.2 * errs[False], errs


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


def test_bit_summary_counts_bytes(w8a8):
    s = bit_summary(w8a8[0].unet)
    assert s["avg_wbits"] == 8 and s["avg_abits"] == 8 and s["act_fp_layers"] == 0
    assert 0.5 < s["size_ratio"] < 0.56


def test_protected_layers_keep_fp_activations():
    pipe = fresh_pipe()
    spec = make_spec(pipe.unet, uniform_bits(pipe.unet, 8), {k: 8 for k in uniform_bits(pipe.unet, 8) if k != "conv_in"},
                     act_protect=["conv_in"], strict=True)
    quantize_unet(pipe.unet, spec)
    assert pipe.unet.conv_in.act_quant is None and pipe.unet.conv_out.act_quant is not None
    with pytest.raises(ConfigError, match="not in this UNet"):
        make_spec(pipe.unet, uniform_bits(pipe.unet, 8), None, act_protect=["nope"])


def test_kernel_backend_falls_back_on_cpu(w8a8):
    pipe, _ = w8a8
    with pytest.warns(UserWarning, match="needs CUDA"):
        set_backend(pipe.unet, "kernel")
    assert all(m.backend == "fake" for _, m in quant_layers(pipe.unet))
