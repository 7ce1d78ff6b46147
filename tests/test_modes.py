"""quant_utils/modes.py: the one table of precision modes and their parsing (names, bits, decoder suffixes)."""
import pytest

from quant_utils import modes
from quant_utils.errors import ConfigError


def test_the_uniform_modes_and_their_bits():
    assert modes.BITS == {"fp16": (16, 16), "w8a8": (8, 8), "w6a8": (6, 8), "w4a8": (4, 8)}
    assert modes.QUANTIZED == ("w8a8", "w6a8", "w4a8")
    assert modes.uniform_mode_bits("w6a8") == (6, 8)
    for bad in ("mixdq", "w5a8", "W8A8", "w8a8+tiny"):
        with pytest.raises(ConfigError, match="expected one of"):
            modes.uniform_mode_bits(bad)


@pytest.mark.parametrize("mode,bits", [("fp16", (16, 16)), ("w8a8", (8, 8)), ("w4a8+tiny", (4, 8)),
                                       ("fp16+int8", (16, 16)), ("w3.66a7.38", (3.66, 7.38)), ("mixdq", (4, None))])
def test_mode_bits_parse_every_kind_of_name(mode, bits):
    assert modes.mode_bits(mode) == bits
    assert modes.mode_wbits(mode) == bits[0]


@pytest.mark.parametrize("bad", ["", "int8", "w8", "w8a", "wXa8", "w8a8x", "8a8"])
def test_malformed_names_are_config_errors(bad):
    with pytest.raises(ConfigError, match="expected fp16, mixdq or w<bits>a<bits>"):
        modes.mode_wbits(bad)


def test_decoder_suffix():
    assert modes.split_mode("w8a8+tiny") == ("w8a8", "tiny") and modes.split_mode("w4a8") == ("w4a8", "fp16")
    with pytest.raises(ConfigError, match="decoder"):
        modes.split_mode("w8a8+huge")
    # a latency CSV's `vae` column folds into the key; the FP16 VAE, blanks and old exec labels do not
    assert modes.mode_key("w8a8", "tiny") == "w8a8+tiny"
    for vae in (None, "", "fp16", float("nan"), "compiled-static"):
        assert modes.mode_key("w8a8", vae) == "w8a8"
    assert modes.DECODERS == ("fp16", "int8", "tiny")


def test_names_from_bits_and_back():
    assert [modes.wbits_mode(b) for b in (16, 8, 6, 4)] == ["fp16", "w8a8", "w6a8", "w4a8"]
    assert modes.name_for_bits(4, 8) == "w4a8"
    assert modes.name_for_bits(3.6612, 7.375) == "w3.66a7.38"
    assert modes.name_for_bits(4.0, 8.0) == "w4.00a8.00"  # averages stay averages, even when whole
    assert modes.mode_bits(modes.name_for_bits(3.6612, 7.375)) == (3.66, 7.38)


def test_benchmark_format_names():
    assert [modes.format_name(m) for m in modes.QUANTIZED] == ["W8A8", "W6A8", "W4A8"]
    with pytest.raises(ConfigError, match="expected one of"):
        modes.format_name("mixdq")
