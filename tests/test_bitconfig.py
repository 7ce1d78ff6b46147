import pytest
import torch

from quant_utils.bitconfig import (config_dir, normalize_name, read_bit_config, read_protect_list, resolve_layer_bits,
                                   weight_config_for_bits, write_bit_config)
from quant_utils.errors import ConfigError

LAYERS = ["conv_in", "down_blocks.0.resnets.0.conv1", "mid_block.attentions.0.proj_in"]


def test_shipped_real_configs_cover_the_real_unet_exactly():
    from quant_utils.pipeline import build_unet_skeleton, load_model_config
    from quant_utils.quantize import quantizable_layers

    layers = list(quantizable_layers(build_unet_skeleton(load_model_config("configs/stable-diffusion/sdxl_turbo.yaml"))))
    assert len(layers) == 794
    protect = read_protect_list(config_dir("sdxl_turbo", "act") / "act_sensitivie_a8_1%.pt")
    for name in ("weight_4.00.yaml", "weight_5.02.yaml", "uniform_6.yaml"):
        bits = resolve_layer_bits(layers, read_bit_config(config_dir("sdxl_turbo", "weight") / name), "weight", strict=True)
        assert len(bits) == 794
    act = resolve_layer_bits(layers, read_bit_config(config_dir("sdxl_turbo", "act") / "act_7.77.yaml"), "act",
                             strict=True, exempt=protect)
    assert len(act) == 785 and sum(b == 4 for b in act.values()) == 66


def test_round_trip_and_prefix(tmp_path):
    cfg = {"conv_in": 8, "mid_block.attentions.0.proj_in": 4}
    p = write_bit_config(cfg, tmp_path / "w.yaml")
    assert p.read_text().startswith("model.conv_in: 8")
    assert read_bit_config(p) == cfg
    assert normalize_name("model.conv_in") == "conv_in" and normalize_name("conv_in") == "conv_in"


@pytest.mark.parametrize("text,match", [
    ("[1, 2]\n", "mapping"),
    ("conv_in: eight\n", "expected an integer"),
    ("conv_in: 8\nmodel.conv_in: 4\n", "appears twice"),
    ("conv_in: [8\n", "not valid YAML"),
])
def test_malformed_yaml_is_a_clear_error(tmp_path, text, match):
    (tmp_path / "c.yaml").write_text(text)
    with pytest.raises(ConfigError, match=match):
        read_bit_config(tmp_path / "c.yaml")


def test_unknown_layer_and_bad_bits_name_the_layer():
    with pytest.raises(ConfigError, match="down_blocks.9.typo"):
        resolve_layer_bits(LAYERS, {"conv_in": 8, "down_blocks.9.typo": 8}, "weight")
    with pytest.raises(ConfigError, match="layer 'conv_in'.*bits 9"):
        resolve_layer_bits(LAYERS, {"conv_in": 9}, "weight")
    with pytest.raises(ConfigError, match="act bits 2"):
        resolve_layer_bits(LAYERS, {"conv_in": 2}, "act")


def test_missing_layers_strict_or_default():
    with pytest.raises(ConfigError, match="2 layer\\(s\\) have no weight bits"):
        resolve_layer_bits(LAYERS, {"conv_in": 4}, "weight", strict=True)
    with pytest.warns(UserWarning, match="using 8 bits"):
        bits = resolve_layer_bits(LAYERS, {"conv_in": 4}, "weight")
    assert bits == {"conv_in": 4, "down_blocks.0.resnets.0.conv1": 8, "mid_block.attentions.0.proj_in": 8}
    assert resolve_layer_bits(LAYERS, {"conv_in": 8}, "act", strict=True, exempt=LAYERS[1:]) == {"conv_in": 8}


def test_protect_list_formats_and_safety(tmp_path):
    torch.save(["model.conv_in"], tmp_path / "p.pt")
    (tmp_path / "p.txt").write_text("conv_in\n")
    (tmp_path / "p.yaml").write_text("- model.conv_in\n")
    for f in ("p.pt", "p.txt", "p.yaml"):
        assert read_protect_list(tmp_path / f) == ["conv_in"]

    class Evil:  # an object that would run code when unpickled without weights_only
        def __reduce__(self):
            return (print, ("pwned",))
    torch.save([Evil()], tmp_path / "evil.pt")
    with pytest.raises(ConfigError, match="not a plain tensor/list file") as e:
        read_protect_list(tmp_path / "evil.pt")
    assert "weights_only" not in str(e.value) and "not loaded, for safety" in str(e.value)  # no advice to disable it
    # the same pickle by another name, a YAML list with a python tag, a non-UTF-8 file: refused, never run
    (tmp_path / "evil.txt").write_bytes((tmp_path / "evil.pt").read_bytes())
    with pytest.raises(ConfigError, match="evil.txt: not a plain tensor/list file"):
        read_protect_list(tmp_path / "evil.txt")
    (tmp_path / "tag.yaml").write_text("- !!python/object/apply:os.system ['echo pwned']\n")
    with pytest.raises(ConfigError, match="tag.yaml: not valid YAML"):
        read_protect_list(tmp_path / "tag.yaml")
    (tmp_path / "latin1.txt").write_bytes("conv_in # caf\xe9\n".encode("latin-1"))
    with pytest.raises(ConfigError, match="latin1.txt: not UTF-8"):
        read_protect_list(tmp_path / "latin1.txt")
    (tmp_path / "latin1.yaml").write_bytes("model.conv_in: 8  # caf\xe9\n".encode("latin-1"))
    with pytest.raises(ConfigError, match="bit config .*latin1.yaml: not UTF-8"):
        read_bit_config(tmp_path / "latin1.yaml")


def test_wbits_picks_mixdq_config_else_uniform():
    assert weight_config_for_bits("sdxl_turbo", 4).name == "weight_4.00.yaml"
    assert weight_config_for_bits("sdxl_turbo_tiny", 6).name in ("weight_6.00.yaml", "uniform_6.yaml")
    with pytest.raises(ConfigError, match="--wbits 3"):
        weight_config_for_bits("sdxl_turbo", 3)
