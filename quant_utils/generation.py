"""Image folders with a manifest: shared by txt2img, quant_txt2img and eval_grid.

Image i uses prompt `prompts[i % len(prompts)]` and seed `seed + i`, so an FP16 folder and a
MixDQ folder made with the same arguments pair up one to one. Each PNG is written atomically
(temp file + rename); reruns skip images already on disk; `manifest.csv` is rewritten after
every batch and always describes exactly the images in the folder. Its `first_call` column marks
the images of a process's first generation call, whose latency includes the warm-up (kernel
autotuning, CUDA-graph capture, compilation).
"""
from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

import pandas as pd
from PIL import Image
from tqdm import tqdm

from .csvio import read_csv, write_csv
from .pipeline import ConfigError
from .runtime import Runner, StageTimes

MANIFEST = "manifest.csv"
MANIFEST_COLUMNS = ["index", "file", "prompt", "seed", "height", "width", "steps", "guidance_scale",
                    "batch_size", "latency_ms", "first_call"]


def read_prompts(path: str | Path) -> list[str]:
    """One prompt per non-empty line; '#' lines are comments."""
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"prompts file {p} does not exist")
    prompts = [ln.strip() for ln in p.read_text().splitlines() if ln.strip() and not ln.lstrip().startswith("#")]
    if not prompts:
        raise ConfigError(f"prompts file {p} has no prompts")
    return prompts


def image_name(index: int) -> str:
    return f"{index:05d}.png"


def save_png(array, path: Path) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.stem}.", suffix=".png")
    os.close(fd)
    try:
        Image.fromarray(array).save(tmp, format="PNG")
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def read_manifest(folder: str | Path) -> pd.DataFrame:
    path = Path(folder) / MANIFEST
    if not path.is_file():
        return pd.DataFrame(columns=MANIFEST_COLUMNS)
    return read_csv(path)


def generate_folder(runner: Runner, prompts: list[str], out_dir: str | Path, num_imgs: int, batch_size: int,
                    seed: int, height: int, width: int, steps: int, guidance_scale: float,
                    meta: dict[str, Any] | None = None, desc: str = "generating") -> pd.DataFrame:
    """Generate images 0..num_imgs-1 into out_dir (skipping ones present); returns the manifest."""
    if num_imgs < 1 or batch_size < 1:
        raise ConfigError(f"num_imgs={num_imgs} and batch_size={batch_size} must be >= 1")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    old = read_manifest(out)
    rows = {int(r["index"]): {"first_call": 0, **r.dropna().to_dict()} for _, r in old.iterrows()
            if (out / str(r["file"])).is_file()}
    todo = [i for i in range(num_imgs) if i not in rows or not (out / image_name(i)).is_file()]
    with tqdm(total=num_imgs, initial=num_imgs - len(todo), desc=desc, unit="img") as bar:
        for start in range(0, len(todo), batch_size):
            idx = todo[start:start + batch_size]
            batch_prompts = [prompts[i % len(prompts)] for i in idx]
            times = StageTimes()
            images = runner(batch_prompts, [seed + i for i in idx], height, width, steps, guidance_scale, times)
            for i, img, prompt in zip(idx, images, batch_prompts):
                save_png(img, out / image_name(i))
                rows[i] = dict(index=i, file=image_name(i), prompt=prompt, seed=seed + i, height=height, width=width,
                               steps=steps, guidance_scale=guidance_scale, batch_size=len(idx),
                               latency_ms=round(times.total_ms / len(idx), 3), first_call=int(start == 0))
            write_csv(pd.DataFrame([rows[k] for k in sorted(rows)], columns=MANIFEST_COLUMNS), out / MANIFEST, meta)
            bar.update(len(idx))
    manifest = pd.DataFrame([rows[k] for k in sorted(rows)], columns=MANIFEST_COLUMNS)
    if not todo:  # nothing new: still make sure the manifest is on disk
        write_csv(manifest, out / MANIFEST, meta)
    return manifest
