"""Scan a video list for broken files before training, in parallel.

    python -m data.check LIST.csv [--workers N] [--out clean.csv] [--decoder auto|decord|pyav|torchcodec] [--full]
        [--min-duration S] [--max-duration S]
        [--config PRETRAIN_OR_PROBE.yaml | --frames N [--sampling-rate K | --fps F | --clip-duration S]]

LIST is a V-JEPA CSV (`path label`) or a folder tree. Each file is opened and its first, middle and last
frames decoded (`--full`: every frame); the last frame is what catches truncated downloads. Prints each
broken file with its reason and a summary (counts, hours, fps and resolution histograms, durations), and
with --out writes the usable files as a CSV in the same format (absolute paths).

Given the clip the run samples (from `--config`, a pretraining or probe YAML, or `--frames` with
`--sampling-rate` / `--fps` / `--clip-duration`), videos with fewer frames than one clip spans are
reported as SHORT, their own category, and left out of --out: training would pad them with their last
frame (the default, as the reference) or skip them (`data.filter_short_videos: true`).
"""
from __future__ import annotations

import argparse
import logging
import multiprocessing as mp
import statistics
import sys
from collections import Counter
from dataclasses import dataclass
from typing import List, Optional, Sequence, Tuple

import yaml
from tqdm import tqdm

from data.config import DataConfig
from data.datasets import VIDEO_EXTENSIONS, Sample, clip_span, frame_step, load_source
from data.errors import UserError
from data.video import DECODERS, DecodeError, VideoInfo, open_video, resolve_decoder

logger = logging.getLogger(__name__)


@dataclass
class FileReport:
    """Outcome for one file: `info` when it is usable, else the `error` (a reason), `filtered`, or `short`
    (fewer frames than one clip spans)."""

    path: str
    label: int
    info: Optional[VideoInfo] = None
    error: Optional[str] = None
    filtered: Optional[str] = None
    short: Optional[str] = None

    @property
    def usable(self) -> bool:
        return self.error is None and self.filtered is None and self.short is None


@dataclass(frozen=True)
class ClipSpec:
    """The clip a run samples: `num_frames` frames, `sampling_rate` apart, or at `fps` frames per second,
    or spanning `clip_duration` seconds (the same rule as training, `data.datasets.frame_step`)."""

    num_frames: int
    sampling_rate: int = 4
    fps: Optional[float] = None
    clip_duration: Optional[float] = None

    def frames_needed(self, video_fps: float) -> int:
        step = frame_step(video_fps, self.sampling_rate, self.fps, self.clip_duration, self.num_frames)
        return clip_span(self.num_frames, step)

    def describe(self) -> str:
        how = (f"at {self.fps:g} fps" if self.fps else f"over {self.clip_duration:g} s" if self.clip_duration
               else f"every {self.sampling_rate} frames")
        return f"{self.num_frames} frames {how}"


def clip_from_config(path: str) -> ClipSpec:
    """The clip of a pretraining YAML (`data.num_frames`, `sampling_rate`, `fps`, `clip_duration`) or of
    a probe YAML (`data.frames_per_clip`, `data.frame_step`, or `pretrain.frame_step` / `clip_duration`)."""
    try:
        with open(path) as f:
            raw = yaml.safe_load(f) or {}
    except OSError as e:
        raise UserError(f"cannot read --config {path}: {e.strerror}") from None
    data = raw.get("data") or {}
    if raw.get("task") == "probe" or "eval_name" in raw:
        pre = raw.get("pretrain") or {}
        return ClipSpec(num_frames=int(data.get("frames_per_clip", 16)),
                        sampling_rate=int(pre.get("frame_step") or data.get("frame_step", 4)),
                        clip_duration=pre.get("clip_duration"))
    defaults = DataConfig()
    return ClipSpec(num_frames=int(data.get("num_frames", defaults.num_frames)),
                    sampling_rate=int(data.get("sampling_rate", defaults.sampling_rate)),
                    fps=data.get("fps", defaults.fps), clip_duration=data.get("clip_duration", defaults.clip_duration))


def check_file(
    sample: Sample,
    decoder: str = "auto",
    full: bool = False,
    min_duration: Optional[float] = None,
    max_duration: Optional[float] = None,
    clip: Optional[ClipSpec] = None,
) -> FileReport:
    path, label = sample
    try:
        with open_video(path, decoder, threads=1) as reader:
            info = reader.info
            n = info.num_frames
            if full:
                # Chunks keep memory bounded for long videos.
                for a in range(0, n, 64):
                    reader.get_frames(range(a, min(a + 64, n)))
            else:
                reader.get_frames(sorted({0, n // 2, n - 1}))
    except DecodeError as e:
        return FileReport(path, label, error=e.reason)
    if min_duration is not None and info.duration < min_duration:
        return FileReport(path, label, info=info, filtered=f"shorter than {min_duration}s ({info.duration:.2f}s)")
    if max_duration is not None and info.duration > max_duration:
        return FileReport(path, label, info=info, filtered=f"longer than {max_duration}s ({info.duration:.2f}s)")
    if clip is not None and info.num_frames < clip.frames_needed(info.fps):
        return FileReport(path, label, info=info, short=f"{info.num_frames} frames, one clip of "
                          f"{clip.describe()} spans {clip.frames_needed(info.fps)}")
    return FileReport(path, label, info=info)


def _check_star(args: Tuple[Sample, str, bool, Optional[float], Optional[float], Optional[ClipSpec]]) -> FileReport:
    return check_file(*args)


def check_samples(
    samples: Sequence[Sample],
    workers: int = 1,
    decoder: str = "auto",
    full: bool = False,
    min_duration: Optional[float] = None,
    max_duration: Optional[float] = None,
    progress: bool = True,
    clip: Optional[ClipSpec] = None,
) -> List[FileReport]:
    """Check every sample, `workers` processes in parallel; reports in the input order."""
    decoder = resolve_decoder(decoder)
    jobs = [(s, decoder, full, min_duration, max_duration, clip) for s in samples]
    bar = tqdm(total=len(jobs), desc="checking", unit="file", disable=not progress)
    if workers <= 1:
        reports = []
        for job in jobs:
            reports.append(_check_star(job))
            bar.update()
    else:
        # fork: workers start in milliseconds and need nothing from the parent but the sample list.
        ctx = mp.get_context("fork" if "fork" in mp.get_all_start_methods() else None)
        with ctx.Pool(workers) as pool:
            reports = []
            for r in pool.imap(_check_star, jobs, chunksize=max(1, min(16, len(jobs) // (workers * 8)))):
                reports.append(r)
                bar.update()
    bar.close()
    return reports


def _spread(values: Sequence[float], fmt: str) -> str:
    if not values:
        return "-"
    return " / ".join(format(v, fmt) for v in (min(values), statistics.median(values), max(values)))


def summarize(reports: Sequence[FileReport]) -> str:
    ok = [r for r in reports if r.usable]
    broken = [r for r in reports if r.error is not None]
    filtered = [r for r in reports if r.filtered is not None]
    short = [r for r in reports if r.short is not None]
    infos = [r.info for r in ok if r.info is not None]
    lines = [f"files: {len(reports)}  ok: {len(ok)}  broken: {len(broken)}  filtered: {len(filtered)}  "
             f"short: {len(short)}"]
    if infos:
        durations = [i.duration for i in infos]
        lines += [
            f"total duration: {sum(durations) / 3600:.2f} h",
            f"duration s (min / median / max): {_spread(durations, '.2f')}",
            f"frames (min / median / max): {_spread([i.num_frames for i in infos], 'g')}",
            "fps: " + ", ".join(f"{f:g} x{c}" for f, c in Counter(round(i.fps, 2) for i in infos).most_common(10)),
            "resolution: "
            + ", ".join(f"{w}x{h} x{c}" for (w, h), c in Counter((i.width, i.height) for i in infos).most_common(10)),
            f"short side (min / median / max): {_spread([min(i.width, i.height) for i in infos], 'g')}",
        ]
    reasons = Counter(r.error.split(":")[0] for r in broken if r.error)
    if reasons:
        lines.append("broken by reason: " + ", ".join(f"{k} x{c}" for k, c in reasons.most_common(10)))
    return "\n".join(lines)


def write_csv(reports: Sequence[FileReport], out: str) -> int:
    """Usable files as `path label` lines; returns how many."""
    n = 0
    with open(out, "w") as f:
        for r in reports:
            if r.usable:
                f.write(f"{r.path} {r.label}\n")
                n += 1
    return n


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m data.check", description=__doc__.split("\n\n")[0])
    parser.add_argument("list", help="CSV (`path label` per line) or folder tree")
    parser.add_argument("--workers", type=int, default=max(1, mp.cpu_count()))
    parser.add_argument("--out", default=None, help="write the usable files to this CSV")
    parser.add_argument("--decoder", default="auto", choices=list(DECODERS))
    parser.add_argument("--full", action="store_true", help="decode every frame (slow, thorough)")
    parser.add_argument("--min-duration", type=float, default=None, help="report shorter files as filtered")
    parser.add_argument("--max-duration", type=float, default=None, help="report longer files as filtered")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    clip = parser.add_argument_group("the clip to check for (videos shorter than one clip are reported as SHORT)")
    clip.add_argument("--config", default=None, help="a pretraining or probe YAML: its clip length and frame step")
    clip.add_argument("--frames", type=int, default=None, help="frames per clip")
    clip.add_argument("--sampling-rate", type=int, default=None, help="frame step between sampled frames (default 4)")
    clip.add_argument("--fps", type=float, default=None, help="sample at this frame rate instead of a fixed step")
    clip.add_argument("--clip-duration", type=float, default=None, help="a clip spans this many seconds")
    args = parser.parse_args(argv)
    try:
        spec = _clip_spec(args)
    except UserError as e:
        parser.error(str(e))

    try:
        samples, _ = load_source(args.list, VIDEO_EXTENSIONS)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    reports = check_samples(
        samples, args.workers, args.decoder, args.full, args.min_duration, args.max_duration, not args.quiet, spec
    )
    for r in reports:
        if r.error is not None:
            print(f"BROKEN {r.path}: {r.error}")
    for r in reports:
        if r.filtered is not None:
            print(f"FILTERED {r.path}: {r.filtered}")
    for r in reports:
        if r.short is not None:
            print(f"SHORT {r.path}: {r.short}")
    print(summarize(reports))
    if args.out:
        n = write_csv(reports, args.out)
        print(f"wrote {n} usable files to {args.out}")
    return 0


def _clip_spec(args) -> Optional[ClipSpec]:
    by_hand = (args.sampling_rate, args.fps, args.clip_duration)
    if args.config is not None:
        if args.frames is not None or any(v is not None for v in by_hand):
            raise UserError("give --config or --frames/--sampling-rate/--fps/--clip-duration, not both")
        return clip_from_config(args.config)
    if args.frames is None:
        if any(v is not None for v in by_hand):
            raise UserError("--sampling-rate/--fps/--clip-duration need --frames")
        return None
    if sum(v is not None for v in by_hand) > 1:
        raise UserError("give one of --sampling-rate, --fps, --clip-duration")
    return ClipSpec(args.frames, args.sampling_rate or 4, args.fps, args.clip_duration)


if __name__ == "__main__":
    sys.exit(main())
