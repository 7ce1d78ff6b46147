"""CUDA-only checks of the serving runtime (skipped without a GPU): CUDA-graph and torch.compile execution
give the eager images, and graph replays pick up new inputs (no stale static buffers)."""
import numpy as np
import pytest
import torch

from conftest import TINY

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


@pytest.fixture(scope="module")
def cuda_pipe():
    from quant_utils.pipeline import build_pipeline, load_model_config

    return build_pipeline(load_model_config(TINY), device="cuda", dtype=torch.float16)


def _with_own_unet(pipe):
    """The pipeline's parts with a copy of its UNet (compile mode compiles the UNet's blocks in place)."""
    import copy
    from types import SimpleNamespace

    parts = ("tokenizer", "tokenizer_2", "text_encoder", "text_encoder_2", "vae", "scheduler")
    return SimpleNamespace(**{k: getattr(pipe, k) for k in parts}, unet=copy.deepcopy(pipe.unet))


def _runner_for(pipe, exec_mode: str, **kw):
    """`compile-blocks`: compiled with --compile_regions blocks (each transformer block a region)."""
    from quant_utils.runtime import Runner

    if exec_mode == "compile-blocks":
        return Runner(pipe, "compile", compile_regions="blocks", **kw)
    return Runner(pipe, exec_mode, **kw)


@pytest.mark.parametrize("exec_mode", ["graph", "compile", "compile-blocks"])
def test_graph_and_compile_match_eager(cuda_pipe, exec_mode):
    from quant_utils.runtime import Runner

    eager, fast = Runner(cuda_pipe, "eager"), _runner_for(_with_own_unet(cuda_pipe), exec_mode)
    for prompts, seeds in ((["a cat", "a dog"], [1, 2]), (["a bird", "a boat"], [3, 4])):  # second call: replay
        ref = eager(prompts, seeds, 64, 64).astype(int)
        out = fast(prompts, seeds, 64, 64).astype(int)
        assert np.abs(out - ref).max() <= 2, exec_mode  # fp16 rounding of fused kernels only
        setup = fast.pop_setup_s()  # the bucket's one-time work: at its first call only
        first = seeds == [1, 2]
        assert (setup["warmup"] > 0 and setup["capture"] > 0) == first and (first or sum(setup.values()) == 0), setup
    assert len(fast.graphs.graphs) == 3  # text, unet, vae captured once for this bucket


@pytest.mark.parametrize("exec_mode", ["graph", "compile", "compile-blocks", "compile-nhwc-conv"])
def test_quantized_kernel_backend_matches_fake(cuda_pipe, monkeypatch, exec_mode):
    """`compile-nhwc-conv`: compiled with the int8 convs writing channels_last outputs (MIXDQ_CONV_NHWC=1)."""
    from quant_utils.calibrate import calibrate
    from quant_utils.quantize import make_spec, quantize_unet, set_backend, uniform_bits
    from quant_utils.kernels import tuning
    from quant_utils.runtime import Runner

    # first candidate tile per shape: fewer Triton compiles, same math (the Runners keep an installed Tuning)
    monkeypatch.setattr(tuning, "_current", tuning.Tuning(autotune=False))
    pipe = _with_own_unet(cuda_pipe)
    quantize_unet(pipe.unet, make_spec(pipe.unet, uniform_bits(pipe.unet, 8), uniform_bits(pipe.unet, 8)))
    calibrate(Runner(pipe), ["a cat", "a dog"], 0, 64, 64)
    fake = Runner(pipe)(["a cat"], [7], 64, 64).astype(float)
    set_backend(pipe.unet, "kernel")
    if exec_mode == "compile-nhwc-conv":
        monkeypatch.setenv("MIXDQ_CONV_NHWC", "1")
        exec_mode = "compile"
    kernel = _runner_for(pipe, exec_mode, vae_exec="eager", layer_plan="off")(["a cat"], [7], 64, 64).astype(float)
    # same integers; fp16 epilogue rounding only (compiled: quantized from fp32 norm/GELU outputs, codes at
    # rounding boundaries may move by one)
    assert np.abs(kernel - fake).mean() < 2.0, exec_mode


def test_fused_projections_on_the_kernels_compile_like_unfused(cuda_pipe, monkeypatch):
    """W8A8 on the kernel backend, attention projections fused (quant_utils/fusion.py), compiled + CUDA graphs: the
    same images as unfused, and every attention fused."""
    from quant_utils.calibrate import calibrate
    from quant_utils.fusion import fuse_qkv
    from quant_utils.kernels import tuning
    from quant_utils.quantize import make_spec, quantize_unet, set_backend, uniform_bits
    from quant_utils.runtime import Runner

    monkeypatch.setattr(tuning, "_current", tuning.Tuning(autotune=False))
    pipe = _with_own_unet(cuda_pipe)
    quantize_unet(pipe.unet, make_spec(pipe.unet, uniform_bits(pipe.unet, 8), uniform_bits(pipe.unet, 8)))
    calibrate(Runner(pipe), ["a cat", "a dog"], 0, 64, 64)
    set_backend(pipe.unet, "kernel")
    fused = _with_own_unet(pipe)
    done = fuse_qkv(fused.unet)
    assert done["self"] > 0 and done["cross"] > 0 and not done["kept"], done
    ref = Runner(pipe, "eager", layer_plan="off")(["a cat"], [7], 64, 64).astype(float)
    out = Runner(fused, "compile", vae_exec="eager", layer_plan="off")(["a cat"], [7], 64, 64).astype(float)
    assert np.abs(out - ref).mean() < 2.0


def test_layer_plan_measured_then_compiled_matches_eager(cuda_pipe, monkeypatch):
    """The per-bucket layer plan: measured for real on the GPU (every kernel layer timed against cuBLAS/cuDNN); then
    a forced plan (linears dense at batch 1 only) gives the same images compiled as eager, at both buckets."""
    from quant_utils import layer_plan
    from quant_utils.calibrate import calibrate
    from quant_utils.kernels import tuning
    from quant_utils.quantize import make_spec, quantize_unet, set_backend, uniform_bits
    from quant_utils.runtime import Runner

    monkeypatch.setattr(tuning, "_current", tuning.Tuning(autotune=False))
    # no times from an earlier process (they would stand in for the measurement, and for the forced plan below)
    monkeypatch.setenv("MIXDQ_PLAN_CACHE", "none")
    pipe = _with_own_unet(cuda_pipe)
    quantize_unet(pipe.unet, make_spec(pipe.unet, uniform_bits(pipe.unet, 8), uniform_bits(pipe.unet, 8)))
    calibrate(Runner(pipe), ["a cat", "a dog"], 0, 64, 64)
    set_backend(pipe.unet, "kernel")
    eager_pipe, fast_pipe = _with_own_unet(pipe), _with_own_unet(pipe)  # unplanned copies
    Runner(pipe, "eager")(["a cat"], [7], 64, 64)
    rows = layer_plan.plan_rows(pipe.unet)
    assert rows and sum(r["layers"] for r in rows) == len(layer_plan.kernel_layers(pipe.unet))
    assert all(r["own_us"] > 0 and r["dense_us"] > 0 and r["path"] in ("int", "wonly", "dense") for r in rows)

    monkeypatch.setattr(layer_plan, "measure_paths", lambda st, x: {
        st.path: 2.0, "dense": 1.0 if st.kind == "linear" and x.shape[0] == 1 else 3.0})
    eager = Runner(eager_pipe, "eager", dense_budget=1.0)  # no budget: every linear goes dense
    fast = Runner(fast_pipe, "compile", vae_exec="eager", dense_budget=1.0)
    for seeds in ([7], [8, 9]):
        ref = eager(["a cat"] * len(seeds), seeds, 64, 64).astype(int)
        out = fast(["a cat"] * len(seeds), seeds, 64, 64).astype(int)
        assert np.abs(out - ref).max() <= 3, seeds
    linears = sum(1 for _, m in layer_plan.kernel_layers(fast_pipe.unet) if m.kernel_state.kind == "linear")
    assert layer_plan.dense_summary(fast_pipe.unet, (1, 4, 8, 8))["dense_layers"] == linears > 0
    assert layer_plan.dense_summary(fast_pipe.unet, (2, 4, 8, 8))["dense_layers"] == 0


def test_dynamic_compiled_blocks_serve_new_buckets_like_eager(cuda_pipe):
    """compile_shapes=dynamic (the default): buckets after the first reuse the symbolic-shape graphs and still give
    the eager images (fp16 rounding of fused kernels only)."""
    from quant_utils.runtime import Runner

    eager, fast = Runner(cuda_pipe, "eager"), Runner(_with_own_unet(cuda_pipe), "compile", compile_shapes="dynamic")
    for res, seeds in ((64, [1]), (64, [2, 3]), (96, [4, 5, 6]), (96, [7])):
        prompts = ["a cat"] * len(seeds)
        ref = eager(prompts, seeds, res, res).astype(int)
        out = fast(prompts, seeds, res, res).astype(int)
        assert np.abs(out - ref).max() <= 3, (res, len(seeds))


def test_int8_decoder_kernels_match_the_fake_path(cuda_pipe):
    """The int8 VAE decoder on the kernel backend computes what its fake-quant twin computes (same integers), and
    both stay close to the FP16 decode."""
    import copy

    from quant_utils.decoders import decoder_errors, make_int8_decoder
    from quant_utils.quantize import set_backend
    from quant_utils.runtime import Runner, decode_images

    z = Runner(cuda_pipe).denoise(["a cat", "a dog"], [1, 2], 64, 64)
    fake = make_int8_decoder(cuda_pipe.vae, [z], backend="fake")
    kern = copy.deepcopy(fake)
    set_backend(kern.decoder, "kernel")
    with torch.no_grad():
        a, b = decode_images(fake, z).float(), decode_images(kern, z).float()
    assert (a - b).abs().mean() < 2 / 255 and not torch.isnan(b).any()
    assert all(r["rel_err"] < 0.1 for r in decoder_errors(cuda_pipe.vae, kern, z.half()) if r["kind"] == "image")


@pytest.mark.parametrize("compiled", [False, True])
def test_int8_decoder_with_channels_last_conv_outputs_decodes_alike(cuda_pipe, monkeypatch, compiled):
    """`--vae_conv_out nhwc` (auto's choice for a compiled decode on CUDA): the int8 decoder's convs write channels_last outputs; the decoder, eager or
    compiled, gives the images it gives with NCHW outputs (up to fp16 rounding of reordered reductions)."""
    import torch._dynamo

    from quant_utils.decoders import make_int8_decoder
    from quant_utils.kernels.backend import use_conv_outputs
    from quant_utils.runtime import Runner, decode_images

    monkeypatch.delenv("MIXDQ_CONV_NHWC", raising=False)  # the reference: NCHW outputs (a job may set the flag)
    z = Runner(cuda_pipe).denoise(["a cat", "a dog"], [1, 2], 64, 64)
    dec = make_int8_decoder(cuda_pipe.vae, [z], backend="kernel")
    run = torch.compile(lambda lat: decode_images(dec, lat)) if compiled else (lambda lat: decode_images(dec, lat))
    with torch.no_grad():
        ref = run(z).float()
        assert use_conv_outputs(dec, "nhwc") > 0
        torch._dynamo.reset()  # (a changed layout also fails the compiled code's guards)
        out = run(z).float()
    # reordered fp16 reductions may move a code at a rounding boundary; a wrong layout would scramble the image
    diff = (out - ref).abs()
    assert diff.mean() < 1 / 255 and diff.max() < 16 / 255 and not torch.isnan(out).any(), (diff.mean(), diff.max())
    if not compiled:  # the flag took effect: an int8 conv's output is channels_last
        conv = next(m for m in dec.decoder.modules()
                    if getattr(m, "kernel_state", None) is not None and m.kernel_state.kind == "conv"
                    and m.kernel_state.path == "int")
        seen = []
        conv.register_forward_hook(lambda mod, args, y: seen.append(y.is_contiguous(memory_format=torch.channels_last)))
        with torch.no_grad():
            decode_images(dec, z)
        assert seen and all(seen), seen


@pytest.mark.parametrize("form", ["resnet", "upsampler", "norm_out"])
def test_fused_blocks_one_pass_kernel_equals_its_torch_twin_on_cuda(form):
    """norm_act_quant on CUDA (ex2/rcp approximations and cvt.rni in PTX, which the interpreter test cannot reach)
    against ops.norm_act_quant_torch at decoder-like shapes: a code moves by one at most, rarely."""
    from quant_utils.kernels import ops
    from quant_utils.kernels import triton_kernels as tk

    torch.manual_seed(0)
    c, up, aff, silu = {"resnet": (512, 1, True, True), "upsampler": (256, 2, False, False),
                        "norm_out": (128, 1, True, True)}[form]
    x = (torch.randn(2, c, 48, 40, device="cuda") * 4).half().contiguous(memory_format=torch.channels_last)
    sc, sh = ((torch.rand(2, c, device="cuda") + 0.5, torch.randn(2, c, device="cuda")) if aff else (None, None))
    p = (0.04, -7, -128, 127)
    got = tk.norm_act_quant(x, sc, sh, silu, up, 1, p)
    want = ops.norm_act_quant_torch(x, sc, sh, silu, up, 1, p)
    d = (got.int() - want.int()).abs()
    assert got.shape == want.shape and int(d.max()) <= 1 and float((d > 0).float().mean()) < 1e-3, \
        (int(d.max()), float((d > 0).float().mean()))


@pytest.mark.parametrize("compiled", [False, True])
def test_int8_decoder_fused_blocks_decode_as_the_unfused_ones(cuda_pipe, compiled):
    """`--vae_fuse` (auto's choice on CUDA): the int8 decoder's resnets and upsamplers through the one-pass
    norm/SiLU/upsample/quantize kernel and the conv's residual epilogue, eager or compiled (custom ops in the graph),
    stay as close to the FP16 decode as the unfused decoder (channels_last conv outputs and triton-affine
    GroupNorms, the compiled decode's settings)."""
    import torch._dynamo

    from quant_utils.decoders import make_int8_decoder, use_fused_blocks
    from quant_utils.kernels.backend import use_conv_outputs
    from quant_utils.norms import use_group_norm
    from quant_utils.runtime import Runner, decode_images

    z = Runner(cuda_pipe).denoise(["a cat", "a dog"], [1, 2], 64, 64)
    dec = make_int8_decoder(cuda_pipe.vae, [z], backend="kernel")
    use_conv_outputs(dec, "nhwc")
    use_group_norm(dec, "triton-affine")
    run = torch.compile(lambda lat: decode_images(dec, lat)) if compiled else (lambda lat: decode_images(dec, lat))
    rel = lambda a, b: float((a - b).norm() / b.norm())  # noqa: E731
    with torch.no_grad():
        fp = decode_images(cuda_pipe.vae, z).float()
        unfused = run(z).float()
        assert use_fused_blocks(dec, True) >= 6
        torch._dynamo.reset()
        fused = run(z).float()
        use_fused_blocks(dec, False)
    assert not torch.isnan(fused).any()
    assert rel(fused, fp) < 1.2 * rel(unfused, fp) + 1e-3 and rel(fused, unfused) < 2 * rel(unfused, fp) + 1e-3, \
        (rel(fused, fp), rel(unfused, fp), rel(fused, unfused))


@pytest.mark.parametrize("compiled", [False, True])
def test_subpixel_upsamplers_decode_as_upsample_then_conv(cuda_pipe, compiled):
    """`--vae_upsample subpixel` on CUDA, eager or compiled: the FP16 decoder's transposed convs decode its image to fp16
    rounding; the int8 decoder's phase-conv kernel (fused blocks, folded weights requantized) stays about as close to
    the FP16 decode as its upsample + 3x3 conv."""
    import torch._dynamo

    from quant_utils.decoders import make_int8_decoder, use_fused_blocks, use_subpixel_upsample
    from quant_utils.kernels.backend import use_conv_outputs
    from quant_utils.norms import use_group_norm
    from quant_utils.runtime import Runner, decode_images

    z = Runner(cuda_pipe).denoise(["a cat", "a dog"], [1, 2], 64, 64)
    dec = make_int8_decoder(cuda_pipe.vae, [z], backend="kernel")
    use_conv_outputs(dec, "nhwc")
    use_group_norm(dec, "triton-affine")
    use_fused_blocks(dec, True)
    rel = lambda a, b: float((a - b).norm() / b.norm())  # noqa: E731
    out = {}
    with torch.no_grad():
        for vae in (cuda_pipe.vae, dec):
            for sub in (False, True):
                assert use_subpixel_upsample(vae, sub) == (3 if sub else 0)
                torch._dynamo.reset()
                run = torch.compile(lambda lat, v=vae: decode_images(v, lat)) if compiled else \
                    (lambda lat, v=vae: decode_images(v, lat))
                out[vae is dec, sub] = run(z).float()
            use_subpixel_upsample(vae, False)
    fp, fp_sub, q, q_sub = out[False, False], out[False, True], out[True, False], out[True, True]
    assert rel(fp_sub, fp) < 2e-3, rel(fp_sub, fp)
    assert not torch.isnan(q_sub).any() and rel(q_sub, fp) < 1.3 * rel(q, fp) + 1e-3, (rel(q_sub, fp), rel(q, fp))


@pytest.mark.parametrize("kind", ["tiny", "int8"])
def test_compiled_runner_with_each_decoder_matches_eager(cuda_pipe, kind):
    from types import SimpleNamespace

    from quant_utils.cli import PROMPTS_32, decoder_from_args
    from quant_utils.runtime import Runner

    args = SimpleNamespace(vae=kind, config=TINY, random_weights=False, seed=0, steps=None,
                           calib_prompts=PROMPTS_32)
    vae = decoder_from_args(cuda_pipe, args, res=64)
    eager = Runner(cuda_pipe, "eager", vae=vae, vae_kind=kind)
    fast = Runner(_with_own_unet(cuda_pipe), "compile", vae=vae, vae_kind=kind)
    ref = eager(["a cat", "a dog"], [1, 2], 64, 64).astype(int)
    out = fast(["a cat", "a dog"], [1, 2], 64, 64).astype(int)
    assert fast.vae_kind == kind and fast.vae_exec == "compiled-static", (fast.vae_kind, fast.vae_exec)
    if kind == "tiny":  # fp16 throughout: within a few levels everywhere
        assert np.abs(out - ref).max() <= 3
    else:  # Inductor's fp16 rounding moves activation codes at rounding boundaries, which the random tiny decoder
        # amplifies (an H200: mean 0.87 levels, max 6): compiled must be no further from the FP16 decoder's image
        # than eager int8 is, and nearer eager int8 than eager int8 is to it
        fp16 = Runner(_with_own_unet(cuda_pipe), "eager")(["a cat", "a dog"], [1, 2], 64, 64).astype(int)
        quant_err, compiled_err, to_eager = (np.abs(a - b).mean() for a, b in ((ref, fp16), (out, fp16), (out, ref)))
        assert compiled_err < 1.2 * quant_err + 0.1 and to_eager < quant_err, \
            (quant_err, compiled_err, to_eager)


def test_decoder_attention_math_matches_sdpa_and_a_math_plan_compiles_like_eager(cuda_pipe):
    """attention_math and SDPA agree at the SDXL VAE's head dim; both paths are timed; a decoder planned onto
    `math` (forced) decodes, compiled and captured, the images the eager SDPA decoder gives."""
    import copy

    from diffusers.models.attention_processor import AttnProcessor2_0

    from quant_utils.decoders import attention_math, decoder_attentions, measure_attention, plan_decoder_attention
    from quant_utils.runtime import Runner

    sdpa = torch.nn.functional.scaled_dot_product_attention
    q, k, v = (torch.randn(2, 1, 4096, 512, device="cuda", dtype=torch.float16) for _ in range(3))
    ref = sdpa(q.float(), k.float(), v.float())
    err_math, err_sdpa = ((o.float() - ref).abs().max().item() for o in (attention_math(q, k, v), sdpa(q, k, v)))
    assert err_math <= max(4 * err_sdpa, 1e-3), (err_math, err_sdpa)  # within a few fp16 roundings of SDPA's
    from quant_utils.kernels.triton_kernels import softmax_

    s = torch.randn(3, 16384, device="cuda", dtype=torch.float16) * 8
    want, ptr = torch.softmax(s.float(), -1), s.data_ptr()
    got = softmax_(s)
    assert got.data_ptr() == ptr and (got.float() - want).abs().max().item() <= 1e-3  # in place, fp16 rounding
    times = measure_attention((1, 1, 16384, 512), "cuda")
    assert times["sdpa"] > 0 and times["math"] > 0

    def fresh_vae():
        vae = copy.deepcopy(cuda_pipe.vae)
        for attn in decoder_attentions(vae):
            attn.set_processor(AttnProcessor2_0())  # diffusers' own, whatever an earlier Runner installed
        return vae

    ref_pipe, pipe = _with_own_unet(cuda_pipe), _with_own_unet(cuda_pipe)
    ref_pipe.vae, pipe.vae = fresh_vae(), fresh_vae()
    rows = plan_decoder_attention(pipe.vae, (2, 4, 8, 8), lambda s, d: {"sdpa": 2.0, "math": 1.0})
    assert [r["path"] for r in rows] == ["math"]
    prompts, seeds = ["a cat", "a dog"], [1, 2]
    ref = Runner(ref_pipe, "eager", vae_attention="sdpa")(prompts, seeds, 64, 64).astype(int)
    out = Runner(pipe, "compile")(prompts, seeds, 64, 64).astype(int)
    assert np.abs(out - ref).max() <= 2


@pytest.mark.parametrize("form", ["triton", "triton-affine"])
@pytest.mark.parametrize("layout", ["nchw", "nhwc"])
def test_triton_group_norm_matches_native_compiled_and_in_a_graph(layout, form):
    """The `triton` and `triton-affine` GroupNorms (quant_utils/norms.py: statistics from the Triton moments kernel;
    the second with its per-group combine in a kernel too) on CUDA: PyTorch's GroupNorm in fp16 numbers at decoder-
    and UNet-like shapes, eager, compiled, and replayed from a CUDA graph."""
    import torch.nn.functional as F

    from quant_utils.norms import GROUP_NORM_FUNCTIONS

    group_norm_triton = GROUP_NORM_FUNCTIONS[form]
    fmt = torch.channels_last if layout == "nhwc" else torch.contiguous_format
    compiled = torch.compile(lambda x, w, b: F.silu(group_norm_triton(x, 32, w, b, 1e-6)))
    for shape in [(2, 128, 256, 256), (1, 320, 64, 64), (4, 1280, 16, 16)]:
        g = torch.Generator("cuda").manual_seed(0)
        x = (torch.randn(shape, device="cuda", generator=g) * 2 + 3).half().contiguous(memory_format=fmt)
        w, b = torch.randn(shape[1], device="cuda", generator=g).half(), torch.randn(shape[1], device="cuda", generator=g).half()
        ref = F.silu(F.group_norm(x.float(), 32, w.float(), b.float(), 1e-6))
        with torch.no_grad():
            eager = F.silu(group_norm_triton(x, 32, w, b, 1e-6))
            out = compiled(x, w, b)
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph):
                replayed = compiled(x, w, b)
            x.copy_(x.flip(0))  # new inputs in the captured buffer: the replay must see them
            graph.replay()
        for y in (eager, out):
            assert (y.float() - ref).abs().max().item() < 2e-2, shape
        ref_flipped = F.silu(F.group_norm(x.float(), 32, w.float(), b.float(), 1e-6))
        assert (replayed.float() - ref_flipped).abs().max().item() < 2e-2, shape


def test_service_encoders_on_the_gpu():
    """The service's --encode_on device PNG on CUDA: crc32_on_device (tensor ops there) is zlib's, each file
    decodes to its image, the CRC written on the host (the service's way) gives the same file; torchvision's nvJPEG gives JPEGs of the right size."""
    import io
    import zlib

    from PIL import Image

    from quant_utils.serving.images import PngOnHost, crc32_on_device, encode_jpeg_on_device, encode_png_on_device

    rows = torch.randint(0, 256, (3, 3_147_060 + 7), dtype=torch.uint8, device="cuda")
    assert crc32_on_device(rows).tolist() == [zlib.crc32(r.cpu().numpy()) for r in rows]
    imgs = torch.randint(0, 256, (2, 3, 96, 160), dtype=torch.uint8, device="cuda")
    for img, file in zip(imgs, encode_png_on_device(imgs)):
        assert np.array_equal(np.asarray(Image.open(io.BytesIO(bytes(file)))), img.permute(1, 2, 0).cpu().numpy())
    host = [PngOnHost(f).body() for f in encode_png_on_device(imgs, crc_on_device=False)]  # the service's way
    assert host == [bytes(f) for f in encode_png_on_device(imgs)]
    for body in encode_jpeg_on_device(imgs):
        assert Image.open(io.BytesIO(body)).size == (160, 96)
