"""COCO 2014 reference sets: sample (image, caption) pairs and write centre-cropped images + prompts.

The reference folder pairs with a generated folder line for line: image i of the reference set
has the caption on line i of the prompts file, which txt2img/quant_txt2img use for their image i.
The folder is built under a temporary name and renamed at the end, so it is never half-written.
"""
from __future__ import annotations

import json
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
from PIL import Image, UnidentifiedImageError
from tqdm import tqdm

from .csvio import atomic_folder, atomic_write_text, write_csv
from .generation import MANIFEST, image_name
from .errors import ConfigError

REF_COLUMNS = ["index", "file", "prompt", "coco_image_id", "coco_file"]


@dataclass(frozen=True)
class CocoPair:
    image_id: int
    file_name: str
    caption: str


def clean_caption(text: str) -> str:
    """One line: whitespace (newlines included) collapsed; leading '#' dropped (read_prompts skips '#' lines)."""
    return " ".join(text.split()).lstrip("#").strip()


def load_captions(captions_json: str | Path) -> tuple[dict[int, str], dict[int, list[str]]]:
    """(image id -> file name, image id -> non-empty cleaned captions in annotation-id order) from a COCO captions JSON."""
    path = Path(captions_json)
    if not path.is_file():
        raise ConfigError(f"COCO captions file {path} does not exist (expected e.g. annotations/captions_val2014.json)")
    try:
        data = json.loads(path.read_text())
        files = {int(im["id"]): str(im["file_name"]) for im in data["images"]}
        anns = sorted(data["annotations"], key=lambda a: a.get("id", 0))
        captions: dict[int, list[str]] = {}
        for a in anns:
            text = clean_caption(str(a["caption"]))
            if text and int(a["image_id"]) in files:
                captions.setdefault(int(a["image_id"]), []).append(text)
    except json.JSONDecodeError as e:
        raise ConfigError(f"COCO captions file {path} is not valid JSON: {e}") from None
    except (KeyError, TypeError, ValueError) as e:
        raise ConfigError(f"COCO captions file {path} is malformed: needs 'images' (id, file_name) and "
                          f"'annotations' (image_id, caption); problem: {e!r}") from None
    return files, captions


def sample_pairs(files: dict[int, str], captions: dict[int, list[str]], num_samples: int, seed: int) -> list[CocoPair]:
    """`num_samples` distinct images that have a caption, one random caption each; same seed, same pairs."""
    if num_samples < 1:
        raise ConfigError(f"--num_samples must be at least 1, got {num_samples}")
    ids = sorted(captions)  # sorted so the draw depends only on the data and the seed
    if len(ids) < num_samples:
        raise ConfigError(f"asked for {num_samples} images but the captions file has only {len(ids)} captioned images")
    rng = random.Random(seed)
    return [CocoPair(i, files[i], rng.choice(captions[i])) for i in rng.sample(ids, num_samples)]


def center_crop_resize(img: Image.Image, res: int) -> Image.Image:
    """RGB, shorter side resized to `res` (bicubic), then the centre `res` x `res` square."""
    img = img.convert("RGB")
    w, h = img.size
    scale = res / min(w, h)
    nw, nh = max(res, round(w * scale)), max(res, round(h * scale))
    img = img.resize((nw, nh), Image.BICUBIC)
    left, top = (nw - res) // 2, (nh - res) // 2
    return img.crop((left, top, left + res, top + res))


def _load_image(path: Path) -> Image.Image:
    if not path.is_file():
        raise ConfigError(f"COCO image {path} does not exist (is --images the val2014 folder?)")
    try:
        with Image.open(path) as im:
            im.load()
            return im.copy()
    except (UnidentifiedImageError, OSError) as e:
        raise ConfigError(f"cannot read COCO image {path}: {e}") from None


def write_reference_set(pairs: list[CocoPair], images_dir: str | Path, out_ref: str | Path, out_prompts: str | Path,
                        res: int = 512, meta: dict[str, Any] | None = None) -> pd.DataFrame:
    """Write `out_ref/00000.png ...` + `manifest.csv` (REF_COLUMNS) and the prompts file; return the manifest."""
    if res < 1:
        raise ConfigError(f"--res must be positive, got {res}")
    images_dir, out_ref = Path(images_dir), Path(out_ref)
    if not images_dir.is_dir():
        raise ConfigError(f"COCO image folder {images_dir} does not exist (expected e.g. val2014/)")
    with atomic_folder(out_ref) as tmp:  # an existing reference set is replaced only once the new one is complete
        rows = []
        for i, pair in enumerate(tqdm(pairs, desc="coco reference", unit="img")):
            center_crop_resize(_load_image(images_dir / pair.file_name), res).save(tmp / image_name(i))
            rows.append((i, image_name(i), pair.caption, pair.image_id, pair.file_name))
        manifest = pd.DataFrame(rows, columns=REF_COLUMNS)
        write_csv(manifest, tmp / MANIFEST, meta)
    atomic_write_text(out_prompts, "".join(p.caption + "\n" for p in pairs))
    return manifest
