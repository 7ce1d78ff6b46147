"""quant_utils.evaluation and scripts/eval_fp16_mixdq_cleanfid.py, offline: clean-fid's real code path with a
random feature extractor, open_clip with random weights and its real tokenizer, synthetic 64x64 folders."""
import json
import math

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from conftest import run_script
from quant_utils.csvio import read_csv, read_provenance, write_csv
from quant_utils.errors import ConfigError, WeightsNotFoundError
from quant_utils.evaluation import (check_images, check_prompts, evaluate,
                                    fid_features, fid_from_features, inception_extractor, load_clip, load_image_set,
                                    pair_manifests, psnr, random_extractor, ssim, write_synthetic_reference)
from quant_utils.generation import MANIFEST_COLUMNS, image_name

PROMPTS = ["a red bicycle leaning on a wall", "a bowl of fruit on a table", "a dog running on a beach"]


def smooth_images(n, seed=0, size=64):
    rng = np.random.default_rng(seed)
    return [np.asarray(Image.fromarray(rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)).resize((size, size),
                                                                                               Image.BICUBIC))
            for _ in range(n)]


def make_folder(folder, images, noise=0.0, seed=42, prompts=PROMPTS, weights="random-tiny"):
    """A folder as txt2img writes it: PNGs + manifest (image i: prompts[i % N], seed + i)."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(1234)
    rows = []
    for i, im in enumerate(images):
        im = np.clip(im + rng.normal(0, noise, im.shape), 0, 255).astype(np.uint8) if noise else im
        Image.fromarray(im).save(folder / image_name(i))
        rows.append(dict(index=i, file=image_name(i), prompt=prompts[i % len(prompts)], seed=seed + i,
                         height=im.shape[0], width=im.shape[1], steps=1, guidance_scale=0.0, batch_size=1,
                         latency_ms=1.0))
    write_csv(pd.DataFrame(rows, columns=MANIFEST_COLUMNS), folder / "manifest.csv", {"weights": weights})
    return folder


@pytest.fixture(scope="module")
def clip_random():
    return load_clip("ViT-B-32", None, "cpu", seed=0)


# --------------------------------------------------------------------------- FID
@pytest.mark.parametrize("fid_kind", ["clean", "legacy_pytorch"])
def test_fid_is_zero_for_a_folder_with_itself_and_grows_with_noise(tmp_path, fid_kind):
    base = smooth_images(12)
    sets = {s: load_image_set(s, make_folder(tmp_path / f"n{s}", base, noise=s)) for s in (0, 20, 60)}
    ex = random_extractor(seed=0)
    f = {s: fid_features(v, ex, fid_kind, batch_size=5, verbose=False) for s, v in sets.items()}
    assert f[0].shape == (12, 4)
    assert abs(fid_from_features(f[0], f[0])) < 1e-9
    assert 0 < fid_from_features(f[0], f[20]) < fid_from_features(f[0], f[60])


def test_fid_on_file_lists_equals_clean_fid_compute_fid_on_folders(tmp_path):
    from cleanfid import fid as cleanfid

    a = make_folder(tmp_path / "a", smooth_images(6, seed=1))
    b = make_folder(tmp_path / "b", smooth_images(6, seed=2))
    ex = random_extractor(seed=3)
    ours = fid_from_features(*(fid_features(load_image_set(k, d), ex, verbose=False) for k, d in (("a", a), ("b", b))))
    theirs = cleanfid.compute_fid(str(a), str(b), mode="clean", custom_feat_extractor=ex, num_workers=0,
                                  batch_size=4, device="cpu", verbose=False)
    assert ours > 0 and ours == pytest.approx(theirs, rel=1e-9)


def test_fid_needs_two_images():
    with pytest.raises(ConfigError, match="at least 2"):
        fid_from_features(np.zeros((1, 4)), np.zeros((5, 4)))


@pytest.mark.parametrize("fid_kind", ["clean", "legacy_pytorch"])
def test_missing_inception_weights_is_a_clear_error(monkeypatch, tmp_path, fid_kind):
    monkeypatch.setenv("MIXDQ_INCEPTION_DIR", str(tmp_path))
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    monkeypatch.delenv("MIXDQ_ALLOW_DOWNLOAD", raising=False)
    with pytest.raises(WeightsNotFoundError) as e:
        inception_extractor(fid_kind)
    msg = str(e.value)
    assert str(tmp_path) in msg and "inception" in msg and "MIXDQ_ALLOW_DOWNLOAD=1" in msg and "https://" in msg


def test_truncated_inception_weights_are_a_clear_error(monkeypatch, tmp_path):
    monkeypatch.setenv("MIXDQ_INCEPTION_DIR", str(tmp_path))
    (tmp_path / "inception-2015-12-05.pt").write_bytes(b"not a torchscript archive")
    with pytest.raises(WeightsNotFoundError, match="truncated"):
        inception_extractor("clean")


# --------------------------------------------------------------------------- CLIP score
def test_clip_score_with_random_model_and_real_tokenizer(clip_random):
    tok = clip_random.tokenizer(["a dog"])
    assert tok[0, :4].tolist() == [49406, 320, 1929, 49407]  # OpenAI CLIP BPE ids
    images = smooth_images(3, seed=5)
    cos = clip_random.cosine(images, PROMPTS, batch_size=2)
    assert cos.shape == (3,) and np.all(np.abs(cos) <= 1) and len(set(np.round(cos, 6))) == 3
    np.testing.assert_allclose(clip_random(images, PROMPTS), 100 * np.clip(cos, 0, None), rtol=1e-6)
    np.testing.assert_allclose(clip_random.cosine(images[:1], PROMPTS[:1]), cos[:1], rtol=1e-4, atol=1e-6)
    assert clip_random.label == "ViT-B-32/random-init"


def test_clip_bad_names_are_config_errors():
    with pytest.raises(ConfigError, match="not an open_clip model"):
        load_clip("ViT-Nope", None)
    with pytest.raises(ConfigError, match="laion2b_s34b_b79k"):
        load_clip("ViT-B-32", "no_such_tag")


# --------------------------------------------------------------------------- pairing and inputs
def test_pairing_by_manifest_and_its_errors(tmp_path):
    ims = smooth_images(4)
    fp16 = load_image_set("fp16", make_folder(tmp_path / "fp16", ims))
    pairs = pair_manifests(fp16, load_image_set("mixdq", make_folder(tmp_path / "mq", ims, noise=5)))
    assert pairs["index"].tolist() == [0, 1, 2, 3] and pairs["seed"].tolist() == [42, 43, 44, 45]
    assert pairs["prompt"][3] == PROMPTS[0]
    short = make_folder(tmp_path / "short", ims[:3])
    with pytest.raises(ConfigError, match="unequal folders.*\\[3\\]"):
        pair_manifests(fp16, load_image_set("mixdq", short))
    assert len(pair_manifests(load_image_set("fp16", tmp_path / "fp16", 3), load_image_set("mixdq", short, 3))) == 3
    with pytest.raises(ConfigError, match="differ in seed"):
        pair_manifests(fp16, load_image_set("mixdq", make_folder(tmp_path / "s", ims, seed=7)))
    with pytest.raises(ConfigError, match="differ in prompt"):
        pair_manifests(fp16, load_image_set("mixdq", make_folder(tmp_path / "p", ims, prompts=PROMPTS[::-1])))
    check_prompts(fp16, PROMPTS)
    with pytest.raises(ConfigError, match="not made from --prompts_file"):
        check_prompts(fp16, PROMPTS[:2])


def test_folder_errors(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_image_set("ref", tmp_path / "nope")
    (tmp_path / "plain").mkdir()
    for i, im in enumerate(smooth_images(3)):
        Image.fromarray(im).save(tmp_path / "plain" / f"img{i}.jpg")
    with pytest.raises(ConfigError, match="no manifest.csv"):
        load_image_set("fp16", tmp_path / "plain")
    ref = load_image_set("ref", tmp_path / "plain", require_manifest=False)
    assert ref.table["file"].tolist() == ["img0.jpg", "img1.jpg", "img2.jpg"] and ref.prompts is None
    with pytest.raises(ConfigError, match="3 images, fewer than --num_samples 5"):
        load_image_set("ref", tmp_path / "plain", 5, require_manifest=False)
    folder = make_folder(tmp_path / "gen", smooth_images(3))
    (folder / "00001.png").unlink()
    with pytest.raises(ConfigError, match="missing.*00001.png"):
        load_image_set("fp16", folder)


def test_empty_binary_or_foreign_manifest_is_a_clear_error(tmp_path):
    folder = make_folder(tmp_path / "gen", smooth_images(2))
    for content, match in ((b"", "not a readable CSV table"), (bytes(range(256)) * 8, "not UTF-8"),
                           (b"a,b\n1,2\n", "no 'index' column")):
        (folder / "manifest.csv").write_bytes(content)
        with pytest.raises(ConfigError, match=match):
            load_image_set("fp16", folder)


def test_corrupt_image_is_a_clear_error(tmp_path):
    folder = make_folder(tmp_path / "gen", smooth_images(3))
    (folder / "00002.png").write_bytes((folder / "00002.png").read_bytes()[:100])  # truncated PNG
    with pytest.raises(ConfigError, match="corrupt.*00002.png"):
        check_images(load_image_set("fp16", folder))


# --------------------------------------------------------------------------- pixel metrics
def test_psnr_and_ssim_known_values():
    a = np.full((32, 32, 3), 100, np.uint8)
    b = np.full((32, 32, 3), 120, np.uint8)
    assert psnr(a, a) == math.inf
    assert psnr(a, b) == pytest.approx(20 * math.log10(255 / 20))
    # flat images: SSIM reduces to its luminance term (2ab + C1) / (a² + b² + C1), C1 = (0.01 * 255)²
    c1 = (0.01 * 255) ** 2
    assert ssim(a, b) == pytest.approx((2 * 100 * 120 + c1) / (100 ** 2 + 120 ** 2 + c1))
    im = smooth_images(1)[0]
    rng = np.random.default_rng(0)
    noisy = [np.clip(im + rng.normal(0, s, im.shape), 0, 255).astype(np.uint8) for s in (5, 30)]
    assert ssim(im, im) == pytest.approx(1.0)
    assert 1 > ssim(im, noisy[0]) > ssim(im, noisy[1]) > 0
    assert ssim(im, noisy[1]) == pytest.approx(ssim(noisy[1], im))
    with pytest.raises(ConfigError, match="same size"):
        ssim(im, im[:32])


def test_synthetic_reference_never_overwrites_a_real_one(tmp_path):
    ref = write_synthetic_reference(tmp_path / "ref", 5, 48, 64, seed=1)
    s = load_image_set("ref", ref)
    assert len(s.table) == 5 and s.synthetic and np.asarray(Image.open(s.paths[0])).shape == (48, 64, 3)
    real = make_folder(tmp_path / "real", smooth_images(2))
    with pytest.raises(ConfigError, match="real reference"):
        write_synthetic_reference(real, 5)


def test_evaluate_rows(tmp_path):  # (CLIP rows: test_script_end_to_end_offline)
    ims = smooth_images(6)
    sets = {"fp16": load_image_set("fp16", make_folder(tmp_path / "a", ims)),
            "mixdq": load_image_set("mixdq", make_folder(tmp_path / "b", ims, noise=10))}
    summary, pairs = evaluate(sets, ["fid", "pixel"], random_extractor(), plumbing={"fid": ["random extractor"]})
    got = [(r.folder, r.metric, r.reference) for r in summary.itertuples()]
    assert got == [("mixdq", "fid", "fp16"), ("mixdq", "psnr_db", "fp16"), ("mixdq", "ssim", "fp16")]
    m = summary.set_index("metric")
    assert m.loc["psnr_db", "value"] == pytest.approx(pairs["psnr_db"].mean()) and 20 < m.loc["psnr_db", "value"] < 40
    assert m.loc["psnr_db", "std"] == pytest.approx(pairs["psnr_db"].std(ddof=0)) and m.loc["ssim", "n"] == 6
    assert m.loc["fid", "note"] == "plumbing check, not a real number: random extractor" and m.loc["ssim", "note"] == ""
    assert m.loc["fid", "value"] > 0 and np.isnan(m.loc["fid", "std"]) and m.loc["fid", "n"] == 6
    assert list(pairs.columns) == ["index", "seed", "prompt", "file_fp16", "file_mixdq", "psnr_db", "ssim"]


# --------------------------------------------------------------------------- the script
def test_script_end_to_end_offline(tmp_path):
    ims = smooth_images(6)
    fp16, mixdq = make_folder(tmp_path / "fp16", ims), make_folder(tmp_path / "mixdq", ims, noise=10)
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("\n".join(PROMPTS) + "\n")
    out = tmp_path / "eval" / "fid_clip.csv"
    p = run_script("eval_fp16_mixdq_cleanfid.py", "--fp16_folder", fp16, "--mixdq_folder", mixdq,
                   "--ref_folder", tmp_path / "ref", "--synthetic_ref", 6, "--prompts_file", prompts,
                   "--feature_extractor", "random", "--clip_pretrained", "none", "--device", "cpu",
                   "--batch_size", 4, "--out", out)
    assert "plumbing checks" in p.stdout
    df = read_csv(out)
    assert list(df.columns) == ["folder", "metric", "value", "std", "n", "reference", "setting", "note"]
    assert [tuple(r) for r in df[["folder", "metric", "reference"]].values] == [
        ("fp16", "fid", "ref"), ("mixdq", "fid", "ref"), ("mixdq", "fid", "fp16"), ("fp16", "clip_score", "prompts"),
        ("mixdq", "clip_score", "prompts"), ("mixdq", "psnr_db", "fp16"), ("mixdq", "ssim", "fp16")]
    fid = df[df.metric == "fid"].set_index("reference")["value"]
    assert fid["fp16"] > 0 and np.isfinite(df["value"]).all() and (df["n"] == 6).all()
    assert df["note"].str.startswith("plumbing check").all()
    assert "synthetic reference" in df["note"][0] and "random feature extractor" in df["note"][0]
    assert "synthetic reference" not in df["note"][2]
    meta = read_provenance(out)
    assert meta["feature_extractor"] == "random" and meta["weights"] == "random-tiny" and "git_sha" in meta
    pairs = read_csv(tmp_path / "eval" / "fid_clip_pairs.csv")
    assert len(pairs) == 6 and (pairs["ssim"] < 1).all() and not list(out.parent.glob(".*tmp"))
    clip_row = df[(df.folder == "mixdq") & (df.metric == "clip_score")].iloc[0]
    assert clip_row["value"] == pytest.approx(pairs["clip_mixdq"].mean()) and clip_row["setting"] == "ViT-B-32/random-init"
    # JSON output: same rows
    p = run_script("eval_fp16_mixdq_cleanfid.py", "--fp16_folder", fp16, "--mixdq_folder", mixdq,
                   "--metrics", "pixel", "--out", tmp_path / "eval" / "px.json")
    rows = json.loads((tmp_path / "eval" / "px.json").read_text())["rows"]
    assert [r["metric"] for r in rows] == ["psnr_db", "ssim"]
    assert rows[0]["value"] == pytest.approx(df.set_index("metric").loc["psnr_db", "value"])


def test_script_errors_are_one_line_and_write_nothing(tmp_path, monkeypatch):
    ims = smooth_images(4)
    fp16, short = make_folder(tmp_path / "fp16", ims), make_folder(tmp_path / "short", ims[:3])
    out = tmp_path / "out.csv"
    p = run_script("eval_fp16_mixdq_cleanfid.py", "--fp16_folder", fp16, "--mixdq_folder", short, "--metrics", "pixel",
                   "--out", out, check=False)
    assert p.returncode == 2 and "unequal folders" in p.stderr and "Traceback" not in p.stderr
    # CLIP weights not cached, no network: named, with how to get them
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    p = run_script("eval_fp16_mixdq_cleanfid.py", "--fp16_folder", fp16, "--metrics", "clip", "--out", out, check=False)
    assert p.returncode == 2 and "Traceback" not in p.stderr, p.stderr
    assert "laion/CLIP-ViT-B-32-laion2B-s34B-b79K" in p.stderr and "hf download" in p.stderr
    assert not out.exists()
