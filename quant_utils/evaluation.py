"""Image-quality metrics of FP16 vs MixDQ image folders (README section 1.3): thin wrappers.

- FID: clean-fid does the resizing (`clean` or `legacy_pytorch` mode), the batched feature
  extraction (`get_files_features`) and the Fréchet distance (`fid_from_feats`). We hand it explicit
  file lists taken from the manifests (not whole folders), so every folder contributes exactly its
  first N images and each folder's features are extracted once for all the pairs it is in. The
  feature extractor is injectable: clean-fid's Inception for real numbers, a small random network
  for offline plumbing checks.
- CLIP score: open_clip; per image 100 * max(cos(image, prompt), 0) (the CLIPScore of Hessel et al.
  as torchmetrics defines it), mean and std over the images.
- Paired pixel metrics: PSNR and SSIM between the FP16 and MixDQ images of the same
  (index, seed, prompt); no downloaded weights needed.

Images pair through the manifests txt2img/quant_txt2img write (index, file, prompt, seed), never by
sort order alone. Bad inputs raise `ConfigError`; missing Inception/CLIP weights raise
`WeightsNotFoundError` naming the file, the cache folder and how to get it.
"""
from __future__ import annotations

import os
import shutil
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import pandas as pd
import torch
from PIL import Image

from .csvio import atomic_file, read_csv, read_provenance, write_csv
from .generation import MANIFEST, image_name, save_png
from .errors import ConfigError, WeightsNotFoundError
from .pipeline import network_allowed

IMAGE_EXTS = (".png", ".jpg", ".jpeg", ".webp", ".bmp")
FID_KINDS = ("clean", "legacy_pytorch")  # clean-fid's `mode`: its resizing and Inception variant (--fid_mode)
# A feature extractor maps a float batch [B, 3, H, W] with values in 0..255 to features [B, D] (clean-fid's contract).
FeatureExtractor = Callable[[torch.Tensor], torch.Tensor]


# --------------------------------------------------------------------------- image sets and pairing
@dataclass(frozen=True)
class ImageSet:
    """The images of one folder that take part: `table` has index, file, prompt (and seed when generated)."""
    name: str
    folder: Path
    table: pd.DataFrame
    meta: dict

    @property
    def paths(self) -> list[Path]:
        return [self.folder / f for f in self.table["file"]]

    @property
    def prompts(self) -> list[str] | None:
        """The prompts, or None when the folder has none (e.g. a reference folder without captions)."""
        if "prompt" not in self.table or (self.table["prompt"].fillna("").astype(str).str.strip() == "").any():
            return None
        return self.table["prompt"].astype(str).tolist()

    @property
    def synthetic(self) -> bool:
        return self.meta.get("synthetic", "").lower() == "true"


def load_image_set(name: str, folder: str | Path, num_samples: int | None = None,
                   require_manifest: bool = True) -> ImageSet:
    """The first `num_samples` images (by manifest index) of a folder; all of them when None.

    Without a manifest (only allowed when not `require_manifest`, e.g. a plain reference folder)
    the images are the folder's image files in name order.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise ConfigError(f"--{name}_folder {folder} does not exist or is not a folder")
    if (folder / MANIFEST).is_file():
        table, meta = read_csv(folder / MANIFEST), read_provenance(folder / MANIFEST)
        for col in ("index", "file"):
            if col not in table:
                raise ConfigError(f"{folder / MANIFEST} has no '{col}' column (columns: {list(table.columns)})")
        table = table.sort_values("index").reset_index(drop=True)
        missing = [f for f in table["file"] if not (folder / str(f)).is_file()]
        if missing:
            raise ConfigError(f"{folder / MANIFEST} lists {len(missing)} image(s) missing from {folder}, "
                              f"e.g. {missing[:3]}; regenerate them (reruns only fill the gaps)")
    elif require_manifest:
        raise ConfigError(f"--{name}_folder {folder} has no {MANIFEST}: generated images pair up by the manifest "
                          f"that txt2img.py / quant_txt2img.py write next to them")
    else:
        files = sorted(p.name for p in folder.iterdir() if p.suffix.lower() in IMAGE_EXTS)
        table, meta = pd.DataFrame({"index": range(len(files)), "file": files}), {}
    if table.empty:
        raise ConfigError(f"--{name}_folder {folder} has no images")
    if num_samples is not None:
        if len(table) < num_samples:
            raise ConfigError(f"--{name}_folder {folder} has {len(table)} images, fewer than --num_samples {num_samples}")
        table = table.iloc[:num_samples].reset_index(drop=True)
    return ImageSet(name, folder, table, meta)


def check_prompts(images: ImageSet, prompts: list[str]) -> None:
    """The manifest's prompt of image i must be line i mod N of the prompts file (the generation rule)."""
    want = [prompts[int(i) % len(prompts)] for i in images.table["index"]]
    bad = [(int(i), p, w) for i, p, w in zip(images.table["index"], images.table.get("prompt", [""] * len(want)), want)
           if str(p) != w]
    if bad:
        i, got, w = bad[0]
        raise ConfigError(f"{len(bad)} image(s) of {images.folder} were not made from --prompts_file: "
                          f"image {i} has prompt {got!r}, the file's line {i % len(prompts)} is {w!r}")


def pair_manifests(fp16: ImageSet, mixdq: ImageSet) -> pd.DataFrame:
    """Pair FP16 and MixDQ images by index, checking that seed and prompt agree.

    Returns index, seed, prompt, file_fp16, file_mixdq; any image without a partner, or a pair
    whose seed or prompt differ, is an error naming the first offenders.
    """
    for s in (fp16, mixdq):
        for col in ("seed", "prompt"):
            if col not in s.table:
                raise ConfigError(f"{s.folder / MANIFEST} has no '{col}' column: is it a generated folder?")
    m = fp16.table.merge(mixdq.table, on="index", how="outer", suffixes=("_fp16", "_mixdq"), indicator=True)
    lonely = m[m["_merge"] != "both"]
    if len(lonely):
        raise ConfigError(f"unequal folders: {fp16.folder} has {len(fp16.table)} images and {mixdq.folder} "
                          f"{len(mixdq.table)}; indices without a partner: {sorted(lonely['index'].astype(int))[:8]} "
                          f"(generate the missing ones, or pass --num_samples to use the common first N)")
    for col in ("seed", "prompt"):
        diff = m[m[f"{col}_fp16"].astype(str) != m[f"{col}_mixdq"].astype(str)]
        if len(diff):
            r = diff.iloc[0]
            raise ConfigError(f"{len(diff)} FP16/MixDQ pair(s) differ in {col}: image {int(r['index'])} has "
                              f"{r[f'{col}_fp16']!r} in {fp16.folder} but {r[f'{col}_mixdq']!r} in {mixdq.folder}; "
                              f"generate both with the same --seed and prompts")
    out = m.rename(columns={"seed_fp16": "seed", "prompt_fp16": "prompt"})
    return out[["index", "seed", "prompt", "file_fp16", "file_mixdq"]].reset_index(drop=True)


def load_rgb(path: Path) -> np.ndarray:
    """An image as an HxWx3 uint8 array; an unreadable file is a ConfigError naming it."""
    try:
        with Image.open(path) as im:
            return np.asarray(im.convert("RGB"))
    except (OSError, ValueError, Image.DecompressionBombError) as e:
        raise ConfigError(f"corrupt or unreadable image {path}: {e}") from None


def check_images(images: ImageSet) -> None:
    """Decode every image once up front, so a corrupt file stops the run before any metric is computed."""
    for p in images.paths:
        load_rgb(p)


# --------------------------------------------------------------------------- FID (clean-fid)
def _download(url: str, target: Path) -> None:
    """Download to a temporary file and rename, so an interrupted download leaves nothing behind."""
    with atomic_file(target) as tmp, open(tmp, "wb") as f, urllib.request.urlopen(url, timeout=60) as r:
        shutil.copyfileobj(r, f)


def inception_weights(fid_kind: str) -> tuple[Path, str, str]:
    """(local file, URL, where the folder comes from) of the Inception weights clean-fid uses for `fid_kind`."""
    if fid_kind == "clean":  # clean-fid's TorchScript Inception; clean-fid itself looks in /tmp
        from cleanfid.downloads_helper import inception_url
        folder = os.environ.get("MIXDQ_INCEPTION_DIR", "/tmp")
        return Path(folder) / "inception-2015-12-05.pt", inception_url, "MIXDQ_INCEPTION_DIR (default /tmp)"
    if fid_kind == "legacy_pytorch":  # pytorch-fid's port, loaded through torch.hub's cache
        from cleanfid.inception_pytorch import FID_WEIGHTS_URL
        return (Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(FID_WEIGHTS_URL), FID_WEIGHTS_URL,
                "TORCH_HOME (torch.hub cache, default ~/.cache/torch)")
    raise ConfigError(f"--fid_mode {fid_kind}: choose one of {', '.join(FID_KINDS)}")


def inception_extractor(fid_kind: str = "clean", device: str = "cpu") -> FeatureExtractor:
    """clean-fid's Inception-v3 pool features (2048-d) for `fid_kind`; weights must be local or downloadable."""
    path, url, where = inception_weights(fid_kind)
    if not path.is_file():
        if not network_allowed():
            raise WeightsNotFoundError(
                f"the Inception weights for FID (--fid_mode {fid_kind}) are not cached: {path} is missing "
                f"(folder from {where}).\n  - download {url} where there is network and copy it to {path};\n"
                f"  - or rerun with MIXDQ_ALLOW_DOWNLOAD=1 on a machine with network to fetch it (about 100 MB);\n"
                f"  - or use --metrics clip pixel to skip FID.")
        _download(url, path)
    try:
        if fid_kind == "clean":
            from cleanfid.inception_torchscript import InceptionV3W
            model = InceptionV3W(str(path.parent), download=False, resize_inside=False).to(device).eval()
            return lambda x: model(x)
        from cleanfid.features import feature_extractor
        return feature_extractor("pytorch_inception", device=torch.device(device), use_dataparallel=False)
    except RuntimeError as e:
        raise WeightsNotFoundError(f"the Inception weights {path} could not be loaded ({str(e).splitlines()[0]}): "
                                   f"the file is probably truncated; delete it and get it again from {url}") from None


def random_extractor(dim: int = 4, seed: int = 0, device: str = "cpu") -> FeatureExtractor:
    """A fixed random conv net (plumbing checks only: its FID means nothing).

    Few features (default 4) because the offline demo and tests use a handful of images, and a
    covariance estimated from n images is only full rank for n > dim.
    """
    g = torch.Generator().manual_seed(seed)
    w = (torch.randn(dim, 3, 16, 16, generator=g) / 16).to(device)
    return lambda x: torch.relu(torch.nn.functional.conv2d(x.to(device) / 127.5 - 1, w, stride=16)).mean(dim=(2, 3))


def fid_features(images: ImageSet, extractor: FeatureExtractor, fid_kind: str = "clean", batch_size: int = 32,
                 device: str = "cpu", num_workers: int = 0, verbose: bool = True) -> np.ndarray:
    """Features [N, D] of a set's images, resized and batched by clean-fid exactly as its compute_fid does."""
    from cleanfid.fid import get_files_features

    return get_files_features([str(p) for p in images.paths], extractor, num_workers=num_workers, batch_size=batch_size,
                              device=torch.device(device), mode=fid_kind, description=f"FID features {images.name}",
                              verbose=verbose)


def fid_from_features(a: np.ndarray, b: np.ndarray) -> float:
    """clean-fid's Fréchet distance between two feature sets."""
    from cleanfid.fid import fid_from_feats

    if min(len(a), len(b)) < 2:
        raise ConfigError("FID needs at least 2 images per folder (use a larger --num_samples)")
    try:
        return float(fid_from_feats(a, b))
    except ValueError as e:  # sqrtm gave a complex result: covariance from too few images for the feature size
        raise ConfigError(f"FID failed ({e}): {min(len(a), len(b))} images are too few for {a.shape[1]}-d features; "
                          f"use more images (--num_samples)") from None


# --------------------------------------------------------------------------- CLIP score (open_clip)
@dataclass
class ClipScorer:
    """open_clip model + preprocessing + tokenizer; `scorer(images, prompts)` gives per-image scores."""
    model: torch.nn.Module
    preprocess: Callable
    tokenizer: Callable
    device: str
    label: str

    def __call__(self, images: Sequence[Image.Image | np.ndarray], prompts: Sequence[str],
                 batch_size: int = 32) -> np.ndarray:
        """CLIP score: 100 * max(cos(image, prompt), 0) per image."""
        return 100 * np.clip(self.cosine(images, prompts, batch_size), 0, None)

    @torch.no_grad()
    def cosine(self, images: Sequence[Image.Image | np.ndarray], prompts: Sequence[str],
               batch_size: int = 32) -> np.ndarray:
        """Cosine similarity of each image's and its prompt's CLIP embeddings."""
        if len(images) != len(prompts):
            raise ConfigError(f"{len(images)} images but {len(prompts)} prompts")
        out = []
        for s in range(0, len(images), batch_size):
            ims = [Image.fromarray(im) if isinstance(im, np.ndarray) else im for im in images[s:s + batch_size]]
            x = torch.stack([self.preprocess(im.convert("RGB")) for im in ims]).to(self.device)
            img = torch.nn.functional.normalize(self.model.encode_image(x).float(), dim=-1)
            txt = self.model.encode_text(self.tokenizer(list(prompts[s:s + batch_size])).to(self.device))
            cos = (img * torch.nn.functional.normalize(txt.float(), dim=-1)).sum(-1)
            out.append(cos.cpu().numpy())
        return np.concatenate(out).astype(np.float64)


def load_clip(model_name: str = "ViT-B-32", pretrained: str | None = "laion2b_s34b_b79k", device: str = "cpu",
              seed: int = 0) -> ClipScorer:
    """An open_clip scorer; `pretrained=None` (or 'none') gives random weights (plumbing checks only).

    `pretrained` is an open_clip tag (weights from the Hugging Face cache) or a local weights file.
    """
    import open_clip

    if model_name not in open_clip.list_models():
        raise ConfigError(f"--clip_model {model_name} is not an open_clip model (e.g. ViT-B-32, ViT-L-14, ViT-H-14)")
    if pretrained in (None, "", "none", "None"):
        pretrained = None
    elif not (open_clip.is_pretrained_cfg(model_name, pretrained) or Path(pretrained).is_file()):
        tags = open_clip.list_pretrained_tags_by_model(model_name)
        raise ConfigError(f"--clip_pretrained {pretrained}: neither a weights file nor a tag of {model_name} "
                          f"(tags: {', '.join(tags)})")
    torch.manual_seed(seed)  # random init is reproducible too
    try:
        model, _, preprocess = open_clip.create_model_and_transforms(model_name, pretrained=pretrained, device=device)
    except (RuntimeError, OSError) as e:
        raise WeightsNotFoundError(_clip_weights_help(model_name, pretrained, e)) from None
    label = f"{model_name}/{pretrained or 'random-init'}"
    return ClipScorer(model.eval(), preprocess, open_clip.get_tokenizer(model_name), device, label)


def _clip_weights_help(model_name: str, pretrained: str, err: Exception) -> str:
    """What is missing and how to get it, for CLIP weights that would not load."""
    import open_clip

    why = str(err).splitlines()[0][:200] if str(err) else type(err).__name__
    if Path(pretrained).is_file():
        return f"the CLIP weights file {pretrained} could not be loaded into {model_name} ({why})"
    # open_clip's 'org/repo/' means the default file names: safetensors first, then the pickle
    repo, fname = os.path.split(open_clip.get_pretrained_cfg(model_name, pretrained).get("hf_hub", ""))
    files = fname or "open_clip_model.safetensors (or open_clip_pytorch_model.bin)"
    hf_home = os.environ.get("HF_HOME", "~/.cache/huggingface")
    return (f"the CLIP weights {model_name}/{pretrained} are not available offline ({why}).\n"
            f"  - they are {files} of the Hugging Face repo {repo}: on a machine with network run "
            f"`hf download {repo} {fname or 'open_clip_model.safetensors'}` and copy the cache "
            f"(HF_HOME={hf_home}) here; with network and without HF_HUB_OFFLINE=1 open_clip downloads it itself;\n"
            f"  - or pass --clip_pretrained /path/to/{fname or 'open_clip_model.safetensors'} (a local weights file);\n"
            f"  - or use --metrics fid pixel to skip the CLIP score.")


def clip_scores(scorer: ClipScorer, images: ImageSet, batch_size: int = 32) -> np.ndarray:
    """Per-image CLIP score of a set against its own manifest prompts (loaded batch by batch)."""
    prompts = images.prompts
    if prompts is None:
        raise ConfigError(f"{images.folder} has no prompts in its manifest: no CLIP score")
    paths, out = images.paths, []
    for s in range(0, len(paths), batch_size):
        out.append(scorer([load_rgb(p) for p in paths[s:s + batch_size]], prompts[s:s + batch_size], batch_size))
    return np.concatenate(out)


# --------------------------------------------------------------------------- paired pixel metrics
def psnr(a: np.ndarray, b: np.ndarray, data_range: float = 255.0) -> float:
    """Peak signal-to-noise ratio in dB (inf for identical images)."""
    mse = float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))
    return float("inf") if mse == 0 else float(10 * np.log10(data_range ** 2 / mse))


def ssim(a: np.ndarray, b: np.ndarray, data_range: float = 255.0, win_size: int = 11, sigma: float = 1.5) -> float:
    """SSIM (Wang et al. 2004) of two HxWxC images: gaussian 11x11 window, sigma 1.5, K1=0.01, K2=0.03,
    per channel over the valid region, averaged (as skimage's `structural_similarity(gaussian_weights=True)`)."""
    if a.shape != b.shape or min(a.shape[:2]) < win_size:
        raise ConfigError(f"SSIM needs two images of the same size, at least {win_size} px: got {a.shape} and {b.shape}")
    x, y = (torch.from_numpy(np.atleast_3d(t).astype(np.float64)).permute(2, 0, 1)[None] for t in (a, b))
    c = x.shape[1]
    g = torch.exp(-(torch.arange(win_size, dtype=torch.float64) - (win_size - 1) / 2) ** 2 / (2 * sigma ** 2))
    g = g / g.sum()
    wv, wh = g.view(1, 1, -1, 1).expand(c, 1, win_size, 1), g.view(1, 1, 1, -1).expand(c, 1, 1, win_size)
    conv = torch.nn.functional.conv2d
    blur = lambda t: conv(conv(t, wv, groups=c), wh, groups=c)  # noqa: E731 - separable gaussian: 2k not k^2 MACs
    mx, my = blur(x), blur(y)
    vx, vy, cxy = blur(x * x) - mx ** 2, blur(y * y) - my ** 2, blur(x * y) - mx * my
    c1, c2 = (0.01 * data_range) ** 2, (0.03 * data_range) ** 2
    s = ((2 * mx * my + c1) * (2 * cxy + c2)) / ((mx ** 2 + my ** 2 + c1) * (vx + vy + c2))
    return float(s.mean())


def paired_pixel_metrics(pairs: pd.DataFrame, fp16_folder: Path, mixdq_folder: Path) -> pd.DataFrame:
    """`pairs` with psnr_db and ssim of each FP16/MixDQ pair added."""
    rows = []
    for f16, fmx in zip(pairs["file_fp16"], pairs["file_mixdq"]):
        a, b = load_rgb(Path(fp16_folder) / f16), load_rgb(Path(mixdq_folder) / fmx)
        if a.shape != b.shape:
            raise ConfigError(f"paired images differ in size: {fp16_folder / f16} {a.shape[:2]} vs "
                              f"{mixdq_folder / fmx} {b.shape[:2]}: generate both at the same resolution")
        rows.append((psnr(a, b), ssim(a, b)))
    out = pairs.copy()
    out["psnr_db"], out["ssim"] = [r[0] for r in rows], [r[1] for r in rows]
    return out


# --------------------------------------------------------------------------- synthetic reference (plumbing)
def write_synthetic_reference(folder: str | Path, n: int, height: int = 64, width: int = 64, seed: int = 0,
                              meta: dict | None = None) -> Path:
    """N smooth random-noise PNGs + a manifest marked `synthetic: True` (a stand-in for COCO in offline demos).

    Refuses to write into a folder that holds a non-synthetic manifest, so a real reference is never overwritten.
    """
    folder = Path(folder)
    if (folder / MANIFEST).is_file() and read_provenance(folder / MANIFEST).get("synthetic", "").lower() != "true":
        raise ConfigError(f"{folder} already holds a real reference set; give --synthetic_ref another --ref_folder")
    if n < 2:
        raise ConfigError(f"--synthetic_ref {n}: at least 2 images")
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for i in range(n):  # low-resolution noise upsampled bicubically: smooth blobs, unlike white noise
        small = Image.fromarray(rng.integers(0, 256, (8, 8, 3), dtype=np.uint8))
        save_png(np.asarray(small.resize((width, height), Image.BICUBIC)), folder / image_name(i))
    table = pd.DataFrame({"index": range(n), "file": [image_name(i) for i in range(n)], "prompt": [""] * n})
    write_csv(table, folder / MANIFEST, {**(meta or {}), "synthetic": True, "seed": seed})
    return folder


# --------------------------------------------------------------------------- everything at once
def summary_row(folder: str, metric: str, values: np.ndarray | float, reference: str, setting: str,
                note: str = "", n: int | None = None) -> dict:
    """One CSV row: an array gives its mean (value), std and count; a scalar (FID) is the value, with `n` given."""
    if np.ndim(values):
        v = np.asarray(values, dtype=np.float64)
        with np.errstate(invalid="ignore"):  # inf PSNR (identical images): mean inf, std nan
            value, std, n = float(v.mean()), float(v.std()), len(v)
    else:
        value, std = float(values), float("nan")
    return dict(folder=folder, metric=metric, value=value, std=std, n=n, reference=reference, setting=setting, note=note)


def evaluate(sets: dict[str, ImageSet], metrics: Sequence[str], extractor: FeatureExtractor | None = None,
             fid_kind: str = "clean", fid_label: str = "inception_v3", clip: ClipScorer | None = None,
             batch_size: int = 32, device: str = "cpu", num_workers: int = 0,
             plumbing: dict[str, list[str]] | None = None) -> tuple[pd.DataFrame, pd.DataFrame | None]:
    """All metrics over the sets {'ref', 'fp16', 'mixdq'} present: (summary, per-pair table or None).

    FID: fp16 and mixdq vs ref, and mixdq vs fp16 (the quantization-only distance MixDQ reports).
    CLIP: each set with prompts. Pixel: PSNR/SSIM of mixdq vs fp16. `plumbing` lists, per key ('fid',
    'fid_ref' for FID against the reference, 'clip', 'pixel', 'all'), why those numbers mean nothing
    (random weights, synthetic data); the rows' note column then says they are plumbing checks.
    """
    plumbing, rows = plumbing or {}, []

    def note(*keys: str) -> str:
        why = [r for k in ("all", *keys) for r in plumbing.get(k, [])]
        return f"plumbing check, not a real number: {', '.join(why)}" if why else ""

    pairs = pair_manifests(sets["fp16"], sets["mixdq"]) if "fp16" in sets and "mixdq" in sets else None
    if "fid" in metrics:
        feats = {k: fid_features(s, extractor, fid_kind, batch_size, device, num_workers) for k, s in sets.items()}
        setting = f"{fid_kind}/{fid_label}"
        for a, b in (("fp16", "ref"), ("mixdq", "ref"), ("mixdq", "fp16")):
            if a in feats and b in feats:
                fid = fid_from_features(feats[a], feats[b])
                rows.append(summary_row(a, "fid", fid, b, setting, note("fid", *(["fid_ref"] if b == "ref" else [])),
                                        n=min(len(feats[a]), len(feats[b]))))
    scores = {}
    if "clip" in metrics:
        for k, s in sets.items():
            if s.prompts is not None:
                scores[k] = clip_scores(clip, s, batch_size)
                rows.append(summary_row(k, "clip_score", scores[k], "prompts", clip.label, note("clip")))
    if pairs is not None and "pixel" in metrics:
        pairs = paired_pixel_metrics(pairs, sets["fp16"].folder, sets["mixdq"].folder)
        rows.append(summary_row("mixdq", "psnr_db", pairs["psnr_db"].to_numpy(), "fp16", "data_range=255",
                                note("pixel")))
        rows.append(summary_row("mixdq", "ssim", pairs["ssim"].to_numpy(), "fp16", "gaussian 11x11 sigma=1.5",
                                note("pixel")))
    if pairs is not None:
        for k in ("fp16", "mixdq"):
            if k in scores:
                pairs[f"clip_{k}"] = scores[k]
    summary = pd.DataFrame(rows, columns=["folder", "metric", "value", "std", "n", "reference", "setting", "note"])
    return summary, pairs
