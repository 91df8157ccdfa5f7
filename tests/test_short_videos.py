"""Videos shorter than one clip: `data.check` reports them as SHORT (and leaves them out of --out),
training pads them by default (counted, reported once) or skips them with `filter_short_videos`."""
import logging
from pathlib import Path

import pytest
import torch

import train as entry
from conftest import TINY_PRETRAIN
from data import check
from data.config import DataAugConfig, DataConfig
from data.datasets import build_video_dataset
from tests.videos import write_video


@pytest.fixture(scope="module")
def clips(tmp_path_factory) -> Path:
    """A list of two 2-frame videos and two of 80 frames (30 fps)."""
    d = tmp_path_factory.mktemp("short")
    names = {"tiny0.mp4": 2, "long0.mp4": 80, "tiny1.mp4": 2, "long1.mp4": 80}
    for name, n in names.items():
        write_video(d / name, n, fps=30, width=48, height=48)
    (d / "list.csv").write_text("".join(f"{name} {i % 2}\n" for i, name in enumerate(names)))
    return d / "list.csv"


def test_check_reports_short_videos_for_the_clip_and_excludes_them(clips, tmp_path, capsys):
    out = tmp_path / "clean.csv"
    rc = check.main([str(clips), "--workers", "1", "--quiet", "--frames", "16", "--sampling-rate", "4",
                     "--out", str(out)])
    text = capsys.readouterr().out
    assert rc == 0
    short = [ln for ln in text.splitlines() if ln.startswith("SHORT")]
    assert len(short) == 2 and all("tiny" in ln for ln in short)
    assert "2 frames, one clip of 16 frames every 4 frames spans 61" in short[0]
    assert "ok: 2  broken: 0  filtered: 0  short: 2" in text
    assert [Path(ln.split()[0]).name for ln in out.read_text().splitlines()] == ["long0.mp4", "long1.mp4"]
    # 16 frames every 6 (91 frames) is more than the 80-frame videos have: all four are short
    check.main([str(clips), "--workers", "1", "--quiet", "--frames", "16", "--sampling-rate", "6"])
    assert "ok: 0  broken: 0  filtered: 0  short: 4" in capsys.readouterr().out
    # without a clip the 2-frame videos are fine, as before
    check.main([str(clips), "--workers", "1", "--quiet"])
    assert "ok: 4  broken: 0  filtered: 0  short: 0" in capsys.readouterr().out


def test_check_reads_the_clip_from_a_config(clips, tmp_path, capsys):
    # tiny_pretrain.yaml: 4 frames every 4 (the default) -> 13 frames
    check.main([str(clips), "--workers", "1", "--quiet", "--config", str(TINY_PRETRAIN)])
    assert "short: 2" in capsys.readouterr().out
    probe = tmp_path / "probe.yaml"
    probe.write_text("task: probe\ndata: {frames_per_clip: 16, frame_step: 2}\n")  # 31 frames
    assert check.clip_from_config(str(probe)) == check.ClipSpec(16, 2)
    check.main([str(clips), "--workers", "1", "--quiet", "--config", str(probe)])
    assert "short: 2" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        check.main([str(clips), "--config", str(probe), "--frames", "8"])


def dataset(clips, **kw):
    cfg = DataConfig(datasets=[str(clips)], num_frames=16, sampling_rate=4, crop_size=32, **kw)
    return build_video_dataset(cfg, DataAugConfig(), train=True)


def test_training_pads_by_default_and_filter_short_videos_skips(clips):
    padding = dataset(clips)
    torch.manual_seed(0)
    s = padding[0]  # tiny0: 2 frames, padded to 16
    assert s["padded"] == 1 and s["skipped"] == 0 and s["clip"].shape == (3, 16, 32, 32)
    assert padding[1]["padded"] == 0
    skipping = dataset(clips, filter_short_videos=True)
    for seed in range(4):
        torch.manual_seed(seed)
        s = skipping[0]  # tiny0 is skipped and replaced by a random other sample
        assert s["skipped"] >= 1 and s["padded"] == 0


def test_pretraining_says_once_how_many_clips_were_padded(clips, tmp_path, caplog):
    tiny = tmp_path / "tiny.csv"
    tiny.write_text(f"{clips.parent / 'tiny0.mp4'} 0\n{clips.parent / 'tiny1.mp4'} 1\n")
    with caplog.at_level(logging.WARNING, logger="vjepa.pretrain"):
        assert entry.main(["--config", str(TINY_PRETRAIN), f"data.datasets=[{tiny}]", "optimization.epochs=1",
                           f"logging.folder={tmp_path / 'pad'}"]) == 0
    said = [r.getMessage() for r in caplog.records if "padded" in r.getMessage()]
    # 3 steps x 2 clips, every one from a 2-frame video (tiny_pretrain: a clip spans 13 frames)
    assert len(said) == 1 and said[0].startswith("6 of 6 clips (100.0%) came from videos shorter than one clip")
    caplog.clear()
    args = ["--config", str(TINY_PRETRAIN), f"data.datasets=[{clips}]", "optimization.epochs=1"]
    with caplog.at_level(logging.WARNING, logger="vjepa.pretrain"):
        assert entry.main([*args, f"logging.folder={tmp_path / 'skip'}", "data.filter_short_videos=true"]) == 0
    assert not [r for r in caplog.records if "padded" in r.getMessage()]
    rows = (tmp_path / "skip" / "metrics.csv").read_text().splitlines()
    col = rows[0].split(",").index("skipped_files")
    assert int(float(rows[-1].split(",")[col])) >= 1
