"""quant_utils.quantized_io: packed-integer quantized folders, saved and loaded without the FP16 UNet (issue 18)."""
import copy
import json
import shutil

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from conftest import REPO, TINY, run_main
from quant_utils.bitconfig import config_dir, read_bit_config, read_protect_list
from quant_utils.calibrate import observing
from quant_utils.csvio import read_csv
from quant_utils.kernels import packing
from quant_utils.errors import ConfigError
from quant_utils.quantize import make_spec, quant_layers, quantize_unet, uniform_bits
from quant_utils.quantized_io import (WEIGHTS_FILE, build_skeleton, fill_layer, load_quantized, read_config,
                                      save_quantized)

MODEL = "sdxl_turbo_tiny"
PROTECT = "act_sensitivie_a8_1%.pt"
# every shipped weight config: uniform 8/6/4 with A8, MixDQ's mixed ones with their act configs and protect list
CONFIGS = {"uniform_8": ("uniform_8.yaml", None), "uniform_6": ("uniform_6.yaml", None),
           "uniform_4": ("uniform_4.yaml", None), "weight_4.00": ("weight_4.00.yaml", "act_7.77.yaml"),
           "weight_3.66": ("weight_3.66.yaml", "act_7.38.yaml")}


def unet_inputs(unet, seed=0):
    g = torch.Generator().manual_seed(seed)
    c = unet.config
    pooled = c.projection_class_embeddings_input_dim - 6 * c.addition_time_embed_dim
    return dict(sample=torch.randn(2, 4, 8, 8, generator=g), timestep=torch.tensor([999.0, 500.0]),
                encoder_hidden_states=torch.randn(2, 77, c.cross_attention_dim, generator=g) * 3,
                added_cond_kwargs={"text_embeds": torch.randn(2, pooled, generator=g),
                                   "time_ids": torch.tensor([[64.0, 64, 0, 0, 64, 64]]).repeat(2, 1)})


def quantized_unet(tiny_pipe, name):
    """The tiny UNet quantized with a shipped config (min-max ranges: fast), activations calibrated on one step."""
    wfile, afile = CONFIGS[name]
    unet = copy.deepcopy(tiny_pipe.unet)
    wcfg = read_bit_config(config_dir(MODEL, "weight") / wfile)
    if afile:
        acfg, protect = read_bit_config(config_dir(MODEL, "act") / afile), read_protect_list(config_dir(MODEL, "act") / PROTECT)
    else:
        acfg, protect = uniform_bits(unet, 8), []
    quantize_unet(unet, make_spec(unet, wcfg, acfg, protect, w_method="minmax", a_method="minmax"), search=False)
    with observing(unet), torch.no_grad():
        unet(**unet_inputs(unet, seed=1))
    return unet


@pytest.fixture(scope="module")
def w8_folder(tiny_pipe, tmp_path_factory):
    folder = tmp_path_factory.mktemp("w8") / "w8a8"
    save_quantized(quantized_unet(tiny_pipe, "uniform_8"), folder)
    return folder


@pytest.mark.parametrize("name", list(CONFIGS))
def test_round_trip_of_every_shipped_config_is_exact(name, tiny_pipe, tmp_path, monkeypatch):
    unet = quantized_unet(tiny_pipe, name)
    inputs = unet_inputs(unet)
    with torch.no_grad():
        want = unet(**inputs).sample
    save_quantized(unet, tmp_path / "q")
    monkeypatch.setattr(packing, "pack_weight", lambda *a, **k: pytest.fail("loading must not re-pack"))
    loaded = load_quantized(tmp_path / "q")
    # every layer's codes, scales, activation ranges and bias; no FP weight held
    pairs = list(zip(quant_layers(unet), quant_layers(loaded)))
    assert len(pairs) == 373 and {m.w_bits for _, m in quant_layers(loaded)} >= ({2, 4, 8} if "." in name else set())
    for (n, a), (n2, b) in pairs:
        assert n == n2 and b.weight is None and (a.w_bits, a.a_bits, a.split, a.bos) == (b.w_bits, b.a_bits, b.split, b.bos)
        for t in ("w_int", "w_scale", "w_zero_point", "bias"):
            x, y = getattr(a, t), getattr(b, t)
            assert (x is None and y is None) or torch.equal(x, y), (n, t)
        for q in ("act_quant", "act_quant2"):
            qa, qb = getattr(a, q), getattr(b, q)
            assert (qa is None) == (qb is None) and (qa is None or (qa.scale == qb.scale and qa.zero_point == qb.zero_point))
    owned = {f"{n}.{k}" for n, m in quant_layers(unet) for k in m.state_dict()}
    rest_a, rest_b = ({k: v for k, v in u.state_dict().items() if k not in owned} for u in (unet, loaded))
    assert rest_a.keys() == rest_b.keys() and all(torch.equal(rest_a[k], rest_b[k]) for k in rest_a)
    with torch.no_grad():
        assert torch.equal(loaded(**inputs).sample, want)
    # on disk the weights are packed exactly as the kernels pack them (2-bit layers: 4 codes a byte)
    monkeypatch.undo()
    with safe_open(str(tmp_path / "q" / WEIGHTS_FILE), "pt") as f:
        for n, m in quant_layers(unet):
            t = f.get_tensor(f"{n}.weight_packed")
            packed, fmt = packing.pack_weight(m.w_int, packing.storage_bits(m.w_bits), m.split if m.act_quant2 else None)
            assert torch.equal(t, packed) and t.dtype == (torch.int8 if fmt.bits == 8 else torch.uint8)
            assert t.shape == (m.out_features, fmt.k_padded * fmt.bits // 8)


@pytest.mark.parametrize("name", ["weight_3.66"])
def test_kernel_state_filled_from_the_file_equals_prepare(name, tiny_pipe, tmp_path, monkeypatch):
    """The kernel backend's per-layer state built from the packed bytes (no re-packing) is the one prepare() builds
    from the freshly quantized layer: same packed bytes, scales, epilogue constants, path (CPU: no CUDA needed)."""
    unet = quantized_unet(tiny_pipe, name)
    save_quantized(unet, tmp_path / "q")
    cfg = read_config(tmp_path / "q")
    skeleton = build_skeleton(cfg, tmp_path / "q")
    monkeypatch.setattr(packing, "pack_weight", lambda *a, **k: pytest.fail("loading must not re-pack"))
    with safe_open(str(tmp_path / "q" / WEIGHTS_FILE), "pt") as f:
        for name_, m in quant_layers(skeleton):
            fill_layer(m, name_, cfg["layers"][name_], f.get_tensor, torch.float32, kernel=True)
    monkeypatch.undo()
    paths = set()
    for (n, orig), (_, got) in zip(quant_layers(unet), quant_layers(skeleton)):
        ref = copy.deepcopy(orig)
        ref.prepare_kernels()
        a, b = ref.kernel_state, got.kernel_state
        paths.add(a.path)
        assert (a.path, a.fmt, a.shape, a.split, a.bos, a.act1, a.act2) == (b.path, b.fmt, b.shape, b.split, b.bos, b.act1, b.act2), n
        assert len(a.tensors()) == len(b.tensors()) and all(torch.equal(x, y) for x, y in zip(a.tensors(), b.tensors())), n
        assert got.weight is None and got.w_int.numel() == 0
    assert {"int", "wonly"} <= paths or name == "uniform_4"


def test_quant_txt2img_save_then_load_gives_identical_images(tmp_path, prompts_file, capsys, monkeypatch):
    """MixDQ weight_3.66 (2-bit layers, protected activations, split, BOS): the images from the loaded folder are
    bit-identical to the run that saved it; loading builds no FP UNet, reads no FP16 weights, calibrates nothing."""
    d = config_dir(MODEL, "weight").parent
    bits = ["--config_weight_mp", d / "weight" / "weight_3.66.yaml", "--config_act_mp", d / "act" / "act_7.38.yaml",
            "--act_protect", d / "act" / PROTECT]
    common = ["--num_imgs", 2, "--batch_size", 1, "--prompts_file", prompts_file]
    calib = ["--calib_prompts", prompts_file, "--calib_num", 1, "--w_method", "minmax", "--a_method", "minmax"]
    assert run_main("quant_txt2img.py", *bits, *common, *calib, "--base_path", tmp_path / "a",
                    "--save_quantized", tmp_path / "packed") == 0
    out = capsys.readouterr().out
    assert "quantized folder written" in out and "first call" in out and "warm" in out
    assert json.loads((tmp_path / "packed" / "config.json").read_text())["format_version"] == 1

    from diffusers import UNet2DConditionModel

    import quant_utils.mixdq as mixdq

    made = []
    original = UNet2DConditionModel.from_config.__func__

    def spy(cls, *a, **kw):
        unet = original(cls, *a, **kw)
        made.append(all(p.is_meta for p in unet.parameters()))
        return unet

    monkeypatch.setattr(UNet2DConditionModel, "from_config", classmethod(spy))
    monkeypatch.setattr(UNet2DConditionModel, "from_pretrained", lambda *a, **k: pytest.fail("FP16 UNet read"))
    monkeypatch.setattr(mixdq, "calibrate", lambda *a, **k: pytest.fail("calibrated"))
    assert run_main("quant_txt2img.py", "--quantized", tmp_path / "packed", *common, "--base_path", tmp_path / "b") == 0
    assert made == [True]  # one UNet built, on the meta device
    assert run_main("txt2img.py", "--quantized", tmp_path / "packed", *common, "--base_path", tmp_path / "c") == 0
    for i in range(2):
        images = [np.asarray(Image.open(tmp_path / sub / "generated_images" / f"0000{i}.png")) for sub in "abc"]
        assert np.array_equal(images[0], images[1]) and np.array_equal(images[0], images[2])
    m = read_csv(tmp_path / "b" / "generated_images" / "manifest.csv")
    assert m["first_call"].tolist() == [1, 0]
    assert "loaded quantized folder" in capsys.readouterr().out
    # the bit configs come from the folder: giving them too is refused
    assert run_main("quant_txt2img.py", "--quantized", tmp_path / "packed", "--wbits", 4) == 2
    assert "takes the bit configs from its folder: drop --wbits" in capsys.readouterr().err


def test_quantized_with_a_pretrained_model_never_reads_its_unet(tiny_pipe, w8_folder, tmp_path, prompts_file):
    """The real-model path: from_pretrained of the other components; the unet subfolder's weights are not read
    (here: deleted; its config.json is what the folder's architecture is checked against)."""
    model = tmp_path / "model"
    tiny_pipe.save_pretrained(model)
    weights = list((model / "unet").glob("*.safetensors"))
    assert weights
    for w in weights:
        w.unlink()
    cfg = tmp_path / "pretrained.yaml"
    cfg.write_text(f"model:\n  source: pretrained\n  path: {model}\n  variant: null\n  dtype: float32\n"
                   "sampling:\n  height: 64\n  width: 64\n")
    for config, out in ((cfg, "pretrained"), (TINY, "tiny")):
        assert run_main("txt2img.py", "--config", config, "--quantized", w8_folder, "--num_imgs", 1, "--prompts_file",
                        prompts_file, "--base_path", tmp_path / out) == 0
    images = [np.asarray(Image.open(tmp_path / out / "generated_images" / "00000.png")) for out in ("pretrained", "tiny")]
    assert np.array_equal(*images)  # the same text encoders and VAE (saved from the tiny pipeline), the same UNet


def _rewrite(folder, change):
    tensors = load_file(str(folder / WEIGHTS_FILE))
    change(tensors)
    save_file(tensors, str(folder / WEIGHTS_FILE), metadata={"format": "mixdq-quantized-unet", "format_version": "1"})


def _set_version(v):
    def change(folder):
        cfg = json.loads((folder / "config.json").read_text())
        cfg["format_version"] = v
        (folder / "config.json").write_text(json.dumps(cfg))
    return change


BAD = {
    "newer version": (_set_version(2), "version 2 was written by newer code"),
    "old version": (_set_version(0), "version 0 is not readable by this code"),
    "no config": (lambda f: (f / "config.json").unlink(), "no config.json"),
    "bad json": (lambda f: (f / "config.json").write_text("{"), "not valid JSON"),
    "other format": (lambda f: (f / "config.json").write_text('{"_class_name": "UNet2DConditionModel"}'), "not a quantized"),
    "truncated": (lambda f: (f / WEIGHTS_FILE).write_bytes((f / WEIGHTS_FILE).read_bytes()[:5000]), "damaged or truncated"),
    "no weights": (lambda f: (f / WEIGHTS_FILE).unlink(), "incomplete"),
    "missing tensor": (lambda f: _rewrite(f, lambda t: t.pop("conv_in.weight_packed")), r"missing tensor\(s\) conv_in.weight_packed"),
    "unknown tensor": (lambda f: _rewrite(f, lambda t: t.update(extra=torch.zeros(1))), r"unknown tensor\(s\) extra"),
    "wrong dtype": (lambda f: _rewrite(f, lambda t: t.update({"conv_in.w_scale": t["conv_in.w_scale"].half()})),
                    "conv_in.w_scale is F16"),
}


@pytest.mark.parametrize("case", list(BAD))
def test_damaged_or_foreign_folders_are_refused_with_one_clear_error(case, w8_folder, tmp_path):
    folder = tmp_path / "q"
    shutil.copytree(w8_folder, folder)
    change, message = BAD[case]
    change(folder)
    with pytest.raises(ConfigError, match=message):
        load_quantized(folder)


def test_bad_folder_on_the_command_line_is_one_error_line(w8_folder, tmp_path, capsys):
    folder = tmp_path / "q"
    shutil.copytree(w8_folder, folder)
    _set_version(2)(folder)
    assert run_main("quant_txt2img.py", "--quantized", folder, "--base_path", tmp_path) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error:") and "newer code" in err[0]
    assert run_main("txt2img.py", "--quantized", tmp_path / "nowhere", "--base_path", tmp_path) == 2
    assert "does not exist" in capsys.readouterr().err
    # a folder made for another architecture is refused before anything is built
    other = tmp_path / "other.yaml"
    other.write_text((REPO / TINY).read_text().replace("cross_attention_dim: 64", "cross_attention_dim: 32"))
    assert run_main("txt2img.py", "--config", other, "--quantized", w8_folder, "--base_path", tmp_path) == 2
    assert "another architecture" in capsys.readouterr().err


def test_save_writes_atomically_and_never_over_a_foreign_folder(tiny_pipe, tmp_path):
    unet = quantized_unet(tiny_pipe, "uniform_8")
    foreign = tmp_path / "unet"
    foreign.mkdir()
    (foreign / "config.json").write_text('{"_class_name": "UNet2DConditionModel"}')
    with pytest.raises(ConfigError, match="not a quantized model folder"):
        save_quantized(unet, foreign)
    assert (foreign / "config.json").is_file() and not (foreign / WEIGHTS_FILE).exists()
    save_quantized(unet, tmp_path / "q")
    save_quantized(unet, tmp_path / "q")  # an earlier quantized folder is replaced
    assert sorted(p.name for p in tmp_path.iterdir()) == ["q", "unet"]  # no temp or old folders left
    next(m for _, m in quant_layers(unet)).prepare_kernels()
    with pytest.raises(ValueError, match="before set_backend"):
        save_quantized(unet, tmp_path / "q2")
    assert not (tmp_path / "q2").exists() and sorted(p.name for p in tmp_path.iterdir()) == ["q", "unet"]


def test_loaded_fake_layers_follow_dtype_changes_and_refuse_fp_runs(w8_folder):
    unet = load_quantized(w8_folder, dtype=torch.float16)
    layer = unet.conv_in
    assert layer.weight is None and layer.w_int.dtype == torch.int8 and layer.bias.dtype == torch.float16
    assert layer.effective_weight().dtype == torch.float16 and layer.w_scale.dtype == torch.float32
    unet.float()
    assert layer.effective_weight().dtype == torch.float32 and layer.w_scale.dtype == torch.float32
    layer.use_wq = False
    with pytest.raises(RuntimeError, match="no FP weight"):
        layer.effective_weight()


def test_tiny_model_config_and_format_doc_agree():
    doc = (REPO / "docs" / "quantized_format.md").read_text()
    for word in ("weight_packed", "w_scale", "act_quant.scale", "act_quant2", "format_version", "storage_bits",
                 "pack_split", "seg_k"):
        assert word in doc, word


def test_latency_probe_and_eval_grid_run_a_quantized_folder(w8_folder, tmp_path):
    out = tmp_path / "latency.csv"
    assert run_main("latency_probe.py", "--quantized", w8_folder, "--res", 64, "--batch", 1, "--repeats", 1,
                    "--warmup", 0, "--out", out) == 0
    row = read_csv(out).iloc[0]
    assert (row["mode"], row["wbits"], row["abits"], row["backend"]) == ("w8a8", 8.0, 8.0, "fake")
    out = tmp_path / "grid.csv"
    assert run_main("eval_grid.py", "--quantized", w8_folder, "--res", 64, "--num_prompts", 2, "--batch_size", 2,
                    "--clip_pretrained", "none", "--out_csv", out) == 0
    grid = read_csv(out)
    assert len(grid) == 1 and grid["wbits"][0] == 8.0 and grid["backend"][0] == "fake"
