"""The engine's promises, for every training job: a 2-process CPU run (gloo) reads different batches on
each rank and follows the loss curve of one process on the same global batch; a run stopped by
`meta.max_steps`, then killed after a checkpoint, resumes exactly; a NaN on one rank stops every rank
before the update and keeps the last good checkpoint; a key a job does not honour is refused; configs
and checkpoints written before the engine still load."""
import importlib
import json
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from engine_jobs import JOBS, ROOT, TESTS, losses
from train import TASKS, main
from vjepa.engine import checkpoint as ckpt
from vjepa.engine.config import ConfigError, load_config
from vjepa.engine.optim import NonFiniteLoss, optimizer_step
from vjepa.engine.runtime import make_accelerator
from vjepa.engine.sampling import ResumableBatchSampler

ENV = {"OMP_NUM_THREADS": "1", "PATH": ""}
FIXTURES = TESTS / "fixtures"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch(nproc: int, *args, script=ROOT / "train.py", check=True) -> subprocess.CompletedProcess:
    cmd = [sys.executable, str(script), *args] if nproc == 1 else [
        sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(nproc), "--master_port",
        str(free_port()), str(script), *args]
    return subprocess.run(cmd, check=check, cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=300)


def weights(path: Path, job) -> dict:
    state = ckpt.load(path)
    return {f"{part}.{k}": v for part in job.weights for k, v in state[part].items()}


@pytest.fixture(scope="module")
def two_ranks(tmp_path_factory):
    """Every job run by 2 processes (gloo), cleanly and with a NaN on rank 1; one launch for all."""
    out = tmp_path_factory.mktemp("two_ranks")
    run = launch(2, str(out), script=TESTS / "engine_jobs.py", check=False)
    assert run.returncode == 0, run.stdout + run.stderr[-4000:]
    return out, run.stdout


@pytest.mark.parametrize("name", sorted(JOBS))
def test_two_processes_match_one_process(tmp_path, two_ranks, name):
    job = JOBS[name]
    two, one = two_ranks[0] / name / "two", tmp_path / "one"
    assert main(["--config", str(job.config), f"logging.folder={one}", *job.batch(4)]) == 0
    a = ckpt.load(two / job.checkpoint)
    sums = a["target_checksums"]  # every rank's checksum of its EMA targets / replicated weights
    assert sums.shape == (2, 2) and torch.equal(sums[0], sums[1])
    # Same loss curve as one process on the same global batch: gradient all-reduce vs one big batch are
    # equal up to float32 summation order. Had both ranks read the same batch, the curves would differ.
    torch.testing.assert_close(torch.tensor(losses(two, job)), torch.tensor(losses(one, job)), rtol=1e-5, atol=1e-6)
    wa, wb = weights(two / job.checkpoint, job), weights(one / job.checkpoint, job)
    for k in wb:  # Adam divides tiny gradients by their own size: allow summation-order noise there
        torch.testing.assert_close(wa[k], wb[k], rtol=1e-4, atol=1e-5)


def test_ranks_read_disjoint_slices_of_the_global_batch():
    from data.generated.trajectories import TrajectoryWindows, generate
    from hjepa.world_model.train import WorldModelConfig, batches

    one = next(iter(ResumableBatchSampler(64, 8, 0, 1, seed=3, start_step=5)))
    ranks = [next(iter(ResumableBatchSampler(64, 4, r, 2, seed=3, start_step=5))) for r in range(2)]
    assert not {k[0] for k in ranks[0]} & {k[0] for k in ranks[1]}
    assert ranks[0] + ranks[1] == one  # the same samples, seeds and step as one process

    cfg = load_config(WorldModelConfig, TESTS / "tiny_worldmodel.yaml")
    windows = TrajectoryWindows(generate(cfg.data), cfg.data.env, 3, 1)

    class Rank:  # what `batches` reads of an Accelerator
        def __init__(self, index, num):
            self.process_index, self.num_processes, self.device = index, num, torch.device("cpu")

    b0, b1 = (next(batches(windows, 2, 0, 0, 7, Rank(r, 2))) for r in range(2))
    full = next(batches(windows, 4, 0, 0, 7, Rank(0, 1)))
    assert not torch.equal(b0["frames"], b1["frames"])
    assert torch.equal(torch.cat([b0["frames"], b1["frames"]]), full["frames"])


@pytest.mark.parametrize("name", sorted(JOBS))
def test_stop_kill_and_resume_is_exact(tmp_path, monkeypatch, capsys, name):
    monkeypatch.delenv("JEPA_DEBUG", raising=False)
    job = JOBS[name]
    module = importlib.import_module(job.loop or job.module)
    args = ["--config", str(job.config)]
    assert main([*args, f"logging.folder={tmp_path / 'whole'}"]) == 0

    cut = f"logging.folder={tmp_path / 'cut'}"
    assert main([*args, cut, job.stop_at]) == 0  # meta.max_steps: stops early with a checkpoint
    real_save, saves = module.save_checkpoint, []

    def save_then_die(*a, **kw):
        real_save(*a, **kw)
        saves.append(kw["step"])
        raise KeyboardInterrupt("killed after a checkpoint")

    monkeypatch.setattr(module, "save_checkpoint", save_then_die)
    with pytest.raises(KeyboardInterrupt):
        main([*args, cut, "meta.load_checkpoint=true"])
    monkeypatch.setattr(module, "save_checkpoint", real_save)
    capsys.readouterr()
    assert main([*args, cut]) == 2  # a fresh run never overwrites a checkpoint: one line, the way out named
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "refusing to overwrite it" in err and "meta.load_checkpoint=true" in err
    assert main([*args, cut, "meta.load_checkpoint=true"]) == 0

    whole, resumed = weights(tmp_path / "whole" / job.checkpoint, job), weights(tmp_path / "cut" / job.checkpoint, job)
    for k, v in whole.items():
        assert torch.equal(v, resumed[k]), k
    assert losses(tmp_path / "cut", job) == losses(tmp_path / "whole", job)


@pytest.mark.parametrize("name", sorted(JOBS))
def test_nan_on_one_rank_stops_every_rank_and_keeps_the_last_good_checkpoint(two_ranks, name):
    job = JOBS[name]
    out, stdout = two_ranks
    for rank in (0, 1):  # both ranks stopped (none left waiting in a collective), at the same step
        assert f"{name}: rank {rank} stopped: loss became nan" in stdout, stdout
    state = ckpt.load(out / name / "nan" / job.checkpoint)
    assert state.get("step", state.get("steps")) == job.good_step
    assert all(torch.isfinite(v).all() for v in weights(out / name / "nan" / job.checkpoint, job).values())


def test_deferred_check_stops_every_rank_at_the_same_save(two_ranks):
    """optimization.check_finite_every=4 (tests/engine_jobs.py): the NaN of step 4 on rank 1 is found on
    both ranks by the check before the save after step 6; the step-3 checkpoint stays."""
    out, stdout = two_ranks
    for rank in (0, 1):
        assert (f"pretrain-deferred: rank {rank} stopped: loss became nan at step 4, found by the deferred check "
                f"at step 6") in stdout, stdout
    state = ckpt.load(out / "pretrain" / "nan_deferred" / JOBS["pretrain"].checkpoint)
    assert state["step"] == 3
    assert all(torch.isfinite(v).all() for v in weights(out / "pretrain" / "nan_deferred" / "jepa-latest.pt",
                                                         JOBS["pretrain"]).values())


def test_a_nan_loss_leaves_weights_and_gradients_untouched():
    accelerator = make_accelerator("float32")
    layer = torch.nn.Linear(3, 1)
    opt = torch.optim.SGD(layer.parameters(), lr=1.0)
    before = [p.detach().clone() for p in layer.parameters()]

    def objective():
        return layer(torch.ones(2, 3)).sum() * float("nan"), {}

    with pytest.raises(NonFiniteLoss, match="step 7"):
        optimizer_step(accelerator, opt, objective, (layer,), 7, clip_grad=1.0, clip={"": layer})
    assert all(torch.equal(p, b) and p.grad is None for p, b in zip(layer.parameters(), before))


def test_non_finite_weights_are_never_saved(tmp_path):
    accelerator = make_accelerator("float32")
    layer = torch.nn.Linear(2, 2)
    ckpt.save_checkpoint(accelerator, tmp_path / "c.pt", {"w": layer.state_dict()}, step=1, finite=[layer],
                         replicated=[layer])
    with torch.no_grad():
        layer.weight[0, 0] = float("inf")
    with pytest.raises(NonFiniteLoss, match="not finite at step 2"):
        ckpt.save_checkpoint(accelerator, tmp_path / "c.pt", {"w": layer.state_dict()}, step=2, finite=[layer],
                             replicated=[layer])
    assert torch.isfinite(ckpt.load(tmp_path / "c.pt")["w"]["weight"]).all()


# A key each job does not honour (most of them another job's), given on the command line.
UNHONOURED = {
    "pretrain": ["meta.save_every_steps=3", "level0.train=false", "optimization.steps=3"],
    "probe": ["meta.max_steps=3", "meta.load_checkpoint=true", "logging.knn_monitor=true"],
    "hjepa": ["optimization.ema=[0.9,1.0]", "meta.eval_freq=5", "logging.knn_monitor=true"],
    "worldmodel": ["meta.eval_freq=5", "meta.save_every_freq=3", "logging.knn_monitor=true", "optimization.lr=1"],
}


@pytest.mark.parametrize("task", sorted(UNHONOURED))
def test_a_key_the_job_does_not_honour_is_refused(task):
    module, cls_name, _ = TASKS[task]
    cls = getattr(importlib.import_module(module), cls_name)
    for override in UNHONOURED[task]:
        with pytest.raises(ConfigError, match="unknown config key .* valid keys"):
            load_config(cls, FIXTURES / f"config_{task}.yaml", overrides=[override])


def test_a_retired_key_with_a_value_of_its_own_is_refused():
    from hjepa.model import HJEPAConfig

    with pytest.raises(ConfigError, match="'optimization.ema' is not honoured by this job"):
        load_config(HJEPAConfig, raw={"optimization": {"ema": [0.9, 1.0]}})
    study = TASKS["horizon_study"]
    cls = getattr(importlib.import_module(study[0]), study[1])
    with pytest.raises(ConfigError, match="'hjepa.meta.eval_freq' is not honoured"):
        load_config(cls, raw={"hjepa": {"meta": {"eval_freq": 5}}})


@pytest.mark.parametrize("task", ["pretrain", "probe", "hjepa", "worldmodel", "horizon_study", "quickstart", "plan"])
def test_configs_written_before_the_engine_still_load(task):
    module, cls_name, _ = TASKS[task]
    cls = getattr(importlib.import_module(module), cls_name)
    old = yaml.safe_load((FIXTURES / f"config_{task}.yaml").read_text())
    cfg = load_config(cls, FIXTURES / f"config_{task}.yaml")
    if task == "worldmodel":  # counted steps under its old name
        assert cfg.meta.save_every_steps == old["meta"]["save_every_freq"]


def test_state_dict_keys_are_unchanged_and_old_checkpoints_load(tmp_path):
    from dataclasses import replace

    from hjepa.levels import LevelConfig
    from hjepa.model import HJEPA, HJEPAConfig
    from hjepa.world_model.train import WorldModelConfig, build_model, load_trained
    from vjepa.pretrain import PretrainConfig, build_models as pretrain_models

    old = json.loads((FIXTURES / "state_dict_keys.json").read_text())
    shapes = lambda m: {k: list(v.shape) for k, v in m.state_dict().items()}  # noqa: E731
    enc, pred, _ = pretrain_models(load_config(PretrainConfig, TESTS / "tiny_pretrain.yaml"))
    hc = HJEPAConfig(levels=[LevelConfig(stride=2, embed_dim=32, depth=1, num_heads=2, pred_embed_dim=16,
                                         pred_depth=1)], batch_size=2)
    hc.data = replace(hc.data, num_videos=4, num_windows=8, window_frames=4, size=16)
    wm = build_model(WorldModelConfig())
    # the level stack keeps the two-level model's tensors: level 0's under levels.0, the macro model's under levels.1
    level = lambda k: {n.split(".", 2)[2]: list(v.shape) for n, v in wm.state_dict().items()  # noqa: E731
                       if n.startswith(f"levels.{k}.")}
    assert shapes(enc) == old["pretrain/encoder"] and shapes(pred) == old["pretrain/predictor"]
    assert shapes(HJEPA(hc)) == old["hjepa/model"]
    assert level(0) == old["worldmodel/model"] and level(1) == old["worldmodel/macro"]

    # A world-model checkpoint as the code before the engine wrote it (its config had meta.save_every_freq,
    # meta.eval_freq and logging.knn_monitor, and a `level1:` section) loads for planning.
    old_cfg = yaml.safe_load((FIXTURES / "config_worldmodel.yaml").read_text())
    part = lambda k: {n.split(".", 2)[2]: v for n, v in wm.state_dict().items() if n.startswith(f"levels.{k}.")}  # noqa: E731
    torch.save({"model": part(0), "macro": part(1), "opt": {}, "opt1": {}, "steps": [1, 1],
                "rng": ckpt.rng_state(), "macro_bank": torch.zeros(4, 2), "config": old_cfg}, tmp_path / "wm.pt")
    cfg, wm2, banks = load_trained(tmp_path / "wm.pt")
    assert cfg.meta.save_every_steps == old_cfg["meta"]["save_every_freq"] and banks[0].shape == (4, 2)
    assert len(cfg.levels) == 1 and cfg.levels[0].stride == old_cfg["level1"]["stride"]
    assert all(torch.equal(a, b) for a, b in zip(wm2.state_dict().values(), wm.state_dict().values()))


def test_imports_point_down():
    """data <- vjepa.engine <- vjepa (jobs) <- hjepa: no module imports a layer above its own, and the
    engine imports no job."""
    import ast

    layer = {"data": 0, "vjepa.engine": 1, "vjepa": 2, "hjepa": 3}

    def level(module: str) -> int:
        for prefix in ("vjepa.engine", "data", "vjepa", "hjepa"):
            if module == prefix or module.startswith(prefix + "."):
                return layer[prefix]
        return -1  # third-party or standard library

    bad = []
    for path in sorted((ROOT / "data").rglob("*.py")) + sorted((ROOT / "vjepa").rglob("*.py")) + \
            sorted((ROOT / "hjepa").rglob("*.py")):
        module = ".".join(path.relative_to(ROOT).with_suffix("").parts)
        for node in ast.walk(ast.parse(path.read_text())):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else \
                [node.module] if isinstance(node, ast.ImportFrom) and node.module and not node.level else []
            bad += [f"{module} -> {n}" for n in names if level(n) > level(module)]
    assert not bad, bad
