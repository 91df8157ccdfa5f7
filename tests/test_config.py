import pytest

from conftest import ROOT, TINY_PRETRAIN
from data.masks import MaskConfig
from train import main, pick_task
from vjepa.engine.config import ConfigError, load_config, read_yaml
from vjepa.pretrain import PretrainConfig


def test_unknown_key_names_the_valid_keys():
    with pytest.raises(ConfigError, match=r"optimizaton[\s\S]*valid keys: \[.*'optimization'"):
        load_config(PretrainConfig, overrides=["optimizaton.lr=1e-3"])
    with pytest.raises(ConfigError, match=r"'data.batchsize'.*'batch_size'"):
        load_config(PretrainConfig, raw={"data": {"batchsize": 4}})
    with pytest.raises(ConfigError, match=r"numblocks.*MaskConfig.*'num_blocks'"):
        load_config(PretrainConfig, raw={"mask": [{"numblocks": 4}]})


def test_wrong_type_is_an_error():
    with pytest.raises(ConfigError, match="data.batch_size"):
        load_config(PretrainConfig, overrides=["data.batch_size=many"])
    with pytest.raises(ConfigError, match="not of the form"):
        load_config(PretrainConfig, overrides=["data.batch_size"])


def test_precedence_defaults_yaml_cli():
    cfg = load_config(PretrainConfig, TINY_PRETRAIN, ["optimization.lr=0.5", "mask.0.ratio=0.5"])
    assert cfg.optimization.lr == 0.5  # CLI beats YAML
    assert cfg.data.batch_size == 2  # YAML beats defaults
    assert cfg.optimization.final_weight_decay == 0.4  # default
    assert cfg.mask == [MaskConfig(type="tube", ratio=0.5)]


@pytest.mark.parametrize("name,model", [("vitl16", "vit_large"), ("vith16", "vit_huge")])
def test_reference_configs_load_unchanged(name, model, caplog):
    path = ROOT / "configs" / "pretrain" / f"{name}.yaml"
    raw = read_yaml(path)
    assert raw["app"] == "vjepa" and "nodes" in raw and raw["meta"]["use_sdpa"] is True
    caplog.set_level("INFO")
    cfg = load_config(PretrainConfig, path)
    assert "ignoring reference key 'nodes'" in caplog.text
    assert pick_task(raw, []) == "pretrain"
    assert cfg.model.model_name == model and cfg.data.num_frames == 16 and cfg.data.crop_size == 224
    assert [m.num_blocks for m in cfg.mask] == [8, 2] and cfg.mask[1].spatial_scale == [0.7, 0.7]
    assert cfg.optimization.ema == [0.998, 1.0] and cfg.optimization.lr == 0.000625


def test_cli_reports_config_errors(capsys):
    assert main(["--config", str(TINY_PRETRAIN), "data.nope=1"]) == 2
    assert "unknown config key 'data.nope'" in capsys.readouterr().err
    assert main(["--config", str(TINY_PRETRAIN), "task=dance"]) == 2


@pytest.mark.parametrize("override, message", [
    ("data.crop_size=60", "data.crop_size=60 must be a positive multiple of data.patch_size=8"),
    ("data.num_frames=3", "data.num_frames=3 must be a positive multiple of data.tubelet_size=2"),
    ("optimization.epochs=0", "optimization.epochs and optimization.ipe must be >= 1, got 0 and"),
])
def test_impossible_geometry_or_schedule_is_a_config_error_before_anything_runs(tmp_path, monkeypatch, capsys,
                                                                                override, message):
    # a 60-px crop used to crash in the mask figure after the models were built; -1 epochs to "train" nothing
    monkeypatch.delenv("JEPA_DEBUG", raising=False)
    for extra in (["--dry-run"], [f"logging.folder={tmp_path / 'run'}"]):
        assert main(["--config", str(TINY_PRETRAIN), *extra, override]) == 2
        assert capsys.readouterr().err.startswith(f"config error: {message}")
    assert not (tmp_path / "run").exists()


def test_dry_run_prints_config_params_and_mask_statistics(capsys):
    assert main(["--config", str(TINY_PRETRAIN), "--dry-run", "data.crop_size=64"]) == 0
    out = capsys.readouterr().out
    assert "model_name: vit_micro" in out
    assert "trainable params" in out and "token grid (2, 8, 8) = 128 tokens" in out
    assert "mask 0 (tube" in out and "target 96 tokens (75.0%)" in out


@pytest.mark.parametrize("path", sorted(str(p.relative_to(ROOT)) for p in (ROOT / "configs").rglob("*.yaml")))
def test_every_shipped_config_loads_with_its_task_config(path):
    """A typo'd key or a wrong type in a shipped YAML fails here, not at the start of someone's run."""
    import importlib

    from train import TASKS

    raw = read_yaml(ROOT / path)
    module_name, cfg_name, _ = TASKS[pick_task(raw, [])]
    load_config(getattr(importlib.import_module(module_name), cfg_name), raw=raw)
