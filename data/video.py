"""Video decoding: metadata and frames at given indices, with decord or PyAV.

Both backends number frames the same way (0 .. num_frames-1 in presentation order) and return the same
uint8 RGB frames `[T, H, W, C]` for the same indices, so a dataset can switch backend without changing
what it samples. Every way a file can fail to give its frames raises `DecodeError`, and only that:
the datasets skip such files; anything else is a bug and propagates.
"""
from __future__ import annotations

import importlib.util
import logging
import math
import os
from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence

import av
import numpy as np
import torch

logger = logging.getLogger(__name__)

DECODERS = ("auto", "decord", "pyav")

# Without a measured GOP, only re-seek across gaps longer than the longest common GOP (x264 default
# keyint 250); a shorter jump may land on the keyframe already decoded and decode it all again.
_DEFAULT_SEEK_GAP = 300


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
    """`auto` -> `decord` when importable (faster seeks in our benchmark), else `pyav`."""
    if decoder not in DECODERS:
        raise ValueError(f"decoder must be one of {DECODERS}, got {decoder!r}")
    if decoder == "auto":
        return "decord" if decord_available() else "pyav"
    if decoder == "decord" and not decord_available():
        raise ImportError("decoder='decord' but decord is not installed (pip install decord, x86_64 only)")
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
    """One open video. Use as a context manager; `info` is read on open.

    Args:
        path: video file.
        threads: decoder threads (0 = the backend's choice, usually one per core).
    """

    info: VideoInfo
    path: str

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
        # decord has no width/height getter; its private handle does, but the first frame is as cheap
        # and public. Decoding it also rejects files whose header is fine but whose data is not.
        try:
            h, w, _ = self._vr[0].shape
        except decord.DECORDError as e:
            raise DecodeError(path, f"cannot decode frame 0: {_first_line(e)}") from e
        self.info = VideoInfo(num_frames, fps, num_frames / fps, int(w), int(h))

    def get_frames(self, indices: Sequence[int]) -> torch.Tensor:
        import decord

        idx = _check_indices(self.path, indices, self.info.num_frames)
        try:
            frames = self._vr.get_batch(idx).asnumpy()  # [T, H, W, C] uint8
        except decord.DECORDError as e:
            raise DecodeError(self.path, f"cannot decode frames: {_first_line(e)}") from e
        return torch.from_numpy(frames)

    def close(self) -> None:
        self._vr = None


class PyAVReader(VideoReader):
    """PyAV (FFmpeg): seek to the keyframe before the first wanted frame, decode forward.

    Frame `i` is the frame shown at `start + i / fps`; this is exact for constant-frame-rate files (all
    files we tested give the same frames as decord) and nearest-frame for variable-rate ones.
    """

    def __init__(self, path: str, threads: int = 0):
        self.path = path
        _check_file(path)
        try:
            self._container = av.open(path)
        except (av.FFmpegError, UnicodeDecodeError) as e:
            raise DecodeError(path, f"cannot open: {_first_line(e)}") from e
        try:
            self.info = self._read_info(threads)
        except BaseException:
            self.close()
            raise

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
        self._start = stream.start_time or 0
        num_frames = stream.frames
        if num_frames <= 0:
            # mkv/webm headers carry no frame count: count packets, as decord's index does.
            try:
                num_frames = sum(1 for p in self._container.demux(stream) if p.size > 0)
                self._container.seek(0, stream=stream)
            except av.FFmpegError as e:
                raise DecodeError(self.path, f"cannot read packets: {_first_line(e)}") from e
        if num_frames <= 0:
            raise DecodeError(self.path, "no frames")
        w, h = stream.codec_context.width, stream.codec_context.height
        if w <= 0 or h <= 0:
            raise DecodeError(self.path, f"invalid frame size {w}x{h}")
        return VideoInfo(num_frames, fps, num_frames / fps, w, h)

    def _index_of(self, pts: Optional[int]) -> int:
        return round(((pts or 0) - self._start) * self._tb * self.info.fps)

    def _seek(self, index: int) -> None:
        ts = self._start + int(index / self.info.fps / self._tb)
        # backward=True, any_frame=False: land on the keyframe at or before `ts`.
        self._container.seek(ts, stream=self._stream, backward=True, any_frame=False)

    def get_frames(self, indices: Sequence[int]) -> torch.Tensor:
        idx = _check_indices(self.path, indices, self.info.num_frames)
        try:
            got = self._decode_sorted(sorted(set(idx)))
        except av.FFmpegError as e:
            raise DecodeError(self.path, f"cannot decode frames: {_first_line(e)}") from e
        return torch.from_numpy(np.stack([got[i] for i in idx]))  # [T, H, W, C]

    def _decode_sorted(self, targets: List[int]) -> Dict[int, np.ndarray]:
        out: Dict[int, np.ndarray] = {}
        k = 0  # next target to fill
        gop: Optional[int] = None  # keyframe distance, once two keyframes were decoded
        last_key: Optional[int] = None
        rewound = False
        self._seek(targets[0])
        frames = self._container.decode(self._stream)
        current = -1  # index of the last decoded frame
        while k < len(targets):
            frame = next(frames, None)
            if frame is None:
                break
            i = self._index_of(frame.pts)
            if current < 0 and i > targets[k] and not rewound:
                # The seek overshot (an imprecise index): decode from the start instead.
                rewound = True
                self._container.seek(0, stream=self._stream, backward=True, any_frame=False)
                frames = self._container.decode(self._stream)
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
                    rgb = frame.to_ndarray(format="rgb24")  # [H, W, C]
                    hit = True
                out[targets[k]] = rgb
                k += 1
            if k < len(targets):
                gap = targets[k] - current
                if gap > (gop if gop is not None else _DEFAULT_SEEK_GAP):
                    # The keyframe before the next target lies ahead of us: skip the frames in between.
                    self._seek(targets[k])
                    frames = self._container.decode(self._stream)
                    current = -1
        if k < len(targets):
            raise DecodeError(
                self.path,
                f"frame {targets[k]} not decodable (stream ended after frame {current}, "
                f"header says {self.info.num_frames} frames): truncated or corrupt",
            )
        return out

    def close(self) -> None:
        container = getattr(self, "_container", None)
        if container is not None:
            container.close()
            self._container = None


def _first_line(e: BaseException) -> str:
    msg = str(e).strip().splitlines()
    return msg[0] if msg else type(e).__name__


def open_video(path: str, decoder: str = "auto", threads: int = 0) -> VideoReader:
    """Open `path` with `decoder` (`auto`, `decord`, `pyav`); raises DecodeError for a bad file."""
    if resolve_decoder(decoder) == "decord":
        return DecordReader(path, threads=threads)
    return PyAVReader(path, threads=threads)


def read_video_info(path: str, decoder: str = "auto") -> VideoInfo:
    """Number of frames, fps, duration (s), width, height of `path`."""
    with open_video(path, decoder) as reader:
        return reader.info


def decode_frames(path: str, indices: Sequence[int], decoder: str = "auto") -> torch.Tensor:
    """Frames of `path` at `indices` -> uint8 `[T, H, W, C]` RGB."""
    with open_video(path, decoder) as reader:
        return reader.get_frames(indices)
