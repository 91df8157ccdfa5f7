import subprocess
import sys

import pytest
import torch

from conftest import ROOT, TINY_PRETRAIN
from data.collate import MaskCollator
from data.masks import short_range_mask
from vjepa.engine import checkpoint as ckpt
from vjepa.engine.config import ConfigError, load_config
from vjepa.engine.optim import NonFiniteLoss, ema_update, param_groups
from vjepa.objective import LossConfig, jepa_loss
from vjepa.pretrain import PretrainConfig, build_models, train
from vjepa.engine.schedules import cosine_at, linear_at, lr_at, run_lr_at, wsd_lr_at
from vjepa.engine.sections import OptimizationConfig


def tiny_cfg(tmp_path, *overrides):
    return load_config(PretrainConfig, TINY_PRETRAIN, [f"logging.folder={tmp_path}", *overrides])


def tiny_batch(cfg, encoder, step=0):
    torch.manual_seed(step)
    clips = torch.randn(4, 3, cfg.data.num_frames, cfg.data.crop_size, cfg.data.crop_size)
    coll = MaskCollator([short_range_mask()], encoder.grid, seed=0)
    batch = coll([{"clip": c, "label": 0, "seed": i, "step": step} for i, c in enumerate(clips)])
    return batch


def test_no_gradient_reaches_the_target_encoder(tmp_path):
    cfg = tiny_cfg(tmp_path, "data.crop_size=64", "model.pred_depth=1")
    cfg.mask = [short_range_mask()]
    encoder, predictor, target = build_models(cfg)
    loss, h, _ = jepa_loss(encoder, predictor, target, tiny_batch(cfg, encoder), LossConfig())
    loss.backward()
    assert all(p.grad is None and not p.requires_grad for p in target.parameters())
    assert encoder.blocks[0].attn.qkv.weight.grad.abs().sum() > 0
    assert predictor.predictor_proj.weight.grad.abs().sum() > 0
    # targets are layer-normed per token
    torch.testing.assert_close(h.mean(-1), torch.zeros(h.shape[:2]), atol=1e-5, rtol=0)


def test_ema_update_math():
    online, target = torch.nn.Linear(3, 2), torch.nn.Linear(3, 2)
    before = [p.detach().clone() for p in target.parameters()]
    ema_update(target, online, 0.9)
    for t, b, o in zip(target.parameters(), before, online.parameters()):
        torch.testing.assert_close(t, 0.9 * b + 0.1 * o)
    ema_update(target, online, 0.0)
    for t, o in zip(target.parameters(), online.parameters()):
        assert torch.equal(t, o)


def test_schedules_are_functions_of_the_step():
    kw = dict(warmup_steps=10, total_steps=110, start_lr=1e-4, lr=1e-3, final_lr=1e-6)
    assert lr_at(0, **kw) == pytest.approx(1e-4) and lr_at(5, **kw) == pytest.approx(5.5e-4)
    assert lr_at(10, **kw) == pytest.approx(1e-3) and lr_at(110, **kw) == pytest.approx(1e-6)
    assert lr_at(60, **kw) == pytest.approx((1e-3 + 1e-6) / 2)
    assert cosine_at(0, total_steps=100, start=0.04, end=0.4) == pytest.approx(0.04)
    assert cosine_at(100, total_steps=100, start=0.04, end=0.4) == pytest.approx(0.4)
    assert linear_at(50, total_steps=100, start=0.998, end=1.0) == pytest.approx(0.999)
    assert linear_at(500, total_steps=100, start=0.998, end=1.0) == pytest.approx(1.0)


def test_wsd_schedule_warms_up_holds_then_decays_and_shares_its_trajectory_across_run_lengths():
    kw = dict(warmup_steps=10, start_lr=1e-4, lr=1e-3, final_lr=1e-6)
    short = [wsd_lr_at(s, total_steps=100, decay_steps=20, **kw) for s in range(101)]
    assert short[0] == pytest.approx(1e-4) and short[5] == pytest.approx(5.5e-4)
    assert short[10] == short[79] == 1e-3  # held until the decay starts
    assert short[90] == pytest.approx((1e-3 + 1e-6) / 2) and short[100] == pytest.approx(1e-6)
    assert all(a >= b for a, b in zip(short[10:], short[11:]))
    longer = [wsd_lr_at(s, total_steps=300, decay_steps=60, **kw) for s in range(301)]
    assert longer[:81] == short[:81] and longer[81] == 1e-3 > short[81]
    # run_lr_at reads the section: the decay is the run's last decay_fraction, ipe_scale does not stretch it
    opt = OptimizationConfig(ipe=10, epochs=10, warmup=1, start_lr=1e-4, lr=1e-3, final_lr=1e-6, ipe_scale=1.25,
                             lr_schedule="wsd", decay_fraction=0.2)
    assert [run_lr_at(s, opt, 100) for s in range(101)] == short


def test_the_default_cosine_schedule_is_the_reference_one():
    opt = OptimizationConfig(ipe=10, epochs=8, warmup=1.5, start_lr=2e-4, lr=6e-4, final_lr=1e-6, ipe_scale=1.25)
    assert opt.lr_schedule == "cosine"
    for s in range(0, 81, 7):  # horizon ipe_scale x 80 = 100 steps, warmup 15
        reference = lr_at(s, warmup_steps=15, total_steps=100, start_lr=2e-4, lr=6e-4, final_lr=1e-6)
        assert run_lr_at(s, opt, 80) == reference


def test_a_wsd_run_logs_the_wsd_lr_and_bad_schedule_keys_are_config_errors(tmp_path):
    train(tiny_cfg(tmp_path / "wsd", "optimization.lr_schedule=wsd", "optimization.decay_fraction=0.5"))
    rows = (tmp_path / "wsd" / "metrics.csv").read_text().splitlines()
    col = rows[0].split(",").index("lr")
    logged = [float(r.split(",")[col]) for r in rows[1:]]
    # ipe 3 x 2 epochs, warmup 1 epoch (3 steps), decay over the last 3 steps
    expected = [wsd_lr_at(s, warmup_steps=3, total_steps=6, decay_steps=3, start_lr=1e-4, lr=1e-3, final_lr=1e-6)
                for s in range(6)]
    assert logged == pytest.approx(expected) and logged[3] == pytest.approx(1e-3)
    for bad in ("optimization.lr_schedule=step", "optimization.decay_fraction=0", "optimization.decay_fraction=1.5"):
        with pytest.raises(ConfigError, match=bad.split("=")[0]):
            train(tiny_cfg(tmp_path / "bad", bad), dry_run=True)


def test_weight_decay_skips_biases_and_norms():
    enc = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.LayerNorm(4))
    decay, no_decay = param_groups(enc)
    assert [p.shape for p in decay["params"]] == [torch.Size([4, 4])]
    assert len(no_decay["params"]) == 3 and no_decay["weight_decay"] == 0.0 and no_decay["wd_exclude"]


def test_loss_falls_when_overfitting_one_batch(tmp_path):
    cfg = tiny_cfg(tmp_path, "data.crop_size=48", "model.pred_depth=1")
    cfg.mask = [short_range_mask()]
    torch.manual_seed(0)
    encoder, predictor, target = build_models(cfg)
    batch = tiny_batch(cfg, encoder)
    opt = torch.optim.AdamW(param_groups(encoder, predictor), lr=1e-3)
    losses = []
    for _ in range(25):
        loss, _, _ = jepa_loss(encoder, predictor, target, batch, LossConfig())
        opt.zero_grad()
        loss.backward()
        opt.step()
        ema_update(target, encoder, 0.99)
        losses.append(loss.item())
    assert losses[-1] < 0.7 * losses[0], losses


def test_run_folder_contents_and_refusal_to_overwrite(tmp_path):
    cfg = tiny_cfg(tmp_path)
    train(cfg)
    for name in ("config.yaml", "metrics.csv", "jepa-latest.pt", "loss.png", "masks.png"):
        assert (tmp_path / name).is_file(), name
    assert not (tmp_path / "tb").exists()  # logging.tensorboard=false in the tiny config
    rows = (tmp_path / "metrics.csv").read_text().splitlines()
    assert rows[0].startswith("step,loss,lr") and len(rows) == 1 + 6
    state = ckpt.load(tmp_path / "jepa-latest.pt")
    assert state["step"] == 6 and set(state) >= {"encoder", "predictor", "target_encoder", "opt", "rng", "config"}
    # the saved config reloads into the same dataclass
    assert load_config(PretrainConfig, tmp_path / "config.yaml") == cfg
    with pytest.raises(FileExistsError, match="load_checkpoint"):
        train(tiny_cfg(tmp_path))


def test_nan_loss_stops_the_run_and_keeps_the_last_good_checkpoint(tmp_path):
    train(tiny_cfg(tmp_path, "optimization.epochs=1"))  # 3 good steps, checkpoint at step 3
    good = ckpt.load(tmp_path / "jepa-latest.pt")
    with pytest.raises(NonFiniteLoss, match="step"):
        train(tiny_cfg(tmp_path, "meta.load_checkpoint=true", "optimization.lr=1e30", "optimization.start_lr=1e30"))
    after = ckpt.load(tmp_path / "jepa-latest.pt")
    assert after["step"] == 3
    assert all(torch.equal(after["encoder"][k], good["encoder"][k]) for k in good["encoder"])


def test_mismatched_checkpoint_names_keys_and_loads_nothing():
    model = torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.Linear(2, 2))
    state = {k: torch.zeros_like(v) for k, v in model.state_dict().items()}
    state.pop("1.bias")
    state["2.weight"] = torch.zeros(2, 2)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(ckpt.CheckpointMismatch, match=r"missing keys: 1\.bias[\s\S]*unexpected keys: 2\.weight"):
        ckpt.load_state_strict(model, state)
    assert all(torch.equal(model.state_dict()[k], v) for k, v in before.items())
    state = {k: torch.zeros_like(v) for k, v in model.state_dict().items()}
    state["0.weight"] = torch.zeros(3, 2)
    with pytest.raises(ckpt.CheckpointMismatch, match="shape mismatches: 0.weight"):
        ckpt.load_state_strict(model, state)


def test_atomic_save_leaves_no_partial_file(tmp_path, monkeypatch):
    path = tmp_path / "c.pt"
    ckpt.save_atomic({"a": torch.ones(2)}, path)

    def crash(*args, **kwargs):
        raise KeyboardInterrupt  # a run killed mid-save

    monkeypatch.setattr(torch, "save", crash)
    with pytest.raises(KeyboardInterrupt):
        ckpt.save_atomic({"a": torch.zeros(2)}, path)
    assert torch.equal(ckpt.load(path)["a"], torch.ones(2))


def _run(*args):
    cmd = [sys.executable, str(ROOT / "train.py"), "--config", str(TINY_PRETRAIN), *args]
    subprocess.run(cmd, check=True, cwd=ROOT, capture_output=True, env={"OMP_NUM_THREADS": "1", "PATH": ""})


def test_exact_resume_in_a_new_process(tmp_path):
    # 6 steps straight (in this process) == 3 steps, then a new process resuming for 3 more: identical
    # weights on CPU.
    from train import main

    assert main(["--config", str(TINY_PRETRAIN), f"logging.folder={tmp_path / 'straight'}"]) == 0
    _run(f"logging.folder={tmp_path / 'split'}", "meta.max_steps=3")
    _run(f"logging.folder={tmp_path / 'split'}", "meta.load_checkpoint=true")
    a, b = ckpt.load(tmp_path / "straight" / "jepa-latest.pt"), ckpt.load(tmp_path / "split" / "jepa-latest.pt")
    assert a["step"] == b["step"] == 6
    for part in ("encoder", "predictor", "target_encoder"):
        for k in a[part]:
            assert torch.equal(a[part][k], b[part][k]), (part, k)
    la = (tmp_path / "straight" / "metrics.csv").read_text()
    lb = (tmp_path / "split" / "metrics.csv").read_text()
    assert [r.split(",")[:2] for r in la.splitlines()] == [r.split(",")[:2] for r in lb.splitlines()]


def test_a_finished_run_copied_without_its_metrics_resumes_to_nothing(tmp_path):
    # a user copies only the checkpoint and config of a finished run and asks for it again
    from train import main

    run = [f"logging.folder={tmp_path}", "optimization.epochs=1", "optimization.ipe=2"]
    assert main(["--config", str(TINY_PRETRAIN), *run]) == 0
    (tmp_path / "metrics.csv").unlink()
    (tmp_path / "loss.png").unlink()
    assert main(["--config", str(TINY_PRETRAIN), *run, "meta.load_checkpoint=true"]) == 0
    assert ckpt.load(tmp_path / "jepa-latest.pt")["step"] == 2 and not (tmp_path / "loss.png").exists()


@pytest.mark.parametrize("override, said", [("meta.seed=7", "meta.seed=0"), ("data.batch_size=3", "data.batch_size=2")])
def test_resuming_with_another_seed_or_batch_size_is_a_config_error(tmp_path, override, said):
    from vjepa.engine.config import ConfigError
    from vjepa.pretrain import train

    run = ["optimization.epochs=1", "optimization.ipe=2"]
    train(tiny_cfg(tmp_path, *run))
    before = (tmp_path / "jepa-latest.pt").read_bytes()
    with pytest.raises(ConfigError, match=f"pass {said}"):
        train(tiny_cfg(tmp_path, *run, "optimization.ipe=3", "meta.load_checkpoint=true", override))
    assert (tmp_path / "jepa-latest.pt").read_bytes() == before  # the run is untouched
    train(tiny_cfg(tmp_path, *run, "optimization.ipe=3", "meta.load_checkpoint=true"))  # the same keys: resumes
    assert ckpt.load(tmp_path / "jepa-latest.pt")["step"] == 3


def test_metric_log_widens_for_late_metrics(tmp_path):
    from vjepa.engine.runtime import MetricLog

    log = MetricLog(tmp_path, tensorboard=False)
    log.log(1, {"loss": 1.0})
    log.log(2, {"loss": 0.5, "rankme": 3.0})
    log.log(3, {"loss": 0.25})
    lines = (tmp_path / "metrics.csv").read_text().splitlines()
    assert lines == ["step,loss,rankme", "1,1.0,", "2,0.5,3.0", "3,0.25,"]
    log.truncate_after(2)
    assert (tmp_path / "metrics.csv").read_text().splitlines() == lines[:3]
