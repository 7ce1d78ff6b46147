"""quant_utils/kernels/packing.py: round trips and sizes of the 8/6/4/2-bit formats, the documented byte layout,
out-of-range codes."""
import pytest
import torch

from kernel_selfcheck import rand_codes
from quant_utils.kernels import packing


@pytest.mark.parametrize("bits", [8, 6, 4, 2])
@pytest.mark.parametrize("shape,split", [((24, 320), None), ((16, 200), None), ((8, 2048), None),
                                         ((12, 80, 3, 3), None), ((12, 96, 3, 3), 64), ((10, 48, 1, 1), 16)])
def test_pack_roundtrip_and_size(bits, shape, split):
    q = rand_codes(shape, bits, seed=bits)
    packed, fmt = packing.pack_weight(q, bits, split)
    assert torch.equal(packing.unpack_weight(packed, fmt, shape, split), q)
    assert packed.shape == (shape[0], fmt.k_padded * bits // 8)
    assert fmt.k_padded % fmt.group == 0 and fmt.group in (64, 128)
    taps = 1 if len(shape) == 2 else shape[2] * shape[3]
    assert fmt.k_padded >= taps * shape[1]


def test_pack_layout_is_the_documented_one():
    # bits 4, G=64: byte j of a group holds element j (low nibble) and element 32 + j (high nibble), offset-binary
    q = rand_codes((3, 64), 4, seed=1)
    packed, _ = packing.pack_weight(q, 4)
    u = (q.to(torch.int16) + 8).to(torch.uint8)
    assert torch.equal(packed, u[:, :32] | (u[:, 32:] << 4))
    # bits 6, G=128: plane p (32 bytes) = u[32p + j] | ((u[96 + j] >> 2p) & 3) << 6
    q6 = rand_codes((2, 128), 6, seed=2)
    p6, _ = packing.pack_weight(q6, 6)
    u6 = (q6.to(torch.int16) + 32).to(torch.uint8)
    for p in range(3):
        assert torch.equal(p6[:, 32 * p:32 * (p + 1)], u6[:, 32 * p:32 * (p + 1)] | (((u6[:, 96:] >> 2 * p) & 3) << 6))


def test_pack_rejects_out_of_range_and_bad_bits():
    with pytest.raises(ValueError, match="4-bit range"):
        packing.pack_weight(torch.full((2, 64), 9, dtype=torch.int8), 4)
    with pytest.raises(ValueError):
        packing.storage_bits(9)
    assert [packing.storage_bits(b) for b in (2, 3, 4, 5, 6, 7, 8)] == [2, 4, 4, 6, 6, 8, 8]
