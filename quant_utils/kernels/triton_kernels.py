"""Triton kernels of the kernel backend: activation quantization, the packed-weight int8 GEMM, the implicit-GEMM conv.

Everything here is a raw `@triton.jit` kernel plus a thin launcher that takes a tile config explicitly;
`launch.py` picks configs (autotuning) and `ops.py` wraps the launchers as torch custom ops. With
TRITON_INTERPRET=1 set before import, the same kernels run on the CPU (numpy), which is how the CPU test
suite checks them.

Kernel math (see reference.py): int8 x int8 -> int32 accumulation on tensor cores, then one fused epilogue
  y = float(acc - zc[n]) * scale[n] + bias[n]        (zc = z * colsum(q_w), scale = s * w_scale: per-n constants)
and, for the two-part conv input, a second accumulator with its own (zc2, scale2). Packed weights (8/6/4/2 bits,
packing.py) are unpacked to int8 in registers in the K loop, one tensor-core dot per sub-block. With A_FP16 the
same kernels take an unquantized fp16 input (BOS rows, protected layers): weights go to fp16, acc in fp32.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from .packing import SUB_BLOCKS

# ----------------------------------------------------------------------------------------------- quantization


@triton.jit
def _round_clamp(v, lo, hi):
    # clamp first, then round half to even with the 1.5*2^23 trick (exact for |v| < 2^22; no libdevice needed,
    # so it also runs in the interpreter); equals torch.round(v).clamp(lo, hi) for integer lo, hi
    v = tl.minimum(tl.maximum(v, lo), hi)
    return (v + 12582912.0) - 12582912.0


# Sizes that bound a mask along the contiguous dimension stay specialised: with their divisibility by 16 known,
# Triton emits 16-byte vector loads/stores (unspecialised, it falls back to one element per instruction).
@triton.jit
def _quant_flat_kernel(x_ptr, q_ptr, n, scale, zf, lo, hi, BLOCK: tl.constexpr):
    offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < n
    x = tl.load(x_ptr + offs, mask=mask, other=0.0).to(tl.float32)
    q = _round_clamp(tl.math.div_rn(x, scale), lo, hi) + zf
    tl.store(q_ptr + offs, q.to(tl.int8), mask=mask)


def quant_flat(x: torch.Tensor, scale: float, zero: int, qmin: int, qmax: int, out: torch.Tensor | None = None,
               block: int = 2048) -> torch.Tensor:
    """Contiguous fp16/fp32 tensor -> int8 codes of the same shape (one pass): clamp(round(x / s) + z)."""
    x = x.contiguous()
    q = torch.empty(x.shape, dtype=torch.int8, device=x.device) if out is None else out
    n = x.numel()
    _quant_flat_kernel[(triton.cdiv(n, block),)](x, q, n, scale, float(zero), float(qmin - zero),
                                                 float(qmax - zero), BLOCK=block, num_warps=4)
    return q


@triton.jit(do_not_specialize=["H", "PADN", "split"])
def _quant_nhwc_kernel(x_ptr, q_ptr, C, H, W, PADN, split, s1, z1, lo1, hi1, s2, z2, lo2, hi2,
                       BC: tl.constexpr, BW: tl.constexpr):
    # one padded image row, [BC channels x BW columns]: read NCHW (columns contiguous, aligned), write the
    # zero-padded NHWC row (channels contiguous); the border gets the code of x = 0, i.e. the zero point
    pid_w, pid_c, row = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    HP = H + 2 * PADN
    WP = W + 2 * PADN
    b = row // HP
    h = row - b * HP - PADN
    c = pid_c * BC + tl.arange(0, BC)
    w = pid_w * BW + tl.arange(0, BW)
    c_ok = c < C
    inside = (w < W) & (h >= 0) & (h < H)
    x = tl.load(x_ptr + (b.to(tl.int64) * C + c[:, None]) * (H * W) + h * W + w[None, :],
                mask=c_ok[:, None] & inside[None, :], other=0.0).to(tl.float32)
    first = c < split
    zc = tl.where(first, z1, z2)
    v = tl.math.div_rn(x, tl.where(first, s1, s2)[:, None])
    q = _round_clamp(v, tl.where(first, lo1, lo2)[:, None], tl.where(first, hi1, hi2)[:, None]) + zc[:, None]
    q = tl.where(inside[None, :], q, zc[:, None])
    out_row = q_ptr + row.to(tl.int64) * WP * C
    tl.store(out_row + (w[:, None] + PADN) * C + c[None, :], tl.trans(q.to(tl.int8)),
             mask=(w[:, None] < W) & c_ok[None, :])
    # left and right border columns (PADN > 0): written by the first and the last column tile
    zq = zc.to(tl.int8)
    tl.store(out_row + c, zq, mask=c_ok & (pid_w == 0) & (PADN > 0))
    tl.store(out_row + (WP - 1) * C + c, zq, mask=c_ok & (pid_w == tl.num_programs(0) - 1) & (PADN > 0))


def quant_nchw_to_nhwc(x: torch.Tensor, split: int, p1: tuple, p2: tuple, pad: int = 0, bc: int = 64,
                       bw: int = 64) -> torch.Tensor:
    """NCHW fp16 -> zero-padded NHWC int8 codes [B, H+2pad, W+2pad, C] in one pass.

    Channels [0, split) use p1 = (scale, zero, qmin, qmax), the rest p2 (split >= C: one quantizer);
    the border holds each channel's zero point (the code of x = 0), so the conv kernel needs no bounds checks."""
    x = x.contiguous()
    b, c, h, w = x.shape
    hp, wp = h + 2 * pad, w + 2 * pad
    q = torch.empty((b, hp, wp, c), dtype=torch.int8, device=x.device)
    (s1, z1, a1, b1), (s2, z2, a2, b2) = p1, p2
    grid = (triton.cdiv(w, bw), triton.cdiv(c, bc), b * hp)
    _quant_nhwc_kernel[grid](x, q, c, h, w, pad, split, s1, float(z1), float(a1 - z1), float(b1 - z1),
                             s2, float(z2), float(a2 - z2), float(b2 - z2), BC=bc, BW=bw, num_warps=4)
    return q


# The int8 decoder's conv inputs in one pass (decoders.use_fused_blocks): GroupNorm's per-(image, channel) scale and
# shift applied, SiLU, a nearest 2x upsample (as an index map: the source pixel of output pixel h is h // UP), the
# quantize and the zero-padded NHWC layout the conv reads. Inductor fused the same chain at ~2.6x a read-once,
# write-once pass (profile: results/e2e_v7_unet_nhwc_1024x4_profile_kernels_nvidia_h200.csv; guess: its per-element
# index divisions over the padded output). Here one program covers [BW padded columns x BC channels] of one padded row:
# the divisions are per row; x is read in any layout (strides; channels_last: vector loads along C).
#
# The pass is instruction-bound, not memory-bound, unless its arithmetic stays near ~12-25 instructions per element
# (H200: ~128 issued per SM per clock against ~15 bytes of HBM per SM per clock; 1.5-3 bytes per element). On CUDA
# (PTX=True) SiLU is ex2.approx.ftz + rcp.approx.ftz (each ~1 ulp; Triton's exp and divisions add denormal and range
# fix-ups around them) and the quantize a multiply, two clamps, one cvt.rni and an integer add. SASS per element on
# sm_90 (scripts/utils/sass_report.py): a resnet's norm + SiLU 48.5 (IEEE division, as timed in the twentieth
# session at ~2.3x the bandwidth floor) -> 22.25, an upsampler 32.5 -> 12.25. The interpreter runs the same math
# in plain tl ops.
@triton.jit
def _ex2_ftz(x):
    return tl.inline_asm_elementwise("ex2.approx.ftz.f32 $0, $1;", "=r,r", [x], dtype=tl.float32, is_pure=True, pack=1)


@triton.jit
def _rcp_ftz(x):
    return tl.inline_asm_elementwise("rcp.approx.ftz.f32 $0, $1;", "=r,r", [x], dtype=tl.float32, is_pure=True, pack=1)


@triton.jit
def _rint_s32(x):
    return tl.inline_asm_elementwise("cvt.rni.s32.f32 $0, $1;", "=r,r", [x], dtype=tl.int32, is_pure=True, pack=1)


@triton.jit(do_not_specialize=["H", "W", "PADN", "z"])
def _norm_act_quant_kernel(x_ptr, scale_ptr, shift_ptr, q_ptr, C, H, W, PADN, s_b, s_c, s_h, s_w, inv_s, z, lo,
                           hi, UP: tl.constexpr, HAS_AFFINE: tl.constexpr, SILU: tl.constexpr, PTX: tl.constexpr,
                           BC: tl.constexpr, BW: tl.constexpr):
    pid_w, pid_c, row = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    HP = H * UP + 2 * PADN
    WP = W * UP + 2 * PADN
    b = row // HP
    h = row - b * HP - PADN
    h_in = (h >= 0) & (h < H * UP)
    h_src = tl.where(h_in, h, 0) // UP
    c = pid_c * BC + tl.arange(0, BC)
    wp = pid_w * BW + tl.arange(0, BW)
    w = wp - PADN
    inside = h_in & (w >= 0) & (w < W * UP)
    w_src = tl.where(inside, w, 0) // UP
    c_ok = c < C
    base = b.to(tl.int64) * s_b + h_src.to(tl.int64) * s_h
    x = tl.load(x_ptr + base + w_src[:, None] * s_w + c[None, :] * s_c, mask=inside[:, None] & c_ok[None, :],
                other=0.0).to(tl.float32)
    if HAS_AFFINE:  # rounded to fp16 after each step, as the unfused modules compute
        sc = tl.load(scale_ptr + b * C + c, mask=c_ok, other=0.0)
        sh = tl.load(shift_ptr + b * C + c, mask=c_ok, other=0.0)
        x = (x * sc[None, :] + sh[None, :]).to(tl.float16).to(tl.float32)
    if SILU:  # x / (1 + e^-x) = x * rcp(1 + 2^(-x log2 e))
        if PTX:
            x = x * _rcp_ftz(1.0 + _ex2_ftz(x * -1.4426950408889634))
        else:
            x = x / (1.0 + tl.exp(-x))
        x = x.to(tl.float16).to(tl.float32)
    # the quantize as round(x * (1 / s)) + z, clamped: a code moves against round(x / s) + z only where x / s lies
    # within ~1 ulp of a rounding boundary (tests: by one, rarely). z is added after the rounding: ties go to even
    # before the shift, as the reference rounds them
    v = tl.minimum(tl.maximum(x * inv_s, lo), hi)
    v = tl.where(inside[:, None], v, 0.0)  # the border: the code of x = 0
    if PTX:
        q = _rint_s32(v) + z
    else:
        q = ((v + 12582912.0) - 12582912.0).to(tl.int32) + z  # round half to even (see _round_clamp)
    out = q_ptr + row.to(tl.int64) * WP * C
    tl.store(out + wp[:, None] * C + c[None, :], q.to(tl.int8), mask=(wp[:, None] < WP) & c_ok[None, :])


_NVIDIA = torch.version.hip is None  # the PTX math: NVIDIA GPUs only (a ROCm build's 'cuda' device is HIP)


def norm_act_quant(x: torch.Tensor, scale: torch.Tensor | None, shift: torch.Tensor | None, silu: bool, up: int,
                   pad: int, p: tuple, config: tuple[int, int, int] | None = None) -> torch.Tensor:
    """(N, C, H, W) fp16 in any strides -> zero-padded NHWC int8 codes [N, H*up + 2pad, W*up + 2pad, C] of
    quantize(silu(x * scale + shift)) (per (image, channel) float32 scale/shift [N, C], or none), upsampled `up`x
    (nearest), p = (scale, zero, qmin, qmax): the padded codes the conv kernel reads, in one pass. Equals
    ops.norm_act_quant_torch but for a code moved by one where SiLU or x / s land within ~1 ulp of a rounding
    boundary (the kernel's approximations, above). `config` (BC, BW, num_warps) overrides the tile (a sweep's)."""
    b, c, h, w = x.shape
    hp, wp = h * up + 2 * pad, w * up + 2 * pad
    q = torch.empty((b, hp, wp, c), dtype=torch.int8, device=x.device)
    s, z, lo, hi = p
    bc = min(triton.next_power_of_2(c), 128)
    # 8192 values per program for a norm pass, 4096 for an upsampler (which writes 4x what it reads): the fastest
    # uniform tiles over the decoder's 1024 px shapes (results/decoder_pass_sweep_nvidia_h200.csv)
    bc, bw, warps = config or (bc, max((8192 if scale is not None else 4096) // bc, 16), 4)
    grid = (triton.cdiv(wp, bw), triton.cdiv(c, bc), b * hp)
    aff = scale is not None
    _norm_act_quant_kernel[grid](x, scale if aff else x, shift if aff else x, q, c, h, w, pad, *x.stride(), 1.0 / s,
                                 int(z), float(lo - z), float(hi - z), UP=up, HAS_AFFINE=aff, SILU=silu, PTX=_NVIDIA and x.is_cuda,
                                 BC=bc, BW=bw, num_warps=warps)
    return q


@triton.jit(do_not_specialize=["C", "HW", "split"])
def _fake_quant_kernel(x_ptr, y_ptr, n, C, HW, split, s1, lo1, hi1, s2, lo2, hi2, BLOCK: tl.constexpr):
    offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < n
    first = ((offs // HW) % C) < split
    x = tl.load(x_ptr + offs, mask=mask, other=0.0).to(tl.float32)
    s = tl.where(first, s1, s2)
    r = _round_clamp(tl.math.div_rn(x, s), tl.where(first, lo1, lo2), tl.where(first, hi1, hi2))
    tl.store(y_ptr + offs, (r * s).to(y_ptr.dtype.element_ty), mask=mask)


def fake_quant(x: torch.Tensor, split: int, p1: tuple, p2: tuple, block: int = 2048) -> torch.Tensor:
    """Quantize-dequantize in one pass ((q - z) * s, x's dtype); channel dim 1 when split < C.

    p = (scale, zero, qmin, qmax)."""
    x = x.contiguous()
    y = torch.empty_like(x)
    c = x.shape[1] if x.dim() > 1 else 1
    hw = x[0, 0].numel() if x.dim() > 2 else 1
    (s1, z1, a1, b1), (s2, z2, a2, b2) = p1, p2
    n = x.numel()
    _fake_quant_kernel[(triton.cdiv(n, block),)](x, y, n, c, hw, split, s1, float(a1 - z1), float(b1 - z1),
                                                 s2, float(a2 - z2), float(b2 - z2), BLOCK=block, num_warps=4)
    return y


# ----------------------------------------------------------------------------------------------- GroupNorm statistics


# Per-channel moments of an (N, C, P) view in any layout (strides: NCHW has s_p = 1, channels_last s_c = 1; Triton
# specialises a stride of 1, so the tile loads are vectorised along whichever dimension is contiguous). One program
# per (image, channel block, CHUNK pixels; sizes from moments_config): plain sums of (x - k) and (x - k)^2 in float32
# registers, k = the chunk's first pixel per channel (shifted sums: no cancellation when the mean is large against
# the spread), reduced once at the end; the chunks' (mean, M2) are combined in torch (quant_utils/norms.py). About
# 512-2048 programs at SDXL's shapes, against one reduction per (image, group) in PyTorch's GroupNorm.
@triton.jit
def _channel_moments_kernel(x_ptr, mean_ptr, m2_ptr, C, P, s_n, s_c, s_p, N_CHUNKS,
                            CHUNK: tl.constexpr, BLOCK_C: tl.constexpr, BLOCK_P: tl.constexpr):
    c_blocks = tl.cdiv(C, BLOCK_C)
    n = tl.program_id(0) // c_blocks
    c = (tl.program_id(0) % c_blocks) * BLOCK_C + tl.arange(0, BLOCK_C)
    chunk = tl.program_id(1)
    c_ok = c < C
    p0 = chunk * CHUNK
    base = x_ptr + n.to(tl.int64) * s_n
    c_off = c.to(tl.int64)[:, None] * s_c
    k = tl.load(base + c.to(tl.int64) * s_c + p0.to(tl.int64) * s_p, mask=c_ok, other=0.0).to(tl.float32)
    s1 = tl.zeros([BLOCK_C, BLOCK_P], tl.float32)
    s2 = tl.zeros([BLOCK_C, BLOCK_P], tl.float32)
    for i in range(0, CHUNK, BLOCK_P):
        p = p0 + i + tl.arange(0, BLOCK_P)
        ok = c_ok[:, None] & (p < P)[None, :]
        v = tl.load(base + c_off + p.to(tl.int64)[None, :] * s_p, mask=ok, other=0.0).to(tl.float32)
        d = tl.where(ok, v - k[:, None], 0.0)
        s1 += d
        s2 += d * d
    t1 = tl.sum(s1, axis=1)
    t2 = tl.sum(s2, axis=1)
    cnt = tl.minimum(P - p0, CHUNK).to(tl.float32)
    out = (n.to(tl.int64) * C + c) * N_CHUNKS + chunk
    tl.store(mean_ptr + out, k + t1 / cnt, mask=c_ok)
    tl.store(m2_ptr + out, tl.maximum(t2 - t1 * t1 / cnt, 0.0), mask=c_ok)


MOMENTS_PROGRAMS = 512  # enough programs to keep a GPU's ~100-150 SMs streaming (several per SM)


def moments_config(n: int, c: int, p: int, block_c: int = 64, block_p: int = 64, max_chunk: int = 4096) -> tuple[int, int, int]:
    """(BLOCK_C, BLOCK_P, CHUNK) for an (N, C, P) input: powers of two, CHUNK a multiple of BLOCK_P; CHUNK as large as
    keeps about MOMENTS_PROGRAMS programs (fewer, longer loops at the decoder's 1024 px shapes; one tile per program
    at the UNet's small ones, where a long loop over few programs would leave most SMs idle). CHUNK does not depend
    on block_p <= 64 (the fake op sizes the partials by it). channels_last inputs take block_p = 32: 16-19 % faster
    on the decoder's 512-1024 px activations, 11 % slower on its 256 px ones, 4.5 -> 4.0 ms over a 1024x4 decode on
    the H200 (results/decoder_pass_sweep_nvidia_h200.csv)."""
    block_c = min(block_c, triton.next_power_of_2(c))
    block_p = min(block_p, triton.next_power_of_2(p))
    chunks = triton.cdiv(MOMENTS_PROGRAMS, n * triton.cdiv(c, block_c))
    chunk = min(max_chunk, triton.next_power_of_2(triton.cdiv(p, chunks)))
    return block_c, block_p, max(64, block_p, chunk)


def channel_moments_partials(x: torch.Tensor, s_n: int, s_c: int, s_p: int, num_warps: int = 4,
                             config: tuple[int, int, int] | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(mean, M2) per (image, channel, chunk of CHUNK pixels), float32 [N, C, n_chunks], of x seen as (N, C, P) through
    the strides s_n, s_c, s_p (elements); `config` (BLOCK_C, BLOCK_P, CHUNK) overrides moments_config (a sweep's).
    quant_utils/norms.py combines the chunks."""
    n, c = x.shape[:2]
    p = x.numel() // max(n * c, 1)
    block_c, block_p, chunk = config or moments_config(n, c, p, block_p=32 if s_c == 1 else 64)
    n_chunks = triton.cdiv(p, chunk)
    mean = torch.empty((n, c, n_chunks), dtype=torch.float32, device=x.device)
    m2 = torch.empty_like(mean)
    grid = (n * triton.cdiv(c, block_c), n_chunks)
    _channel_moments_kernel[grid](x, mean, m2, c, p, s_n, s_c, s_p, n_chunks, CHUNK=chunk, BLOCK_C=block_c,
                                  BLOCK_P=block_p, num_warps=num_warps)
    return mean, m2


# GroupNorm's per-channel scale and shift from the chunks' (mean, M2) of channel_moments_partials. One program per
# (image, group): the group's chunks combined by Chan's formula in two passes (the mean, then M2 around it), then each
# of its channels' scale = weight * rstd and shift = bias - mean * scale, float32 [N, C]. Why a kernel: left to
# Inductor, the per-group combine of <= 8 channels is unrolled into the normalize kernel and recomputed per element.
@triton.jit
def _group_affine_kernel(mean_ptr, m2_ptr, w_ptr, b_ptr, scale_ptr, shift_ptr, C, P, N_CHUNKS, total, eps,
                         CPG: tl.constexpr, CHUNK: tl.constexpr, BLOCK_CH: tl.constexpr, BLOCK_K: tl.constexpr,
                         HAS_W: tl.constexpr, HAS_B: tl.constexpr):
    groups = C // CPG
    n = tl.program_id(0) // groups
    g = tl.program_id(0) % groups
    j = tl.arange(0, BLOCK_CH)
    ch_ok = j < CPG
    ch = g * CPG + j
    row = (n.to(tl.int64) * C + ch) * N_CHUNKS
    acc = tl.zeros([BLOCK_CH, BLOCK_K], tl.float32)
    for k0 in range(0, N_CHUNKS, BLOCK_K):
        k = k0 + tl.arange(0, BLOCK_K)
        ok = ch_ok[:, None] & (k < N_CHUNKS)[None, :]
        cnt = tl.minimum(P - k * CHUNK, CHUNK).to(tl.float32)
        m = tl.load(mean_ptr + row[:, None] + k[None, :], mask=ok, other=0.0)
        acc += tl.where(ok, m * cnt[None, :], 0.0)
    mean = tl.sum(tl.sum(acc, axis=1), axis=0) / total
    acc = tl.zeros([BLOCK_CH, BLOCK_K], tl.float32)
    for k0 in range(0, N_CHUNKS, BLOCK_K):
        k = k0 + tl.arange(0, BLOCK_K)
        ok = ch_ok[:, None] & (k < N_CHUNKS)[None, :]
        cnt = tl.minimum(P - k * CHUNK, CHUNK).to(tl.float32)
        m = tl.load(mean_ptr + row[:, None] + k[None, :], mask=ok, other=0.0)
        m2 = tl.load(m2_ptr + row[:, None] + k[None, :], mask=ok, other=0.0)
        d = m - mean
        acc += tl.where(ok, m2 + cnt[None, :] * d * d, 0.0)
    rstd = 1.0 / tl.sqrt(tl.sum(tl.sum(acc, axis=1), axis=0) / total + eps)
    scale = tl.zeros([BLOCK_CH], tl.float32) + rstd
    if HAS_W:
        scale = scale * tl.load(w_ptr + ch, mask=ch_ok, other=1.0).to(tl.float32)
    shift = -mean * scale
    if HAS_B:
        shift += tl.load(b_ptr + ch, mask=ch_ok, other=0.0).to(tl.float32)
    out = n.to(tl.int64) * C + ch
    tl.store(scale_ptr + out, scale, mask=ch_ok)
    tl.store(shift_ptr + out, shift, mask=ch_ok)


def group_affine(x: torch.Tensor, groups: int, weight: torch.Tensor | None, bias: torch.Tensor | None, eps: float,
                 s_n: int, s_c: int, s_p: int) -> tuple[torch.Tensor, torch.Tensor]:
    """GroupNorm's (scale, shift) per (image, channel), float32 [N, C], of x seen as (N, C, P) through the strides
    (elements): F.group_norm(x) == x * scale + shift per channel. Two launches: the moments, then the combine."""
    mean_p, m2_p = channel_moments_partials(x, s_n, s_c, s_p)
    n, c, n_chunks = mean_p.shape
    p = x.numel() // max(n * c, 1)
    cpg = c // groups
    scale = torch.empty((n, c), dtype=torch.float32, device=x.device)
    shift = torch.empty_like(scale)
    _group_affine_kernel[(n * groups,)](
        mean_p, m2_p, weight if weight is not None else scale, bias if bias is not None else scale, scale, shift,
        c, p, n_chunks, float(cpg * p), float(eps), CPG=cpg, CHUNK=moments_config(n, c, p)[2],
        BLOCK_CH=triton.next_power_of_2(cpg), BLOCK_K=min(triton.next_power_of_2(n_chunks), 128),
        HAS_W=weight is not None, HAS_B=bias is not None, num_warps=4)
    return scale, shift


# ----------------------------------------------------------------------------------------------- softmax


# The VAE decoder's attention scores (decoders.attention_math: one head of 512, which SDPA's flash kernels do not take)
# are 16384 x 16384 fp16 per 1024 px image; torch's softmax moved them at ~2.2 TB/s on the H200 (~45 % of HBM,
# results/e2e_v9_ptx_vae_profile_kernels_nvidia_h200.csv). One program holds one whole row in registers: one read,
# one write, in place.
SOFTMAX_MAX_COLS = 32768  # 64 fp32 values per thread at 16 warps


@triton.jit
def _softmax_rows_kernel(s_ptr, n, stride, BLOCK: tl.constexpr):
    row = tl.program_id(0).to(tl.int64) * stride
    cols = tl.arange(0, BLOCK)
    x = tl.load(s_ptr + row + cols, mask=cols < n, other=-float("inf")).to(tl.float32)
    e = tl.exp2((x - tl.max(x, axis=0)) * 1.4426950408889634)
    tl.store(s_ptr + row + cols, (e * (1.0 / tl.sum(e, axis=0))).to(s_ptr.dtype.element_ty), mask=cols < n)


def softmax_(s: torch.Tensor, num_warps: int | None = None) -> torch.Tensor:
    """Softmax over the last dim, in place (fp32 math, as torch.softmax computes for fp16 input); torch.softmax (a new
    tensor) for a non-contiguous tensor or rows longer than SOFTMAX_MAX_COLS."""
    n = s.shape[-1]
    if not s.is_contiguous() or n > SOFTMAX_MAX_COLS:
        return torch.softmax(s, dim=-1)
    block = triton.next_power_of_2(n)
    _softmax_rows_kernel[(s.numel() // n,)](s, n, n, BLOCK=block,
                                           num_warps=num_warps or min(max(block // 1024, 4), 16))
    return s


# ----------------------------------------------------------------------------------------------- GEMM pieces


@triton.jit
def _dot(acc, a, w, A_FP16: tl.constexpr, SWAP: tl.constexpr):
    # acc [BM, BN] += a [BM, k] @ w[BN, k]^T, or with SWAP acc [BN, BM] += w @ a^T (the weight is the
    # M-side operand: small activation tiles still fill the 64-row tensor-core instruction)
    if A_FP16:
        w = w.to(tl.float16)
        if SWAP:
            acc = tl.dot(w, tl.trans(a), acc)
        else:
            acc = tl.dot(a, tl.trans(w), acc)
    else:
        if SWAP:
            acc = tl.dot(w, tl.trans(a), acc, out_dtype=tl.int32)
        else:
            acc = tl.dot(a, tl.trans(w), acc, out_dtype=tl.int32)
    return acc


@triton.jit
def _load_a(a_ptrs, s: tl.constexpr, SUBK: tl.constexpr, row_ok, kcol, klim, other,
            MASK_ROWS: tl.constexpr, MASK_K: tl.constexpr):
    # sub-block s of the activation tile: columns kcol + s*SUBK
    ptrs = a_ptrs + s * SUBK
    if MASK_ROWS:
        if MASK_K:
            return tl.load(ptrs, mask=row_ok & ((kcol + s * SUBK) < klim), other=other)
        else:
            return tl.load(ptrs, mask=row_ok, other=other)
    else:
        if MASK_K:
            return tl.load(ptrs, mask=(kcol + s * SUBK) < klim, other=other)
        else:
            return tl.load(ptrs)


@triton.jit
def _group_dot(acc, a_ptrs, row_ok, kcol, klim, other, w_ptrs,
               BITS: tl.constexpr, SUBK: tl.constexpr, A_FP16: tl.constexpr, SWAP: tl.constexpr,
               MASK_ROWS: tl.constexpr, MASK_K: tl.constexpr):
    # one K-group of G values: load the packed weight bytes, unpack each sub-block to int8, one dot per sub-block.
    # a_ptrs / w_ptrs point at the group's first sub-block ([BM, SUBK] / [BN, SUBK]); packing.py has the layout.
    if BITS == 8:
        w = tl.load(w_ptrs)
        a = _load_a(a_ptrs, 0, SUBK, row_ok, kcol, klim, other, MASK_ROWS, MASK_K)
        acc = _dot(acc, a, w, A_FP16, SWAP)
    elif BITS == 4:
        p = tl.load(w_ptrs)
        a0 = _load_a(a_ptrs, 0, SUBK, row_ok, kcol, klim, other, MASK_ROWS, MASK_K)
        a1 = _load_a(a_ptrs, 1, SUBK, row_ok, kcol, klim, other, MASK_ROWS, MASK_K)
        acc = _dot(acc, a0, (p & 15).to(tl.int8) - 8, A_FP16, SWAP)
        acc = _dot(acc, a1, (p >> 4).to(tl.int8) - 8, A_FP16, SWAP)
    elif BITS == 2:
        p = tl.load(w_ptrs)
        for s in tl.static_range(4):
            a = _load_a(a_ptrs, s, SUBK, row_ok, kcol, klim, other, MASK_ROWS, MASK_K)
            acc = _dot(acc, a, ((p >> (2 * s)) & 3).to(tl.int8) - 2, A_FP16, SWAP)
    else:  # 6 bits: three byte planes of SUBK = G/4; the top two bits of each byte hold the 4th sub-block
        b0 = tl.load(w_ptrs)
        b1 = tl.load(w_ptrs + SUBK)
        b2 = tl.load(w_ptrs + 2 * SUBK)
        a0 = _load_a(a_ptrs, 0, SUBK, row_ok, kcol, klim, other, MASK_ROWS, MASK_K)
        a1 = _load_a(a_ptrs, 1, SUBK, row_ok, kcol, klim, other, MASK_ROWS, MASK_K)
        a2 = _load_a(a_ptrs, 2, SUBK, row_ok, kcol, klim, other, MASK_ROWS, MASK_K)
        a3 = _load_a(a_ptrs, 3, SUBK, row_ok, kcol, klim, other, MASK_ROWS, MASK_K)
        acc = _dot(acc, a0, (b0 & 63).to(tl.int8) - 32, A_FP16, SWAP)
        acc = _dot(acc, a1, (b1 & 63).to(tl.int8) - 32, A_FP16, SWAP)
        acc = _dot(acc, a2, (b2 & 63).to(tl.int8) - 32, A_FP16, SWAP)
        w3 = (b0 >> 6) | ((b1 >> 6) << 2) | ((b2 >> 6) << 4)
        acc = _dot(acc, a3, w3.to(tl.int8) - 32, A_FP16, SWAP)
    return acc


# ----------------------------------------------------------------------------------------------- unpack pass


@triton.jit
def _unpack_kernel(p_ptr, q_ptr, NG, BITS: tl.constexpr, G: tl.constexpr, SUBK: tl.constexpr, TG: tl.constexpr):
    # TG packed groups per program -> their G int8 values each, in K order (the 8-bit format of the same G)
    BPG: tl.constexpr = G * BITS // 8
    g = tl.program_id(0).to(tl.int64) * TG + tl.arange(0, TG)
    ok = (g < NG)[:, None]
    j = tl.arange(0, SUBK)[None, :]
    src = p_ptr + g[:, None] * BPG + j
    dst = q_ptr + g[:, None] * G + j
    if BITS == 4:
        p = tl.load(src, mask=ok, other=0).to(tl.int32)
        tl.store(dst, ((p & 15) - 8).to(tl.int8), mask=ok)
        tl.store(dst + SUBK, ((p >> 4) - 8).to(tl.int8), mask=ok)
    elif BITS == 2:
        p = tl.load(src, mask=ok, other=0).to(tl.int32)
        for s in tl.static_range(4):
            tl.store(dst + s * SUBK, (((p >> (2 * s)) & 3) - 2).to(tl.int8), mask=ok)
    else:  # 6 bits: three byte planes, the 4th sub-block in their top two bits
        b0 = tl.load(src, mask=ok, other=0).to(tl.int32)
        b1 = tl.load(src + SUBK, mask=ok, other=0).to(tl.int32)
        b2 = tl.load(src + 2 * SUBK, mask=ok, other=0).to(tl.int32)
        tl.store(dst, ((b0 & 63) - 32).to(tl.int8), mask=ok)
        tl.store(dst + SUBK, ((b1 & 63) - 32).to(tl.int8), mask=ok)
        tl.store(dst + 2 * SUBK, ((b2 & 63) - 32).to(tl.int8), mask=ok)
        w3 = (b0 >> 6) | ((b1 >> 6) << 2) | ((b2 >> 6) << 4)
        tl.store(dst + 3 * SUBK, (w3 - 32).to(tl.int8), mask=ok)


def unpack_to_int8(w: torch.Tensor, bits: int, group: int, groups_per_program: int = 64) -> torch.Tensor:
    """Packed weight [N, row_bytes] (2/4/6 bits) -> int8 [N, K_padded]: the 8-bit format with the same groups.

    The `PRE` tile-config option runs this pass before an 8-bit GEMM/conv (a transient int8 copy, freed after
    the call) instead of unpacking in the kernel's K loop: weights stay packed at rest either way."""
    n, row_bytes = w.shape
    bpg = group * bits // 8
    ng = n * row_bytes // bpg
    q = torch.empty((n, row_bytes // bpg * group), dtype=torch.int8, device=w.device)
    _unpack_kernel[(triton.cdiv(ng, groups_per_program),)](w, q, ng, BITS=bits, G=group, SUBK=group // SUB_BLOCKS[bits],
                                                          TG=groups_per_program, num_warps=4)
    return q


@triton.jit
def _tile_ids(M, N, BM: tl.constexpr, BN: tl.constexpr, GROUP_M: tl.constexpr):
    # grouped launch order: GROUP_M row-tiles share their weight tiles in L2
    pid = tl.program_id(0)
    num_m = tl.cdiv(M, BM)
    num_n = tl.cdiv(N, BN)
    per_group = GROUP_M * num_n
    first_m = (pid // per_group) * GROUP_M
    size_m = min(num_m - first_m, GROUP_M)
    pid_m = first_m + (pid % per_group) % size_m
    pid_n = (pid % per_group) // size_m
    return pid_m, pid_n


# ----------------------------------------------------------------------------------------------- linear


# M and the K-loop length are not specialised (one compiled kernel per tile config and format, whatever the
# shape); N, K and the strides are (the launchers require multiples of 16: Triton's pipeliner needs that
# divisibility to turn tile loads into asynchronous copies, and the output store needs it along N to use
# vector stores; a tl.multiple_of hint on a scalar argument does not give either).
@triton.jit(do_not_specialize=["M", "K_ITERS"])
def _qlinear_kernel(a_ptr, w_ptr, out_ptr, scale_ptr, zc_ptr, bias_ptr, ws_ptr, cnt_ptr,
                    M, N, K_A, K_ITERS, stride_am, stride_wn, stride_om,
                    BITS: tl.constexpr, G: tl.constexpr, A_FP16: tl.constexpr, HAS_BIAS: tl.constexpr,
                    EVEN_K: tl.constexpr, BM: tl.constexpr, BN: tl.constexpr, GROUP_M: tl.constexpr,
                    SWAP: tl.constexpr, SPLIT_K: tl.constexpr, SUBK: tl.constexpr, FIXUP: tl.constexpr):
    """out[M, N] = epilogue(A[M, K_A] @ unpack(W)[N, K]^T); W rows hold K_ITERS groups of G values.

    A_FP16: y = acc * scale[n] + bias (scale = w_scale), else y = (acc - zc[n]) * scale[n] + bias.
    SPLIT_K > 1: program_id(1) takes a K slice and atomically adds its share into a float32 `out`; with FIXUP
    (int8 codes only) it writes its int32 partial sums to the workspace `ws`, and the tile's last slice to arrive
    (counter `cnt`, reset to 0 after) adds the others' and runs the epilogue: fp16 out, no zeroing, no cast pass."""
    BPG: tl.constexpr = G * BITS // 8
    stride_am = tl.multiple_of(stride_am, 16)
    stride_wn = tl.multiple_of(stride_wn, 16)
    stride_om = tl.multiple_of(stride_om, 8)
    K_A = tl.multiple_of(K_A, 16)
    pid_m, pid_n = _tile_ids(M, N, BM, BN, GROUP_M)
    rm = pid_m * BM + tl.arange(0, BM)
    rn = pid_n * BN + tl.arange(0, BN)
    rm_in = rm % M  # wrapped rows/cols: loads stay in bounds without masks; the store masks them out
    rn_in = rn % N
    kk = tl.arange(0, SUBK)
    a_ptrs = a_ptr + rm_in[:, None].to(tl.int64) * stride_am + kk[None, :]
    w_ptrs = w_ptr + rn_in[:, None].to(tl.int64) * stride_wn + kk[None, :]
    if SWAP:
        if A_FP16:
            acc = tl.zeros((BN, BM), dtype=tl.float32)
        else:
            acc = tl.zeros((BN, BM), dtype=tl.int32)
    else:
        if A_FP16:
            acc = tl.zeros((BM, BN), dtype=tl.float32)
        else:
            acc = tl.zeros((BM, BN), dtype=tl.int32)
    pid_k = tl.program_id(1)
    per_split = tl.cdiv(K_ITERS, SPLIT_K)
    k_lo = pid_k * per_split
    k_hi = min(k_lo + per_split, K_ITERS)
    for kt in range(k_lo, k_hi):
        acc = _group_dot(acc, a_ptrs + kt * G, None, kk[None, :], K_A - kt * G, 0,
                         w_ptrs + kt * BPG, BITS, SUBK, A_FP16, SWAP, False, not EVEN_K)
    if SPLIT_K == 1:
        _store_tile(acc, rm, rn, rn_in, M, N, out_ptr, scale_ptr, zc_ptr, bias_ptr, stride_om, A_FP16, HAS_BIAS, SWAP,
                    True, False)
    elif FIXUP:
        # this slice's partial sums (the accumulator's orientation) to slot pid_k of the tile's workspace
        if SWAP:
            offs = tl.arange(0, BN)[:, None] * BM + tl.arange(0, BM)[None, :]
        else:
            offs = tl.arange(0, BM)[:, None] * BN + tl.arange(0, BN)[None, :]
        tile = tl.program_id(0)
        slots = ws_ptr + tile.to(tl.int64) * (SPLIT_K * BM * BN)
        tl.store(slots + pid_k * (BM * BN) + offs, acc)
        tl.debug_barrier()  # every thread's partial stored before the release below (as CUTLASS's serial split-K)
        if tl.atomic_add(cnt_ptr + tile, 1, sem="acq_rel") == SPLIT_K - 1:
            for s in tl.static_range(SPLIT_K):  # the last to arrive: integer sums, exact in any order
                acc += tl.load(slots + s * (BM * BN) + offs, mask=(offs >= 0) & (s != pid_k), other=0,
                               cache_modifier=".cg")
            tl.atomic_xchg(cnt_ptr + tile, 0)  # ready for the next launch (and the next CUDA-graph replay)
            _store_tile(acc, rm, rn, rn_in, M, N, out_ptr, scale_ptr, zc_ptr, bias_ptr, stride_om, False, HAS_BIAS,
                        SWAP, True, False)
    else:  # each K slice adds its part into out (fp32); zero point and bias from the first slice only
        _store_tile(acc, rm, rn, rn_in, M, N, out_ptr, scale_ptr, zc_ptr, bias_ptr, stride_om, A_FP16, HAS_BIAS, SWAP,
                    pid_k == 0, True)


@triton.jit
def _store_tile(acc, rm, rn, rn_in, M, N, out_ptr, scale_ptr, zc_ptr, bias_ptr, stride_om,
                A_FP16: tl.constexpr, HAS_BIAS: tl.constexpr, SWAP: tl.constexpr, first_slice, ATOMIC: tl.constexpr):
    # epilogue of one output tile, in the accumulator's orientation: y = (acc - zc[n]) * scale[n] + bias[n]
    # (fp16 activations: acc * scale[n] + bias[n]), stored in out's dtype; ATOMIC (split-K without fixup): y of one K
    # slice added into the fp32 out, zero point and bias only where first_slice
    if SWAP:
        m2 = rm[None, :]
        n2 = rn[:, None]
        n_in = rn_in[:, None]
    else:
        m2 = rm[:, None]
        n2 = rn[None, :]
        n_in = rn_in[None, :]
    scale = tl.load(scale_ptr + n_in)
    if A_FP16:
        y = acc * scale
    else:
        zc = tl.load(zc_ptr + n_in)
        if ATOMIC:
            zc = tl.where(first_slice, zc, 0)
        y = (acc - zc).to(tl.float32) * scale
    if HAS_BIAS:
        bias = tl.load(bias_ptr + n_in)
        if ATOMIC:
            bias = tl.where(first_slice, bias, 0.0)
        y = y + bias
    ptrs = out_ptr + m2.to(tl.int64) * stride_om + n2
    if ATOMIC:
        tl.atomic_add(ptrs, y, mask=(m2 < M) & (n2 < N))
    else:
        tl.store(ptrs, y.to(out_ptr.dtype.element_ty), mask=(m2 < M) & (n2 < N))


def qlinear(a: torch.Tensor, w: torch.Tensor, scale: torch.Tensor, zc: torch.Tensor | None, bias: torch.Tensor | None,
            bits: int, group: int, n: int, cfg: dict, out: torch.Tensor | None = None) -> torch.Tensor:
    """Launch `_qlinear_kernel` with tile config `cfg` (BM, BN, GROUP_M, SWAP, SPLIT_K, PRE, num_warps, num_stages).

    a: [M, K] int8 codes (or fp16 for the weight-only path), rows may be strided; w: packed [N, row_bytes]."""
    m, k = a.shape
    if cfg.get("PRE") and bits != 8:
        w, bits = unpack_to_int8(w, bits, group), 8
    if k % 16 or a.stride(0) % 16 or a.stride(1) != 1 or n % 8:
        raise ValueError(f"qlinear needs K % 16 == 0, row-contiguous 16-aligned rows and N % 8 == 0 (K={k}, N={n})")
    if a.data_ptr() % 16 or w.data_ptr() % 16:
        raise ValueError("qlinear needs 16-byte aligned operands")
    a_fp16 = a.dtype != torch.int8
    k_iters = w.shape[1] // (group * bits // 8)
    split = cfg.get("SPLIT_K", 1)
    tiles = triton.cdiv(m, cfg["BM"]) * triton.cdiv(n, cfg["BN"])
    # FIXUP for int8 codes; fp16 activations (a forced config's BOS rows) keep the atomic form (float partial sums
    # reduced in the kernel would add in arrival order)
    fixup = split > 1 and bool(cfg.get("FIXUP")) and not a_fp16
    ws, cnt = fixup_workspace(a.device, tiles * split * cfg["BM"] * cfg["BN"], tiles) if fixup else (scale, scale)
    if out is None:
        out = torch.zeros((m, n), dtype=torch.float32, device=a.device) if split > 1 and not fixup else \
            torch.empty((m, n), dtype=torch.float16, device=a.device)
    _qlinear_kernel[(tiles, split)](a, w, out, scale, zc if zc is not None else scale, bias if bias is not None else scale,
                                    ws, cnt, m, n, k, k_iters, a.stride(0), w.stride(0), out.stride(0),
                                    BITS=bits, G=group, A_FP16=a_fp16, HAS_BIAS=bias is not None,
                                    EVEN_K=(k == k_iters * group), BM=cfg["BM"], BN=cfg["BN"],
                                    GROUP_M=cfg.get("GROUP_M", 8), SWAP=cfg.get("SWAP", False), SPLIT_K=split,
                                    SUBK=group // SUB_BLOCKS[bits], FIXUP=fixup, num_warps=cfg.get("num_warps", 4),
                                    num_stages=cfg.get("num_stages", 3))
    return out.to(torch.float16) if out.dtype != torch.float16 else out


# FIXUP split-K's scratch per device: int32 partial sums and per-tile arrival counters (zero between launches: the
# last program of a tile resets its counter). One per device, so GEMMs must not run concurrently on two streams of
# one device (the pipelines here use one stream). A buffer a CUDA graph may have captured is never freed.
_FIXUP_WORKSPACE: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
_FIXUP_RETIRED: list[tuple[torch.Tensor, torch.Tensor]] = []


def fixup_workspace(device: torch.device, partial_elems: int, tiles: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(int32 partial-sum buffer of >= partial_elems, int32 zeroed counters of >= tiles) for `device`."""
    key = str(device)
    ws, cnt = _FIXUP_WORKSPACE.get(key, (None, None))
    if ws is not None and ws.numel() >= partial_elems and cnt.numel() >= tiles:
        return ws, cnt
    fresh = (torch.empty(max(partial_elems, 2 * (ws.numel() if ws is not None else 0)), dtype=torch.int32,
                         device=device),
             torch.zeros(max(tiles, 2 * (cnt.numel() if cnt is not None else 0), 1024), dtype=torch.int32, device=device))
    if device.type == "cuda" and torch.cuda.is_current_stream_capturing():
        # first seen inside a capture (no warm-up call before it): this graph's own buffers, zeroed at every replay
        # by the memset the capture records; not shared with later eager launches (its counters hold no zeros yet)
        _FIXUP_RETIRED.append(fresh)
        return fresh
    if ws is not None:
        _FIXUP_RETIRED.append((ws, cnt))
    _FIXUP_WORKSPACE[key] = fresh
    return fresh


# ----------------------------------------------------------------------------------------------- conv


@triton.jit
def _conv_segment(acc, x_ptr, w_ptr, row_base, kk, W, C, c0, CS, CI,
                  KH: tl.constexpr, KW: tl.constexpr, BITS: tl.constexpr, G: tl.constexpr, SUBK: tl.constexpr,
                  SWAP: tl.constexpr, EVEN_C: tl.constexpr):
    # K loop over (tap, channel-group) of one input-channel segment [c0, c0 + CS) of the padded NHWC input:
    # every tap of every (wrapped) output row is in bounds, so a tap is a scalar offset from the row's base
    # and only a ragged channel tail needs a mask
    BPG: tl.constexpr = G * BITS // 8
    for t in range(0, KH * KW * CI):
        tap = t // CI
        cb = t - tap * CI
        kh = tap // KW
        off = (kh * W + tap - kh * KW) * C + c0 + cb * G
        a_ptrs = x_ptr + (row_base[:, None] + off) + kk[None, :]
        acc = _group_dot(acc, a_ptrs, None, kk[None, :], CS - cb * G, 0, w_ptr + t * BPG,
                         BITS, SUBK, False, SWAP, False, not EVEN_C)
    return acc


@triton.jit(do_not_specialize=["M", "H", "W", "CI1", "CI2"])
def _qconv_kernel(x_ptr, w_ptr, out_ptr, scale1_ptr, zc1_ptr, scale2_ptr, zc2_ptr, bias_ptr, res_ptr, out_scale,
                  M, N, H, W, C, OHW, OW, C1, C2, CI1, CI2, stride_wn,
                  STRIDE: tl.constexpr, KH: tl.constexpr, KW: tl.constexpr,
                  BITS: tl.constexpr, G: tl.constexpr, TWO_SEG: tl.constexpr, HAS_BIAS: tl.constexpr,
                  EVEN_C: tl.constexpr, BM: tl.constexpr, BN: tl.constexpr, GROUP_M: tl.constexpr,
                  SWAP: tl.constexpr, SUBK: tl.constexpr, OUT_NHWC: tl.constexpr = False,
                  HAS_RES: tl.constexpr = False, SUBPIXEL: tl.constexpr = False):
    """Implicit-GEMM conv: x zero-padded NHWC int8 codes [B, H, W, C] (H, W padded) -> out NCHW fp16 [B, N, OH, OW]
    (OUT_NHWC: the same tensor in channels_last memory, channels contiguous). HAS_RES: out = (conv + res) * out_scale
    with res laid out as out (a resnet's residual add and output scale, one pass fewer over the output).

    Row tiles never straddle two images (M = B * cdiv(OH*OW, BM) * BM), so each tile's output pixels are
    contiguous in NCHW (vector stores). K = (tap, channel); channels [0, C1) are segment 1 and [C1, C1 + C2)
    segment 2 (TWO_SEG), each with its own accumulator and (scale, zc) in the epilogue. Weight rows: segment 1's
    KH*KW*CI1 groups, then segment 2's KH*KW*CI2. Offsets are int32 (the launcher checks the sizes).

    SUBPIXEL (a nearest 2x upsample then a 3x3 conv, on the input before the upsample): program_id(1) = phase
    (a, b) computes the output pixels (2i + a, 2j + b) as a 2x2 conv of the padded input from (i + a, j + b); the
    weight holds the 4 phases' rows (phase-major, N each), scale1/zc1 4N values, the output is [B, N, 2*OH, 2*OW]."""
    BPG: tl.constexpr = G * BITS // 8
    pid_m, pid_n = _tile_ids(M, N, BM, BN, GROUP_M)
    if SUBPIXEL:
        phase = tl.program_id(1)
        pa = phase // 2
        pb = phase - 2 * pa
        x_ptr += (pa * W + pb) * C
        scale1_ptr += phase * N
        zc1_ptr += phase * N
        w_ptr += phase * N * stride_wn
    tiles_per_img = tl.cdiv(OHW, BM)
    b = pid_m // tiles_per_img
    r = (pid_m - b * tiles_per_img) * BM + tl.arange(0, BM)  # output pixel within the image
    rn = pid_n * BN + tl.arange(0, BN)
    rn_in = rn % N
    r_in = r % OHW  # wrapped: in-bounds loads, masked at the store
    oh = r_in // OW
    row_base = ((b * H + oh * STRIDE) * W + (r_in - oh * OW) * STRIDE) * C  # only this stays live in the K loop
    kk = tl.arange(0, SUBK)
    w_rows = w_ptr + rn_in[:, None].to(tl.int64) * stride_wn + kk[None, :]
    if SWAP:
        acc1 = tl.zeros((BN, BM), dtype=tl.int32)
    else:
        acc1 = tl.zeros((BM, BN), dtype=tl.int32)
    acc1 = _conv_segment(acc1, x_ptr, w_rows, row_base, kk, W, C, 0, C1, CI1, KH, KW, BITS, G, SUBK, SWAP, EVEN_C)
    if SWAP:
        n_in = rn_in[:, None]
    else:
        n_in = rn_in[None, :]
    y = (acc1 - tl.load(zc1_ptr + n_in)).to(tl.float32) * tl.load(scale1_ptr + n_in)
    if TWO_SEG:
        if SWAP:
            acc2 = tl.zeros((BN, BM), dtype=tl.int32)
        else:
            acc2 = tl.zeros((BM, BN), dtype=tl.int32)
        acc2 = _conv_segment(acc2, x_ptr, w_rows + KH * KW * CI1 * BPG, row_base, kk, W, C, C1, C2, CI2,
                             KH, KW, BITS, G, SUBK, SWAP, EVEN_C)
        y += (acc2 - tl.load(zc2_ptr + n_in)).to(tl.float32) * tl.load(scale2_ptr + n_in)
    if HAS_BIAS:
        y += tl.load(bias_ptr + n_in)
    # NCHW offset = image part + pixel (contiguous along the tile) + channel part: separable int32 vectors
    # (a per-element 64-bit product here made the kernel spill registers); channels_last: pixel * N + channel
    if SUBPIXEL:  # output pixel (2i + a, 2j + b) of the 2*OH x 2*OW image
        pix = (2 * (r // OW) + pa) * (2 * OW) + 2 * (r % OW) + pb
        img = 4 * OHW
    else:
        pix = r
        img = OHW
    if OUT_NHWC:
        row_off = (b * img + pix) * N
        col_off = rn
    else:
        row_off = b * (N * img) + pix
        col_off = rn * img
    if SWAP:
        mask = (r[None, :] < OHW) & (rn[:, None] < N)
        offs = row_off[None, :] + col_off[:, None]
    else:
        mask = (r[:, None] < OHW) & (rn[None, :] < N)
        offs = row_off[:, None] + col_off[None, :]
    if HAS_RES:
        y = (y + tl.load(res_ptr + offs, mask=mask, other=0.0).to(tl.float32)) * out_scale
    tl.store(out_ptr + offs, y.to(tl.float16), mask=mask)


def conv_out_hw(hp: int, wp: int, kh: int, kw: int, stride: int, subpixel: bool = False) -> tuple[int, int]:
    """Output height and width of `_qconv_kernel` on a padded input of hp x wp (subpixel: the 2x image of its phases)."""
    if subpixel:
        return 2 * (hp - 2), 2 * (wp - 2)
    return (hp - kh) // stride + 1, (wp - kw) // stride + 1


def qconv(x_pad: torch.Tensor, w: torch.Tensor, scale1: torch.Tensor, zc1: torch.Tensor, scale2: torch.Tensor | None,
          zc2: torch.Tensor | None, bias: torch.Tensor | None, bits: int, group: int, n: int, c1: int, kh: int, kw: int,
          stride: int, pad: int, cfg: dict, channels_last: bool = False, residual: torch.Tensor | None = None,
          out_scale: float = 1.0, subpixel: bool = False) -> torch.Tensor:
    """Launch `_qconv_kernel`: padded NHWC int8 codes (from quant_nchw_to_nhwc with this `pad`) -> NCHW fp16
    (`channels_last`: in channels_last memory, as the next layer's NHWC quantize and cuDNN read it without a transpose),
    (conv + residual) * out_scale with a `residual` of the output's shape (copied to the output's layout if need be).

    c1 = channels of segment 1 (= C when the input is not split). `subpixel`: a 2x upsample + 3x3 conv as the
    kernel's four 2x2 phases (kh = kw = 2, stride 1, pad 1, the input not upsampled; w, scale1, zc1 of 4n rows)."""
    b, hp, wp, c = x_pad.shape
    if cfg.get("PRE") and bits != 8:
        w, bits = unpack_to_int8(w, bits, group), 8
    if c % 16 or c1 % 16 or not x_pad.is_contiguous():
        raise ValueError(f"qconv needs contiguous NHWC input with C and the split a multiple of 16 (C={c}, split={c1})")
    out_h, out_w = conv_out_hw(hp, wp, kh, kw, stride, subpixel)
    if x_pad.numel() >= 2**31 or b * n * out_h * out_w >= 2**31:
        raise ValueError("qconv uses int32 offsets: split the batch")
    if subpixel and ((kh, kw, stride, pad) != (2, 2, 1, 1) or residual is not None or c != c1):
        raise ValueError("qconv subpixel: a 2x2 kernel per phase, stride 1, pad 1, no residual, no split")
    oh, ow = (out_h // 2, out_w // 2) if subpixel else (out_h, out_w)  # the grid's pixels: one phase's
    out = torch.empty((b, n, out_h, out_w), dtype=torch.float16, device=x_pad.device,
                      memory_format=torch.channels_last if channels_last else torch.contiguous_format)
    if residual is not None:
        if tuple(residual.shape) != tuple(out.shape):
            raise ValueError(f"qconv: residual of shape {tuple(residual.shape)} for an output of {tuple(out.shape)}")
        residual = residual.to(torch.float16).contiguous(
            memory_format=torch.channels_last if channels_last else torch.contiguous_format)
    c2 = c - c1
    m = b * triton.cdiv(oh * ow, cfg["BM"]) * cfg["BM"]  # whole row tiles per image
    grid = (triton.cdiv(m, cfg["BM"]) * triton.cdiv(n, cfg["BN"]), 4 if subpixel else 1)
    _qconv_kernel[grid](x_pad, w, out, scale1, zc1, scale2 if scale2 is not None else scale1,
                        zc2 if zc2 is not None else zc1, bias if bias is not None else scale1,
                        residual if residual is not None else out, float(out_scale), m, n, hp, wp, c, oh * ow, ow, c1, c2, -(-c1 // group), -(-c2 // group), w.stride(0),
                        STRIDE=stride, KH=kh, KW=kw, BITS=bits, G=group, TWO_SEG=c2 > 0,
                        HAS_BIAS=bias is not None, EVEN_C=(c1 % group == 0 and c2 % group == 0),
                        BM=cfg["BM"], BN=cfg["BN"], GROUP_M=cfg.get("GROUP_M", 8), SWAP=cfg.get("SWAP", False),
                        SUBK=group // SUB_BLOCKS[bits], OUT_NHWC=channels_last, HAS_RES=residual is not None,
                        SUBPIXEL=subpixel,
                        num_warps=cfg.get("num_warps", 4),
                        num_stages=cfg.get("num_stages", 3))
    return out
