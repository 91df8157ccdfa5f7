"""Decoding backends: metadata, the frames returned for given indices, backend agreement, bad files, and
the `data.check` scanner."""
from __future__ import annotations

import sys
from pathlib import Path
from typing import Dict, List, Tuple

import pytest
import torch

from data import check
from data import video_torchcodec
from data.video import DecodeError, decord_available, decode_frames, open_video, read_video_info, resolve_decoder
from tests.videos import faststart, frame_index, truncate, write_bad_files, write_video

# torchcodec (optional) also needs the system's FFmpeg; tests/test_torchcodec.py covers its absence.
DECODERS = ["pyav"] + (["decord"] if decord_available() else []) + (
    ["torchcodec"] if video_torchcodec.problem() is None else [])

# name -> (codec, file name, frames, fps, gop, B-frames)
SPECS = {
    "h264_mp4": ("libx264", "h264.mp4", 100, 30, 10, 2),
    "mpeg4_avi": ("mpeg4", "mpeg4.avi", 90, 25, 12, 0),
    "h264_mkv": ("libx264", "h264.mkv", 60, 24, 10, 2),  # mkv headers carry no frame count
    "mpeg4_longgop": ("mpeg4", "mpeg4_longgop.mp4", 120, 30, 250, 0),  # one keyframe
    "vp9_webm": ("libvpx-vp9", "vp9.webm", 40, 30, 10, 0),  # SSv2's format
}
# mpeg4 part 2 with B-frames (XviD/DivX style): PyAV gets them right, decord 0.6 does not (see below).
BFRAME_SPECS = {
    "mpeg4_bf_avi": ("mpeg4", "mpeg4_bf.avi", 60, 25, 12, 2),  # AVI: no pts, first timestamp is 1
    "mpeg4_bf_mkv": ("mpeg4", "mpeg4_bf.mkv", 60, 25, 12, 2),
    "mpeg4_bf_mp4": ("mpeg4", "mpeg4_bf.mp4", 60, 25, 12, 2),
}
ALL_SPECS = {**SPECS, **BFRAME_SPECS}


@pytest.fixture(scope="module")
def videos(tmp_path_factory: pytest.TempPathFactory) -> Dict[str, Path]:
    d = tmp_path_factory.mktemp("videos")
    return {
        k: write_video(d / name, n, fps=fps, codec=codec, gop=gop, bframes=bf)
        for k, (codec, name, n, fps, gop, bf) in ALL_SPECS.items()
    }


@pytest.fixture(scope="module")
def bad_files(tmp_path_factory: pytest.TempPathFactory, videos: Dict[str, Path]) -> Dict[str, Path]:
    return write_bad_files(tmp_path_factory.mktemp("bad"), videos["h264_mp4"], truncate_at=0.6, corrupt_span=(0.5, 0.6))


@pytest.mark.parametrize("decoder", DECODERS)
@pytest.mark.parametrize("name", list(SPECS))
def test_info(videos: Dict[str, Path], name: str, decoder: str) -> None:
    _, _, n, fps, _, _ = SPECS[name]
    info = read_video_info(str(videos[name]), decoder)
    assert (info.num_frames, info.width, info.height) == (n, 64, 48)
    with open_video(str(videos[name]), decoder) as reader:  # the cheap attributes clip sampling uses
        assert (reader.num_frames, reader.fps) == (info.num_frames, info.fps)
    assert info.fps == pytest.approx(fps)
    assert info.duration == pytest.approx(n / fps)


def decoder_cases() -> List[Tuple[str, str, int]]:
    """(video, decoder, threads): PyAV and torchcodec single- and multi-threaded, decord; known misses xfail."""
    cases = []
    for name in ALL_SPECS:
        cases += [pytest.param(name, "pyav", 1), pytest.param(name, "pyav", 0)]
        if decord_available():
            marks = [pytest.mark.xfail(strict=True, reason="decord 0.6 misnumbers mpeg4 B-frames")] if (
                name in BFRAME_SPECS) else []
            cases.append(pytest.param(name, "decord", 0, marks=marks))
        if video_torchcodec.problem() is None:
            marks = [pytest.mark.xfail(strict=True, raises=DecodeError, reason="torchcodec 0.17 cannot decode "
                                       "the last frame of AVI mpeg4 with B-frames")] if name == "mpeg4_bf_avi" else []
            cases += [pytest.param(name, "torchcodec", 1, marks=marks), pytest.param(name, "torchcodec", 0, marks=marks)]
    return cases


@pytest.mark.parametrize("name,decoder,threads", decoder_cases())
def test_decoded_frames_are_the_asked_indices(videos: Dict[str, Path], name: str, decoder: str, threads: int) -> None:
    n = ALL_SPECS[name][2]
    g = torch.Generator().manual_seed(0)
    with open_video(str(videos[name]), decoder, threads=threads) as reader:
        # unsorted, repeated, first/last, and a far jump (re-seek past a GOP) in one call
        idx = torch.randint(0, n, (10,), generator=g).tolist() + [0, n - 1, 3, 3, n - 2, 1]
        frames = reader.get_frames(idx)
        assert frames.dtype == torch.uint8 and frames.shape == (len(idx), 48, 64, 3)
        assert [frame_index(f) for f in frames] == idx
        # a second call on the same reader (seeks backwards), and the tail (decoder flush at the end)
        assert [frame_index(f) for f in reader.get_frames([1, 2])] == [1, 2]
        tail = list(range(n - 12, n))
        assert [frame_index(f) for f in reader.get_frames(tail)] == tail


@pytest.mark.skipif(not decord_available(), reason="decord not installed")
@pytest.mark.parametrize("name", list(SPECS))
def test_backends_return_identical_frames(videos: Dict[str, Path], name: str) -> None:
    n = SPECS[name][2]
    idx = list(range(0, n, 3)) + [n - 1, 7, 0]
    a = decode_frames(str(videos[name]), idx, "pyav")
    b = decode_frames(str(videos[name]), idx, "decord")
    # Measured: identical (max abs difference 0) for h264, mpeg4 and vp9 in mp4/avi/mkv/webm, including
    # the colour half of the frames, so we hold the backends to exact equality.
    assert torch.equal(a, b)


def test_resolve_decoder() -> None:
    assert resolve_decoder("auto") == "pyav"
    assert resolve_decoder("pyav") == "pyav"
    with pytest.raises(ValueError, match="decoder must be one of"):
        resolve_decoder("ffmpeg")


def test_out_of_range_index_is_a_caller_error(videos: Dict[str, Path]) -> None:
    with open_video(str(videos["h264_mp4"]), "pyav") as reader:
        with pytest.raises(IndexError):
            reader.get_frames([100])


@pytest.mark.parametrize("decoder", DECODERS)
@pytest.mark.parametrize("case", ["missing", "empty", "not_a_video", "truncated", "corrupt"])
def test_bad_files_raise_decode_error(bad_files: Dict[str, Path], case: str, decoder: str) -> None:
    with pytest.raises(DecodeError) as err:
        with open_video(str(bad_files[case]), decoder) as reader:
            reader.get_frames(range(reader.info.num_frames))
    assert err.value.path == str(bad_files[case]) and err.value.reason


def test_truncated_stream_with_intact_header(tmp_path: Path, videos: Dict[str, Path]) -> None:
    # A "faststart" mp4 has its index first: cut short, it opens but the later frames are gone.
    src = videos["h264_mp4"]
    fast = tmp_path / "fast.mp4"
    cut = truncate(faststart(src, fast), tmp_path / "cut.mp4", 0.5)
    with open_video(str(cut), "pyav") as reader:
        assert reader.info.num_frames == 100  # the header still says so
        assert frame_index(reader.get_frames([1])[0]) == 1
        with pytest.raises(DecodeError, match="not decodable"):
            reader.get_frames([95])


def test_check_finds_broken_files_and_writes_clean_csv(
    tmp_path: Path, videos: Dict[str, Path], bad_files: Dict[str, Path], capsys: pytest.CaptureFixture
) -> None:
    good = [videos["h264_mp4"], videos["mpeg4_avi"], videos["h264_mkv"]]
    bad = [bad_files[k] for k in ("missing", "empty", "not_a_video", "truncated")]
    lines = [f"{p} {i}" for i, p in enumerate(good)] + [f"{p} 9" for p in bad]
    lst = tmp_path / "list.csv"
    lst.write_text("\n".join(lines) + "\n")
    out = tmp_path / "clean.csv"
    assert check.main([str(lst), "--workers", "2", "--out", str(out), "--quiet", "--decoder", "pyav"]) == 0
    printed = capsys.readouterr().out
    for p in bad:
        assert f"BROKEN {p}" in printed
    for p in good:
        assert f"BROKEN {p}" not in printed
    assert "files: 7  ok: 3  broken: 4" in printed
    assert "missing file x1" in printed and "64x48 x3" in printed
    assert out.read_text().splitlines() == [f"{p} {i}" for i, p in enumerate(good)]


def test_check_duration_filter(videos: Dict[str, Path]) -> None:
    samples = [(str(videos["h264_mp4"]), 0), (str(videos["h264_mkv"]), 1)]  # 3.33 s and 2.5 s
    reports = check.check_samples(samples, workers=1, decoder="pyav", full=True, min_duration=3.0, progress=False)
    assert reports[0].filtered is None and reports[0].error is None
    assert reports[1].filtered is not None and "shorter" in reports[1].filtered


@pytest.mark.skipif(sys.platform != "linux", reason="counts context switches with getrusage (Linux)")
def test_one_thread_pyav_reader_starts_no_threads(videos: Dict[str, Path]) -> None:
    # A worker's reader asked for one thread must not start any: PyAV >= 17's RGB conversion (swscale)
    # otherwise uses one thread per core and wakes them for each frame (measured: ~170 voluntary
    # context switches for these 16 frames, 0 with threads=1).
    import resource

    def switches() -> int:
        return resource.getrusage(resource.RUSAGE_SELF).ru_nvcsw

    with open_video(str(videos["h264_mp4"]), "pyav", threads=1) as reader:
        reader.get_frames([0])  # warm: first packets read from disk
        before = switches()
        reader.get_frames(range(0, 64, 4))
        assert switches() - before < 20
