"""Packed weight formats for the kernel backend: int8, int6 (4 values in 3 bytes), int4 (2 per byte), int2 (4 per byte).

A weight matrix q_w [N, K] (int8 values in [-2^(b-1), 2^(b-1)-1]) is cut along K into *groups* of G values
(G = 64 or 128; K is zero-padded to a multiple of G). Each group is stored in G*b/8 bytes, offset-binary
(u = q + 2^(b-1)), with the group split into S equal *sub-blocks* of G/S values:

  bits 8: S=1, bytes = the int8 values themselves
  bits 4: S=2, byte j = u[j] | u[G/2 + j] << 4
  bits 2: S=4, byte j = u[j] | u[G/4 + j] << 2 | u[G/2 + j] << 4 | u[3G/4 + j] << 6
  bits 6: S=4, three planes of G/4 bytes: plane p byte j = u[p*G/4 + j] | ((u[3G/4 + j] >> 2p) & 3) << 6

Why sub-blocks rather than interleaving neighbours: a GEMM kernel unpacks sub-block s of a group with one
shift and mask and multiplies it with the matching G/S columns of the activation tile, so no in-register
shuffle is needed (each sub-block is its own tensor-core dot of K = G/S >= 32).

Convolutions use the same format on the weight laid out as [N, KH*KW*Cpad] with K ordered (tap, channel)
and each tap's channels zero-padded to a multiple of G, so a K-group never straddles two taps; a layer
whose input is split in two channel ranges (MixDQ's up-block split) stores each range as its own segment.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

PACKED_BITS = (2, 4, 6, 8)
SUB_BLOCKS = {8: 1, 4: 2, 2: 4, 6: 4}


def storage_bits(w_bits: int) -> int:
    """The packed format that holds `w_bits`-bit weights: the smallest of 2/4/6/8 bits that is wide enough."""
    if not 2 <= int(w_bits) <= 8:
        raise ValueError(f"weight bits must be in 2..8 for the kernel backend, got {w_bits}")
    return next(b for b in PACKED_BITS if b >= int(w_bits))


def group_size(bits: int, seg_lens: list[int]) -> int:
    """K-group size G for a format: 128 where every segment is a multiple of 128 (or the format needs G/S >= 32)."""
    if bits in (6, 2):
        return 128  # 4 sub-blocks of 32: the smallest K of an int8 tensor-core dot
    return 128 if all(n % 128 == 0 for n in seg_lens) else 64


def bytes_per_group(bits: int, group: int) -> int:
    return group * bits // 8


def round_up(n: int, m: int) -> int:
    return -(-n // m) * m


@dataclass(frozen=True)
class PackedFormat:
    """How one layer's weight is stored: bits, K-group size, and the (padded) K of each segment."""
    bits: int
    group: int
    seg_k: tuple[int, ...]  # padded K per segment (multiples of `group`)

    @property
    def k_padded(self) -> int:
        return sum(self.seg_k)

    @property
    def row_bytes(self) -> int:
        return self.k_padded // self.group * bytes_per_group(self.bits, self.group)


def pack_groups(q: torch.Tensor, bits: int, group: int) -> torch.Tensor:
    """Pack int8 values q [N, K] (K a multiple of `group`) into [N, K*bits/8] bytes (uint8; int8 for bits=8)."""
    n, k = q.shape
    if k % group:
        raise ValueError(f"K={k} is not a multiple of the group size {group}")
    lo, hi = -(1 << (bits - 1)), (1 << (bits - 1)) - 1
    if q.numel() and (int(q.min()) < lo or int(q.max()) > hi):
        raise ValueError(f"values outside the {bits}-bit range [{lo}, {hi}]")
    if bits == 8:
        return q.to(torch.int8).contiguous()
    u = (q.to(torch.int16) + (1 << (bits - 1))).to(torch.uint8).reshape(n, k // group, group)
    s = group // SUB_BLOCKS[bits]
    parts = [u[..., i * s:(i + 1) * s] for i in range(SUB_BLOCKS[bits])]
    if bits == 4:
        out = parts[0] | (parts[1] << 4)
    elif bits == 2:
        out = parts[0] | (parts[1] << 2) | (parts[2] << 4) | (parts[3] << 6)
    elif bits == 6:
        out = torch.cat([parts[p] | (((parts[3] >> (2 * p)) & 3) << 6) for p in range(3)], dim=-1)
    else:
        raise ValueError(f"no packed format for {bits} bits")
    return out.reshape(n, -1).contiguous()


def unpack_groups(packed: torch.Tensor, bits: int, group: int) -> torch.Tensor:
    """Inverse of `pack_groups`: bytes [N, B] -> int8 values [N, B*8/bits]."""
    if bits == 8:
        return packed.to(torch.int8)
    n = packed.shape[0]
    bpg = bytes_per_group(bits, group)
    p = packed.view(torch.uint8).reshape(n, -1, bpg)
    if bits == 4:
        parts = [p & 15, p >> 4]
    elif bits == 2:
        parts = [(p >> (2 * i)) & 3 for i in range(4)]
    elif bits == 6:
        s = group // 4
        b = [p[..., i * s:(i + 1) * s] for i in range(3)]
        parts = [b[0] & 63, b[1] & 63, b[2] & 63, (b[0] >> 6) | ((b[1] >> 6) << 2) | ((b[2] >> 6) << 4)]
    else:
        raise ValueError(f"no packed format for {bits} bits")
    u = torch.cat(parts, dim=-1).reshape(n, -1)
    return (u.to(torch.int16) - (1 << (bits - 1))).to(torch.int8)


def weight_to_segments(q_w: torch.Tensor, split: int | None) -> list[torch.Tensor]:
    """[N, K] or [N, C, kh, kw] int8 -> segments [N, taps, C_seg] with K ordered (tap, channel)."""
    if q_w.dim() == 2:
        return [q_w.unsqueeze(1)]
    w = q_w.permute(0, 2, 3, 1).reshape(q_w.shape[0], -1, q_w.shape[1])  # [N, taps, C]
    if split is None:
        return [w]
    return [w[..., :split], w[..., split:]]


def pack_weight(q_w: torch.Tensor, bits: int, split: int | None = None) -> tuple[torch.Tensor, PackedFormat]:
    """Pack a linear [N, K] or conv [N, C, kh, kw] int8 weight; returns (bytes [N, row_bytes], format)."""
    segs = weight_to_segments(q_w, split)
    group = group_size(bits, [s.shape[-1] for s in segs])
    flat, seg_k = [], []
    for s in segs:
        n, taps, c = s.shape
        cpad = round_up(c, group)
        padded = torch.nn.functional.pad(s, (0, cpad - c)).reshape(n, taps * cpad)
        flat.append(padded)
        seg_k.append(taps * cpad)
    packed = pack_groups(torch.cat(flat, dim=1), bits, group)
    return packed, PackedFormat(bits, group, tuple(seg_k))


def unpack_weight(packed: torch.Tensor, fmt: PackedFormat, shape: tuple[int, ...], split: int | None = None) -> torch.Tensor:
    """Inverse of `pack_weight`: the int8 weight in its original shape ([N, K] or [N, C, kh, kw])."""
    flat = unpack_groups(packed, fmt.bits, fmt.group)
    n = shape[0]
    if len(shape) == 2:
        return flat[:, :shape[1]].contiguous()
    c, kh, kw = shape[1:]
    taps = kh * kw
    seg_c = [c] if split is None else [split, c - split]
    outs, start = [], 0
    for cs, kseg in zip(seg_c, fmt.seg_k):
        cpad = kseg // taps
        outs.append(flat[:, start:start + kseg].reshape(n, taps, cpad)[..., :cs])
        start += kseg
    w = torch.cat(outs, dim=-1)  # [N, taps, C]
    # standard strides even for 1x1 kernels (.contiguous() would keep the permuted ones, which a CPU conv reads as
    # channels-last and then sums in another order)
    return w.reshape(n, kh, kw, c).permute(0, 3, 1, 2).clone(memory_format=torch.contiguous_format)
