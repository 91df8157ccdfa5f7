"""Datasets: clip sampling, sample lists (CSV, folder), mixing weights, images, bad-file skipping."""
from __future__ import annotations

import logging
from collections import Counter
from pathlib import Path
from typing import Dict, List, Sequence

import pytest
import torch
from torch.utils.data import DataLoader

from data.config import DataAugConfig, DataConfig
from data.datasets import (
    VideoDataset,
    build_video_dataset,
    clip_indices,
    frame_step,
    read_csv_list,
    read_folder,
)
from data import video_torchcodec
from data.video import decord_available
from tests.videos import frame_index, write_bad_files, write_image, write_video

DECODERS = ["pyav"] + (["decord"] if decord_available() else []) + (
    ["torchcodec"] if video_torchcodec.problem() is None else [])


def identity(clip: torch.Tensor) -> torch.Tensor:
    return clip


def indices_of(clip: torch.Tensor) -> List[int]:
    """Frame indices of a uint8 clip [T, H, W, C] (identity transform)."""
    return [frame_index(f) for f in clip]


def write_csv(path: Path, lines: Sequence[str]) -> Path:
    path.write_text("\n".join(lines) + "\n")
    return path


def video_dataset(paths: Sequence[Path], **kw: object) -> VideoDataset:
    """A VideoDataset over `paths` (labels 0..n-1) returning uint8 clips, for checking frame indices."""
    args: Dict[str, object] = dict(weights=None, transform=identity, num_frames=4, decoder="pyav", sampling_rate=2)
    args.update(kw)
    return VideoDataset([[(str(p), i) for i, p in enumerate(paths)]], **args)  # type: ignore[arg-type]


@pytest.fixture(scope="module")
def vids(tmp_path_factory: pytest.TempPathFactory) -> Dict[str, Path]:
    d = tmp_path_factory.mktemp("vids")
    return {
        "a": write_video(d / "a.mp4", 60, fps=30, codec="libx264"),
        "b": write_video(d / "b.avi", 50, fps=25, codec="mpeg4"),
        "short": write_video(d / "short.mp4", 5, fps=30, codec="libx264"),
        "long": write_video(d / "long.mp4", 200, fps=30, codec="mpeg4", gop=30),
    }


@pytest.fixture(scope="module")
def bad(tmp_path_factory: pytest.TempPathFactory, vids: Dict[str, Path]) -> Dict[str, Path]:
    # corrupt 0.05-0.85: the file opens but no frame decodes
    return write_bad_files(tmp_path_factory.mktemp("bad"), vids["a"], truncate_at=0.5, corrupt_span=(0.05, 0.85))


# ------------------------------------------------------------------------------------------ clip sampling
def test_clip_indices_uniform() -> None:
    assert clip_indices(100, 4, 3, 1, random=False) == [[45, 48, 51, 54]]  # centred: span 10, room 90
    starts = [c[0] for c in clip_indices(100, 4, 3, 3, random=False)]
    assert starts == [0, 45, 90]  # first to last frame


def test_clip_indices_random_stay_in_their_segment() -> None:
    torch.manual_seed(0)
    seen = set()
    for _ in range(50):
        clips = clip_indices(120, 4, 3, 2, random=True)  # segments [0, 60), [60, 120), span 10
        for k, c in enumerate(clips):
            assert c == list(range(c[0], c[0] + 12, 3))
            assert 60 * k <= c[0] and c[-1] < 60 * (k + 1)
        seen.add(clips[0][0])
    assert len(seen) > 20  # positions really vary
    torch.manual_seed(3)
    a = clip_indices(120, 4, 3, 2, random=True)
    torch.manual_seed(3)
    assert clip_indices(120, 4, 3, 2, random=True) == a


def test_short_video_repeats_last_frame() -> None:
    assert clip_indices(5, 4, 3, 1, random=False) == [[0, 3, 4, 4]]
    torch.manual_seed(0)
    assert clip_indices(5, 4, 3, 1, random=True) == [[0, 3, 4, 4]]


def test_frame_step() -> None:
    assert frame_step(30.0, sampling_rate=4) == 4
    assert frame_step(30.0, 4, fps=4) == 7  # V-JEPA 2: ceil(30) // 4
    assert frame_step(29.97, 4, fps=4) == 7
    assert frame_step(25.0, 4, fps=5) == 5
    assert frame_step(10.0, 4, fps=30) == 1  # never below one frame
    assert frame_step(30.0, 4, clip_duration=2.0, num_frames=16) == 3
    with pytest.raises(ValueError):
        frame_step(30.0, 4, fps=4, clip_duration=2.0)


@pytest.mark.parametrize("decoder", DECODERS)
def test_dataset_returns_the_sampled_frames(vids: Dict[str, Path], decoder: str) -> None:
    ds = video_dataset([vids["a"], vids["short"]], random_clips=False, decoder=decoder, num_frames=4, sampling_rate=3)
    s = ds[0]
    assert indices_of(s["clip"]) == [25, 28, 31, 34]  # 60 frames, span 10: centred start (60 - 10) // 2
    assert s["label"] == 0 and s["skipped"] == 0
    assert indices_of(ds[1]["clip"]) == [0, 3, 4, 4]  # 5-frame video padded with its last frame


def test_target_fps_sets_the_step(vids: Dict[str, Path]) -> None:
    ds = video_dataset([vids["a"], vids["b"]], random_clips=False, num_frames=3, fps=10.0)
    a, b = indices_of(ds[0]["clip"]), indices_of(ds[1]["clip"])
    assert a[1] - a[0] == 3  # 30 fps video at 10 fps
    assert b[1] - b[0] == 2  # 25 fps video: ceil(25) // 10


def test_num_clips_gives_a_list(vids: Dict[str, Path]) -> None:
    ds = video_dataset([vids["long"]], random_clips=False, num_frames=4, sampling_rate=2, num_clips=3)
    clips = ds[0]["clip"]
    assert isinstance(clips, list) and len(clips) == 3
    assert [indices_of(c)[0] for c in clips] == [0, 96, 193]


def test_eval_views_are_flattened_clip_major(vids: Dict[str, Path], tmp_path: Path) -> None:
    lst = write_csv(tmp_path / "l.csv", [f"{vids['long']} 0"])
    cfg = DataConfig(datasets=[str(lst)], num_frames=4, crop_size=32, num_clips=2, num_views=3, decoder="pyav")
    clips = build_video_dataset(cfg, DataAugConfig(), train=False)[0]["clip"]
    assert len(clips) == 6 and all(c.shape == (3, 4, 32, 32) for c in clips)


# ------------------------------------------------------------------------------------------ sample lists
def test_csv_parsing(tmp_path: Path) -> None:
    lst = write_csv(tmp_path / "l.csv", ["/abs/x.mp4 3", "", "rel/y.mp4 1", "z.mp4"])
    assert read_csv_list(str(lst)) == [("/abs/x.mp4", 3), (str(tmp_path / "rel/y.mp4"), 1), (str(tmp_path / "z.mp4"), 0)]
    with pytest.raises(ValueError, match=":1:"):
        read_csv_list(str(write_csv(tmp_path / "bad.csv", ["/a b/x.mp4 3"])))
    with pytest.raises(ValueError, match="integer"):
        read_csv_list(str(write_csv(tmp_path / "bad2.csv", ["/x.mp4 cat"])))


def test_csv_and_folder_give_the_same_samples(vids: Dict[str, Path], tmp_path: Path) -> None:
    root = tmp_path / "tree"
    # class folders sort as bowling < cooking, files within them by name
    files = [("cooking", "2.mp4", vids["a"]), ("bowling", "b.avi", vids["b"]), ("bowling", "a.mp4", vids["long"])]
    for cls, name, src in files:
        (root / cls).mkdir(parents=True, exist_ok=True)
        (root / cls / name).symlink_to(src)
    samples, classes = read_folder(str(root), (".mp4", ".avi"))
    assert classes == ["bowling", "cooking"]
    assert [Path(p).name for p, _ in samples] == ["a.mp4", "b.avi", "2.mp4"] and [l for _, l in samples] == [0, 0, 1]
    lst = write_csv(tmp_path / "same.csv", [f"{p} {l}" for p, l in samples])
    make = lambda src: build_video_dataset(  # noqa: E731
        DataConfig(datasets=[str(src)], num_frames=4, crop_size=32, decoder="pyav"), DataAugConfig(), train=True
    )
    from_folder, from_csv = make(root), make(lst)
    assert from_folder.num_classes == from_csv.num_classes == 2 and from_folder.classes == classes
    for i in range(len(from_folder)):
        torch.manual_seed(100 + i)
        a = from_folder[i]
        torch.manual_seed(100 + i)
        b = from_csv[i]
        assert a["label"] == b["label"] and torch.equal(a["clip"], b["clip"])


def test_mixed_datasets_follow_weights(vids: Dict[str, Path], tmp_path: Path) -> None:
    a = write_csv(tmp_path / "a.csv", [f"{vids['a']} 0"] * 30)
    b = write_csv(tmp_path / "b.csv", [f"{vids['short']} 1"] * 10)
    cfg = DataConfig(datasets=[str(a), str(b)], datasets_weights=[1.0, 3.0], num_frames=2, crop_size=16,
                     decoder="pyav")
    ds = build_video_dataset(cfg, DataAugConfig(), train=True)
    assert len(ds) == 40 and ds.num_classes == 2
    labels = Counter()
    for i in range(len(ds)):
        torch.manual_seed(i)
        labels[ds[i]["label"]] += 1
    assert labels == {0: 10, 1: 30}  # weights 1:3, not sizes 3:1
    # Within a source the sample is drawn at random (from torch's RNG), so all of it gets used.
    torch.manual_seed(0)
    assert {ds.sample_id(i) for _ in range(40) for i in range(len(ds))} == set(range(40))
    unweighted = build_video_dataset(DataConfig(datasets=[str(a), str(b)], num_frames=2, crop_size=16,
                                                decoder="pyav"), DataAugConfig(), train=True)
    assert Counter(unweighted[i]["label"] for i in range(len(unweighted))) == {0: 30, 1: 10}


def test_images_become_clips(tmp_path: Path) -> None:
    root = tmp_path / "imgs"
    write_image(root / "cat" / "1.png")
    write_image(root / "cat" / "2.jpg", width=50)
    write_image(root / "dog" / "1.png", value=200)
    (root / "dog" / "broken.png").write_bytes(b"not an image")
    cfg = DataConfig(datasets=[str(root)], dataset_type="ImageDataset", num_frames=5, crop_size=24)
    ds = build_video_dataset(cfg, DataAugConfig(), train=True)
    assert len(ds) == 4 and ds.num_classes == 2
    for i in range(len(ds)):
        torch.manual_seed(i)
        s = ds[i]
        x = s["clip"]
        assert x.shape == (3, 5, 24, 24)
        for t in range(1, 5):
            assert torch.equal(x[:, t], x[:, 0])
    torch.manual_seed(0)
    assert ds[3]["skipped"] >= 1  # broken.png sorts last in dog/
    ev = build_video_dataset(cfg, DataAugConfig(), train=False)
    assert ev[2]["label"] == 1 and ev[2]["clip"].shape == (3, 5, 24, 24)
    # a CSV of image files, and a single image file, mixed
    lst = write_csv(tmp_path / "imgs.csv", [f"{root}/cat/1.png 4", f"{root}/dog/1.png 5"])
    cfg = DataConfig(datasets=[str(lst), str(root / "cat" / "2.jpg")], dataset_type="ImageDataset", num_frames=2,
                     crop_size=8, num_clips=2)
    mixed = build_video_dataset(cfg, DataAugConfig(), train=True)
    assert len(mixed) == 3 and mixed.num_classes == 6
    clips = mixed[2]["clip"]
    assert isinstance(clips, list) and [tuple(c.shape) for c in clips] == [(3, 2, 8, 8)] * 2


# ------------------------------------------------------------------------------------------ bad files
@pytest.mark.parametrize("decoder", DECODERS)
def test_bad_files_are_skipped_and_counted(
    vids: Dict[str, Path], bad: Dict[str, Path], tmp_path: Path, decoder: str, caplog: pytest.LogCaptureFixture
) -> None:
    good = [vids["a"], vids["b"]]
    lst = write_csv(tmp_path / "l.csv", [f"{good[0]} 0", f"{good[1]} 1"] + [f"{p} 7" for p in bad.values()])
    cfg = DataConfig(datasets=[str(lst)], num_frames=4, crop_size=16, decoder=decoder)
    ds = build_video_dataset(cfg, DataAugConfig(), train=True)
    with caplog.at_level(logging.WARNING, logger="data.datasets"):
        for epoch in range(2):
            for i in range(len(ds)):
                torch.manual_seed(1000 * epoch + i)
                s = ds[i]
                assert s["clip"].shape == (3, 4, 16, 16)
                assert s["label"] in (0, 1)  # always a good file's
                assert (s["skipped"] == 0) if i < 2 else (s["skipped"] >= 1)
    # one warning per broken file, not per draw
    warned = Counter(r.getMessage().split(":")[0] for r in caplog.records)
    assert warned == {f"skipping broken file {p}": 1 for p in bad.values()}
    # the same (seed, index) gives the same replacement
    torch.manual_seed(5)
    a = ds[4]
    torch.manual_seed(5)
    b = ds[4]
    assert a["skipped"] == b["skipped"] and torch.equal(a["clip"], b["clip"])


def test_consecutive_failure_cap_raises_with_paths(bad: Dict[str, Path], tmp_path: Path) -> None:
    lst = write_csv(tmp_path / "l.csv", [f"{p} 0" for p in bad.values()])
    cfg = DataConfig(datasets=[str(lst)], num_frames=4, crop_size=16, max_consecutive_failures=6, decoder="pyav")
    ds = build_video_dataset(cfg, DataAugConfig(), train=True)
    torch.manual_seed(0)
    with pytest.raises(RuntimeError, match="6 files in a row") as err:
        ds[0]
    assert str(bad["missing"]) in str(err.value) and "missing file" in str(err.value)


def test_duration_filters(vids: Dict[str, Path]) -> None:
    # a: 2 s, short: 0.17 s, long: 6.7 s
    ds = video_dataset([vids["a"], vids["short"], vids["long"]], min_duration=1.0, max_duration=5.0)
    for i in range(3):
        torch.manual_seed(i)
        s = ds[i]
        assert s["label"] == 0 and s["skipped"] == 0  # filtered files are not "broken"
    ds = video_dataset([vids["a"], vids["short"]], filter_short_videos=True, num_frames=4, sampling_rate=2)
    torch.manual_seed(0)
    assert ds[1]["label"] == 0
    only_short = video_dataset([vids["short"]], filter_short_videos=True, max_consecutive_failures=3)
    with pytest.raises(RuntimeError, match="shorter than one clip"):
        only_short[0]


def test_dataset_in_worker_processes(vids: Dict[str, Path], tmp_path: Path) -> None:
    lst = write_csv(tmp_path / "l.csv", [f"{vids['a']} 0", f"{vids['b']} 1", f"{tmp_path}/missing.mp4 2"] * 2)
    ds = build_video_dataset(DataConfig(datasets=[str(lst)], num_frames=4, crop_size=16), DataAugConfig(), True)
    loader = DataLoader(ds, batch_size=3, num_workers=2)
    batches = list(loader)
    assert [tuple(b["clip"].shape) for b in batches] == [(3, 3, 4, 16, 16)] * 2
    assert sum(int(b["skipped"].sum()) for b in batches) >= 2


def test_example_config_matches_the_schema() -> None:
    import yaml
    from omegaconf import OmegaConf

    raw = yaml.safe_load((Path(__file__).parents[1] / "configs/pretrain/csv_example.yaml").read_text())
    # structured configs reject unknown keys and wrong types
    data = OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(DataConfig), raw["data"]))
    aug = OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(DataAugConfig), raw["data_aug"]))
    assert data.datasets == ["/path/to/your.csv"] and aug.random_resize_scale == [0.3, 1.0]
