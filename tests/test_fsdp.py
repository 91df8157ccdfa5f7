"""FSDP pretraining (`meta.fsdp`, vjepa/engine/fsdp.py) on 2 CPU processes over gloo: the loss curve of
one process on the same global batch, full checkpoints that a 1-process run and `vjepa.load_encoder`
read (and a DDP checkpoint that a sharded run resumes), exact resume of a sharded run, the adapted cross-rank checksum rule, and a NaN on one rank stopping
both. One launch runs every sharded job (this file is its driver):

    torchrun --nproc_per_node 2 tests/test_fsdp.py OUT

The 2-process tests take ~45 s on 2 cores and are marked slow (`pytest -m slow tests/test_fsdp.py`); the
default suite runs the sharded loop in one process (world size 1), which must match the unsharded run
bit for bit, and the checks that need no launch.
"""
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from engine_jobs import JOBS, ROOT, _poison, losses

JOB = JOBS["pretrain"]  # tests/tiny_pretrain.yaml: vit_micro, 6 steps, a checkpoint every 3
FSDP = ["--config", str(JOB.config), "meta.fsdp=true"]


def _drive(out: Path) -> None:
    """The 2-process runs the tests read (see the module docstring)."""
    from train import main
    from vjepa import pretrain
    from vjepa.engine.optim import NonFiniteLoss

    rank = os.environ.get("RANK", "0")
    assert main([*FSDP, *JOB.batch(2), f"logging.folder={out / 'two'}"]) == 0
    # stop after step 2 (a checkpoint), keep that file, resume to the end
    assert main([*FSDP, *JOB.batch(2), JOB.stop_at, f"logging.folder={out / 'cut'}"]) == 0
    if rank == "0":
        shutil.copy(out / "cut" / JOB.checkpoint, out / "step2.pt")
    assert main([*FSDP, *JOB.batch(2), "meta.load_checkpoint=true", f"logging.folder={out / 'cut'}"]) == 0
    # a DDP run's checkpoint (step 2) resumed by a sharded run
    assert main(["--config", str(JOB.config), *JOB.batch(2), JOB.stop_at, f"logging.folder={out / 'ddp'}"]) == 0
    assert main([*FSDP, *JOB.batch(2), f"meta.read_checkpoint={out / 'ddp' / JOB.checkpoint}",
                 f"logging.folder={out / 'from_ddp'}"]) == 0
    # a NaN loss on rank 1 at its 5th step: both ranks stop, the step-3 checkpoint stays
    undo = _poison("vjepa.pretrain", JOB.nan_call)
    try:
        main([*FSDP, *JOB.batch(2), f"logging.folder={out / 'nan'}"])
    except NonFiniteLoss as e:
        print(f"fsdp-nan: rank {rank} stopped: {e}", flush=True)
    finally:
        undo()
    # the checksum rule: a file that does not hold what the shards hold (one gathered tensor altered on
    # the main process) is refused on every rank, before anything is written
    real = pretrain.fsdp.full_state_dict

    def stale(module, main_process):
        state = real(module, main_process)
        if main_process and "blocks.0.attn.qkv.weight" in state:
            state["blocks.0.attn.qkv.weight"] = state["blocks.0.attn.qkv.weight"] + 1e-3
        return state

    pretrain.fsdp.full_state_dict = stale
    try:
        main([*FSDP, *JOB.batch(2), "meta.max_steps=3", f"logging.folder={out / 'stale'}"])
    except RuntimeError as e:
        print(f"fsdp-stale: rank {rank} refused: {e}", flush=True)
    finally:
        pretrain.fsdp.full_state_dict = real
    import torch.distributed as dist

    if dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


def test_one_process_fsdp_is_the_unsharded_run_bit_for_bit(tmp_path):
    """World size 1 (`torchrun --nproc_per_node 1`): every parameter is a one-shard DTensor, so the loop
    runs FSDP's hooks, all-gathers, reduce-scatters and the full-state gather, and must reproduce the plain
    1-process run exactly: losses, grad norms, weights and AdamW moments."""
    from test_engine import ENV, free_port
    from train import main
    from vjepa.engine import checkpoint as ckpt

    short = ["meta.max_steps=3"]
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "1", "--master_port", str(free_port()),
           str(ROOT / "train.py"), *FSDP, *short, f"logging.folder={tmp_path / 'fsdp'}"]
    run = subprocess.run(cmd, cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-4000:]
    assert "FSDP2: encoder, predictor and EMA target sharded over 1 rank(s)" in run.stderr
    assert main(["--config", str(JOB.config), *short, f"logging.folder={tmp_path / 'plain'}"]) == 0
    a, b = (tmp_path / "fsdp" / "metrics.csv").read_text(), (tmp_path / "plain" / "metrics.csv").read_text()
    drop_speed = lambda text: [r.split(",")[:5] + r.split(",")[6:] for r in text.splitlines()]  # noqa: E731
    assert drop_speed(a) == drop_speed(b)  # every logged value but clips/s
    sa, sb = ckpt.load(tmp_path / "fsdp" / JOB.checkpoint), ckpt.load(tmp_path / "plain" / JOB.checkpoint)
    for part in JOB.weights:
        assert sa[part].keys() == sb[part].keys()
        assert all(torch.equal(sa[part][k], sb[part][k]) for k in sb[part]), part
    for i, s in sb["opt"]["state"].items():
        assert all(torch.equal(sa["opt"]["state"][i][k], v) for k, v in s.items())


@pytest.fixture(scope="module")
def sharded(tmp_path_factory):
    from test_engine import launch

    out = tmp_path_factory.mktemp("fsdp")
    run = launch(2, str(out), script=Path(__file__), check=False)
    assert run.returncode == 0, run.stdout + run.stderr[-4000:]
    return out, run.stdout


def _weights(path: Path) -> dict:
    from vjepa.engine import checkpoint as ckpt

    state = ckpt.load(path)
    return {f"{part}.{k}": v for part in JOB.weights for k, v in state[part].items()}


@pytest.mark.slow
def test_fsdp_follows_one_process_and_its_checkpoint_holds_full_tensors(tmp_path, sharded):
    from train import main
    from vjepa.engine import checkpoint as ckpt

    out, _ = sharded
    one = tmp_path / "one"
    assert main(["--config", str(JOB.config), *JOB.batch(4), f"logging.folder={one}"]) == 0
    # the same loss curve as one process (no FSDP) on the same global batch, up to float32 summation order
    torch.testing.assert_close(torch.tensor(losses(out / "two", JOB)), torch.tensor(losses(one, JOB)),
                               rtol=1e-5, atol=1e-6)
    a, b = _weights(out / "two" / JOB.checkpoint), _weights(one / JOB.checkpoint)
    assert a.keys() == b.keys()
    for k in b:  # full tensors, the 1-process shapes; Adam amplifies summation-order noise on tiny gradients
        assert a[k].shape == b[k].shape, k
        torch.testing.assert_close(a[k], b[k], rtol=1e-4, atol=1e-5)
    sa, sb = ckpt.load(out / "two" / JOB.checkpoint), ckpt.load(one / JOB.checkpoint)
    assert sa["opt"]["state"].keys() == sb["opt"]["state"].keys()  # AdamW moments gathered, keyed by index
    for i, s in sb["opt"]["state"].items():
        for k, v in s.items():
            assert sa["opt"]["state"][i][k].shape == v.shape
    # shard checksums differ across ranks (by design) and add up to the full tensors in the file
    assert "target_checksums" not in sa
    for part in JOB.weights:
        sums = sa["shard_checksums"][part]
        assert sums.shape == (2, 2) and not torch.equal(sums[0], sums[1])
        full = sum(v.double().sum() for k, v in sa[part].items() if k in dict(_param_names(part)))
        torch.testing.assert_close(sums[:, 0].sum(), full, rtol=1e-9, atol=1e-9)


def _param_names(part: str):
    from vjepa.engine.config import load_config
    from vjepa.pretrain import PretrainConfig, build_models

    enc, pred, tgt = build_models(load_config(PretrainConfig, JOB.config))
    return {"encoder": enc, "predictor": pred, "target_encoder": tgt}[part].named_parameters()


@pytest.mark.slow
def test_fsdp_resume_is_exact(sharded):
    out, _ = sharded
    whole, resumed = _weights(out / "two" / JOB.checkpoint), _weights(out / "cut" / JOB.checkpoint)
    for k, v in whole.items():
        assert torch.equal(v, resumed[k]), k
    assert losses(out / "cut", JOB) == losses(out / "two", JOB)


@pytest.mark.slow
def test_an_fsdp_checkpoint_loads_in_one_process_and_in_load_encoder(tmp_path, sharded):
    import vjepa
    from train import main

    out, _ = sharded
    encoder = vjepa.load_encoder(out / "two" / JOB.checkpoint)
    state = torch.load(out / "two" / JOB.checkpoint, weights_only=True)["target_encoder"]
    assert all(torch.equal(v, state[k]) for k, v in encoder.state_dict().items())
    # a 1-process run (no FSDP) resumes the sharded run's step-2 file and follows the sharded run
    one = tmp_path / "one"
    assert main(["--config", str(JOB.config), *JOB.batch(4), f"meta.read_checkpoint={out / 'step2.pt'}",
                 f"logging.folder={one}"]) == 0
    torch.testing.assert_close(torch.tensor(losses(one, JOB)), torch.tensor(losses(out / "two", JOB)[2:]),
                               rtol=1e-5, atol=1e-6)
    a, b = _weights(one / JOB.checkpoint), _weights(out / "two" / JOB.checkpoint)
    for k in b:
        torch.testing.assert_close(a[k], b[k], rtol=1e-4, atol=1e-5)


@pytest.mark.slow
def test_a_ddp_checkpoint_resumes_a_sharded_run(sharded):
    out, _ = sharded
    torch.testing.assert_close(torch.tensor(losses(out / "from_ddp", JOB)), torch.tensor(losses(out / "two", JOB)[2:]),
                               rtol=1e-5, atol=1e-6)
    a, b = _weights(out / "from_ddp" / JOB.checkpoint), _weights(out / "two" / JOB.checkpoint)
    for k in b:
        torch.testing.assert_close(a[k], b[k], rtol=1e-4, atol=1e-5)


@pytest.mark.slow
def test_nan_on_one_rank_stops_both_sharded_ranks(sharded):
    from vjepa.engine import checkpoint as ckpt

    out, stdout = sharded
    for rank in (0, 1):
        assert f"fsdp-nan: rank {rank} stopped: loss became nan" in stdout, stdout
    state = ckpt.load(out / "nan" / JOB.checkpoint)
    assert state["step"] == JOB.good_step
    assert all(torch.isfinite(v).all() for v in _weights(out / "nan" / JOB.checkpoint).values())


@pytest.mark.slow
def test_a_file_that_does_not_hold_the_shards_is_refused_on_every_rank(sharded):
    out, stdout = sharded
    for rank in (0, 1):
        assert f"fsdp-stale: rank {rank} refused: sharded weights do not add up" in stdout, stdout
    assert not (out / "stale" / JOB.checkpoint).exists()


def test_fsdp_needs_a_distributed_launch(tmp_path, capsys):
    from train import main

    assert main([*FSDP, f"logging.folder={tmp_path}"]) == 2
    assert "meta.fsdp needs a distributed launch" in capsys.readouterr().err


def test_only_pretraining_honours_meta_fsdp():
    from hjepa.model import HJEPAConfig
    from vjepa.engine.config import ConfigError, load_config
    from vjepa.ijepa import IJEPAConfig
    from vjepa.pretrain import PretrainConfig

    assert load_config(PretrainConfig, JOB.config, overrides=["meta.fsdp=true"]).meta.fsdp
    for cls in (HJEPAConfig, IJEPAConfig):
        with pytest.raises(ConfigError, match="unknown config key"):
            load_config(cls, raw={}, overrides=["meta.fsdp=true"])


def test_checksums_of_plain_modules_are_unchanged():
    from vjepa.engine import checkpoint as ckpt

    layer = torch.nn.Linear(3, 2)
    params = list(layer.parameters())
    want = torch.stack([sum(p.double().sum() for p in params), sum(p.double().abs().sum() for p in params)])
    assert torch.equal(ckpt.checksum([layer]), want)
    assert torch.equal(ckpt.checksum([]), torch.zeros(2, dtype=torch.float64))


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))
    _drive(Path(sys.argv[1]))
