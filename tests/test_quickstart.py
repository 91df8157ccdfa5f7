"""The quickstart (`python train.py`): its probes' settings and a whole tiny run."""
import json

import pytest

import train as entry
from vjepa.engine.config import ConfigError, load_config
from vjepa.quickstart import QuickstartConfig, probe_config, run

TINY = [
    "pretrain.optimization.epochs=2", "pretrain.optimization.ipe=2", "pretrain.optimization.warmup=0",
    "pretrain.data.synthetic.num_videos=64", "pretrain.data.num_workers=0", "pretrain.logging.progress_bar=false",
    "pretrain.logging.tensorboard=false", "pretrain.logging.rankme_every=0",
    "probe.data.motion.num_train=64", "probe.data.motion.num_val=32", "probe.optimization.num_epochs=1",
    "probe.optimization.batch_size=32", "probe.logging.tensorboard=false", "probe.probe.low_shot=1",
    "pretrain.logging.knn_monitor=false",
]


def quickstart_cfg(overrides=()):
    return load_config(QuickstartConfig, "configs/quickstart.yaml", list(overrides))


@pytest.mark.parametrize("dtype, bf16", [("float32", False), ("bfloat16", True)])
def test_probes_run_in_the_pretraining_precision(tmp_path, dtype, bf16):
    # One process holds one Accelerator state: a probe asking for another precision than pretraining
    # used crashed the quickstart on GPU.
    cfg = quickstart_cfg([f"pretrain.meta.dtype={dtype}"])
    for arm in ("pretrained", "random_init", "single_frame"):
        p = probe_config(cfg, tmp_path, arm)
        assert p.meta.dtype == dtype and p.optimization.use_bfloat16 is bf16
        assert (p.data.motion.num_frames, p.data.motion.size) == (16, 64)  # the pretraining clips' geometry
    assert probe_config(cfg, tmp_path, "random_init").pretrain.random_init
    assert probe_config(cfg, tmp_path, "single_frame").data.motion.control == "single_frame"
    assert probe_config(cfg, tmp_path, "online").pretrain.checkpoint_key == "encoder"
    assert probe_config(cfg, tmp_path, "pretrained").pretrain.checkpoint_key == "target_encoder"
    with pytest.raises(ConfigError, match="unknown quickstart arm"):
        probe_config(cfg, tmp_path, "supervised")


def test_tiny_quickstart_writes_the_comparison(tmp_path, capsys):
    cfg = quickstart_cfg(TINY + [f"folder={tmp_path / 'qs'}"])
    summary = run(cfg)
    assert [r["arm"] for r in summary["rows"]] == ["pretrained", "random_init", "single_frame"]
    assert summary["num_classes"] == 16 and summary["pretrain_steps"] == 4
    for r in summary["rows"]:
        assert 0.0 <= r["top1"] <= r["top5"] <= 100.0
        readouts = (r["linear_top1"], r["low_shot_top1"])
        if r["arm"] == "single_frame":  # the control answers only the attentive probe's question
            assert readouts == (None, None)
        else:
            assert all(0.0 <= v <= 100.0 for v in readouts)
    saved = json.loads((tmp_path / "qs" / "comparison.json").read_text())
    assert saved["rows"] == summary["rows"]
    assert (tmp_path / "qs" / "comparison.png").stat().st_size > 0
    assert "random init (frozen)" in capsys.readouterr().out


def test_a_second_run_in_the_same_folder_is_one_line_and_keeps_the_first(tmp_path, monkeypatch, capsys):
    monkeypatch.delenv("JEPA_DEBUG", raising=False)
    folder = tmp_path / "qs"
    base = ["--config", "configs/quickstart.yaml", *TINY, f"folder={folder}"]
    # an unknown arm is a config error before any pretraining, not after it
    assert entry.main(base + ["arms=[supervised]"]) == 2
    assert "unknown quickstart arm(s) ['supervised']" in capsys.readouterr().err
    assert not (folder / "jepa-latest.pt").exists()
    assert entry.main(base + ["arms=[pretrained]"]) == 0
    first = json.loads((folder / "comparison.json").read_text())["rows"][0]
    ckpt = (folder / "jepa-latest.pt").read_bytes()
    capsys.readouterr()
    # the same command again: refused in one line, naming the quickstart's own keys
    assert entry.main(base + ["arms=[pretrained]"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "pretrain.meta.load_checkpoint=true" in err and "folder=" in err
    # probing the same arm again: refused, naming the probe's resume key
    resumed = base + ["pretrain.meta.load_checkpoint=true", "arms=[pretrained]"]
    assert entry.main(resumed) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "probe.resume_checkpoint=true" in err
    # with it, the finished probe is read back, and nothing was overwritten
    assert entry.main(resumed + ["probe.resume_checkpoint=true"]) == 0
    again = json.loads((folder / "comparison.json").read_text())["rows"][0]
    assert again["top1"] == first["top1"] and again["knn_top1"] == first["knn_top1"]
    assert (folder / "jepa-latest.pt").read_bytes() == ckpt
    # another arm on the same run joins the table; the rows probed before stay in comparison.json
    before = json.loads((folder / "comparison.json").read_text())
    assert entry.main(base + ["pretrain.meta.load_checkpoint=true", "arms=[single_frame]"]) == 0
    merged = json.loads((folder / "comparison.json").read_text())
    assert [r["arm"] for r in merged["rows"]] == ["pretrained", "single_frame"]
    assert merged["rows"][0] == before["rows"][0]
    assert merged["pretrain_seconds"] > before["pretrain_seconds"]
