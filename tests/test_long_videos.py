"""Generated long videos: determinism, label structure at two time scales, motion matches the fast label."""
import subprocess
import sys
from dataclasses import replace
from functools import partial

import numpy as np
import pytest
import torch

from data.generated.long_videos import LongVideoConfig, LongVideos, LongVideoWindows, action_table, sample_labels
from data.generated.synthetic import DIRECTIONS
from data.transforms import to_float_clip

SMALL = LongVideoConfig(num_videos=6, num_windows=8, window_frames=4, size=16, num_actions=4, action_len=4)


def test_deterministic_and_seeded():
    a, b = LongVideos(SMALL), LongVideos(SMALL)
    x, y = a[2], b[2]
    assert x["clip"].shape == (8, 4, 16, 16, 3) and x["clip"].dtype == torch.uint8
    assert torch.equal(x["clip"], y["clip"]) and torch.equal(x["fast"], y["fast"])
    other = LongVideos(replace(SMALL, seed=1))[2]
    assert not torch.equal(x["clip"], other["clip"])
    assert not torch.equal(x["clip"], a[3]["clip"])


def test_label_structure():
    cfg = replace(SMALL, num_windows=16)
    ds = LongVideos(cfg)
    for i in range(len(ds)):
        s = ds[i]
        slow = s["slow"].view(-1, cfg.action_len)
        assert (slow == slow[:, :1]).all(), "the slow label is constant within a compound action"
        fast = s["fast"].view(-1, cfg.action_len)
        assert torch.equal(fast, torch.from_numpy(ds.table)[slow[:, 0]]), "fast labels spell the compound action"
        assert (fast[:, 1:] != fast[:, :-1]).all(), "adjacent primitives inside an action differ"
        assert s["label"] == int(s["slow"][0])
    assert len({tuple(r) for r in ds.table}) == cfg.num_actions


def test_markov_chain_follows_successor():
    cfg = replace(LongVideoConfig(), num_windows=64, p_successor=0.8)
    table, succ = action_table(cfg.num_actions, cfg.action_len, cfg.table_seed)
    assert (succ != np.arange(cfg.num_actions)).all()
    hits = total = 0
    for i in range(300):
        _, slow = sample_labels(np.random.default_rng([0, i, 0]), cfg, table, succ)
        actions = slow[:: cfg.action_len]
        hits += int((succ[actions[:-1]] == actions[1:]).sum())
        total += len(actions) - 1
    expected = cfg.p_successor + (1 - cfg.p_successor) / cfg.num_actions
    assert abs(hits / total - expected) < 0.03


def test_window_view_matches_full_render_and_transform():
    tf = partial(to_float_clip, mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25))
    videos = LongVideos(SMALL, transform=tf)
    windows = LongVideoWindows(videos)
    assert len(windows) == SMALL.num_videos * SMALL.num_windows
    full = videos[1]
    assert full["clip"].shape == (8, 3, 4, 16, 16) and full["clip"].dtype == torch.float32
    for w in (0, 5, 7):
        s = windows[1 * SMALL.num_windows + w]
        assert torch.equal(s["clip"], full["clip"][w])
        assert s["label"] == int(full["fast"][w]) and s["slow"] == int(full["slow"][w])


def test_motion_follows_fast_label():
    cfg = replace(SMALL, size=32, window_frames=6, noise=0.0, step_px=2.0, num_videos=4)
    ds = LongVideos(cfg)
    correct = total = 0
    for i in range(len(ds)):
        s = ds[i]
        frames = s["clip"].reshape(-1, cfg.size, cfg.size, 3).float().numpy()
        # Shape pixels are bright (>= 120 in some channel), the background is dark (< 80).
        ang = 2 * np.pi * np.arange(cfg.size) / cfg.size
        pos = []
        for f in frames:
            ys, xs = np.nonzero(f.max(-1) > 100)
            # Circular centroid: the shape wraps around the frame edges.
            pos.append([np.angle(np.exp(1j * ang[xs]).mean()), np.angle(np.exp(1j * ang[ys]).mean())])
        pos = np.unwrap(np.asarray(pos), axis=0) * cfg.size / (2 * np.pi)  # [W*T, 2] pixels
        disp = (pos[cfg.window_frames - 1 :: cfg.window_frames] - pos[:: cfg.window_frames])  # [W, 2]
        for d, lab in zip(disp, s["fast"].tolist()):
            correct += int(np.dot(d, DIRECTIONS[lab]) > 0.5 * np.abs(d).max())
            total += 1
    assert correct / total > 0.9


def test_bad_config_is_an_error():
    with pytest.raises(ValueError, match="multiple of action_len"):
        LongVideos(replace(SMALL, num_windows=6))
    with pytest.raises(ValueError, match="num_actions"):
        LongVideos(replace(SMALL, num_actions=1))
    with pytest.raises(IndexError):
        LongVideos(SMALL)[SMALL.num_videos]


def test_data_does_not_import_models():
    code = ("import sys, data.generated.long_videos; bad = [m for m in sys.modules if m.split('.')[0] in ('vjepa', 'hjepa')]; "
            "assert not bad, bad")
    subprocess.run([sys.executable, "-c", code], check=True)
