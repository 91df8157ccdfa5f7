"""Scan a video list for broken files before training, in parallel.

    python -m data.check LIST.csv [--workers N] [--out clean.csv] [--decoder auto|decord|pyav] [--full]
        [--min-duration S] [--max-duration S]

LIST is a V-JEPA CSV (`path label`) or a folder tree. Each file is opened and its first, middle and last
frames decoded (`--full`: every frame); the last frame is what catches truncated downloads. Prints each
broken file with its reason and a summary (counts, hours, fps and resolution histograms, durations), and
with --out writes the usable files as a CSV in the same format (absolute paths).
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

from tqdm import tqdm

from data.datasets import VIDEO_EXTENSIONS, Sample, load_source
from data.video import DecodeError, VideoInfo, open_video, resolve_decoder

logger = logging.getLogger(__name__)


@dataclass
class FileReport:
    """Outcome for one file: `info` when it is usable, else the `error` (a reason), or `filtered`."""

    path: str
    label: int
    info: Optional[VideoInfo] = None
    error: Optional[str] = None
    filtered: Optional[str] = None


def check_file(
    sample: Sample,
    decoder: str = "auto",
    full: bool = False,
    min_duration: Optional[float] = None,
    max_duration: Optional[float] = None,
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
    return FileReport(path, label, info=info)


def _check_star(args: Tuple[Sample, str, bool, Optional[float], Optional[float]]) -> FileReport:
    return check_file(*args)


def check_samples(
    samples: Sequence[Sample],
    workers: int = 1,
    decoder: str = "auto",
    full: bool = False,
    min_duration: Optional[float] = None,
    max_duration: Optional[float] = None,
    progress: bool = True,
) -> List[FileReport]:
    """Check every sample, `workers` processes in parallel; reports in the input order."""
    decoder = resolve_decoder(decoder)
    jobs = [(s, decoder, full, min_duration, max_duration) for s in samples]
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
    ok = [r for r in reports if r.error is None and r.filtered is None]
    broken = [r for r in reports if r.error is not None]
    filtered = [r for r in reports if r.filtered is not None]
    infos = [r.info for r in ok if r.info is not None]
    lines = [f"files: {len(reports)}  ok: {len(ok)}  broken: {len(broken)}  filtered: {len(filtered)}"]
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
            if r.error is None and r.filtered is None:
                f.write(f"{r.path} {r.label}\n")
                n += 1
    return n


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m data.check", description=__doc__.split("\n\n")[0])
    parser.add_argument("list", help="CSV (`path label` per line) or folder tree")
    parser.add_argument("--workers", type=int, default=max(1, mp.cpu_count()))
    parser.add_argument("--out", default=None, help="write the usable files to this CSV")
    parser.add_argument("--decoder", default="auto", choices=["auto", "decord", "pyav"])
    parser.add_argument("--full", action="store_true", help="decode every frame (slow, thorough)")
    parser.add_argument("--min-duration", type=float, default=None, help="report shorter files as filtered")
    parser.add_argument("--max-duration", type=float, default=None, help="report longer files as filtered")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    args = parser.parse_args(argv)

    samples, _ = load_source(args.list, VIDEO_EXTENSIONS)
    reports = check_samples(
        samples, args.workers, args.decoder, args.full, args.min_duration, args.max_duration, not args.quiet
    )
    for r in reports:
        if r.error is not None:
            print(f"BROKEN {r.path}: {r.error}")
    for r in reports:
        if r.filtered is not None:
            print(f"FILTERED {r.path}: {r.filtered}")
    print(summarize(reports))
    if args.out:
        n = write_csv(reports, args.out)
        print(f"wrote {n} usable files to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
