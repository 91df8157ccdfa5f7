"""Probing on 2 CPU processes (gloo) gives the results of 1 process: same global batches, each rank
training on half of each, gradients averaged; evaluation counts summed over ranks."""
import json
import subprocess
import sys

import pytest
import torch

from conftest import ROOT
from test_engine import ENV, free_port
from vjepa.engine import checkpoint as ckpt
from vjepa.models import VisionTransformer
from vjepa.probe_dist import Ranks, ShardedBatches


def test_sharded_batches_partition_the_global_batches():
    for shuffle in (True, False):
        glob = [b.tolist() for b in ShardedBatches(25, 8, shuffle, 3, 1, Ranks(0, 1)).global_batches()]
        assert len(glob) == (3 if shuffle else 4)  # training drops the last partial batch
        assert list(ShardedBatches(25, 8, shuffle, 3, 1, Ranks(0, 1))) == glob  # one process: all of it
        halves = [list(ShardedBatches(25, 8, shuffle, 3, 1, Ranks(r, 2))) for r in range(2)]
        for b, r0, r1 in zip(glob, *halves):
            assert sorted(r0 + r1) == sorted(b) and abs(len(r0) - len(r1)) <= 1
    assert [Ranks(r, 3).chunk(10) for r in range(3)] == [range(0, 4), range(4, 8), range(8, 10)]


def run_probe(tmp_path, name, nproc, *extra):
    ck = tmp_path / "enc.pt"
    if not ck.exists():
        torch.manual_seed(0)
        enc = VisionTransformer(img_size=16, num_frames=4, patch_size=8, tubelet_size=2, embed_dim=24, depth=2,
                                num_heads=2)
        torch.save({"target_encoder": enc.state_dict()}, ck)
    args = ["--config", str(ROOT / "configs" / "probe" / "motion.yaml"), f"pretrain.checkpoint={ck}",
            "pretrain.num_heads=2", "data.motion.num_train=48", "data.motion.num_val=25",
            "data.motion.num_frames=4", "data.motion.size=16", "data.motion.num_speeds=1",
            "optimization.batch_size=16", "optimization.num_epochs=2", "optimization.lr_grid=[1.0e-3,3.0e-3]",
            "optimization.wd_grid=[0.01]", f"logging.folder={tmp_path / name}", *extra]
    launch = ([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port",
               str(free_port())] if nproc == 2 else [sys.executable])
    out = subprocess.run([*launch, str(ROOT / "train.py"), *args], cwd=ROOT, env=ENV, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr[-3000:]
    results = json.loads((tmp_path / name / "results.json").read_text())
    return results, ckpt.load(tmp_path / name / "probe-latest.pt")


# cache_features=false (encoding on the fly through the sharded DataLoader) passes the same way; it is
# marked slow to keep the default suite near 2 minutes on 2 cores (run it with `pytest -m slow`).
@pytest.mark.parametrize("cache", ["true", pytest.param("false", marks=pytest.mark.slow)])
def test_two_process_probing_matches_one_process(tmp_path, cache):
    two, state2 = run_probe(tmp_path, "two", 2, f"optimization.cache_features={cache}")
    one, state1 = run_probe(tmp_path, "one", 1, f"optimization.cache_features={cache}")
    # the same predictions: identical top-1/top-5 of every probe on the 25 val videos (13 + 12 per rank)
    assert [(p["top1"], p["top5"]) for p in two["probes"]] == [(p["top1"], p["top5"]) for p in one["probes"]]
    if cache == "true":
        assert two["knn_top1"] == one["knn_top1"]
    h1, h2 = json.loads(state1["history"]), json.loads(state2["history"])
    torch.testing.assert_close(torch.tensor([h["train_loss"] for h in h2]),
                               torch.tensor([h["train_loss"] for h in h1]), rtol=1e-5, atol=1e-6)
    for a, b in zip(state2["grid"]["probes"], state1["grid"]["probes"]):
        for k in b:
            torch.testing.assert_close(a[k], b[k], rtol=1e-4, atol=1e-6)
