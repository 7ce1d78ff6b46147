"""scripts/device/decoder_pass_sweep.py's conv-tile sweep on the CPU (kernels interpreted, timer stubbed): the decoder
conv shapes it picks from a tuning file, the rows it writes, equal outputs across tiles, the winner it swaps in."""
import json
import sys

from conftest import run_interpreted

from quant_utils import REPO_ROOT

sys.path.insert(0, str(REPO_ROOT / "scripts" / "device"))

SWEEP = """
import sys
sys.path.insert(0, "scripts/device")
import decoder_pass_sweep as dps
from quant_utils.kernels.tuning import Tuning
key = "conv|x=1x10x10x128|n=128|c1=128|k=3|s=1|b=8|g=128|o=nhwc"
tuned = dict(BM=128, BN=128, GROUP_M=8, SPLIT_K=1, SWAP=True, num_stages=3, num_warps=8, ms=1.0)
dps.DEVICE = "cpu"
dps.Tuning.standard = classmethod(lambda cls, d, committed=True: Tuning(configs={key: tuned}))
dps.decoder_conv_keys = lambda tuning, batch: [key]
times = iter([1.0, 0.9, 0.5] + [0.99] * 10)  # the tuned tile, then the candidates: the second is the fastest
dps.graph_bench_ms = lambda fn: (fn(), next(times))[1]
dps.main(dps.parse_args(["--passes", "convs", "--batch", "1", "--out", sys.argv[1], "--tuning_out", sys.argv[2]]))
"""


def test_conv_tile_sweep_rows_and_winner(tmp_path):
    import decoder_pass_sweep as dps
    from quant_utils.csvio import read_csv
    from quant_utils.kernels.tuning import Tuning

    out, tiles = tmp_path / "convs.csv", tmp_path / "tiles.json"
    run_interpreted(SWEEP, str(out), str(tiles))
    df = read_csv(out)
    assert list(df["pass"].unique()) == ["conv"] and len(df) == 1 + len(dps.CONV_TILES)
    assert df["equal"].all() and df["tops"].gt(0).all() and df["default"].sum() == 1  # every tile: the same integers
    assert df.iloc[0]["config"] == "128x128w8s3swap" and df.iloc[2]["config"] == "64x128w4s4swap"
    won = json.loads(tiles.read_text())["configs"]["conv|x=1x10x10x128|n=128|c1=128|k=3|s=1|b=8|g=128|o=nhwc"]
    assert (won["BM"], won["num_warps"], won["num_stages"], won["ms"]) == (64, 4, 4, 0.5)
    # the shapes it sweeps on a real tuning file: the decoder's convs only (no UNet conv has 128-512 unsplit channels
    # at >= 128 px latents)
    h200 = json.loads((REPO_ROOT / "results" / "kernels_tuning_nvidia_h200.json").read_text())["configs"]
    keys = dps.decoder_conv_keys(Tuning(configs=h200), 4)
    assert keys and all(k.startswith("conv|x=4x") and "|b=8|" in k and k.endswith("|o=nhwc") for k in keys)
    assert any("x=1x1026x1026x128|n=128" in k for k in dps.decoder_conv_keys(Tuning(configs=h200), 1))
    assert any("x=4x1026x1026x128|n=128" in k for k in keys) and not any("x=4x130x130x320" in k for k in keys)
