"""Image decoders (quant_utils/decoders.py): the tiny TAESD-XL decoder and the int8 SDXL VAE decoder."""
import os
import subprocess
import sys

import pytest
import torch

from conftest import REPO, TINY, run_interpreted


@pytest.fixture(scope="module")
def latents(tiny_pipe):
    from quant_utils.runtime import Runner

    return Runner(tiny_pipe).denoise(["a red bicycle", "a bowl of fruit"], [1, 2], 64, 64)


def test_tiny_decoder_from_the_arch_config_and_offline_error(tiny_pipe):
    from quant_utils.decoders import build_tiny_vae
    from quant_utils.errors import WeightsNotFoundError
    from quant_utils.pipeline import architecture_configs, load_model_config
    from quant_utils.runtime import Runner

    arch = architecture_configs(load_model_config(TINY))["vae_tiny"]
    assert arch["decoder_block_out_channels"] == [16, 16, 16, 16]  # the tiny model's override of TAESD-XL
    vae = build_tiny_vae(arch, "cpu", torch.float32)
    img = Runner(tiny_pipe, vae=vae, vae_kind="tiny")(["a cat"], [3], 64, 64)
    assert img.shape == (1, 64, 64, 3) and img.std() > 0
    with pytest.raises(WeightsNotFoundError, match="hf download"):
        build_tiny_vae(arch, "cpu", torch.float32, pretrained_id="madebyollin/taesdxl")


def test_int8_decoder_quantizes_the_convs_it_can_and_names_the_rest(tiny_pipe, latents):
    from quant_utils.decoders import decoder_errors, int8_fp16_layers, make_int8_decoder
    from quant_utils.qlayers import QuantLayer

    q = make_int8_decoder(tiny_pipe.vae, [latents], backend="fake")
    quantized = {n for n, m in q.decoder.named_modules() if isinstance(m, QuantLayer)}
    keep = int8_fp16_layers(tiny_pipe.vae)
    convs = {n for n, m in tiny_pipe.vae.decoder.named_modules() if isinstance(m, torch.nn.Conv2d)}
    assert {"decoder.conv_in", "decoder.conv_out"} <= set(keep)  # 4 and 3 channels: no int8 tile
    assert quantized == {n for n in convs if f"decoder.{n}" not in keep} and len(quantized) > 10
    assert q.encoder is None and tiny_pipe.vae.encoder is not None  # a decode-only copy; the original intact
    assert all(m.act_quant.scale is not None for n, m in q.decoder.named_modules() if isinstance(m, QuantLayer))
    rows = decoder_errors(tiny_pipe.vae, q, latents)
    layers = [r for r in rows if r["kind"] == "layer"]
    images = [r for r in rows if r["kind"] == "image"]
    assert len(layers) == len(quantized) and len(images) == 2
    assert all(0 < r["rel_err"] < 0.05 for r in layers)  # 8-bit weights and activations: about 1e-2 per layer
    assert all(0 < r["rel_err"] < 0.1 and r["psnr_db"] > 30 for r in images)
    # the FP16 reference in its phase-conv form (a Runner on CUDA leaves it so): measured as diffusers wrote it, the
    # same rows, and its form restored
    from quant_utils.decoders import use_subpixel_upsample

    use_subpixel_upsample(tiny_pipe.vae, True)
    try:
        again = decoder_errors(tiny_pipe.vae, q, latents)
        kept = sum(type(m).__name__ == "SubpixelUpsample2D" for m in tiny_pipe.vae.decoder.modules())
    finally:
        use_subpixel_upsample(tiny_pipe.vae, False)
    assert [r["name"] for r in again] == [r["name"] for r in rows] and kept == 3
    assert all(abs(a["rel_err"] - b["rel_err"]) < 1e-9 for a, b in zip(again, rows) if a["kind"] == "layer")


def test_int8_decoder_needs_calibration_latents(tiny_pipe):
    from quant_utils.decoders import make_int8_decoder
    from quant_utils.errors import ConfigError

    with pytest.raises(ConfigError, match="calibration latents"):
        make_int8_decoder(tiny_pipe.vae, [], backend="fake")


CONV_HALVES = """
import torch
from quant_utils.kernels import launch, ops, packing
torch.manual_seed(0)
x = torch.randint(-20, 20, (3, 10, 10, 32), dtype=torch.int8)
w, fmt = packing.pack_weight(torch.randint(-50, 50, (16, 32, 3, 3), dtype=torch.int8), 8)
s, z, b = torch.rand(16) / 100, torch.randint(-9, 9, (16,), dtype=torch.int32), torch.rand(16)
cfg = dict(BM=16, BN=16, num_warps=4, num_stages=1, SWAP=False, SPLIT_K=1, GROUP_M=8)
whole = launch.conv(x, w, s, z, None, None, b, 8, fmt.group, 16, 32, 3, 3, 1, 1, cfg)
launch.INT32_LIMIT = 2000  # forces the batch into parts (1 + 2 images, then 1 + 1)
parts = launch.conv(x, w, s, z, None, None, b, 8, fmt.group, 16, 32, 3, 3, 1, 1, cfg)
print("same", whole.shape == parts.shape == (3, 16, 8, 8), bool(torch.equal(whole, parts)))
# channels_last outputs (MIXDQ_CONV_NHWC): the same values in channels_last memory, both tile orientations, in parts too
for swap in (False, True):
    c = dict(cfg, SWAP=swap)
    nhwc = launch.conv(x, w, s, z, None, None, b, 8, fmt.group, 16, 32, 3, 3, 1, 1, c, channels_last=True)
    print("nhwc", swap, bool(torch.equal(nhwc, whole)), nhwc.is_contiguous(memory_format=torch.channels_last))
# the custom op's fake output has the real one's strides (what Inductor lays out the next kernels by)
from quant_utils.kernels import ops
launch.INT32_LIMIT = 2**31
args = (x, w, s, z, None, None, b, 8, fmt.group, 16, 32, 3, 3, 1, 1, True)
torch.library.opcheck(torch.ops.mixdq.qconv.default, args, test_utils=("test_faketensor",))
print("opcheck ok", ops.qconv(*args).stride() == whole.contiguous(memory_format=torch.channels_last).stride())
"""


def test_conv_splits_a_batch_past_int32_offsets():
    """The int8 VAE decoder at 1024 px batch 8 passes the conv kernel's int32 offsets: the launcher runs the batch
    in parts, with the same result (Triton kernels in the interpreter); channels_last outputs hold the same values,
    and the custom op's fake tensor says so."""
    proc = subprocess.run([sys.executable, "-c", CONV_HALVES], cwd=REPO, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "TRITON_INTERPRET": "1"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "same True True" in proc.stdout, proc.stdout
    assert "nhwc False True True" in proc.stdout and "nhwc True True True" in proc.stdout, proc.stdout
    assert "opcheck ok True" in proc.stdout, proc.stdout


def test_attention_math_equals_sdpa():
    from quant_utils.decoders import attention_math

    torch.manual_seed(0)
    q, k, v = (torch.randn(2, 1, 37, 24) for _ in range(3))
    want = torch.nn.functional.scaled_dot_product_attention(q, k, v)
    got = attention_math(q.transpose(1, 2).contiguous().transpose(1, 2), k, v)  # strided input, as the processor's
    assert got.shape == want.shape and torch.allclose(got, want, atol=1e-5)
    assert not torch.allclose(attention_math(q, k, v * 2), want, atol=1e-3)


SOFTMAX = """
import torch
from quant_utils.kernels import triton_kernels as tk
torch.manual_seed(0)
for shape in [(3, 7), (2, 3, 1000), (1, 32768), (2, 40000)]:
    x = (torch.randn(shape) * 8).half()
    x[..., 0, : shape[-1] // 2] = -30000  # far below the row's max: exp underflows to 0, no NaN
    want = torch.softmax(x.float(), -1)
    y = x.clone()
    got = tk.softmax_(y)
    print("softmax", shape[-1], float((got.float() - want).abs().max()), got.data_ptr() == y.data_ptr())
"""


def test_softmax_kernel_equals_torch_in_place_in_the_interpreter():
    """The decoder attention's row softmax (Triton, interpreted): torch's fp32 softmax within fp16 rounding, in place
    up to SOFTMAX_MAX_COLS values a row, ragged and very negative rows included; longer rows go to torch.softmax."""
    lines = [ln.split() for ln in run_interpreted(SOFTMAX).splitlines() if ln.startswith("softmax")]
    assert [(ln[1], ln[3]) for ln in lines] == [("7", "True"), ("1000", "True"), ("32768", "True"), ("40000", "False")]
    assert all(float(ln[2]) <= 5e-4 for ln in lines), lines


def test_decoder_attention_plan_keeps_the_decode_and_picks_the_faster_op(tiny_pipe, latents, monkeypatch):
    """The decoder's attention processor gives diffusers' decode whichever op a shape takes; the plan measures each
    query shape once, keeps `math` only when it wins by more than the margin, and names the path per latent shape."""
    import copy

    import quant_utils.decoders as dec
    from quant_utils.decoders import (ATTENTION_MARGIN, DecoderAttnProcessor, attention_path, build_tiny_vae,
                                      decoder_attentions, plan_decoder_attention)
    from quant_utils.pipeline import architecture_configs, load_model_config
    from quant_utils.runtime import decode_images

    real, used = dec.attention_math, []
    monkeypatch.setattr(dec, "attention_math", lambda q, k, v: used.append(tuple(q.shape)) or real(q, k, v))
    vae = copy.deepcopy(tiny_pipe.vae).float()
    (attn,) = decoder_attentions(vae)  # the mid block's
    z = latents.float()
    with torch.no_grad():
        want = decode_images(vae, z)
        calls = []

        def measure(shape, device, times):
            calls.append(shape)
            return times

        rows = plan_decoder_attention(vae, tuple(z.shape), lambda s, d: measure(s, d, {"sdpa": 10.0, "math": 9.6}))
        assert isinstance(attn.processor, DecoderAttnProcessor) and rows[0]["path"] == "sdpa"  # within the margin
        assert 9.6 * (1 + ATTENTION_MARGIN) > 10.0 and attention_path(vae, tuple(z.shape)) == "sdpa"
        assert torch.allclose(decode_images(vae, z), want, atol=1e-5) and used == []
        plan_decoder_attention(vae, tuple(z.shape), lambda s, d: measure(s, d, {"sdpa": 1.0, "math": 0.1}))
        assert len(calls) == 1  # measured once per shape
        one = z[:1]
        rows = plan_decoder_attention(vae, tuple(one.shape), lambda s, d: measure(s, d, {"sdpa": 10.0, "math": 5.0}))
        b, _, h, w = one.shape
        assert calls[-1] == (b, attn.heads, h * w, attn.inner_dim // attn.heads) and rows[0]["path"] == "math"
        assert attention_path(vae, tuple(one.shape)) == "math" and attention_path(vae, tuple(z.shape)) == "sdpa"
        assert torch.allclose(decode_images(vae, one), want[:1], atol=1e-4)  # the math op, same decode
        assert used == [calls[-1]]
    # other uses of the block (here: NLC input) go to diffusers' own processor, same result as before
    seq = torch.randn(1, 5, attn.query_dim)
    with torch.no_grad():
        assert torch.allclose(attn(seq), dec.DecoderAttnProcessor().fallback(attn, seq), atol=1e-6)
    tiny = build_tiny_vae(architecture_configs(load_model_config(TINY))["vae_tiny"], "cpu", torch.float32)
    assert plan_decoder_attention(tiny, tuple(z.shape)) == [] and attention_path(tiny, tuple(z.shape)) == "none"


def test_runner_checks_vae_attention_and_measures_on_cuda_only(tiny_pipe):
    from quant_utils.runtime import Runner

    assert Runner(tiny_pipe, vae_attention="auto").vae_attention == "sdpa"  # a CPU measures nothing
    with pytest.raises(ValueError, match="vae_attention='flash'"):
        Runner(tiny_pipe, vae_attention="flash")


@pytest.mark.parametrize("vae", ["fp16", "int8"])
def test_bench_vae_default_variants_are_the_ones_that_apply_to_the_decoder(monkeypatch, vae):
    """bench_vae with no --variants times every variant its decoder takes (channels_last modules: FP16 only; int8
    conv output layouts: int8 only), so its plain command runs; an explicit mismatch is still refused up front."""
    sys.path.insert(0, str(REPO / "scripts"))
    import bench_vae

    from quant_utils.errors import ConfigError

    monkeypatch.delenv("MIXDQ_CONV_NHWC", raising=False)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)  # parse_args refuses a CPU-only machine first
    variants = bench_vae.parse_args(["--vae", vae]).variants
    assert "compile" in variants and "compile-max-autotune" not in variants
    assert any(bench_vae.VARIANTS[v].conv_nhwc for v in variants) == (vae == "int8")
    assert any(bench_vae.VARIANTS[v].channels_last for v in variants) == (vae == "fp16")
    wrong = "compile-channels-last" if vae == "int8" else "compile-nhwc-conv"
    with pytest.raises(ConfigError, match="variants are for the"):
        bench_vae.parse_args(["--vae", vae, "--variants", "compile", wrong])


def test_model_ops_counts_every_gemm_and_conv_of_the_full_size_models(tmp_path):
    """scripts/utils/model_ops.py on meta tensors: the decoder's 33 3x3 convs and the UNet's 743 linears and 51 convs,
    first and last convs by hand (2 x out elements x in channels x taps), work linear in the batch; bad input refused."""
    from conftest import run_main
    from quant_utils.csvio import read_csv

    out = tmp_path / "ops.csv"
    assert run_main("utils/model_ops.py", "--part", "decoder", "--res", 256, "--batch", 2, "--out", out) == 0
    dec = read_csv(out)
    assert (dec["taps"] == 9).sum() == 33 and (dec["kind"] == "conv").sum() == 36
    last = dec[dec["module"] == "decoder.conv_out"].iloc[0]
    assert last["out_shape"] == "2x3x256x256" and last["ops"] == 2 * (2 * 3 * 256 * 256) * 128 * 9
    assert run_main("utils/model_ops.py", "--part", "decoder", "--res", 256, "--batch", 4, "--out", out) == 0
    assert read_csv(out)["ops"].sum() == 2 * dec["ops"].sum()
    assert run_main("utils/model_ops.py", "--part", "unet", "--res", 256, "--batch", 1, "--out", out) == 0
    unet = read_csv(out)
    assert (unet["kind"] == "linear").sum() == 743 and (unet["kind"] == "conv").sum() == 51
    first = unet[unet["module"] == "conv_in"].iloc[0]
    assert first["out_shape"] == "1x320x32x32" and first["ops"] == 2 * (320 * 32 * 32) * 4 * 9
    k = unet[unet["module"].str.endswith("attn2.to_k")].iloc[0]  # cross-attention keys: 77 text tokens
    assert k["out_shape"].startswith("1x77x") and k["in_features"] == 2048
    assert run_main("utils/model_ops.py", "--res", 260) == 2


FUSED_BLOCKS = """
import copy, itertools, warnings
import torch
warnings.simplefilter("ignore")
from quant_utils.kernels import launch, ops, packing, triton_kernels as tk
torch.manual_seed(0)
# the one-pass kernel against its plain-torch twin: layouts, upsample, padding, with and without affine and SiLU
worst, moved, total = 0, 0, 0
for cl, up, pad, aff, silu in itertools.product([False, True], [1, 2], [0, 1], [False, True], [False, True]):
    x = (torch.randn(2, 48, 5, 7) * 3).half()
    x = x.contiguous(memory_format=torch.channels_last) if cl else x
    sc, sh = (torch.rand(2, 48) + 0.5, torch.randn(2, 48)) if aff else (None, None)
    got = tk.norm_act_quant(x, sc, sh, silu, up, pad, (0.05, 3, -128, 127))
    want = ops.norm_act_quant_torch(x, sc, sh, silu, up, pad, (0.05, 3, -128, 127))
    assert got.shape == want.shape == (2, 5 * up + 2 * pad, 7 * up + 2 * pad, 48)
    d = (got.int() - want.int()).abs()
    worst, moved, total = max(worst, int(d.max())), moved + int((d > 0).sum()), total + d.numel()
print("norm_act_quant worst code diff", worst, "moved", moved / total)
# the conv's residual epilogue: (conv + r) * s, both output layouts, in halves too
x = torch.randint(-20, 20, (3, 10, 10, 32), dtype=torch.int8)
w, fmt = packing.pack_weight(torch.randint(-50, 50, (16, 32, 3, 3), dtype=torch.int8), 8)
s, z, b = torch.rand(16) / 100, torch.randint(-9, 9, (16,), dtype=torch.int32), torch.rand(16)
cfg = dict(BM=16, BN=16, num_warps=4, num_stages=1, SWAP=False, SPLIT_K=1, GROUP_M=8)
plain = launch.conv(x, w, s, z, None, None, b, 8, fmt.group, 16, 32, 3, 3, 1, 1, cfg)
r = torch.randn(plain.shape).half()
want = ((plain.float() + r.float()) * 0.5)
for cl in (False, True):
    got = launch.conv(x, w, s, z, None, None, b, 8, fmt.group, 16, 32, 3, 3, 1, 1, cfg, cl, r, 0.5)
    print("residual", cl, float((got.float() - want).abs().max()) < 2e-2 * float(want.abs().max()),
          got.is_contiguous(memory_format=torch.channels_last) == cl)
launch.INT32_LIMIT = 2000  # the batch in parts: the residual split with it
got = launch.conv(x, w, s, z, None, None, b, 8, fmt.group, 16, 32, 3, 3, 1, 1, cfg, False, r, 0.5)
print("residual halves", float((got.float() - want).abs().max()) < 2e-2 * float(want.abs().max()))
launch.INT32_LIMIT = 2**31
try:
    launch.conv(x, w, s, z, None, None, b, 8, fmt.group, 16, 32, 3, 3, 1, 1, cfg, False, r[:, :8], 1.0)
except ValueError as e:
    print("bad residual:", e)
# the custom ops' fake tensors match the real ones (shapes, strides, dtypes: what Inductor plans by)
torch.library.opcheck(torch.ops.mixdq.norm_act_quant.default, (r, None, None, True, 2, 1, 0.05, 3, -128, 127),
                      test_utils=("test_faketensor",))
print("opcheck ok")
# the int8 decoder of the tiny model on the kernels (interpreted): fused blocks against diffusers' forward
from quant_utils.decoders import make_int8_decoder, use_fused_blocks
from quant_utils.norms import use_group_norm
from quant_utils.pipeline import build_pipeline, load_model_config
from quant_utils.quantize import use_kernels
from quant_utils.runtime import decode_images
pipe = build_pipeline(load_model_config("configs/stable-diffusion/sdxl_turbo_tiny.yaml"))
lat = torch.randn(1, 4, 4, 4, generator=torch.Generator().manual_seed(0))
q = make_int8_decoder(pipe.vae, [lat], backend="fake", dtype=torch.float16)
use_kernels(q.decoder)
use_group_norm(q, "triton-affine")  # the GroupNorm statistics the fused blocks take (mixdq::group_affine)
# each block alone, fed the unfused decoder's input (kept from its decode below)
seen = {}
blocks = {k: m for k, m in q.decoder.named_modules() if k in ("up_blocks.1.resnets.0", "up_blocks.1.upsamplers.0")}
hooks = [m.register_forward_pre_hook(lambda mod, a, k=k: seen.__setitem__(k, a[0])) for k, m in blocks.items()]
alone = lambda: {k: m(seen[k], *([None] * ("resnets" in k))).float() for k, m in blocks.items()}
with torch.no_grad():
    fp = decode_images(pipe.vae, lat).float()
    unfused = decode_images(q, lat.half()).float()
    [h.remove() for h in hooks]
    ref = alone()  # diffusers' forward
    n = use_fused_blocks(q, True)
    names = sorted({type(m).__name__ for m in q.decoder.modules() if type(m).__name__.startswith("Fused")})
    fused = decode_images(q, lat.half()).float()
    # each block alone on its unfused input: within fp16 rounding (the upsampler exact)
    fused_alone = alone()
    off = use_fused_blocks(q, False)
    # switched back: no fused class left, and the blocks compute diffusers' forward again, exactly
    left = [type(m).__name__ for m in q.decoder.modules() if type(m).__name__.startswith("Fused")]
    again = alone()
rel = lambda a, b: float((a - b).norm() / b.norm())
print("blocks", n, off, *names)
print("block", *(rel(fused_alone[k], ref[k]) for k in blocks))
print("errors", rel(unfused, fp), rel(fused, unfused), rel(fused, fp),
      not left and all(torch.equal(again[k], ref[k]) for k in blocks))
"""


def test_fused_decoder_blocks_match_the_unfused_decoder_in_the_interpreter():
    """The int8 decoder's fused blocks (`--vae_fuse`): the one-pass GroupNorm-apply/SiLU/upsample/quantize/pad kernel
    equals its plain-torch twin (a code moved by one at most, rarely: the kernel quantizes by x * (1 / s)); the conv's residual epilogue equals (conv + residual) * scale in both
    output layouts and in batch parts, a residual of the wrong shape is refused; on the tiny model the fused decoder
    is as close to the FP16 decode as the unfused one (a block alone, fed the same input: within fp16 rounding; an upsampler exactly), and
    switching back restores diffusers' forward exactly; the custom ops' fake tensors match the real ones (Triton
    kernels interpreted on the CPU)."""
    out = run_interpreted(FUSED_BLOCKS)
    # the kernel's x * (1 / s) (and on CUDA its approximate SiLU) may move a code at a rounding boundary (by one, rarely)
    _, worst, _, moved = next(ln for ln in out.splitlines() if ln.startswith("norm_act_quant")).rsplit(None, 3)
    assert int(worst) <= 1 and float(moved) < 1e-3, out
    assert "residual False True True" in out and "residual True True True" in out, out
    assert "residual halves True" in out and "bad residual: qconv: residual of shape" in out, out
    _, fused_n, off, *names = next(ln for ln in out.splitlines() if ln.startswith("blocks")).split()
    assert int(fused_n) >= 6 and off == "0", out
    assert names == ["FusedResnetBlock2D", "FusedUpsample2D"], out
    _, unfused_err, diff, fused_err, restored = next(ln for ln in out.splitlines() if ln.startswith("errors")).split()
    # fp16 roundings differ (the residual added in fp32, ...): a code flips here and there, and the random tiny
    # decoder amplifies that (~2x per upsampler); the fused decoder must stay as close to FP16 as the unfused one
    assert 0 < float(diff) < 2 * float(unfused_err) and float(fused_err) < 1.2 * float(unfused_err), out
    assert restored == "True", out
    resnet, upsampler = map(float, next(ln for ln in out.splitlines() if ln.startswith("block ")).split()[1:])
    assert 0 < resnet < 2e-3 and upsampler == 0, out
    assert "opcheck ok" in out, out


def test_subpixel_forms_equal_upsample_then_conv():
    """A nearest 2x upsample + 3x3 conv (pad 1) equals its four 2x2 phase convs (subpixel_weights) and the 4x4
    transposed conv (transposed_weight), in float64 to rounding."""
    import torch.nn.functional as F

    from quant_utils.decoders import subpixel_weights, transposed_weight

    g = torch.Generator().manual_seed(0)
    x, w, b = (torch.randn(s, generator=g, dtype=torch.float64) for s in ((2, 5, 6, 7), (3, 5, 3, 3), (3,)))
    ref = F.conv2d(F.interpolate(x, scale_factor=2, mode="nearest"), w, b, padding=1)
    assert torch.allclose(F.conv_transpose2d(x, transposed_weight(w), b, stride=2, padding=1), ref, atol=1e-12)
    xp, phases, out = F.pad(x, (1, 1, 1, 1)), subpixel_weights(w), torch.full_like(ref, float("nan"))
    for p in range(4):
        a, c = divmod(p, 2)
        out[:, :, a::2, c::2] = F.conv2d(xp[:, :, a:a + 7, c:c + 8], phases[p], b)
    assert torch.allclose(out, ref, atol=1e-12)
    assert not torch.allclose(transposed_weight(w)[:, :, 1:3, 1:3], w.transpose(0, 1)[:, :, :2, :2])  # folded taps


def test_fp16_decoder_subpixel_upsamplers_decode_the_same_image(tiny_pipe, latents):
    """`--vae_upsample subpixel` on the FP16 decoder: its upsamplers become transposed convs (state dict unchanged),
    the decode equals diffusers' to float rounding, and switching back restores diffusers' forward exactly."""
    from quant_utils.decoders import use_subpixel_upsample, wants_subpixel
    from quant_utils.runtime import decode_images

    vae, z = tiny_pipe.vae, latents[:1]
    keys = set(vae.state_dict())
    with torch.no_grad():
        ref = decode_images(vae, z)
        n = use_subpixel_upsample(vae, True)
        try:
            names = {type(m).__name__ for m in vae.decoder.modules()}
            sub, sub_keys = decode_images(vae, z), set(vae.state_dict())
            first = [m.subpixel_weight for m in vae.decoder.modules() if type(m).__name__ == "SubpixelUpsample2D"]
            use_subpixel_upsample(vae, False)
            use_subpixel_upsample(vae, True)  # back and forth: the same folded weights (a captured graph may hold them)
            same = all(a is b for a, b in zip(first, [m.subpixel_weight for m in vae.decoder.modules()
                                                      if type(m).__name__ == "SubpixelUpsample2D"]))
        finally:
            off = use_subpixel_upsample(vae, False)
        again = decode_images(vae, z)
    assert n == len(vae.decoder.up_blocks) - 1 and off == 0 and "SubpixelUpsample2D" in names and same and len(first) == n
    assert sub_keys == keys and float((sub - ref).abs().max()) < 1e-4 * float(ref.abs().max()) and not torch.equal(sub, ref)
    assert torch.equal(again, ref) and "SubpixelUpsample2D" not in {type(m).__name__ for m in vae.decoder.modules()}
    assert wants_subpixel("subpixel", False) and not wants_subpixel("nearest", True) and not wants_subpixel("auto", False)
    assert wants_subpixel("auto", True)  # measured faster on the H200, both decoders
    with pytest.raises(ValueError, match="vae_upsample='up'"):
        wants_subpixel("up", True)


SUBPIXEL = """
import warnings
import torch
import torch.nn.functional as F
warnings.simplefilter("ignore")
from quant_utils.kernels import launch, ops, packing
torch.manual_seed(0)
# the kernel's SUBPIXEL mode against float64 phase convs of the same codes, both output layouts, in batch halves too
# (limit 5500: the input, 5376 values, fits; the 2x output, 5760, does not)
z0 = 3
x = torch.randint(-30, 30, (3, 7, 8, 32), dtype=torch.int8)
x[:, 0], x[:, -1], x[:, :, 0], x[:, :, -1] = z0, z0, z0, z0  # the pad ring holds the zero point
q = torch.randint(-127, 128, (4 * 16, 32, 2, 2), dtype=torch.int8)
w, fmt = packing.pack_weight(q, 8)
s, b = torch.rand(4 * 16) / 100, torch.rand(16)
zc = (q.long().sum(dim=(1, 2, 3)) * z0).int()
ref = torch.empty(3, 16, 10, 12, dtype=torch.float64)
xd = (x.double() - z0).permute(0, 3, 1, 2)
for p in range(4):
    a, c = divmod(p, 2)
    ref[:, :, a::2, c::2] = F.conv2d(xd[:, :, a:a + 6, c:c + 7], q[16 * p:16 * (p + 1)].double()) \\
        * s[16 * p:16 * (p + 1)].double().view(1, -1, 1, 1) + b.double().view(1, -1, 1, 1)
cfg = dict(BM=16, BN=16, num_warps=4, num_stages=1, SWAP=False, SPLIT_K=1, GROUP_M=8)
for cl, swap, limit in ((False, False, 2**31), (True, True, 2**31), (True, False, 5500)):
    launch.INT32_LIMIT = limit
    got = launch.conv(x, w, s, zc, None, None, b, 8, fmt.group, 16, 32, 2, 2, 1, 1, dict(cfg, SWAP=swap), cl,
                      subpixel=True)
    err = float((got.double() - ref).abs().max() / ref.abs().max())
    print("kernel", cl, swap, tuple(got.shape), err < 2e-3, got.is_contiguous(memory_format=torch.channels_last) == cl)
launch.INT32_LIMIT = 2**31
try:
    launch.conv(x, w, s, zc, None, None, b, 8, fmt.group, 16, 32, 3, 3, 1, 1, cfg, subpixel=True)
except ValueError as e:
    print("bad kernel:", e)
torch.library.opcheck(torch.ops.mixdq.qconv.default, (x, w, s, zc, None, None, b, 8, fmt.group, 16, 32, 2, 2, 1, 1,
                      True, None, 1.0, True), test_utils=("test_faketensor",))
print("opcheck ok")
# the tiny model's int8 decoder, fused blocks: its upsamplers as phase convs on the folded, requantized weights
from quant_utils.decoders import make_int8_decoder, use_fused_blocks, use_subpixel_upsample
from quant_utils.norms import use_group_norm
from quant_utils.pipeline import build_pipeline, load_model_config
from quant_utils.quantize import use_kernels
from quant_utils.runtime import decode_images
pipe = build_pipeline(load_model_config("configs/stable-diffusion/sdxl_turbo_tiny.yaml"))
lat = torch.randn(1, 4, 4, 4, generator=torch.Generator().manual_seed(0))
q = make_int8_decoder(pipe.vae, [lat], backend="fake", dtype=torch.float16)
use_kernels(q.decoder)
use_group_norm(q, "triton-affine")
use_fused_blocks(q, True)
with torch.no_grad():
    fp = decode_images(pipe.vae, lat).float()
    fused = decode_images(q, lat.half()).float()
    n = use_subpixel_upsample(q, True)
    states = [m.kernel_state.sub for m in q.decoder.modules() if getattr(m, "kernel_state", None) is not None]
    use_subpixel_upsample(q, False); use_subpixel_upsample(q, True)
    kept = [m.kernel_state.sub for m in q.decoder.modules() if getattr(m, "kernel_state", None) is not None]
    print("kept", sum(s is not None for s in states), all(a is b for a, b in zip(states, kept)))
    sub = decode_images(q, lat.half()).float()
    from quant_utils.decoders import decoder_errors
    errs = decoder_errors(pipe.vae, q, lat.half())
    off = use_subpixel_upsample(q, False)
    again = decode_images(q, lat.half()).float()
rel = lambda a, b: float((a - b).norm() / b.norm())
print("decoder", n, off, rel(fused, fp), rel(sub, fp), rel(sub, fused), torch.equal(again, fused))
phase = [r["rel_err"] for r in errs if r["name"].endswith(".conv (subpixel)")]
print("errors", len(phase), max(phase), sum(r["kind"] == "layer" for r in errs))
"""


def test_int8_subpixel_upsamplers_in_the_interpreter():
    """The int8 conv kernel's SUBPIXEL mode (four 2x2 phase convs of the un-upsampled input, one launch) equals float64
    phase convs of the same codes in both output layouts and in batch halves, refuses a 3x3 kernel, and its fake
    tensor matches; on the tiny model's int8 decoder (fused blocks) the phase convs on the folded, requantized weights
    stay as close to the FP16 decode as the upsample + 3x3 conv, and switching back restores it exactly (Triton
    kernels interpreted on the CPU)."""
    out = run_interpreted(SUBPIXEL)
    for layout in ("False False", "True True", "True False"):
        assert f"kernel {layout} (3, 16, 10, 12) True True" in out, out
    assert "bad kernel: qconv subpixel" in out and "opcheck ok" in out, out
    assert "kept 3 True" in out, out  # switched off and on: the same phase-conv states
    _, n, off, fused_err, sub_err, moved, restored = next(ln for ln in out.splitlines() if ln.startswith("decoder")).split()
    assert int(n) >= 1 and off == "0" and restored == "True", out
    # the folded weights' own rounding moves the image a little; the decode must stay about as close to FP16
    assert 0 < float(moved) and float(sub_err) < 1.3 * float(fused_err), out
    # decoder_errors reports each phase-conv upsampler as one layer (its block fed the FP16 decoder's input)
    _, phases, worst, layers = next(ln for ln in out.splitlines() if ln.startswith("errors")).split()
    assert int(phases) == int(n) and 0 < float(worst) < 0.05 and int(layers) > 10, out
