import itertools

import numpy as np
import pytest
import torch
import yaml

from conftest import REPO, run_script
from quant_utils.bit_allocation import (Choice, Sensitivity, agreement, allocate, is_content_layer, load_sensitivity,
                                        protect_list, solve_choices, tie_groups, weighted_avg_bits)
from quant_utils.bitconfig import read_bit_config, read_protect_list
from quant_utils.csvio import read_csv
from quant_utils.errors import ConfigError

REAL_SENS = REPO / "mixed_precision_scripts/sensitivity_log/sdxl_turbo"
FINAL = REPO / "mixed_precision_scripts/mixed_percision_config/sdxl_turbo/final_config"


def run_mp(script: str, *args):
    """mixed_precision_scripts/<script> as a subprocess (conftest's runner, which starts in scripts/)."""
    return run_script(f"../mixed_precision_scripts/{script}", *args, check=False)


def brute_force(choices: list[Choice], budget: float) -> float:
    total = sum(c.size for c in choices)
    best = -np.inf
    for combo in itertools.product(*(sorted(c.options) for c in choices)):
        if sum(c.size * b for c, b in zip(choices, combo)) <= budget * total + 1e-9:
            best = max(best, sum(c.options[b] for c, b in zip(choices, combo)))
    return best


@pytest.mark.parametrize("seed", range(12))
def test_ilp_matches_brute_force_and_respects_budget(seed):
    rng = np.random.default_rng(seed)
    n = int(rng.integers(3, 8))
    choices = []
    for i in range(n):
        bits = sorted(rng.choice([2, 4, 6, 8], size=int(rng.integers(1, 4)), replace=False).tolist())
        choices.append(Choice((f"l{i}",), float(rng.uniform(0.1, 50)), {b: float(rng.normal()) for b in bits}))
    total = sum(c.size for c in choices)
    lo = sum(c.size * min(c.options) for c in choices) / total
    hi = sum(c.size * max(c.options) for c in choices) / total
    budget = float(rng.uniform(lo, hi))
    got = solve_choices(choices, budget)
    assert all(b in c.options for c, b in zip(choices, got))
    assert sum(c.size * b for c, b in zip(choices, got)) <= budget * total + 1e-6
    assert sum(c.options[b] for c, b in zip(choices, got)) == pytest.approx(brute_force(choices, budget), abs=1e-7)


def test_infeasible_budget_is_a_clear_error():
    with pytest.raises(ConfigError, match="below the lowest achievable"):
        solve_choices([Choice(("a",), 1.0, {4: 0.0, 8: 1.0})], 3.0)


def synthetic(n_content=4, n_quality=4, seed=0, kind="weight") -> Sensitivity:
    """Layers with real-looking names; scores rise with bits, sensitivity varies per layer."""
    rng = np.random.default_rng(seed)
    names = [f"down_blocks.1.attentions.0.transformer_blocks.{i}.ff.net.2" for i in range(n_content)]
    names += [f"down_blocks.0.resnets.{i}.conv1" for i in range(n_quality)]
    sqnr, ssim, sizes = {}, {}, {}
    for n in names:
        s = rng.uniform(0.2, 3.0)
        sqnr[n] = [10 / s, 30 / s, 60 / s]
        if is_content_layer(n):
            ssim[n] = [1 - 0.2 * s, 1 - 0.02 * s, 1 - 0.001 * s]
        sizes[n] = float(rng.integers(1, 20))
    return Sensitivity(kind, (2, 4, 8), sqnr, ssim, sizes, unit_elems=100.0)


@pytest.mark.parametrize("frac", [0.0, 0.3, 0.7, 1.0])
def test_allocate_respects_budget_and_candidates(frac):
    sens = synthetic()
    lowest = weighted_avg_bits({n: 2 if is_content_layer(n) else 4 for n in sens.layers}, sens.sizes)
    budget = lowest + frac * (8 - lowest)
    a = allocate(sens, budget, 0.5)
    assert set(a.bits) == set(sens.layers)
    assert weighted_avg_bits(a.bits, sens.sizes) <= budget + 1e-6
    assert a.summary["avg_bits"] == pytest.approx(weighted_avg_bits(a.bits, sens.sizes))
    for n, b in a.bits.items():
        assert b in ((2, 4, 8) if is_content_layer(n) else (4, 8))  # MixDQ: no 2-bit quality layers
    assert a.summary["qweight_mbytes"] == pytest.approx(sum(sens.sizes[n] * 100 * b / 8 for n, b in a.bits.items()) / 1e6)
    assert sum(a.summary[f"layers_{b}bit"] for b in (2, 4, 8)) == len(sens.layers)


def test_content_weight_moves_bits_between_groups():
    sens = synthetic(6, 6, seed=3)
    lo, hi = allocate(sens, 5.0, 0.05), allocate(sens, 5.0, 0.95)
    assert hi.summary["avg_bits_content"] > lo.summary["avg_bits_content"]
    assert hi.summary["avg_bits_quality"] < lo.summary["avg_bits_quality"]


def test_more_sensitive_layer_gets_more_bits():
    names = ["down_blocks.0.resnets.0.conv1", "down_blocks.0.resnets.1.conv1"]
    sens = Sensitivity("weight", (4, 8), {names[0]: [10.0, 50.0], names[1]: [45.0, 50.0]}, {},
                       {n: 1.0 for n in names})
    assert allocate(sens, 6.0).bits == {names[0]: 8, names[1]: 4}


def test_ties_share_bits_and_protect_excludes():
    base = "mid_block.attentions.0.transformer_blocks.0"
    names = [f"{base}.attn1.to_{p}" for p in "qkv"] + [f"{base}.attn1.to_out.0", "conv_in"]
    rng = np.random.default_rng(1)
    sqnr = {n: sorted(rng.uniform(0, 60, 3).tolist()) for n in names}
    sens = Sensitivity("act", (2, 4, 8), sqnr, {}, {n: 1.0 for n in names})
    groups = tie_groups(names, "shared_input")
    assert sorted(map(sorted, groups)) == sorted([sorted(f"{base}.attn1.to_{p}" for p in "qkv"),
                                                  [f"{base}.attn1.to_out.0"], ["conv_in"]])
    for budget in (5.0, 6.0, 7.0):
        a = allocate(sens, budget, tie="shared_input", protect=["conv_in"])
        assert "conv_in" not in a.bits and a.summary["n_protected"] == 1
        assert len({a.bits[f"{base}.attn1.to_{p}"] for p in "qkv"}) == 1
    with pytest.raises(ConfigError, match="not in the sensitivity data"):
        allocate(sens, 6.0, protect=["nope"])


def test_protect_list_reproduces_mixdq_and_real_config_is_valid():
    act = load_sensitivity(REAL_SENS, "act")
    mixdq = torch.load(FINAL / "act" / "act_sensitivie_a8_1%.pt", weights_only=True)
    assert ["model." + n for n in protect_list(act, 1.0)] == mixdq
    # the committed weight_6.00.yaml: every layer, 2/4/8 bits, average within 0.01 of 6.00
    w = load_sensitivity(REAL_SENS, "weight")
    cfg = read_bit_config(FINAL / "weight" / "weight_6.00.yaml")
    assert set(cfg) == set(w.layers) and len(cfg) == 794
    assert set(cfg.values()) == {2, 4, 8}
    assert abs(weighted_avg_bits(cfg, w.sizes) - 6.0) <= 0.01
    # same bits as solving again
    assert allocate(w, 6.0, 0.5).bits == cfg


def test_agreement_counts_layers_and_sizes():
    ours, ref = {"a": 4, "b": 8, "c": 2}, {"a": 4, "b": 4, "c": 2}
    ag = agreement(ours, ref, {"a": 1.0, "b": 2.0, "c": 1.0})
    assert ag["agree_layers"] == pytest.approx(2 / 3) and ag["agree_size"] == pytest.approx(0.5)


def write_sens_dir(root, sens: Sensitivity):
    for metric, table in (("sqnr", sens.sqnr), ("ssim", sens.ssim)):
        p = root / sens.kind / metric / "sensitivity.yaml"
        p.parent.mkdir(parents=True)
        p.write_text(yaml.safe_dump({"model." + k: v for k, v in table.items()}))
    (root / sens.kind / "meta.yaml").write_text(yaml.safe_dump({"bits": list(sens.bits)}))
    (root / "tensor_ratio").mkdir(exist_ok=True)
    (root / "tensor_ratio" / f"{sens.kind}_ratio_config.yaml").write_text(
        yaml.safe_dump({"model." + k: v for k, v in sens.sizes.items()}))


def test_script_writes_configs_summary_and_protect_list(tmp_path):
    sens = synthetic(6, 5, seed=2, kind="act")
    write_sens_dir(tmp_path / "sens", sens)
    out = tmp_path / "out"
    ref = {n: 8 for n in sens.layers}
    (tmp_path / "ref").mkdir()
    (tmp_path / "ref" / "act_7.00.yaml").write_text("".join(f"model.{n}: 8\n" for n in sorted(ref)))
    p = run_mp("bit_allocation.py", "--sensitivity_dir", tmp_path / "sens", "--kind", "act", "--target_bits", 6.0, 7.0,
               "--content_weight", 0.3, 0.7, "--protect_percent", 10, "--out_dir", out, "--compare_dir", tmp_path / "ref")
    assert p.returncode == 0, p.stderr
    df = read_csv(out / "summary.csv")
    assert len(df) == 4 and sorted(set(df["budget_bits"])) == [6.0, 7.0]  # every candidate, not only a winner
    assert (df["avg_bits"] <= df["budget_bits"] + 1e-6).all() and (df["n_protected"] == 2).all()
    assert df["agree_layers"].notna().tolist() == [False, False, True, True]
    protected = read_protect_list(out / "act_sensitivie_a8_10%.pt")
    assert protected == protect_list(sens, 10)
    assert isinstance(torch.load(out / "act_sensitivie_a8_10%.pt", weights_only=True), list)
    for _, row in df.iterrows():  # YAML round trip: `model.`-prefixed file, same bits as solving in-process
        text = (out / row["config"]).read_text()
        assert text.startswith("model.")
        back = read_bit_config(out / row["config"])
        again = allocate(sens, row["budget_bits"], row["content_weight"], protect=protected).bits
        assert back == again and not set(back) & set(protected)
    # a different existing config is never silently replaced
    victim = out / df["config"][0]
    victim.write_text("".join(f"model.{n}: 8\n" for n in read_bit_config(victim)))
    p = run_mp("bit_allocation.py", "--sensitivity_dir", tmp_path / "sens", "--kind", "act", "--target_bits", 6.0,
               "--content_weight", 0.3, 0.7, "--protect_percent", 10, "--out_dir", out)
    assert p.returncode == 2 and "--overwrite" in p.stderr and "Traceback" not in p.stderr


def test_script_bad_inputs(tmp_path):
    p = run_mp("bit_allocation.py", "--sensitivity_dir", tmp_path, "--target_bits", 4)
    assert p.returncode == 2 and "does not exist" in p.stderr
    p = run_mp("bit_allocation.py", "--target_bits", 1.0, "--out_dir", tmp_path)
    assert p.returncode == 2 and "below the lowest achievable" in p.stderr


def test_every_budget_is_checked_before_anything_is_written(tmp_path, capsys):
    """A budget out of reach (below, above, infinite) stops the run with no config, protect list or summary behind."""
    from conftest import run_main

    mp = "../mixed_precision_scripts/bit_allocation.py"
    for kind, budgets, message in (("weight", [4.0, 1.0], "below the lowest achievable"),
                                   ("act", [3.0], "below the lowest achievable"),
                                   ("weight", [9], "above the highest achievable average 8.000"),
                                   ("weight", [6.0, "inf"], "finite")):
        out = tmp_path / f"{kind}_{budgets[-1]}"
        assert run_main(mp, "--kind", kind, "--target_bits", *budgets, "--out_dir", out) == 2
        assert message in capsys.readouterr().err
        assert not out.exists() or not list(out.iterdir()), list(out.iterdir())


def test_rerun_reproduces_the_summary_byte_for_byte_with_its_data_line(tmp_path, capsys):
    from conftest import run_main

    mp = "../mixed_precision_scripts/bit_allocation.py"
    args = ["--kind", "weight", "--target_bits", 6.0, "--out_dir", tmp_path, "--summary_csv", tmp_path / "s.csv"]
    assert run_main(mp, *args) == 0
    first = (tmp_path / "s.csv").read_bytes()
    assert b"# data: MixDQ's published per-layer sensitivities" in first
    assert run_main(mp, *args) == 0
    assert (tmp_path / "s.csv").read_bytes() == first
    # the committed table is what the README's command gives
    assert read_csv(tmp_path / "s.csv").equals(read_csv(REPO / "results/bit_allocation_weight_6.00.csv"))
