import importlib.util
import json

import pytest
from PIL import Image

from conftest import REPO, run_script
from quant_utils.cli import user_errors
from quant_utils.coco import REF_COLUMNS, center_crop_resize, clean_caption, load_captions, sample_pairs, write_reference_set
from quant_utils.csvio import read_csv, read_provenance
from quant_utils.errors import ConfigError

SIZES = [(64, 48), (40, 80), (50, 50), (96, 32), (33, 45), (70, 60)]  # landscape, portrait, square, odd


@pytest.fixture
def fake_coco(tmp_path):
    """Six JPEGs of different sizes and colours, two or three captions each (one with a newline inside)."""
    images = tmp_path / "val2014"
    images.mkdir()
    anns, entries = [], []
    for k, (w, h) in enumerate(SIZES):
        name = f"COCO_val2014_{k + 100:012d}.jpg"
        Image.new("RGB", (w, h), (40 * k, 255 - 40 * k, 128)).save(images / name)
        entries.append({"id": k + 100, "file_name": name, "width": w, "height": h})
        for j in range(2 + k % 2):
            anns.append({"id": 10 * k + j, "image_id": k + 100, "caption": f"A photo\n of thing {k} view  {j}. "})
    captions = tmp_path / "captions_val2014.json"
    captions.write_text(json.dumps({"images": entries, "annotations": anns}))
    return captions, images


def sample(fake_coco, tmp_path, tag, *extra):
    captions, images = fake_coco
    out_prompts, out_ref = tmp_path / f"{tag}.txt", tmp_path / f"ref_{tag}"
    run_script("utils/coco_sample.py", "--captions", captions, "--images", images, "--num_samples", 4,
               "--res", 32, "--out_prompts", out_prompts, "--out_ref", out_ref, *extra)
    return out_prompts, out_ref


def test_reference_set(fake_coco, tmp_path):
    out_prompts, out_ref = sample(fake_coco, tmp_path, "a", "--seed", 3)
    m = read_csv(out_ref / "manifest.csv")
    assert list(m.columns) == REF_COLUMNS
    assert len(m) == 4 and m["coco_image_id"].is_unique
    assert list(m["file"]) == [f"{i:05d}.png" for i in range(4)] and list(m["index"]) == list(range(4))
    assert out_prompts.read_text().splitlines() == list(m["prompt"])
    for _, row in m.iterrows():
        assert f"thing {row.coco_image_id - 100} view" in row.prompt  # the caption belongs to its own image
        assert "\n" not in row.prompt and "  " not in row.prompt
        assert row.coco_file == f"COCO_val2014_{row.coco_image_id:012d}.jpg"
        with Image.open(out_ref / row.file) as im:
            assert im.size == (32, 32) and im.mode == "RGB"
    assert read_provenance(out_ref / "manifest.csv")["script"] == "coco_sample"
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temp folders left behind


def test_seeded_and_reproducible(fake_coco, tmp_path):
    files, captions = load_captions(fake_coco[0])
    draws = [tuple(sample_pairs(files, captions, 4, seed)) for seed in (0, 0, 1, 2, 3)]
    assert draws[0] == draws[1]
    assert len(set(draws[1:])) > 1  # other seeds draw other sets or captions
    assert all(len({p.image_id for p in d}) == 4 for d in draws)
    # the written set too: same pairs, same files
    out = [write_reference_set(draws[0], fake_coco[1], tmp_path / f"ref{k}", tmp_path / f"p{k}.txt", 16) for k in (0, 1)]
    assert out[0].equals(out[1]) and (tmp_path / "p0.txt").read_text() == (tmp_path / "p1.txt").read_text()
    assert all((tmp_path / "ref0" / f).read_bytes() == (tmp_path / "ref1" / f).read_bytes() for f in out[0]["file"])
    # a rerun into the same folder replaces it whole and leaves no temp or old folder behind
    other = next(d for d in draws if d != draws[0])
    again = write_reference_set(list(other[:2]), fake_coco[1], tmp_path / "ref0", tmp_path / "p0.txt", 16)
    assert sorted(p.name for p in (tmp_path / "ref0").iterdir()) == ["00000.png", "00001.png", "manifest.csv"]
    assert list(read_csv(tmp_path / "ref0" / "manifest.csv")["coco_image_id"]) == list(again["coco_image_id"])
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


@pytest.mark.parametrize("size", [(64, 48), (40, 80), (33, 45)])
def test_center_crop_resize(size):
    img = Image.new("RGB", size, "white")
    img.paste((255, 0, 0), (size[0] // 2 - 2, size[1] // 2 - 2, size[0] // 2 + 2, size[1] // 2 + 2))
    out = center_crop_resize(img, 24)
    assert out.size == (24, 24)
    assert out.getpixel((12, 12))[1] < 100  # the centre stays in the centre


def test_clean_caption():
    assert clean_caption("  a dog\n on a\tbeach  ") == "a dog on a beach"
    assert clean_caption("# hashtag dog") == "hashtag dog"


def load_script():
    spec = importlib.util.spec_from_file_location("coco_sample", REPO / "scripts" / "utils" / "coco_sample.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def cli_args(fake_coco, tmp_path, **over):
    captions, images = fake_coco
    args = {"captions": captions, "images": images, "num_samples": 3, "res": 16, "out_prompts": tmp_path / "p.txt",
            "out_ref": tmp_path / "ref", **over}
    return [str(x) for k, v in args.items() for x in (f"--{k}", v)]


def test_error_exit_code(fake_coco, tmp_path):
    """As a user sees it: one line on stderr, exit code 2, no traceback."""
    proc = run_script("utils/coco_sample.py", *cli_args(fake_coco, tmp_path, captions=tmp_path / "nope.json"), check=False)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert proc.stderr.startswith("error: COCO captions file") and "does not exist" in proc.stderr


def test_errors(fake_coco, tmp_path, capsys):
    """Each bad input stops main() through user_errors (exit 2, clear message) before anything is written."""
    script = load_script()
    images = fake_coco[1]

    def error_of(**over):
        with pytest.raises(SystemExit) as exc, user_errors():
            script.main(script.parse_args(cli_args(fake_coco, tmp_path, **over)))
        assert exc.value.code == 2
        assert not (tmp_path / "ref").exists() and not (tmp_path / "p.txt").exists()  # nothing half-written
        assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temp folder left
        return capsys.readouterr().err

    assert "does not exist" in error_of(images=tmp_path / "nope")
    (tmp_path / "bad.json").write_text("{not json")
    assert "not valid JSON" in error_of(captions=tmp_path / "bad.json")
    (tmp_path / "noanns.json").write_text(json.dumps({"images": []}))
    assert "'annotations'" in error_of(captions=tmp_path / "noanns.json")
    assert "only 6 captioned images" in error_of(num_samples=7)
    for p in images.iterdir():
        p.write_bytes(b"not a jpeg")
    assert "cannot read COCO image" in error_of()


def test_sample_pairs_rejects_bad_count(fake_coco):
    with pytest.raises(ConfigError, match="at least 1"):
        sample_pairs(*load_captions(fake_coco[0]), 0, seed=0)
