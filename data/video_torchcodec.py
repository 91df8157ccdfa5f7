"""The torchcodec backend (PyTorch's FFmpeg-based decoder): optional, chosen only by name.

It needs the `torchcodec` wheel built for the installed torch (PyPI's Linux wheels are the CUDA build; a
CPU-only torch takes the CPU wheel from download.pytorch.org/whl/cpu) and the system's shared FFmpeg
libraries (4 to 9 for torchcodec 0.17): the wheel bundles no FFmpeg, imports without one, and fails when a
decoder is created. `problem()` says which part is missing, once per process.

Frame numbering and content match PyAV: in exact seek mode torchcodec scans the packets on open and
numbers frames by presentation timestamp, and its 8-bit frames are bit-identical to PyAV's (h264, hevc,
mpeg4, vp9, mjpeg, 4:2:0/4:4:4 and full-range, in mp4/avi/mkv/webm). 10-bit video converts to 8 bits
differently: mean |diff| ~1.5 levels (h264/hevc 10-bit; torchcodec slightly nearer the source). Known
exception: mpeg4 part 2 with B-frames in AVI (XviD/DivX): the last frame is counted but not
decodable, so a clip that reaches it raises DecodeError (PyAV decodes it). Approximate seek mode
(no scan) is not used: it counts 39 of the 40 frames of a vp9 webm.
"""
from __future__ import annotations

import functools
import math
import re
from typing import Optional, Sequence

import torch

from data.errors import UnsupportedOption
from data.video import DecodeError, VideoInfo, VideoReader, _check_file, _check_indices

INSTALL = ("pip install -e \".[torchcodec]\" (or pip install torchcodec; with a CPU-only torch add --index-url "
           "https://download.pytorch.org/whl/cpu) and the system's shared FFmpeg "
           "libraries, major version 4 to 9 (Debian/Ubuntu: apt-get install libavcodec-dev libavformat-dev "
           "libavutil-dev libswscale-dev libswresample-dev libavfilter-dev libavdevice-dev; or conda "
           "install ffmpeg)")

# "SingleStreamDecoder, /__w/torchcodec/.../SingleStreamDecoder.cpp:41, Could not open input file: ..."
_PREFIX = re.compile(r"^\w+, \S+:\d+, ")


@functools.lru_cache(maxsize=None)
def problem() -> Optional[str]:
    """None when torchcodec can decode video here, else why not (one line)."""
    try:
        import torchcodec
        import torchcodec.decoders  # noqa: F401
    except ImportError:
        return "torchcodec is not installed"
    except (RuntimeError, OSError) as e:  # versions before 0.3 load FFmpeg on import
        return f"torchcodec cannot load FFmpeg: {_first_line(e)}"
    # Since 0.3 the import succeeds without FFmpeg and leaves ffmpeg_major_version None.
    if getattr(torchcodec, "ffmpeg_major_version", 0) is None:
        return ("torchcodec is installed but cannot load its FFmpeg core: no shared FFmpeg libraries 4 to 9 "
                "found, or a torchcodec wheel built for another torch (CPU/CUDA build, version)")
    return None


def check_available() -> None:
    """Raise UnsupportedOption naming the install steps when torchcodec cannot decode here."""
    why = problem()
    if why is not None:
        raise UnsupportedOption(f"data.decoder=torchcodec but {why}; install it with {INSTALL}, "
                                "or use data.decoder=pyav")


def _first_line(e: BaseException) -> str:
    msg = str(e).strip().splitlines()
    return _PREFIX.sub("", msg[0]) if msg else type(e).__name__


class TorchCodecReader(VideoReader):
    """torchcodec `VideoDecoder` in exact seek mode (scans packets on open), frames returned `NHWC`.

    Args:
        path: video file.
        threads: FFmpeg decoder threads (0 = FFmpeg's choice).
        device: `cpu`, or `cuda[:i]` to decode with NVDEC (frames come back on that GPU; not wired into
            the DataLoader pipeline, whose workers and transforms are CPU-side; untested in this repo).
    """

    def __init__(self, path: str, threads: int = 0, device: str = "cpu"):
        check_available()
        from torchcodec.decoders import VideoDecoder

        if torch.device(device).type == "cuda" and not torch.cuda.is_available():
            raise UnsupportedOption(f"torchcodec device={device!r} but CUDA is not available here")
        self.path = path
        _check_file(path)
        try:
            self._dec = VideoDecoder(path, dimension_order="NHWC", num_ffmpeg_threads=threads, device=device,
                                     seek_mode="exact")
            meta = self._dec.metadata
        except (RuntimeError, ValueError) as e:  # torchcodec raises RuntimeError for unreadable files
            raise DecodeError(path, f"cannot open: {_first_line(e)}") from e
        # The header's rate (PyAV's average_rate); the scan's (frames / span) differs slightly for mkv/webm.
        fps = meta.average_fps_from_header or meta.average_fps or 0.0
        num_frames = meta.num_frames or 0
        if num_frames <= 0:
            raise DecodeError(path, "no frames")
        if not math.isfinite(fps) or fps <= 0:
            raise DecodeError(path, "no frame rate")
        if not meta.width or not meta.height:
            raise DecodeError(path, f"invalid frame size {meta.width}x{meta.height}")
        self.num_frames, self.fps = int(num_frames), float(fps)
        self._info = VideoInfo(self.num_frames, self.fps, self.num_frames / self.fps, int(meta.width),
                               int(meta.height))

    @property
    def info(self) -> VideoInfo:
        return self._info

    def get_frames(self, indices: Sequence[int]) -> torch.Tensor:
        idx = _check_indices(self.path, indices, self.num_frames)
        try:
            return self._dec.get_frames_at(idx).data  # [T, H, W, C] uint8
        except RuntimeError as e:  # a packet that does not decode, a frame the scan counted but cannot give
            raise DecodeError(self.path, f"cannot decode frames: {_first_line(e)}") from e

    def close(self) -> None:
        self._dec = None
