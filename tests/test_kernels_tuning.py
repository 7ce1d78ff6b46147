"""Kernel tile-config tuning files (quant_utils/kernels/launch.py): shared across GPUs of one compute capability,
cached per user and GPU model so each GPU model is tuned once (issue 18, fast first image). CPU only: the GPU
name and capability are stubbed."""
import json

import pytest

from quant_utils.kernels import launch

CFG = {"BM": 64, "BN": 128, "num_warps": 4, "num_stages": 4, "SWAP": False, "SPLIT_K": 1, "GROUP_M": 8, "ms": 0.01}


@pytest.fixture
def h200(monkeypatch, tmp_path):
    """This process runs on an H200 (sm_90), with an empty tuning state and its cache under tmp_path."""
    monkeypatch.setattr(launch, "gpu_name", lambda: "NVIDIA H200")
    monkeypatch.setattr(launch, "capability", lambda: "sm_90")
    monkeypatch.setattr(launch, "_TUNED", {})
    monkeypatch.setattr(launch, "_TUNED_HERE", set())
    monkeypatch.setattr(launch, "_DEFAULT_TUNING_LOADED", False)
    monkeypatch.setenv("MIXDQ_TUNING_CACHE", str(tmp_path / "cache" / "kernels_tuning_nvidia_h200.json"))
    return tmp_path


def _file(path, gpu, configs, capability=None):
    data = {"gpu": gpu, "configs": configs} | ({"capability": capability} if capability else {})
    path.write_text(json.dumps(data))
    return path


def test_a_file_of_the_same_architecture_loads_another_does_not(h200):
    # the committed H100 file predates `capability`: its name maps to sm_90
    assert launch.load_tuning(_file(h200 / "h100.json", "NVIDIA H100 80GB HBM3", {"a": CFG, "b": CFG})) == 2
    assert launch.load_tuning(_file(h200 / "a100.json", "NVIDIA A100-SXM4-80GB", {"c": CFG})) == 0
    assert launch.load_tuning(_file(h200 / "new.json", "Some Future GPU", {"d": CFG}, "sm_90")) == 1
    assert launch.load_tuning(_file(h200 / "l4.json", "NVIDIA L4", {"e": CFG}, "sm_89")) == 0
    assert set(launch.tuned()) == {"a", "b", "d"}
    assert launch.file_capability({"gpu": "NVIDIA H100 PCIe"}) == "sm_90"
    assert launch.file_capability({"gpu": "NVIDIA A10"}) == "sm_86"


def test_the_committed_h100_file_serves_an_h200(h200, monkeypatch, capsys):
    """Both committed files are loaded on an H200, this GPU model's own last (its configs win where both tuned)."""
    monkeypatch.delenv("MIXDQ_TUNING_FILE", raising=False)
    h100 = launch.REPO_ROOT / "results" / "kernels_tuning_nvidia_h100_80gb_hbm3.json"
    own = launch.REPO_ROOT / "results" / "kernels_tuning_nvidia_h200.json"
    files = [f for f in (h100, own) if f.is_file()]
    configs = [json.loads(f.read_text())["configs"] for f in files]
    launch._load_default_tuning()
    out = capsys.readouterr().out
    assert f"[kernels] {len(configs[0])} tuned tile configs from {h100} (tuned on NVIDIA H100 80GB HBM3" in out
    assert out.index(str(h100)) < (out.index(str(own)) if own.is_file() else len(out))
    merged = {k: v for c in configs for k, v in c.items()}
    assert launch.tuned() == merged and len(merged) > 100


def test_tuned_configs_are_cached_per_gpu_model_and_used_by_the_next_process(h200, monkeypatch, capsys):
    monkeypatch.setenv("MIXDQ_TUNING_FILE", "none")
    monkeypatch.setattr(launch, "TUNING", True)
    monkeypatch.setattr(launch.torch.cuda, "is_current_stream_capturing", lambda: False)
    exits = []
    monkeypatch.setattr(launch.atexit, "register", exits.append)
    cands = [dict(CFG, BM=16), dict(CFG, BM=32)]
    monkeypatch.setattr(launch, "graph_bench_ms", lambda fn: fn())  # "times" each candidate: BM/10 ms
    picked = launch._choose("linear|k", cands, lambda c: c["BM"] / 10)
    assert picked["BM"] == 16 and exits == [launch.save_tuning_cache]  # registered once, at the first tuning
    launch._choose("linear|j", cands, lambda c: 5 - c["BM"] / 10)
    cache = launch.tuning_cache_path()
    cache.parent.mkdir(parents=True)
    _file(cache, "NVIDIA H200", {"older": CFG}, "sm_90")  # an earlier process's entry is kept
    assert launch.save_tuning_cache() == cache
    saved = json.loads(cache.read_text())
    assert saved["gpu"] == "NVIDIA H200" and saved["capability"] == "sm_90"
    assert set(saved["configs"]) == {"older", "linear|k", "linear|j"} and saved["configs"]["linear|j"]["BM"] == 32
    # the next process: loaded from the cache, nothing re-timed
    monkeypatch.setattr(launch, "_TUNED", {})
    monkeypatch.setattr(launch, "_TUNED_HERE", set())
    monkeypatch.setattr(launch, "_DEFAULT_TUNING_LOADED", False)
    capsys.readouterr()
    assert launch._choose("linear|j", cands, lambda c: pytest.fail("a cached key must not be re-timed"))["BM"] == 32
    assert f"3 tuned tile configs from {cache}" in capsys.readouterr().out
    assert launch.save_tuning_cache() is None  # nothing new: the cache is left alone


def test_cache_can_be_switched_off(h200, monkeypatch):
    monkeypatch.setenv("MIXDQ_TUNING_CACHE", "none")
    monkeypatch.setattr(launch, "_TUNED_HERE", {"k"})
    monkeypatch.setattr(launch, "_TUNED", {"k": CFG})
    assert launch.tuning_cache_path() is None and launch.save_tuning_cache() is None
