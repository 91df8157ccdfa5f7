"""Video decoding: metadata and frames at given indices, with PyAV, decord or torchcodec (optional, see
data/video_torchcodec.py: bit-identical to PyAV in our tests).

Both backends number frames the same way (0 .. num_frames-1 in presentation order) and return the same
uint8 RGB frames `[T, H, W, C]` for the same indices (bit-identical in our tests: h264, hevc, mpeg4,
vp9, mjpeg, 8-bit 4:2:0/4:4:4 and full-range, in mp4/avi/mkv/webm; 10-bit video converts to 8 bits
differently, mean |diff| ~2 levels), so a dataset can switch backend without changing what it samples.
Known exceptions:
decord 0.6 returns wrong frames for mpeg4 part 2 with B-frames (XviD/DivX style; PyAV is right), and
h264 with B-frames inside AVI (no timestamps to reorder by) is misnumbered by both.

Every way a file can fail to give its frames raises `DecodeError`, and only that: the datasets skip such
files; anything else is a bug and propagates.
"""
from __future__ import annotations

import importlib.util
import logging
import math
import os
import re
from dataclasses import dataclass
from typing import Dict, Iterator, List, Optional, Sequence, Set

import av
import numpy as np
import torch

from data.errors import UnsupportedOption

logger = logging.getLogger(__name__)

DECODERS = ("auto", "decord", "pyav", "torchcodec")

# Without a measured GOP, only re-seek across gaps longer than the longest common GOP (x264 default
# keyint 250); a shorter jump may land on the keyframe already decoded and decode it all again.
_DEFAULT_SEEK_GAP = 300
# PyAV skips decoding unwanted non-reference frames (see PyAVReader._frames); False decodes every frame
# (for benchmarks/data_loading.py's comparison).
SKIP_NONREF_FRAMES = True
# Packets read on open to find the first timestamp: more than any B-frame reordering delay.
_HEAD_PACKETS = 32
# PyAV >= 17 converts to RGB with swscale threads, one per core unless told: a reader asked for one
# thread (DataLoader workers) would still convert with one thread per core (2.8x the CPU, 128 px frames).
_REFORMAT_HAS_THREADS = int(av.__version__.split(".")[0]) >= 17


class DecodeError(Exception):
    """A file that cannot give the frames asked of it: missing, empty, not a video (or image), truncated,
    corrupt. `reason` is a short human-readable cause."""

    def __init__(self, path: str, reason: str):
        super().__init__(f"{path}: {reason}")
        self.path = path
        self.reason = reason


@dataclass(frozen=True)
class VideoInfo:
    """Stream metadata. `duration` is num_frames / fps (the span clip sampling works with)."""

    num_frames: int
    fps: float
    duration: float
    width: int
    height: int


def decord_available() -> bool:
    return importlib.util.find_spec("decord") is not None


def resolve_decoder(decoder: str) -> str:
    """`auto` -> `pyav`. decord (the reference backend) stays available by name, but decord 0.6 returns
    wrong frames for mpeg4 part 2 files with B-frames (module docstring) and benchmarks/data_loading.py
    finds PyAV ~1.3x faster per clip here, so correctness and speed both point to PyAV by default."""
    if decoder not in DECODERS:
        raise ValueError(f"decoder must be one of {DECODERS}, got {decoder!r}")
    if decoder == "auto":
        return "pyav"
    if decoder == "decord" and not decord_available():
        raise UnsupportedOption("data.decoder=decord but decord is not installed on this machine (pip install decord, "
                                "x86_64 only); use data.decoder=pyav")
    if decoder == "torchcodec":
        from data import video_torchcodec

        video_torchcodec.check_available()
    return decoder


def _check_file(path: str) -> None:
    # Cheap checks first: they give a clearer reason than the decoder's own message.
    if not os.path.isfile(path):
        raise DecodeError(path, "missing file")
    if os.path.getsize(path) == 0:
        raise DecodeError(path, "empty file (0 bytes)")


def _check_indices(path: str, indices: Sequence[int], num_frames: int) -> List[int]:
    idx = [int(i) for i in indices]
    if not idx:
        raise ValueError("no frame indices given")
    bad = [i for i in idx if i < 0 or i >= num_frames]
    if bad:
        # The caller computed indices from this reader's num_frames, so this is a caller bug.
        raise IndexError(f"{path}: frame indices {bad[:5]} outside [0, {num_frames})")
    return idx


class VideoReader:
    """One open video. Use as a context manager. `num_frames` and `fps` are read on open; `info` may
    cost a frame decode (decord has no frame-size getter), so clip sampling uses the two attributes.

    Args:
        path: video file.
        threads: decoder threads (0 = the backend's choice, usually one per core).
    """

    path: str
    num_frames: int
    fps: float

    @property
    def info(self) -> VideoInfo:
        raise NotImplementedError

    def get_frames(self, indices: Sequence[int]) -> torch.Tensor:
        """Frames at `indices` (any order, repeats allowed) -> uint8 `[T, H, W, C]` RGB."""
        raise NotImplementedError

    def close(self) -> None:
        pass

    def __enter__(self) -> "VideoReader":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class DecordReader(VideoReader):
    """decord `VideoReader`: builds a frame index on open, then `get_batch` seeks per keyframe."""

    def __init__(self, path: str, threads: int = 0):
        import decord  # optional dependency (no aarch64 wheels)

        self.path = path
        _check_file(path)
        try:
            self._vr = decord.VideoReader(path, num_threads=threads)
            num_frames = len(self._vr)
            fps = float(self._vr.get_avg_fps())
        except (decord.DECORDError, RuntimeError) as e:  # decord raises RuntimeError for non-videos
            raise DecodeError(path, f"cannot open: {_first_line(e)}") from e
        if num_frames <= 0:
            raise DecodeError(path, "no frames")
        if not math.isfinite(fps) or fps <= 0:
            raise DecodeError(path, f"invalid fps {fps}")
        self.num_frames, self.fps = num_frames, fps
        self._info: Optional[VideoInfo] = None

    @property
    def info(self) -> VideoInfo:
        if self._info is None:
            h, w, _ = self.get_frames([0]).shape[1:]  # decord exposes no frame size but through a frame
            self._info = VideoInfo(self.num_frames, self.fps, self.num_frames / self.fps, int(w), int(h))
        return self._info

    def get_frames(self, indices: Sequence[int]) -> torch.Tensor:
        import decord

        idx = _check_indices(self.path, indices, self.num_frames)
        try:
            frames = self._vr.get_batch(idx).asnumpy()  # [T, H, W, C] uint8
        except decord.DECORDError as e:
            raise DecodeError(self.path, f"cannot decode frames: {_first_line(e)}") from e
        return torch.from_numpy(frames)

    def close(self) -> None:
        self._vr = None


class PyAVReader(VideoReader):
    """PyAV (FFmpeg): seek to the keyframe before the first wanted frame, decode forward.

    Frame `i` is the frame shown at `start + i / fps`, `start` being the first packet's timestamp; this
    is exact for constant-frame-rate files and the nearest following frame for variable-rate ones.
    """

    def __init__(self, path: str, threads: int = 0):
        self.path = path
        _check_file(path)
        try:
            self._container = av.open(path)
        except (av.FFmpegError, UnicodeDecodeError) as e:
            raise DecodeError(path, f"cannot open: {_first_line(e)}") from e
        try:
            self._reformat = {"threads": threads} if _REFORMAT_HAS_THREADS else {}
            self._info = self._read_info(threads)
        except BaseException:
            self.close()
            raise
        self.num_frames, self.fps = self._info.num_frames, self._info.fps

    @property
    def info(self) -> VideoInfo:
        return self._info

    def _read_info(self, threads: int) -> VideoInfo:
        if not self._container.streams.video:
            raise DecodeError(self.path, "no video stream")
        stream = self._container.streams.video[0]
        # Frame + slice threads: the decode loop below is FFmpeg-bound, Python only converts wanted frames.
        stream.thread_type = "AUTO"
        stream.thread_count = threads
        self._stream = stream
        rate = stream.average_rate or stream.guessed_rate
        fps = float(rate) if rate else 0.0
        if not math.isfinite(fps) or fps <= 0:
            raise DecodeError(self.path, "no frame rate")
        self._tb = float(stream.time_base)
        # Frame 0 is the earliest timestamp of the first packets, not the stream's start_time: AVI with
        # B-frames starts at 1, mp4 edit lists shift it. Headers without a frame count (mkv, webm) are
        # read to the end, counting packets as decord's index does.
        num_frames = stream.frames
        pts: List[int] = []
        try:
            for packet in self._container.demux(stream):
                if packet.size > 0:
                    pts.append(packet.pts if packet.pts is not None else packet.dts or 0)
                if num_frames > 0 and len(pts) >= _HEAD_PACKETS:
                    break
            self._container.seek(0, stream=stream, backward=True, any_frame=False)
        except av.FFmpegError as e:
            raise DecodeError(self.path, f"cannot read packets: {_first_line(e)}") from e
        if num_frames <= 0:
            num_frames = len(pts)
        self._start = min(pts[:_HEAD_PACKETS]) if pts else (stream.start_time or 0)
        if num_frames <= 0:
            raise DecodeError(self.path, "no frames")
        w, h = stream.codec_context.width, stream.codec_context.height
        if w <= 0 or h <= 0:
            raise DecodeError(self.path, f"invalid frame size {w}x{h}")
        return VideoInfo(num_frames, fps, num_frames / fps, w, h)

    def _index_of(self, pts: int) -> int:
        return round((pts - self._start) * self._tb * self.fps)

    def _seek(self, index: int) -> None:
        ts = self._start + round(index / self.fps / self._tb)
        # backward=True, any_frame=False: land on the keyframe at or before `ts`.
        self._container.seek(ts, stream=self._stream, backward=True, any_frame=False)

    def get_frames(self, indices: Sequence[int]) -> torch.Tensor:
        idx = _check_indices(self.path, indices, self.num_frames)
        try:
            got = self._decode_sorted(sorted(set(idx)))
        except av.FFmpegError as e:
            raise DecodeError(self.path, f"cannot decode frames: {_first_line(e)}") from e
        return torch.from_numpy(np.stack([got[i] for i in idx]))  # [T, H, W, C]

    def _frames(self, wanted: Set[int]) -> Iterator[av.VideoFrame]:
        """Decoded frames from the current position on, not decoding the frames nobody needs.

        A non-reference frame (most B-frames) that is not wanted is skipped (AVDISCARD_NONREF, set per
        packet: frame threads pick it up when the packet is submitted): nothing depends on it, so the
        other frames decode identically, and h264 clips decode ~1.3-1.5x faster.
        """
        cc = self._stream.codec_context
        for packet in self._container.demux(self._stream):
            skip = (
                SKIP_NONREF_FRAMES
                and packet.pts is not None
                and not packet.is_keyframe
                and self._index_of(packet.pts) not in wanted
            )
            cc.skip_frame = "NONREF" if skip else "DEFAULT"
            yield from packet.decode()  # the last (empty) packet flushes the decoder

    def _decode_sorted(self, targets: List[int]) -> Dict[int, np.ndarray]:
        out: Dict[int, np.ndarray] = {}
        wanted = set(targets)
        k = 0  # next target to fill
        gop: Optional[int] = None  # keyframe distance, once two keyframes were decoded
        last_key: Optional[int] = None
        rewound = False
        self._seek(targets[0])
        seeked_to = targets[0]
        frames = self._frames(wanted)
        current = -1  # index of the last decoded frame
        while k < len(targets):
            frame = next(frames, None)
            if frame is None:
                break
            # No timestamp (raw elementary streams): count from the last frame.
            i = self._index_of(frame.pts) if frame.pts is not None else current + 1
            if current < 0 and i > targets[k] and not rewound:
                # The seek overshot (an imprecise index): decode from the start instead.
                rewound = True
                self._container.seek(0, stream=self._stream, backward=True, any_frame=False)
                frames = self._frames(wanted)
                continue
            if frame.key_frame:
                if last_key is not None and i > last_key:
                    gop = i - last_key
                last_key = i
            current = i
            # A frame whose timestamp jumps past a target (variable frame rate) fills it: nearest after.
            hit = False
            while k < len(targets) and targets[k] <= i:
                if not hit:
                    rgb = frame.to_ndarray(format="rgb24", **self._reformat)  # [H, W, C]
                    hit = True
                out[targets[k]] = rgb
                k += 1
            if k < len(targets) and targets[k] != seeked_to:
                if targets[k] - current > (gop if gop is not None else _DEFAULT_SEEK_GAP):
                    # The keyframe before the next target lies ahead of us: skip the frames in between.
                    self._seek(targets[k])
                    seeked_to = targets[k]
                    frames = self._frames(wanted)
                    current = -1
        self._stream.codec_context.skip_frame = "DEFAULT"
        if k < len(targets):
            raise DecodeError(
                self.path,
                f"frame {targets[k]} not decodable (stream ended after frame {current}, "
                f"header says {self.num_frames} frames): truncated or corrupt",
            )
        return out

    def close(self) -> None:
        container = getattr(self, "_container", None)
        if container is not None:
            container.close()
            self._container = None


_DECORD_PREFIX = re.compile(r"\[\d\d:\d\d:\d\d\] \S+:\d+: ")  # "[13:12:00] /src/video/x.cc:218: "


def _first_line(e: BaseException) -> str:
    msg = _DECORD_PREFIX.sub("", str(e)).strip().splitlines()
    return msg[0] if msg else type(e).__name__


def open_video(path: str, decoder: str = "auto", threads: int = 0) -> VideoReader:
    """Open `path` with `decoder` (`auto`, `decord`, `pyav`, `torchcodec`); raises DecodeError for a bad file."""
    decoder = resolve_decoder(decoder)
    if decoder == "decord":
        return DecordReader(path, threads=threads)
    if decoder == "torchcodec":
        from data.video_torchcodec import TorchCodecReader  # optional dependency

        return TorchCodecReader(path, threads=threads)
    return PyAVReader(path, threads=threads)


def read_video_info(path: str, decoder: str = "auto") -> VideoInfo:
    """Number of frames, fps, duration (s), width, height of `path`."""
    with open_video(path, decoder) as reader:
        return reader.info


def decode_frames(path: str, indices: Sequence[int], decoder: str = "auto") -> torch.Tensor:
    """Frames of `path` at `indices` -> uint8 `[T, H, W, C]` RGB."""
    with open_video(path, decoder) as reader:
        return reader.get_frames(indices)
