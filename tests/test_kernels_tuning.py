"""Kernel tile-config tuning (quant_utils/kernels/tuning.py): one Tuning object per process, its files shared across
GPUs of one compute capability, cached per user and GPU model so each GPU model is tuned once (issue 18, fast first
image). CPU only: the GPU name and capability are stubbed."""
import json

import pytest

from conftest import REPO
from quant_utils.kernels import tuning
from quant_utils.kernels.tuning import Tuning

CFG = {"BM": 64, "BN": 128, "num_warps": 4, "num_stages": 4, "SWAP": False, "SPLIT_K": 1, "GROUP_M": 8, "ms": 0.01}
RESULTS = REPO / "results"


@pytest.fixture
def h200(monkeypatch, tmp_path):
    """This process runs on an H200 (sm_90), with its cache under tmp_path and no environment overrides."""
    monkeypatch.setattr(tuning, "gpu_name", lambda: "NVIDIA H200")
    monkeypatch.setattr(tuning, "capability", lambda: "sm_90")
    monkeypatch.setattr(tuning.torch.cuda, "is_current_stream_capturing", lambda: False)
    for var in ("MIXDQ_TUNING_FILE", "MIXDQ_TUNE"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("MIXDQ_TUNING_CACHE", str(tmp_path / "cache" / "kernels_tuning_nvidia_h200.json"))
    return tmp_path


def _file(path, gpu, configs, capability=None):
    data = {"gpu": gpu, "configs": configs} | ({"capability": capability} if capability else {})
    path.write_text(json.dumps(data))
    return path


def test_a_file_of_the_same_architecture_loads_another_does_not(h200):
    t = Tuning()
    # the committed H100 file predates `capability`: its name maps to sm_90
    assert t.load(_file(h200 / "h100.json", "NVIDIA H100 80GB HBM3", {"a": CFG, "b": CFG})) == (2, "NVIDIA H100 80GB HBM3")
    assert t.load(_file(h200 / "a100.json", "NVIDIA A100-SXM4-80GB", {"c": CFG}))[0] == 0
    assert t.load(_file(h200 / "new.json", "Some Future GPU", {"d": CFG}, "sm_90"))[0] == 1
    assert t.load(_file(h200 / "l4.json", "NVIDIA L4", {"e": CFG}, "sm_89"))[0] == 0
    assert set(t.configs) == {"a", "b", "d"} and t.sources == [str(h200 / "h100.json"), str(h200 / "new.json")]
    assert tuning.file_capability({"gpu": "NVIDIA H100 PCIe"}) == "sm_90"
    assert tuning.file_capability({"gpu": "NVIDIA A10"}) == "sm_86"


def test_the_committed_h100_file_serves_an_h200(h200, capsys):
    """Both committed files are loaded on an H200, this GPU model's own last (its configs win where both tuned),
    each named once."""
    h100 = RESULTS / "kernels_tuning_nvidia_h100_80gb_hbm3.json"
    own = RESULTS / "kernels_tuning_nvidia_h200.json"
    files = [f for f in (h100, own) if f.is_file()]
    configs = [json.loads(f.read_text())["configs"] for f in files]
    t = Tuning.standard(RESULTS)
    out = capsys.readouterr().out
    assert f"[kernels] {len(configs[0])} tuned tile configs from {h100} (tuned on NVIDIA H100 80GB HBM3" in out
    assert out.count(str(h100)) == 1
    assert out.index(str(h100)) < (out.index(str(own)) if own.is_file() else len(out))
    merged = {k: v for c in configs for k, v in c.items()}
    assert t.configs == merged and len(merged) > 100 and t.sources == [str(f) for f in files]


def test_the_environment_names_the_file_or_none(h200):
    """MIXDQ_TUNING_FILE names the file to load instead of the committed ones, `none` loads none; MIXDQ_TUNE=0 never
    times (an untuned key takes the first candidate); a loaded key is never re-timed."""
    tuned = dict(CFG, BM=256)
    mine = _file(h200 / "t.json", "NVIDIA H200", {"linear|k": tuned}, "sm_90")
    cands = [dict(CFG, BM=16), dict(CFG, BM=32)]
    never = lambda c: pytest.fail("must not be timed")  # noqa: E731
    for setting, expected in ((str(mine), tuned), ("none", cands[0])):
        with pytest.MonkeyPatch.context() as mp:
            mp.setenv("MIXDQ_TUNING_FILE", setting)
            mp.setenv("MIXDQ_TUNE", "0")
            t = Tuning.standard(RESULTS)
            assert not t.autotune and t.choose("linear|k", cands, never) == expected


def test_tuned_configs_are_cached_per_gpu_model_and_used_by_the_next_process(h200, monkeypatch, capsys):
    monkeypatch.setenv("MIXDQ_TUNING_FILE", "none")
    exits = []
    monkeypatch.setattr(tuning.atexit, "register", exits.append)
    cands = [dict(CFG, BM=16), dict(CFG, BM=32)]
    t = Tuning.standard(RESULTS)
    picked = t.choose("linear|k", cands, lambda c: c["BM"] / 10)  # "times" each candidate: BM/10 ms
    assert picked["BM"] == 16 and picked["ms"] == 1.6 and exits == [t.save_cache]  # registered once, at the first
    t.choose("linear|j", cands, lambda c: 5 - c["BM"] / 10)
    assert len(exits) == 1 and t.timed == {"linear|k", "linear|j"}
    t.cache.parent.mkdir(parents=True)
    _file(t.cache, "NVIDIA H200", {"older": CFG}, "sm_90")  # an earlier process's entry is kept
    assert t.save_cache() == t.cache
    saved = json.loads(t.cache.read_text())
    assert saved["gpu"] == "NVIDIA H200" and saved["capability"] == "sm_90"
    assert set(saved["configs"]) == {"older", "linear|k", "linear|j"} and saved["configs"]["linear|j"]["BM"] == 32
    # the next process: loaded from the cache, nothing re-timed
    capsys.readouterr()
    nxt = Tuning.standard(RESULTS)
    assert nxt.choose("linear|j", cands, lambda c: pytest.fail("a cached key must not be re-timed"))["BM"] == 32
    assert f"3 tuned tile configs from {t.cache}" in capsys.readouterr().out
    assert nxt.save_cache() is None  # nothing new: the cache is left alone


def test_cache_can_be_switched_off(h200, monkeypatch):
    monkeypatch.setenv("MIXDQ_TUNING_CACHE", "none")
    t = Tuning.standard(RESULTS, committed=False)
    t.configs, t.timed = {"k": CFG}, {"k"}
    assert t.cache is None and t.configs == {"k": CFG} and t.save_cache() is None


def test_the_launches_use_the_installed_tuning_and_its_forced_config(monkeypatch):
    """One Tuning per process: the kernels read the installed one (an empty, timing one until somebody installs
    theirs); `forced` pins every launch inside the block to one config, then lets go."""
    monkeypatch.setattr(tuning, "_current", None)
    assert not tuning.tuning_installed()
    first = tuning.current_tuning()
    assert tuning.tuning_installed() and first.configs == {} and first.cache is None
    mine = tuning.use_tuning(Tuning(configs={"k": CFG}, autotune=False))
    assert tuning.current_tuning() is mine
    with mine.forced(dict(CFG, BM=16)):
        assert mine.choose("k", [CFG], lambda c: pytest.fail("forced")) == dict(CFG, BM=16)
    assert mine.choose("k", [dict(CFG, BM=32)], lambda c: pytest.fail("known")) == CFG


def test_fixup_tile_configs_are_candidates_only_when_enabled(monkeypatch):
    """FIXUP split-K tile configs (the opt-in kind) join the int8 linear's candidates of the tiny and small classes
    only with MIXDQ_FIXUP=1, never for fp16 activations; every one splits K, and packed 4/6/2-bit weights take them
    with and without the PRE unpack pass (FIXUP changes the epilogue alone: any weight bits)."""
    from quant_utils.kernels import launch

    monkeypatch.delenv("MIXDQ_FIXUP", raising=False)
    for m in (40, 300):
        assert not any(launch.opt_in_kind(c) for c in launch.linear_candidates(m, False, 8))
    monkeypatch.setenv("MIXDQ_FIXUP", "1")
    for m in (40, 300):
        cands = launch.linear_candidates(m, False, 8)
        assert {launch.opt_in_kind(c) for c in cands} == {"FIXUP", None}
        assert all(c["SPLIT_K"] > 1 for c in cands if c.get("FIXUP"))
        assert not any(c.get("FIXUP") for c in launch.linear_candidates(m, True, 8))  # fp16 activations
        packed = [c for c in launch.linear_candidates(m, False, 4) if c.get("FIXUP")]
        assert any(c.get("PRE") for c in packed) and any(not c.get("PRE") for c in packed)
    for m in (600, 16384):  # not in the mid and large classes
        assert not any(c.get("FIXUP") for c in launch.linear_candidates(m, False, 8))


def test_kernel_forms_counts_the_linear_shapes_by_the_kernel_they_run():
    from quant_utils.kernels import launch

    configs = {"linear|m=4096|n=1280|k=1280|b=8|g=128|a=int8": launch._cfg(128, 128, 8, 3, True),
               "linear|m=256|n=1280|k=1280|b=8|g=128|a=int8": launch._fixup(64, 128, 4, 4, True, 4),
               "linear|m=77|n=1280|k=2048|b=8|g=128|a=int8": launch._cfg(32, 128, 4, 4, True, 2),
               "linear|m=1024|n=640|k=640|b=8|g=128|a=int8": launch._cfg(128, 128, 8, 3),
               "linear|m=16384|n=640|k=640|b=8|g=128|a=int8": launch._cfg(128, 128, 8, 3, True),
               "conv|x=1x66x66x320|n=320|c1=320|k=3|s=1|b=8|g=128": launch._cfg(128, 128, 8, 3)}  # not a linear
    assert launch.kernel_forms(configs) == "3 one tile per program, 1 fixup split-K, 1 split-K (atomic)"
    assert launch.kernel_forms({}) == "none"


def test_channels_last_conv_outputs_tune_the_nchw_tile_in_both_orientations(monkeypatch):
    """A conv with channels_last outputs has its own tuning key; when the NCHW store's tile is tuned, its candidates
    are that tile in both orientations (a full autotune of every decoder conv would cost minutes of first call),
    else the size class's candidates, as for NCHW."""
    from quant_utils.kernels import launch

    t = Tuning(autotune=False)
    monkeypatch.setattr(tuning, "_current", t)
    shape, args = (1, 34, 34, 64), (64, 64, 3, 1, 8, 128)
    every = launch.conv_candidates(32 * 32, False, 8)
    assert launch.conv_out_candidates(shape, *args, channels_last=True) == every
    t.configs[launch.conv_key(shape, *args)] = dict(BM=64, BN=64, SWAP=True, num_warps=4, num_stages=3, ms=0.01)
    got = launch.conv_out_candidates(shape, *args, channels_last=True)
    assert [c["SWAP"] for c in got] == [True, False] and all("ms" not in c and c["BM"] == 64 for c in got)
    assert launch.conv_out_candidates(shape, *args, channels_last=False) == every
    assert launch.conv_key(shape, *args, channels_last=True) == launch.conv_key(shape, *args) + "|o=nhwc"


def test_tuning_keys_parse_back_and_tiles_have_short_names():
    """parse_key inverts linear_key and conv_key (the device sweeps read shapes from tuning files); tile_name names
    every tile option a CSV row must tell apart."""
    from quant_utils.kernels import launch

    assert launch.parse_key(launch.linear_key(4096, 640, 1280, 4, 128, False)) == \
        {"m": 4096, "n": 640, "k": 1280, "b": 4, "g": 128, "a": "int8"}
    conv = launch.parse_key(launch.conv_key((4, 1026, 1026, 128), 128, 128, 3, 1, 8, 128, channels_last=True))
    assert conv == {"x": "4x1026x1026x128", "n": 128, "c1": 128, "k": 3, "s": 1, "b": 8, "g": 128, "o": "nhwc"}
    names = {launch.tile_name(c) for cands in launch.LINEAR_CANDIDATES.values() for c in cands}
    assert len(names) == len({tuple(sorted(c.items())) for cands in launch.LINEAR_CANDIDATES.values() for c in cands})
    assert launch.tile_name(dict(BM=32, BN=64, num_warps=4, num_stages=4, SWAP=True, SPLIT_K=4, FIXUP=True)) == \
        "32x64w4s4swapk4fixup"
