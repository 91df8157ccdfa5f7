"""The optional torchcodec backend: same frames and metadata as PyAV, DecodeError for bad files, and a clear
error naming the install steps where torchcodec or the system's FFmpeg is missing (tested on every
machine, by hiding the module). tests/test_video.py runs the shared backend tests on it too."""
from __future__ import annotations

import sys
import types
from pathlib import Path
from typing import Dict, Iterator

import pytest
import torch
from torch.utils.data import DataLoader

from data import video_torchcodec
from data.errors import UnsupportedOption
from data.video import DecodeError, decode_frames, open_video, read_video_info, resolve_decoder
from tests.videos import faststart, frame_index, truncate, write_video

needs_torchcodec = pytest.mark.skipif(
    video_torchcodec.problem() is not None, reason=f"torchcodec unusable here: {video_torchcodec.problem()}")


@pytest.fixture
def fresh_problem() -> Iterator[None]:
    """problem() is cached per process: recompute it under the test's modules, and again afterwards."""
    video_torchcodec.problem.cache_clear()
    yield
    video_torchcodec.problem.cache_clear()


def test_missing_torchcodec_is_a_clear_error(monkeypatch: pytest.MonkeyPatch, fresh_problem: None) -> None:
    monkeypatch.setitem(sys.modules, "torchcodec", None)  # `import torchcodec` raises ImportError
    monkeypatch.setitem(sys.modules, "torchcodec.decoders", None)
    assert video_torchcodec.problem() == "torchcodec is not installed"
    with pytest.raises(UnsupportedOption) as err:
        resolve_decoder("torchcodec")
    msg = str(err.value)
    assert msg.startswith("data.decoder=torchcodec but torchcodec is not installed; install it with pip install")
    assert ".[torchcodec]" in msg and "FFmpeg" in msg and "data.decoder=pyav" in msg
    with pytest.raises(UnsupportedOption):  # before looking at the file
        open_video("/nonexistent.mp4", "torchcodec")
    assert resolve_decoder("auto") == "pyav"  # the default never needs it


def test_torchcodec_without_ffmpeg_is_a_clear_error(monkeypatch: pytest.MonkeyPatch, fresh_problem: None) -> None:
    # torchcodec >= 0.3 imports without FFmpeg and leaves ffmpeg_major_version None
    fake = types.ModuleType("torchcodec")
    fake.ffmpeg_major_version = None  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "torchcodec", fake)
    monkeypatch.setitem(sys.modules, "torchcodec.decoders", types.ModuleType("torchcodec.decoders"))
    with pytest.raises(UnsupportedOption, match="cannot load its FFmpeg core: no shared FFmpeg libraries 4 to 9 found.* apt-get install libavcodec-dev"):
        resolve_decoder("torchcodec")


def test_train_reports_missing_torchcodec_in_one_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture, fresh_problem: None
) -> None:
    import train
    from conftest import TINY_PRETRAIN

    monkeypatch.delenv("JEPA_DEBUG", raising=False)
    monkeypatch.setitem(sys.modules, "torchcodec", None)
    write_video(tmp_path / "v.mp4", 8)
    (tmp_path / "list.csv").write_text(f"{tmp_path / 'v.mp4'} 0\n")
    rc = train.main(["--config", str(TINY_PRETRAIN), f"data.datasets=[{tmp_path / 'list.csv'}]",
                     f"logging.folder={tmp_path / 'run'}", "data.decoder=torchcodec"])
    err = capsys.readouterr().err
    assert rc == 2 and err.count("\n") == 1
    assert err.startswith("error: data.decoder=torchcodec but torchcodec is not installed; install it with")


# ------------------------------------------------------------------------------ with torchcodec loaded
@pytest.fixture(scope="module")
def clips(tmp_path_factory: pytest.TempPathFactory) -> Dict[str, Path]:
    d = tmp_path_factory.mktemp("tc")
    return {
        "h264_mp4": write_video(d / "h264.mp4", 50, fps=30, codec="libx264", gop=10, bframes=2),
        "mpeg4_bf_mkv": write_video(d / "mpeg4_bf.mkv", 40, fps=25, codec="mpeg4", gop=12, bframes=2),
        "vp9_webm": write_video(d / "vp9.webm", 30, fps=30, codec="libvpx-vp9", gop=10),
    }


@needs_torchcodec
@pytest.mark.parametrize("name", ["h264_mp4", "mpeg4_bf_mkv", "vp9_webm"])
def test_frames_and_metadata_match_pyav(clips: Dict[str, Path], name: str) -> None:
    path = str(clips[name])
    assert read_video_info(path, "torchcodec") == read_video_info(path, "pyav")
    n = read_video_info(path, "pyav").num_frames
    idx = list(range(0, n, 3)) + [n - 1, 7, 0, 7]
    a = decode_frames(path, idx, "pyav")
    b = decode_frames(path, idx, "torchcodec")
    assert b.dtype == torch.uint8 and b.is_contiguous() and b.shape == a.shape
    # Measured: identical (max abs difference 0), the colour half included: both convert with swscale.
    assert torch.equal(a, b)


@needs_torchcodec
def test_truncated_stream_counts_the_frames_present(tmp_path: Path, clips: Dict[str, Path]) -> None:
    # A faststart mp4 cut short: PyAV trusts the header's 50 frames (and raises for the missing ones);
    # torchcodec's scan counts only the packets present, the last of them cut mid-way.
    fast = tmp_path / "fast.mp4"
    cut = truncate(faststart(clips["h264_mp4"], fast), tmp_path / "cut.mp4", 0.5)
    with open_video(str(cut), "torchcodec") as reader:
        assert 0 < reader.num_frames < 50
        assert frame_index(reader.get_frames([1])[0]) == 1
        with pytest.raises(DecodeError, match="cannot decode frames"):
            reader.get_frames(range(reader.num_frames))


@needs_torchcodec
def test_dataloader_workers_decode_with_torchcodec(clips: Dict[str, Path]) -> None:
    from data.datasets import VideoDataset

    ds = VideoDataset([[(str(clips["h264_mp4"]), 0)]], None, lambda x: x, num_frames=4, random_clips=False,
                      decoder="torchcodec", sampling_rate=3)
    (batch,) = list(DataLoader(ds, batch_size=1, num_workers=1))
    clip = batch["clip"][0]  # [T, H, W, C] uint8
    assert [frame_index(f) for f in clip] == [20, 23, 26, 29]  # 50 frames, span 10: centred start 20


@needs_torchcodec
@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the error on a machine without CUDA")
def test_cuda_device_without_cuda_is_a_clear_error(clips: Dict[str, Path]) -> None:
    with pytest.raises(UnsupportedOption, match="CUDA is not available"):
        video_torchcodec.TorchCodecReader(str(clips["h264_mp4"]), device="cuda")
