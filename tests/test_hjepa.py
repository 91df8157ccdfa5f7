"""H-JEPA stack: shapes, stride bookkeeping, frozen levels, EMA, collapse regulariser, strict configs, resume."""
import logging
from dataclasses import replace
from pathlib import Path

import pytest
import torch

import hjepa.train as ht
from data.masks import MaskConfig
from hjepa.levels import Level, LevelConfig, level_loss, pool_steps
from hjepa.study import HorizonStudyConfig, bayes_ceiling
from hjepa.model import HJEPA, HJEPAConfig, build, check_config, plan_stages, spans
from hjepa.train import set_trainable
from vjepa.engine import checkpoint as ckpt
from vjepa.engine.config import ConfigError, load_config
from vjepa.engine.monitor import feature_std, monitor
from vjepa.engine.optim import ema_update

CONFIGS = Path(__file__).resolve().parents[1] / "configs" / "hjepa"


@pytest.fixture(autouse=True)
def one_thread():
    # Small ops on a shared 2-core machine: more threads only add contention.
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def tiny_level(stride=2, **kw) -> LevelConfig:
    return LevelConfig(stride=stride, embed_dim=32, depth=1, num_heads=2, pred_embed_dim=16, pred_depth=1, **kw)


def tiny_cfg(strides=(2, 2, 2), num_windows=16, **kw) -> HJEPAConfig:
    cfg = HJEPAConfig(levels=[tiny_level(s) for s in strides], batch_size=2)
    cfg.data = replace(cfg.data, num_videos=4, num_windows=num_windows, window_frames=4, size=16)
    cfg.level0 = replace(cfg.level0, window_batch=4, mask=[MaskConfig(num_blocks=2, spatial_scale=[0.25, 0.25]),
                                                           MaskConfig(num_blocks=1, spatial_scale=[0.5, 0.5])])
    cfg.meta = replace(cfg.meta, dtype="float32")
    for k, v in kw.items():
        setattr(cfg, k, v)
    return cfg


def windows(cfg: HJEPAConfig, batch: int = 2) -> torch.Tensor:
    d = cfg.data
    return torch.randn(batch, d.num_windows, 3, d.window_frames, d.size, d.size)


def test_shapes_through_three_levels():
    torch.manual_seed(0)
    cfg = tiny_cfg((2, 2, 2), num_windows=16)
    model = build(cfg)
    x = windows(cfg)
    feats = model.features(x, upto=3)
    assert [tuple(f.shape) for f in feats] == [(2, 16, 96), (2, 8, 32), (2, 4, 32), (2, 2, 32)]
    loss, metrics, out = model(
        {"clip": x}, False, (1, 2, 3), mask_seed=0)
    assert torch.isfinite(loss) and loss.requires_grad
    assert {f"L{k}/loss" for k in (1, 2, 3)} <= set(metrics)
    assert [tuple(out[k].shape) for k in range(4)] == [(2, 16, 96), (2, 8, 32), (2, 4, 32), (2, 2, 32)]


def test_stride_bookkeeping():
    cfg = tiny_cfg((2, 3, 4), num_windows=48)
    assert spans(cfg) == [1, 2, 6, 24]  # level k step = product of the strides below it
    check_config(cfg)
    x = torch.arange(48.0).view(1, 48, 1)
    for k, stride in enumerate((2, 3, 4), start=1):
        x = pool_steps(x, stride, "mean")
        assert x.shape[1] == 48 // spans(cfg)[k]
    # Each level-3 step averages exactly its 24 windows.
    assert torch.allclose(x.flatten(), torch.tensor([11.5, 35.5]))
    cat = pool_steps(torch.arange(8.0).view(1, 4, 2), 2, "concat")
    assert torch.equal(cat, torch.tensor([[[0.0, 1, 2, 3], [4, 5, 6, 7]]]))  # order inside a step is kept
    with pytest.raises(ValueError, match="multiple of the top level's span"):
        check_config(tiny_cfg((2, 3, 4), num_windows=36))
    with pytest.raises(ValueError, match="not divisible"):
        pool_steps(torch.zeros(1, 5, 3), 2, "mean")


@pytest.mark.parametrize("stage_levels", [(1,), (2,), (3,)])
def test_stagewise_no_gradient_into_frozen_levels(stage_levels):
    torch.manual_seed(0)
    cfg = tiny_cfg()
    model = build(cfg)
    set_trainable(model, False, stage_levels)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    loss, _, _ = model({"clip": windows(cfg)}, False, stage_levels, mask_seed=1)
    loss.backward()
    k = stage_levels[0]
    for name, p in model.named_parameters():
        trained = name.startswith(f"levels.{k - 1}.encoder") or name.startswith(f"levels.{k - 1}.predictor")
        if trained:
            assert p.grad is not None, name
        else:
            assert p.grad is None and not p.requires_grad, f"{name} got a gradient in stage {k}"
    torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.1).step()
    changed = {n for n, p in model.named_parameters() if not torch.equal(p, before[n])}
    assert changed and all(n.startswith(f"levels.{k - 1}.") for n in changed)


def test_end_to_end_input_grad_reaches_lower_level():
    cfg = tiny_cfg((2, 2), num_windows=8, mode="end_to_end")
    cfg.level0 = replace(cfg.level0, train=False)
    cfg.levels[0].input_grad = True
    model = build(cfg)
    set_trainable(model, False, (1, 2))
    loss, _, _ = model({"clip": windows(cfg)}, False, (1, 2), mask_seed=0)
    loss.backward()
    assert model.encoder.blocks[0].attn.qkv.weight.grad is not None  # level 1's loss trains level 0
    assert all(p.grad is None for p in model.target.parameters())
    with pytest.raises(ValueError, match="input_grad needs mode=end_to_end"):
        check_config(replace(cfg, mode="stagewise"))


def test_plan_stages():
    assert plan_stages(tiny_cfg((2, 2))) == [(True, ()), (False, (1,)), (False, (2,))]
    cfg = tiny_cfg((2, 2))
    cfg.level0 = replace(cfg.level0, train=False)
    assert plan_stages(cfg) == [(False, (1,)), (False, (2,))]
    assert plan_stages(tiny_cfg((2, 2), mode="end_to_end")) == [(True, (1, 2))]


def _toy_collapse(regularizer: str, steps: int = 40) -> float:
    """A level on pure-noise inputs with target = online (EMA momentum 0): nothing about the future is
    predictable, so the JEPA loss alone is minimised by a constant representation."""
    torch.manual_seed(0)
    level = Level(tiny_level(regularizer=regularizer, ema=[0.0, 0.0]), 8)
    opt = torch.optim.AdamW([p for p in level.parameters() if p.requires_grad], lr=3e-3)
    g = torch.Generator().manual_seed(0)
    u = torch.randn(8, 16, 8)
    for _ in range(steps):
        loss, _, _ = level_loss(level, u, g)
        opt.zero_grad()
        loss.backward()
        opt.step()
        ema_update(level.target, level.encoder, 0.0)
    return feature_std(level.targets(u))


def test_regulariser_keeps_std_above_floor_where_ema_only_collapses(caplog):
    floor = 0.25
    collapsed = _toy_collapse("none")
    assert collapsed < floor
    for reg in ("vicreg", "sigreg"):
        assert _toy_collapse(reg) > 2 * floor, reg
    with caplog.at_level(logging.WARNING, logger="vjepa.engine.monitor"):
        monitor(torch.zeros(2, 4, 8) + torch.randn(1, 1, 8), "level 1", floor, step=7)
    assert "level 1 feature std" in caplog.text and "collapsing" in caplog.text


def test_ema_updates_every_level(tmp_path):
    cfg = tiny_cfg((2, 2), num_windows=8, mode="end_to_end")
    cfg.optimization = replace(cfg.optimization, ipe=2, epochs=1, warmup=0)
    cfg.logging = replace(cfg.logging, folder=str(tmp_path / "run"), log_every=1, tensorboard=False,
                          progress_bar=False)
    torch.manual_seed(cfg.meta.seed)
    init = HJEPA(cfg).state_dict()
    ht.train(cfg)
    state = ckpt.load(tmp_path / "run" / "hjepa-latest.pt")["model"]
    for prefix in ("target.", "levels.0.target.", "levels.1.target."):
        online = prefix.replace("target.", "encoder.")
        keys = [k for k in state if k.startswith(prefix) and "pos_embed" not in k]
        assert any(not torch.equal(state[k], init[k]) for k in keys), f"{prefix} never moved"
        assert any(not torch.equal(state[k], state[online + k[len(prefix):]]) for k in keys), \
            f"{prefix} equals its online encoder (momentum 0?)"
    assert (tmp_path / "run" / "metrics.csv").read_text().count("\n") == 3  # header + 2 steps


def test_config_strictness_and_yaml_levels(tmp_path):
    with pytest.raises(ConfigError, match="unknown config key 'strid'.*'stride'"):
        load_config(HJEPAConfig, raw={"levels": [{"strid": 2}]})
    with pytest.raises(ConfigError, match="stride"):
        load_config(HJEPAConfig, raw={"levels": [{"stride": "two"}]})
    with pytest.raises(ValueError, match="pool 'avg' unknown"):
        check_config(load_config(HJEPAConfig, raw={"levels": [{"pool": "avg"}]}))
    with pytest.raises(ValueError, match="regularizer"):
        check_config(load_config(HJEPAConfig, raw={"levels": [{"regularizer": "vic"}]}))
    with pytest.raises(ValueError, match="mode"):
        check_config(load_config(HJEPAConfig, raw={"mode": "joint"}))
    # A level is added by YAML only.
    yaml = tmp_path / "four.yaml"
    yaml.write_text("task: hjepa\ndata: {num_windows: 32}\nlevels:\n" + "".join(
        f"  - {{stride: 2, regularizer: {r}}}\n" for r in ("vicreg", "vicreg", "sigreg", "none")))
    cfg = load_config(HJEPAConfig, yaml)
    check_config(cfg)
    assert [lv.regularizer for lv in cfg.levels] == ["vicreg", "vicreg", "sigreg", "none"]
    assert spans(cfg) == [1, 2, 4, 8, 16] and len(HJEPA(cfg).levels) == 4


def test_shipped_configs_load():
    for name in ("two_level.yaml", "three_level.yaml"):
        cfg = load_config(HJEPAConfig, CONFIGS / name)
        check_config(cfg)
    assert len(load_config(HJEPAConfig, CONFIGS / "three_level.yaml").levels) == 3
    study = load_config(HorizonStudyConfig, CONFIGS / "horizon_study.yaml")
    check_config(study.hjepa)
    assert study.task == "horizon_study"


class _Crash(RuntimeError):
    pass


def _resume_cfg(folder: Path) -> HJEPAConfig:
    cfg = tiny_cfg((2,), num_windows=8)  # stages: level 0 alone, then level 1 on cached features
    cfg.optimization = replace(cfg.optimization, ipe=2, epochs=2, warmup=0)
    cfg.logging = replace(cfg.logging, folder=str(folder), log_every=1, tensorboard=False, progress_bar=False)
    return cfg


def test_resume_is_exact(tmp_path, monkeypatch):
    full = _resume_cfg(tmp_path / "full")
    ht.train(full)
    ref = ckpt.load(tmp_path / "full" / "hjepa-latest.pt")

    cut = _resume_cfg(tmp_path / "cut")
    save = ht.save_checkpoint

    def save_then_crash(accelerator, path, state, **kw):
        save(accelerator, path, state, **kw)
        if kw["step"] == 6:  # mid stage 2 (each stage is 4 steps; checkpoints every 2)
            raise _Crash()

    monkeypatch.setattr(ht, "save_checkpoint", save_then_crash)
    with pytest.raises(_Crash):
        ht.train(cut)
    monkeypatch.setattr(ht, "save_checkpoint", save)
    with pytest.raises(FileExistsError):
        ht.train(cut)  # a fresh run must not overwrite a checkpoint
    ht.train(replace(cut, meta=replace(cut.meta, load_checkpoint=True)))
    out = ckpt.load(tmp_path / "cut" / "hjepa-latest.pt")
    assert out["step"] == ref["step"] == 8
    for k, v in ref["model"].items():
        assert torch.equal(v, out["model"][k]), k
    rows = (tmp_path / "cut" / "metrics.csv").read_text().splitlines()
    assert rows == (tmp_path / "full" / "metrics.csv").read_text().splitlines()


def test_resuming_with_another_seed_is_a_config_error(tmp_path):
    from vjepa.engine.config import ConfigError

    cfg = _resume_cfg(tmp_path)
    cfg.optimization = replace(cfg.optimization, epochs=1)
    ht.train(cfg)
    before = (tmp_path / "hjepa-latest.pt").read_bytes()
    with pytest.raises(ConfigError, match=f"pass meta.seed={cfg.meta.seed}"):
        ht.train(replace(cfg, meta=replace(cfg.meta, load_checkpoint=True, seed=cfg.meta.seed + 1)))
    assert (tmp_path / "hjepa-latest.pt").read_bytes() == before


def test_bayes_ceiling_matches_markov_chain():
    from data.generated.long_videos import LongVideos

    cfg = HorizonStudyConfig()
    videos = LongVideos(replace(cfg.hjepa.data, num_videos=1))
    c = bayes_ceiling(videos, 16, 8)
    p, A = cfg.hjepa.data.p_successor, cfg.hjepa.data.num_actions
    assert c["slow"][0] == pytest.approx(p + (1 - p) / A)
    assert (c["slow"][:4] == c["slow"][0]).all() and c["slow"][4] < c["slow"][0]
    assert (c["fast"] >= c["slow"] - 1e-9).all()


@pytest.mark.slow
def test_study_runs_end_to_end_at_micro_size(tmp_path):
    import json

    from hjepa.study import FastModelConfig, run

    hj = tiny_cfg((2, 2), num_windows=16)
    hj.data = replace(hj.data, num_videos=16)
    hj.optimization = replace(hj.optimization, ipe=2, epochs=1, warmup=0)
    hj.logging = replace(hj.logging, tensorboard=False, progress_bar=False)
    cfg = HorizonStudyConfig(hjepa=hj, folder=str(tmp_path / "study"), probe_videos=8, eval_videos=4,
                             context_windows=8, horizon=8, fast_model=FastModelConfig(steps=5, batch_size=4),
                             probe_steps=5)
    run_dir = run(cfg)
    for name in ("study.md", "study.json", "horizon.png", "probes.png", "hjepa/hjepa-latest.pt"):
        assert (run_dir / name).is_file(), name
    out = json.loads((run_dir / "study.json").read_text())
    assert {"L0/fast", "L2/slow", "L0x4/slow"} <= set(out["probe_accuracy"])
    assert all(len(v) == 8 for v in out["horizon"].values())
    assert {"L0 rollout/slow", "L1 direct/fast_refit", "L2 direct/cos_err"} <= set(out["horizon"])
    run(cfg)  # a second run reuses the finished stack instead of refusing to overwrite it


def test_level0_loads_a_vjepa_pretraining_checkpoint(tmp_path):
    torch.manual_seed(1)
    src = build(tiny_cfg((2,), num_windows=8))
    path = tmp_path / "jepa-latest.pt"
    ckpt.save_atomic({"encoder": src.encoder.state_dict(), "predictor": src.predictor.state_dict(),
                      "target_encoder": src.target.state_dict(), "step": 3}, path)
    cfg = tiny_cfg((2,), num_windows=8)
    cfg.level0 = replace(cfg.level0, checkpoint=str(path), train=False)
    torch.manual_seed(2)
    model = build(cfg)
    for a, b in zip(model.target.state_dict().values(), src.target.state_dict().values()):
        assert torch.equal(a, b)
    assert plan_stages(cfg) == [(False, (1,))]  # a loaded, frozen level 0 gets no stage of its own
    cfg.data = replace(cfg.data, size=32)  # other geometry: a partial load must be an error
    with pytest.raises(ckpt.CheckpointMismatch, match="pos_embed"):
        build(cfg)
