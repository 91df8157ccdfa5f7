"""Small test videos written with PyAV, whose frames say their own index.

The top half of frame `i` is grey (luma only, so chroma subsampling cannot blur it): its left half holds
`i % 16` and its right half `i // 16` as levels 16 apart, which survive lossy coding. `frame_index` reads
them back, so a test can check which frames a decoder returned (up to 256 frames). The bottom half is a
moving colour pattern, so that backends' colour conversions are compared too.
"""
from __future__ import annotations

from pathlib import Path
from typing import Dict, Optional

import av
import numpy as np
import torch

CODECS = ("libx264", "mpeg4")


def frame_image(i: int, width: int, height: int) -> np.ndarray:
    """The RGB image `[H, W, 3]` of frame `i`."""
    img = np.empty((height, width, 3), np.uint8)
    top = height // 2
    img[:top, : width // 2] = (i % 16) * 16 + 8
    img[:top, width // 2 :] = (i // 16) * 16 + 8
    y, x = np.mgrid[0 : height - top, 0:width]
    img[top:, :, 0] = (x * 4 + i * 3) % 256
    img[top:, :, 1] = (y * 8 + i * 5) % 256
    img[top:, :, 2] = ((x + y) * 3 + i * 7) % 256
    return img


def frame_index(frame: torch.Tensor) -> int:
    """Read back the index of a decoded frame `[H, W, C]` (uint8)."""
    h, w = frame.shape[0], frame.shape[1]
    # Average away from the boundaries, where the codec's blocks mix neighbouring regions.
    top = frame[: h // 2 - 8].float()
    lo = top[:, : w // 2 - 8].mean().item()
    hi = top[:, w // 2 + 8 :].mean().item()
    return int(round((hi - 8) / 16)) * 16 + int(round((lo - 8) / 16))


def write_video(
    path: Path,
    num_frames: int,
    fps: int = 30,
    width: int = 64,
    height: int = 48,
    codec: str = "libx264",
    gop: int = 10,
    bframes: Optional[int] = None,
) -> Path:
    """Write a video whose frame `i` is `frame_image(i)`; `gop` = keyframe interval (scene cuts off),
    `bframes` = consecutive B-frames (default: 2 for h264, 0 for mpeg4, the encoders' usual settings)."""
    options: Dict[str, str] = {"sc_threshold": "0" if codec == "libx264" else "1000000000"}
    if codec in ("libx264", "mpeg4"):
        options["bf"] = str(bframes if bframes is not None else (2 if codec == "libx264" else 0))
    if codec == "libx264":
        options.update({"g": str(gop), "keyint_min": str(gop), "preset": "ultrafast"})
    path.parent.mkdir(parents=True, exist_ok=True)
    with av.open(str(path), "w") as container:
        stream = container.add_stream(codec, rate=fps, options=options)
        cc = stream.codec_context
        cc.width, cc.height, cc.pix_fmt, cc.gop_size = width, height, "yuv420p", gop
        if codec == "mpeg4":
            cc.qscale = 2  # near-lossless: the index levels must survive
        for i in range(num_frames):
            frame = av.VideoFrame.from_ndarray(frame_image(i, width, height), format="rgb24")
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


def write_image(path: Path, width: int = 40, height: int = 30, value: Optional[int] = None) -> Path:
    """Write an RGB image (horizontal gradient, or constant `value`) with PIL."""
    from PIL import Image

    img = np.zeros((height, width, 3), np.uint8)
    img[:] = np.linspace(0, 255, width, dtype=np.uint8)[None, :, None] if value is None else value
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(img).save(path)
    return path


def truncate(src: Path, dst: Path, fraction: float) -> Path:
    """Copy the first `fraction` of `src`'s bytes to `dst` (a download cut short)."""
    data = src.read_bytes()
    dst.write_bytes(data[: int(len(data) * fraction)])
    return dst


def faststart(src: Path, dst: Path) -> Path:
    """Remux `src` into a "faststart" mp4 at `dst` (the index before the frames, as web video is)."""
    with av.open(str(src)) as i, av.open(str(dst), "w", options={"movflags": "faststart"}) as o:
        s = o.add_stream_from_template(i.streams.video[0])
        for p in i.demux(i.streams.video[0]):
            if p.dts is not None:
                p.stream = s
                o.mux(p)
    return dst


def corrupt(src: Path, dst: Path, start: float, stop: float) -> Path:
    """Copy `src` with the bytes between fractions `start` and `stop` of its size overwritten by noise.

    PyAV writes mp4 as [ftyp, mdat (frames), moov (index, last ~10% here)]: 0.05-0.85 spoils every frame
    and keeps the file openable.
    """
    data = bytearray(src.read_bytes())
    a, b = int(len(data) * start), int(len(data) * stop)
    rng = np.random.default_rng(0)
    data[a:b] = rng.integers(0, 256, size=b - a, dtype=np.uint8).tobytes()
    dst.write_bytes(bytes(data))
    return dst


def write_bad_files(d: Path, good: Path, truncate_at: float, corrupt_span: tuple) -> Dict[str, Path]:
    """The bad inputs a loader must survive, made in folder `d` from the good video `good`: a missing
    path, a zero-byte file, a text file named .mp4, `good` cut at `truncate_at` of its bytes (PyAV writes
    the mp4 index last, so a cut-short download has none), and `good` with `corrupt_span` overwritten."""
    (d / "empty.mp4").write_bytes(b"")
    (d / "text.mp4").write_text("not a video\n" * 50)
    return {
        "missing": d / "missing.mp4",
        "empty": d / "empty.mp4",
        "not_a_video": d / "text.mp4",
        "truncated": truncate(good, d / "truncated.mp4", truncate_at),
        "corrupt": corrupt(good, d / "corrupt.mp4", *corrupt_span),
    }
