"""The motion benchmark: fixed splits, controls that remove motion, mp4 + CSV export, and that its labels
need motion (a supervised model learns them from clips, and stays at chance on single frames)."""
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from data.datasets import read_csv_list
from data.generated.motion_benchmark import MotionBenchmarkConfig, motion_split, shuffle_frames, single_frame, write_benchmark
from data.generated.synthetic import MotionVideos
from data.video import open_video


def test_splits_are_fixed_and_distinct():
    cfg = MotionBenchmarkConfig(num_train=6, num_val=4, num_frames=4, size=16)
    a, b = motion_split(cfg, "train", normalize=False), motion_split(cfg, "train", normalize=False)
    val = motion_split(cfg, "val", normalize=False)
    pre = MotionVideos(6, 4, 16, seed=0)  # what a default pretraining run sees
    for i in range(4):
        assert torch.equal(a.clip(i), b.clip(i))
        assert not torch.equal(a.clip(i), val.clip(i))
        assert not torch.equal(a.clip(i), pre.clip(i))
    x = motion_split(cfg, "train")[0]
    assert x["clip"].shape == (3, 4, 16, 16) and x["clip"].dtype == torch.float32
    assert 0 <= x["label"] < cfg.num_classes == 16


def test_controls_remove_motion_but_keep_frames():
    clip = torch.randint(0, 255, (6, 8, 8, 3), dtype=torch.uint8)
    s = single_frame(clip)
    assert s.shape == clip.shape and all(torch.equal(f, clip[3]) for f in s)
    sh = shuffle_frames(clip, seed=1)
    assert torch.equal(sh, shuffle_frames(clip, seed=1))
    assert not torch.equal(sh, clip)
    assert sorted(f.sum().item() for f in sh) == sorted(f.sum().item() for f in clip)
    cfg = MotionBenchmarkConfig(num_train=2, num_val=2, num_frames=4, size=16, control="single_frame")
    c = motion_split(cfg, "val", normalize=False).clip(0)
    assert all(torch.equal(f, c[0]) for f in c)
    with pytest.raises(ValueError, match="control"):
        motion_split(cfg, "val", control="reversed")


def test_written_benchmark_reads_back(tmp_path):
    cfg = MotionBenchmarkConfig(num_train=3, num_val=2, num_frames=8, size=32)
    csvs = write_benchmark(cfg, tmp_path)
    samples = read_csv_list(str(csvs["train"]))
    ds = motion_split(cfg, "train", normalize=False)
    assert [label for _, label in samples] == [ds.label_of(i) for i in range(3)]
    with open_video(samples[0][0], "pyav") as reader:
        assert reader.info.num_frames == 8 and (reader.info.width, reader.info.height) == (32, 32)
        frames = reader.get_frames(range(8))
    assert (frames.float() - ds.clip(0).float()).abs().mean() < 6  # near-lossless H.264


def _fit_supervised(cfg, control, steps=150):
    """A small supervised 3D CNN trained on the train split; returns val top-1 (%)."""
    torch.manual_seed(0)
    tr, va = motion_split(cfg, "train", control=control), motion_split(cfg, "val", control=control)
    xt = torch.stack([tr[i]["clip"] for i in range(len(tr))])
    yt = torch.tensor([tr[i]["label"] for i in range(len(tr))])
    xv = torch.stack([va[i]["clip"] for i in range(len(va))])
    yv = torch.tensor([va[i]["label"] for i in range(len(va))])
    net = nn.Sequential(nn.Conv3d(3, 16, 3, stride=(1, 2, 2), padding=1), nn.ReLU(),
                        nn.Conv3d(16, 32, 3, stride=2, padding=1), nn.ReLU(),
                        nn.Conv3d(32, 32, 3, stride=2, padding=1), nn.ReLU(),
                        nn.Flatten(), nn.LazyLinear(cfg.num_classes))
    net(xt[:2])
    opt = torch.optim.AdamW(net.parameters(), lr=2e-3)
    g = torch.Generator().manual_seed(0)
    for _ in range(steps):
        idx = torch.randint(0, len(yt), (32,), generator=g)
        loss = F.cross_entropy(net(xt[idx]), yt[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():
        return 100.0 * (net(xv).argmax(-1) == yv).float().mean().item()


def test_single_frame_control_is_at_chance_for_a_supervised_probe():
    """A linear probe on the pixels of single-frame clips fits its train set but not the val set: what
    one frame shows (shape, colour, position) does not predict the label."""
    cfg = MotionBenchmarkConfig(num_train=256, num_val=256, num_frames=4, size=16, num_speeds=1)
    tr, va = motion_split(cfg, "train", control="single_frame"), motion_split(cfg, "val", control="single_frame")
    xt = torch.stack([tr[i]["clip"][:, 0].flatten() for i in range(len(tr))])  # one frame is all there is
    yt = torch.tensor([tr[i]["label"] for i in range(len(tr))])
    xv = torch.stack([va[i]["clip"][:, 0].flatten() for i in range(len(va))])
    yv = torch.tensor([va[i]["label"] for i in range(len(va))])
    torch.manual_seed(0)
    probe = nn.Linear(xt.shape[1], cfg.num_classes)
    opt = torch.optim.AdamW(probe.parameters(), lr=1e-2, weight_decay=0.0)
    for _ in range(200):
        loss = F.cross_entropy(probe(xt), yt)
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():
        train_acc = (probe(xt).argmax(-1) == yt).float().mean().item()
        val_acc = (probe(xv).argmax(-1) == yv).float().mean().item()
    chance = 1.0 / cfg.num_classes
    assert train_acc > 0.9  # the probe is not too weak to fit
    assert val_acc < 2 * chance, val_acc


def test_labels_need_motion():
    """The same supervised 3D CNN learns the labels from clips but not from single frames."""
    cfg = MotionBenchmarkConfig(num_train=384, num_val=192, num_frames=8, size=24, num_speeds=1)
    chance = 100.0 / cfg.num_classes  # 12.5%
    motion = _fit_supervised(cfg, "none")
    still = _fit_supervised(cfg, "single_frame")
    assert still < 2 * chance, still
    assert motion > still + 10, (motion, still)


def test_probe_job_reads_the_written_benchmark_with_segments_and_views(tmp_path):
    """The reference protocol on real files: CSV lists, 2 segments x 3 views, attending across segments."""
    from vjepa.models import VisionTransformer
    from vjepa.probe_train import ProbeConfig, train

    csvs = write_benchmark(MotionBenchmarkConfig(num_train=8, num_val=4, num_frames=8, size=32), tmp_path / "bench")
    torch.manual_seed(0)
    enc = VisionTransformer(img_size=32, num_frames=4, patch_size=16, tubelet_size=2, embed_dim=24, depth=1,
                            num_heads=2)
    torch.save({"target_encoder": enc.state_dict()}, tmp_path / "enc.pt")
    cfg = ProbeConfig()
    d, o, p = cfg.data, cfg.optimization, cfg.pretrain
    d.dataset_train, d.dataset_val, d.num_classes = str(csvs["train"]), str(csvs["val"]), 16
    d.frames_per_clip, d.frame_step, d.num_segments, d.num_views_per_segment, d.num_workers = 4, 1, 2, 3, 0
    o.attend_across_segments, o.resolution, o.batch_size, o.num_epochs = True, 32, 4, 1
    p.checkpoint, p.num_heads = str(tmp_path / "enc.pt"), 2
    cfg.logging.folder = str(tmp_path / "probe")
    res = train(cfg)
    assert 0.0 <= res["top1"] <= 100.0 and res["epochs"] == 1
