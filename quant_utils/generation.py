"""Image folders with a manifest: shared by txt2img, quant_txt2img and eval_grid.

Image i uses prompt `prompts[i % len(prompts)]` and seed `seed + i`, so an FP16 folder and a
MixDQ folder made with the same arguments pair up one to one. Each PNG is written atomically
(temp file + rename); reruns skip images already on disk; `manifest.csv` is rewritten after
every batch and always describes exactly the images in the folder. A rerun into a folder made with
other settings (model, bits, resolution, steps, seed, prompts, ...) is refused with the differences
named: one folder never mixes images of two configurations.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import pandas as pd
from PIL import Image
from tqdm import tqdm

from . import REPO_ROOT
from .csvio import atomic_file, clean_stale_temps, read_csv, read_provenance, write_csv
from .errors import ConfigError, reading
from .runtime import Runner, StageTimes

MANIFEST = "manifest.csv"
MANIFEST_COLUMNS = ["index", "file", "prompt", "seed", "height", "width", "steps", "guidance_scale",
                    "batch_size", "latency_ms", "first_call"]


def read_prompts(path: str | Path) -> list[str]:
    """One prompt per non-empty line; '#' lines are comments."""
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"prompts file {p} does not exist")
    with reading(p, "prompts file"):
        text = p.read_text()
    prompts = [ln.strip() for ln in text.splitlines() if ln.strip() and not ln.lstrip().startswith("#")]
    if not prompts:
        raise ConfigError(f"prompts file {p} has no prompts")
    return prompts


def image_name(index: int) -> str:
    return f"{index:05d}.png"


def save_png(array, path: Path) -> None:
    with atomic_file(path) as tmp:
        Image.fromarray(array).save(tmp, format="PNG")


def read_manifest(folder: str | Path) -> pd.DataFrame:
    path = Path(folder) / MANIFEST
    if not path.is_file():
        return pd.DataFrame(columns=MANIFEST_COLUMNS)
    table = read_csv(path)
    missing = [c for c in MANIFEST_COLUMNS[:-1] if c not in table]  # first_call: absent in older manifests
    if missing:
        raise ConfigError(f"{path}: not an image manifest (no column(s) {missing}); use another folder")
    return table


def _settings_diff(old: pd.DataFrame, old_meta: dict[str, str], settings: dict[str, Any], prompts: list[str],
                   seed: int, sampling: dict[str, Any]) -> list[str]:
    """What differs between the images already in a folder and this run: per image (seed, prompt, size, steps,
    guidance, from the manifest rows) and per folder (model, bits, backend, ..., from its provenance)."""
    diffs = []
    for col, want in (("seed", lambda i: seed + i), ("prompt", lambda i: prompts[i % len(prompts)]),
                      *((k, lambda i, v=v: v) for k, v in sampling.items())):
        bad = [(int(r["index"]), r[col]) for _, r in old.iterrows() if str(r[col]) != str(want(int(r["index"])))
               and not (col == "guidance_scale" and float(r[col]) == float(want(int(r["index"]))))]
        if bad:
            i, got = bad[0]
            short = lambda v: repr(v) if len(repr(v)) <= 60 else repr(v)[:57] + "...'"  # noqa: E731
            diffs.append(f"{col}: image {i} has {short(got)}, this run would give {short(want(i))} "
                         f"({len(bad)} image(s) differ)")
    for key, value in settings.items():
        if key in old_meta and _same_path(old_meta[key]) != _same_path(str(value)):
            diffs.append(f"{key}: folder {old_meta[key]!r}, now {str(value)!r}")
    return diffs


def _same_path(value: str) -> str:
    """Absolute paths inside the repo as repo-relative ones (older manifests recorded absolute config paths)."""
    p = Path(value)
    return str(p.relative_to(REPO_ROOT)) if p.is_absolute() and p.is_relative_to(REPO_ROOT) else value


def check_folder(out_dir: str | Path, prompts: list[str], seed: int, height: int, width: int, steps: int,
                 guidance_scale: float, settings: dict[str, Any] | None = None) -> pd.DataFrame:
    """The folder's manifest, after checking that its images were made with these settings (ConfigError naming
    the differences if not). Scripts call it before building a model, generate_folder again before writing."""
    out = Path(out_dir)
    old = read_manifest(out)
    if len(old):
        sampling = dict(height=height, width=width, steps=steps, guidance_scale=guidance_scale)
        diffs = _settings_diff(old, read_provenance(out / MANIFEST), settings or {}, prompts, seed, sampling)
        if diffs:
            raise ConfigError(f"{out} holds {len(old)} image(s) made with other settings:\n  - " + "\n  - ".join(diffs)
                              + "\n  use another output folder, or delete that one to start over")
    return old


def generate_folder(runner: Runner, prompts: list[str], out_dir: str | Path, num_imgs: int, batch_size: int,
                    seed: int, height: int, width: int, steps: int, guidance_scale: float,
                    meta: dict[str, Any] | None = None, desc: str = "generating",
                    settings: dict[str, Any] | None = None) -> pd.DataFrame:
    """Generate images 0..num_imgs-1 into out_dir (skipping ones present); returns the manifest.

    `settings` (model, weights, bit configs, backend, ...) go into the manifest's provenance with `meta`; a folder
    whose images were made with other settings or sampling arguments is refused (ConfigError naming them).
    `first_call` marks the images of this process's first runner call (compile, graph capture, autotuning)."""
    if num_imgs < 1 or batch_size < 1:
        raise ConfigError(f"num_imgs={num_imgs} and batch_size={batch_size} must be >= 1")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    clean_stale_temps(out)
    settings = dict(settings or {})
    meta = {**(meta or {}), **settings}
    old = check_folder(out, prompts, seed, height, width, steps, guidance_scale, settings)
    if "first_call" not in old:
        old["first_call"] = False
    rows = {int(r["index"]): r.to_dict() for _, r in old.iterrows() if (out / str(r["file"])).is_file()}
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
                               latency_ms=round(times.total_ms / len(idx), 3), first_call=start == 0)
            write_csv(pd.DataFrame([rows[k] for k in sorted(rows)], columns=MANIFEST_COLUMNS), out / MANIFEST, meta)
            bar.update(len(idx))
    manifest = pd.DataFrame([rows[k] for k in sorted(rows)], columns=MANIFEST_COLUMNS)
    if not todo:  # nothing new: still make sure the manifest is on disk
        write_csv(manifest, out / MANIFEST, meta)
    manifest.attrs["new"] = sorted(todo)
    return manifest


def latency_report(manifest: pd.DataFrame) -> str:
    """This run's latency, the first call (compile, graph capture, autotuning) apart from the warm mean."""
    new = manifest[manifest["index"].isin(manifest.attrs.get("new", manifest["index"]))]
    if new.empty:
        return "no new images (all were on disk)"
    first, warm = new[new["first_call"].astype(bool)], new[~new["first_call"].astype(bool)]
    text = f"first call {first['latency_ms'].mean():.1f} ms/img (includes compile/graph capture/autotuning)"
    if warm.empty:
        return text + "; warm mean n/a (a single call: generate more images than --batch_size to measure it)"
    return text + f"; warm mean {warm['latency_ms'].mean():.1f} ms/img over {len(warm)} image(s)"
