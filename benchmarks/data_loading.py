"""Clip loading speed per decoding backend, on generated videos.

    python benchmarks/data_loading.py [--clips 48] [--videos 3] [--workers 2] [--decoders pyav torchcodec]

Writes 256x256, 30 fps, 10 s videos (h264 and mpeg4, GOP 30 and 250) with PyAV into a temp folder, then
measures for each backend x codec x GOP:
  - bare decode: open + decode one 16-frame clip at step 4 (random position), CPU ms (median over
    positions of the best of 3 runs), one decoder thread; for PyAV also with every frame decoded (no
    skipping of unwanted non-reference frames);
  - clips/s through `VideoDataset` with the train transform (random resized crop to 224, flip,
    normalise) and a DataLoader: num_workers=0 per CPU second (one core: torch and decoder
    single-threaded), and with `--workers` workers (one decoder thread each, the dataset's default in
    workers) in wall-clock time, which other processes on the machine slow down.
Prints a markdown table. Numbers depend on the content's complexity; the video is a moving random
texture with a moving square, a few hundred kbit/s, about what 256 px web video carries.
"""
from __future__ import annotations

import argparse
import logging
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Dict, List, Sequence, Tuple

import av
import numpy as np
import torch
from torch.utils.data import DataLoader, RandomSampler

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a script from anywhere

from data.config import DataAugConfig  # noqa: E402
from data.datasets import VideoDataset  # noqa: E402
from data.transforms import make_train_transform  # noqa: E402
from data import video, video_torchcodec  # noqa: E402
from data.video import decord_available, open_video  # noqa: E402

logger = logging.getLogger(__name__)

SIZE, FPS, SECONDS = 256, 30, 10
NUM_FRAMES, STEP, CROP = 16, 4, 224
CODECS = {"h264": "libx264", "mpeg4": "mpeg4"}
GOPS = (30, 250)


def write_benchmark_video(path: Path, codec: str, gop: int, seed: int) -> None:
    """Moving 8x8-block random texture plus a moving red square; fixed GOP (scene cuts off)."""
    options = {"g": str(gop), "keyint_min": str(gop), "sc_threshold": "0"} if codec == "libx264" else {
        "g": str(gop), "sc_threshold": "1000000000"}
    rng = np.random.default_rng(seed)
    tex = rng.integers(0, 256, (SIZE // 8, SIZE // 8, 3), dtype=np.uint8).repeat(8, 0).repeat(8, 1)
    with av.open(str(path), "w") as container:
        stream = container.add_stream(codec, rate=FPS, options=options)
        cc = stream.codec_context
        cc.width, cc.height, cc.pix_fmt, cc.gop_size = SIZE, SIZE, "yuv420p", gop
        if codec == "mpeg4":
            cc.bit_rate = 1_000_000  # its default (200 kbit/s) blurs the texture to mush
        for i in range(SECONDS * FPS):
            img = np.roll(tex, (i, 2 * i), axis=(0, 1)).copy()  # [H, W, 3]
            cx, cy = int(SIZE / 2 + SIZE / 3 * np.cos(i / 20)), int(SIZE / 2 + SIZE / 3 * np.sin(i / 15))
            img[max(0, cy - 20) : cy + 20, max(0, cx - 20) : cx + 20] = (255, 0, 0)
            for packet in stream.encode(av.VideoFrame.from_ndarray(img, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)


def bare_decode_ms(paths: Sequence[Path], decoder: str, clips: int, skip_nonref: bool = True,
                   repeats: int = 3) -> float:
    """CPU ms (this process, all its threads) per clip: median over clip positions of the best of
    `repeats` runs. CPU time, unlike wall time, hardly moves when other processes share the cores."""
    video.SKIP_NONREF_FRAMES = skip_nonref
    g = torch.Generator().manual_seed(0)
    span = (NUM_FRAMES - 1) * STEP + 1
    times = []
    for k in range(clips):
        start = int(torch.randint(0, SECONDS * FPS - span + 1, (1,), generator=g))
        best = float("inf")
        for _ in range(repeats):
            t0 = time.process_time()
            with open_video(str(paths[k % len(paths)]), decoder, threads=1) as reader:
                reader.get_frames(range(start, start + span, STEP))
            best = min(best, time.process_time() - t0)
        times.append(best)
    video.SKIP_NONREF_FRAMES = True
    return 1000 * statistics.median(times)


def loader_clips_per_s(paths: Sequence[Path], decoder: str, clips: int, workers: int, threads: int) -> float:
    ds = VideoDataset(
        [[(str(p), 0) for p in paths]], None, make_train_transform(DataAugConfig(), CROP), NUM_FRAMES,
        decoder=decoder, sampling_rate=STEP, decoder_threads=threads,
    )
    batch = 4
    sampler = RandomSampler(ds, replacement=True, num_samples=clips + 2 * batch * max(workers, 1),
                            generator=torch.Generator().manual_seed(0))
    loader = DataLoader(ds, batch_size=batch, sampler=sampler, num_workers=workers)
    it = iter(loader)
    for _ in range(max(workers, 1)):  # warm-up: worker start and first batches
        next(it)
    # In-process loading is timed in CPU seconds (robust to other processes' load); workers in wall time.
    clock = time.process_time if workers == 0 else time.perf_counter
    n, t0 = 0, clock()
    for b in it:
        n += b["clip"].shape[0]
        if n >= clips:
            break
    return n / (clock() - t0)


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clips", type=int, default=48, help="clips timed per measurement")
    parser.add_argument("--videos", type=int, default=3, help="videos per codec x GOP")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--decoders", nargs="+", default=None, choices=["decord", "pyav", "torchcodec"],
                        help="backends to measure (default: every one installed)")
    args = parser.parse_args(argv)

    decoders = (["decord"] if decord_available() else []) + ["pyav"] + (
        ["torchcodec"] if video_torchcodec.problem() is None else [])
    if args.decoders is not None:
        for d in args.decoders:
            video.resolve_decoder(d)  # a backend that is not installed: its install message
        decoders = args.decoders
    rows: List[Tuple[str, ...]] = []
    with tempfile.TemporaryDirectory() as tmp:
        files: Dict[Tuple[str, int], List[Path]] = {}
        t0 = time.perf_counter()
        for name, codec in CODECS.items():
            for gop in GOPS:
                files[name, gop] = []
                for v in range(args.videos):
                    p = Path(tmp) / f"{name}_gop{gop}_{v}.mp4"
                    write_benchmark_video(p, codec, gop, seed=v)
                    files[name, gop].append(p)
        print(f"wrote {sum(len(v) for v in files.values())} videos in {time.perf_counter() - t0:.1f} s; load average "
              f"{os.getloadavg()[0]:.1f} on {os.cpu_count()} cores (other processes skew the numbers)", flush=True)
        torch.set_num_threads(1)  # "one core" for the in-process measurements
        for decoder in decoders:
            for (name, gop), paths in files.items():
                kbps = 8 * statistics.mean(p.stat().st_size for p in paths) / SECONDS / 1000
                ms = bare_decode_ms(paths, decoder, args.clips)
                ms_all = f"{bare_decode_ms(paths, decoder, args.clips, skip_nonref=False):.1f}" if decoder == "pyav" else "-"
                one = loader_clips_per_s(paths, decoder, args.clips, workers=0, threads=1)
                many = loader_clips_per_s(paths, decoder, args.clips, workers=args.workers, threads=0)
                rows.append((decoder, name, str(gop), f"{kbps:.0f}", f"{ms:.1f}", ms_all, f"{one:.1f}", f"{many:.1f}"))
                print(" | ".join(rows[-1]), flush=True)
    w = args.workers
    print(f"\nload average at the end (1/5/15 min): {' '.join(f'{x:.1f}' for x in os.getloadavg())}, "
          f"{os.cpu_count()} cores, torch {torch.__version__}, PyAV {av.__version__}")
    header = ("backend", "codec", "GOP", "kbit/s", "bare decode, CPU ms/clip", "same, every frame decoded",
              "clips/s per core (0 workers, CPU time)", f"clips/s, {w} workers (wall)")
    print()
    print("| " + " | ".join(header) + " |")
    print("|" + "|".join("---" for _ in header) + "|")
    for r in rows:
        print("| " + " | ".join(r) + " |")


if __name__ == "__main__":
    main()
