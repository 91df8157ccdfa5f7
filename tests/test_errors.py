"""Expected user mistakes end in one line on stderr and exit code 2; --debug / JEPA_DEBUG shows the
traceback; anything else keeps its traceback."""
import argparse
import os
import signal

import pytest
import torch

import train as entry
from conftest import ROOT, TINY_PRETRAIN
from data.errors import NoUsableVideos, one_line
from vjepa.engine import checkpoint as ckpt
from vjepa.errors import MissingCheckpoint, made_by
from vjepa.models import VisionTransformer

PLAN = str(ROOT / "configs" / "plan" / "two_rooms.yaml")


def run(capsys, *argv):
    rc = entry.main(list(argv))
    return rc, capsys.readouterr().err


def test_missing_checkpoint_names_the_command_that_writes_it(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)  # no runs/ here: the world model was never trained
    monkeypatch.delenv("JEPA_DEBUG", raising=False)
    rc, err = run(capsys, "--config", PLAN)
    assert rc == 2
    assert err == ("error: checkpoint not found: runs/worldmodel-two_rooms/wm-latest.pt; it is written by "
                   "python train.py --config configs/worldmodel/two_rooms.yaml\n")


def test_missing_data_list_is_one_line(tmp_path, monkeypatch, capsys):
    monkeypatch.delenv("JEPA_DEBUG", raising=False)
    missing = tmp_path / "train.csv"
    rc, err = run(capsys, "--config", str(TINY_PRETRAIN), f"logging.folder={tmp_path / 'run'}",
                  f"data.datasets=[{missing}]")
    assert rc == 2
    assert err == f"error: dataset '{missing}' not found (neither a CSV file, a folder nor a media file)\n"


def test_wrong_checkpoint_for_the_model_is_one_line(tmp_path, monkeypatch, capsys):
    monkeypatch.delenv("JEPA_DEBUG", raising=False)
    ck = tmp_path / "micro.pt"
    enc = VisionTransformer(img_size=16, num_frames=4, patch_size=8, tubelet_size=2, embed_dim=96, depth=4,
                            num_heads=3)
    torch.save({"target_encoder": enc.state_dict()}, ck)
    probe = str(ROOT / "configs" / "probe" / "motion.yaml")
    rc, err = run(capsys, "--config", probe, f"pretrain.checkpoint={ck}", "pretrain.model_name=vit_base",
                  f"logging.folder={tmp_path / 'run'}")
    assert rc == 2
    assert err == "error: model_name vit_base is 768 wide and 12 deep, the checkpoint 96 and 4\n"
    # a checkpoint without the asked weights
    rc, err = run(capsys, "--config", probe, f"pretrain.checkpoint={ck}", "pretrain.checkpoint_key=encoder",
                  f"logging.folder={tmp_path / 'run'}")
    assert rc == 2
    assert err == f"error: {ck}: no 'encoder' in the checkpoint; top-level keys: ['target_encoder']\n"


def test_debug_flag_and_env_show_the_traceback(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("JEPA_DEBUG", raising=False)
    with pytest.raises(MissingCheckpoint):
        entry.main(["--debug", "--config", PLAN])
    monkeypatch.setenv("JEPA_DEBUG", "1")
    with pytest.raises(MissingCheckpoint):
        entry.main(["--config", PLAN])


def test_unexpected_errors_keep_their_traceback(tmp_path, monkeypatch):
    import hjepa.world_model.evaluate

    def bug(cfg, dry_run=False):
        raise ZeroDivisionError("a bug")

    monkeypatch.setattr(hjepa.world_model.evaluate, "run", bug)
    monkeypatch.delenv("JEPA_DEBUG", raising=False)
    with pytest.raises(ZeroDivisionError):
        entry.main(["--config", PLAN])


def test_made_by_and_worker_messages():
    assert made_by("runs/vitl16/jepa-latest.pt") == "python train.py --config configs/pretrain/vitl16.yaml"
    assert made_by("elsewhere/wm-latest.pt").startswith("a world-model run")
    assert made_by("elsewhere/weights.bin") is None
    # DataLoader workers re-raise with the worker's traceback in the message: keep the original line
    wrapped = NoUsableVideos("Caught NoUsableVideos in DataLoader worker process 0.\nOriginal Traceback (most "
                             "recent call last):\n  File \"x.py\", line 1, in f\ndata.errors.NoUsableVideos: 6 "
                             "files in a row could not be used")
    assert one_line(wrapped) == "6 files in a row could not be used"
    assert one_line(ValueError("a\n  b")) == "a; b"


def test_no_decodable_video_and_missing_decoder_are_one_line(tmp_path, monkeypatch, capsys):
    monkeypatch.delenv("JEPA_DEBUG", raising=False)
    for i in range(3):
        (tmp_path / f"v{i}.mp4").write_text("not a video")
    lst = tmp_path / "list.csv"
    lst.write_text("".join(f"v{i}.mp4 0\n" for i in range(3)))
    base = ["--config", str(TINY_PRETRAIN), f"data.datasets=[{lst}]", "data.max_consecutive_failures=3"]
    rc, err = run(capsys, *base, f"logging.folder={tmp_path / 'a'}")
    assert rc == 2 and err.count("\n") == 1
    assert err.startswith("error: 3 files in a row could not be used (data.max_consecutive_failures=3)")
    import data.video

    monkeypatch.setattr(data.video, "decord_available", lambda: False)  # a machine without decord
    rc, err = run(capsys, *base, f"logging.folder={tmp_path / 'b'}", "data.decoder=decord")
    assert rc == 2
    assert err == ("error: data.decoder=decord but decord is not installed on this machine (pip install decord, "
                   "x86_64 only); use data.decoder=pyav\n")


def test_config_errors_found_by_a_job_are_one_line(tmp_path, monkeypatch, capsys):
    monkeypatch.delenv("JEPA_DEBUG", raising=False)
    rc, err = run(capsys, "--config", str(ROOT / "configs" / "probe" / "motion.yaml"),
                  f"logging.folder={tmp_path}")
    assert rc == 2
    assert err == ("config error: pretrain.checkpoint is not set: give a checkpoint (pretrain.checkpoint=PATH) or "
                   "pretrain.random_init=true\n")


def test_unreadable_checkpoint_is_one_line(tmp_path, monkeypatch, capsys):
    monkeypatch.delenv("JEPA_DEBUG", raising=False)
    good = tmp_path / "good.pt"
    torch.save({"step": 1, "w": torch.zeros(1000)}, good)
    files = {"truncated.pt": good.read_bytes()[:600], "empty.pt": b"", "text.pt": b"not a checkpoint\n"}
    for name, data in files.items():
        (tmp_path / name).write_bytes(data)
    torch.save({"args": argparse.Namespace(lr=1.0)}, tmp_path / "pickled.pt")  # not tensors and plain values
    for name in [*files, "pickled.pt"]:
        rc, err = run(capsys, "--config", str(TINY_PRETRAIN), f"logging.folder={tmp_path / 'run'}",
                      f"meta.read_checkpoint={tmp_path / name}")
        assert rc == 2 and err.count("\n") == 1, (name, err)
        assert err.startswith(f"error: {tmp_path / name} is not a readable checkpoint ("), err
    assert "argparse.Namespace" in err and "weights_only=True" in err


def test_ctrl_c_ends_in_one_line_and_keeps_the_checkpoint(tmp_path, monkeypatch, capsys):
    import vjepa.pretrain

    monkeypatch.delenv("JEPA_DEBUG", raising=False)
    real_save, saves = vjepa.pretrain.save_checkpoint, []

    def save_then_ctrl_c(*a, **kw):
        real_save(*a, **kw)
        saves.append(kw["step"])
        if len(saves) % 2 == 0:
            raise KeyboardInterrupt  # Ctrl-C in the training loop, after every second checkpoint

    monkeypatch.setattr(vjepa.pretrain, "save_checkpoint", save_then_ctrl_c)
    args = ["--config", str(TINY_PRETRAIN), f"logging.folder={tmp_path / 'run'}"]
    assert entry.cli(args) == 130
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("interrupted: ") and "meta.load_checkpoint=true" in err
    assert ckpt.load(tmp_path / "run" / "jepa-latest.pt")["step"] == saves[-1]
    with pytest.raises(KeyboardInterrupt):
        entry.cli([*args[:2], f"logging.folder={tmp_path / 'other'}", "--debug"])  # --debug keeps the traceback


def test_ctrl_c_during_a_save_lets_the_save_finish_and_a_failed_save_leaves_no_half_file(tmp_path, monkeypatch):
    path, before = tmp_path / "c.pt", signal.getsignal(signal.SIGINT)
    real_save = torch.save

    def interrupted_save(obj, f):
        os.kill(os.getpid(), signal.SIGINT)  # Ctrl-C arrives in the middle of the write
        real_save(obj, f)

    monkeypatch.setattr(torch, "save", interrupted_save)
    with pytest.raises(KeyboardInterrupt, match="after it completed"):
        ckpt.save_atomic({"w": torch.ones(3)}, path)
    assert torch.equal(ckpt.load(path)["w"], torch.ones(3)) and signal.getsignal(signal.SIGINT) is before

    def failing_save(obj, f):
        f.write(b"half")
        raise OSError("No space left on device")

    monkeypatch.setattr(torch, "save", failing_save)
    with pytest.raises(OSError, match="No space"):
        ckpt.save_atomic({"w": torch.zeros(3)}, path)
    assert torch.equal(ckpt.load(path)["w"], torch.ones(3))  # the previous checkpoint, untouched
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c.pt"]  # and no temp file
