"""Videos of the point-mass worlds for V-JEPA pretraining (`task: pretrain`): one clip per episode.

    python -m data.generated.env_videos --world two_rooms --out data_cache/env_videos/two_rooms

Episodes are `data.generated.trajectories` episodes (random walks and noisy experts, over many wall maps),
rendered with `envs.render` and written losslessly (H.264 in RGB at QP 0, `libx264rgb`): the walls and the
one-pixel soft edge of the agent disc come back bit for bit, where 4:2:0 H.264 would blur the colour
planes the channels live in. The folder gets `clips/NNNNN.mp4` and `train.csv` (`clips/NNNNN.mp4 0` per
line, relative to the CSV, the reference list format `data.datasets` reads), plus `manifest.json` with the
generating config. The CSV is written last and atomically, so its presence means the folder is complete;
a second run with the same config does nothing, and with another config refuses to mix the two.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
from dataclasses import asdict
from pathlib import Path
from typing import Optional

import av
import numpy as np

from data.generated.envs import LAYOUTS, EnvConfig, render
from data.generated.trajectories import TrajectoryConfig, config_hash, load_or_generate

logger = logging.getLogger(__name__)

CODEC = "libx264rgb"  # H.264 on RGB planes; with qp=0 it is lossless
LIST_NAME = "train.csv"
MANIFEST_NAME = "manifest.json"


def to_uint8(frames: np.ndarray) -> np.ndarray:
    """Rendered frames float `[T, 3, S, S]` in [0, 1] -> uint8 `[T, S, S, 3]` (what a decoder returns)."""
    return np.round(np.clip(frames, 0.0, 1.0) * 255).astype(np.uint8).transpose(0, 2, 3, 1)


def write_clip(path: Path, frames: np.ndarray, fps: int = 10) -> None:
    """uint8 frames `[T, H, W, 3]` -> a lossless H.264 (RGB) mp4 without B-frames."""
    tmp = path.with_name(f".{path.name}.tmp.mp4")
    with av.open(str(tmp), "w") as container:
        stream = container.add_stream(CODEC, rate=fps, options={"qp": "0", "preset": "ultrafast", "bf": "0"})
        stream.codec_context.width, stream.codec_context.height = frames.shape[2], frames.shape[1]
        stream.codec_context.pix_fmt = "rgb24"
        for img in frames:
            for packet in stream.encode(av.VideoFrame.from_ndarray(np.ascontiguousarray(img), format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    tmp.replace(path)  # atomic: a killed run leaves no half-written clip under the final name


def episode_frames(data: dict, i: int, env: EnvConfig) -> np.ndarray:
    """Rendered frames float `[T+1, 3, S, S]` of episode `i` of a `trajectories.generate` dataset."""
    states = data["states"][i]  # [T+1, 2]
    walls = np.repeat(data["walls"][data["layout"][i]][None], len(states), axis=0)  # [T+1, G, G]
    return render(walls, states, env, data["distractors"][i])


def manifest(cfg: TrajectoryConfig, fps: int) -> dict:
    d = asdict(cfg)
    d.pop("cache_dir")
    return {"trajectories": d, "trajectory_hash": config_hash(cfg), "fps": fps, "codec": CODEC}


def write_env_videos(cfg: TrajectoryConfig, out: str | Path, fps: int = 10) -> Path:
    """Write one clip per episode of `cfg` under `out` and the list; -> the list's path.

    Idempotent: a complete folder (list present, same manifest) is left as it is; clips already written by
    an interrupted run with the same manifest are kept."""
    out = Path(out)
    listing, man_path = out / LIST_NAME, out / MANIFEST_NAME
    want = manifest(cfg, fps)
    if man_path.is_file():
        have = json.loads(man_path.read_text())
        if have != want:
            raise ValueError(f"{out} holds env videos of another config (trajectory hash "
                             f"{have.get('trajectory_hash')} vs {want['trajectory_hash']}); use another --out "
                             f"or delete the folder")
        if listing.is_file():
            logger.info("%s is complete (%d clips); nothing to do", out, cfg.num_trajectories)
            return listing
    (out / "clips").mkdir(parents=True, exist_ok=True)
    man_path.write_text(json.dumps(want, indent=1, sort_keys=True))
    data = load_or_generate(cfg)
    names = []
    for i in range(cfg.num_trajectories):
        name = f"clips/{i:05d}.mp4"
        if not (out / name).is_file():
            write_clip(out / name, to_uint8(episode_frames(data, i, cfg.env)), fps)
        names.append(name)
        if (i + 1) % 200 == 0:
            logger.info("%d / %d clips", i + 1, cfg.num_trajectories)
    tmp = listing.with_name(f".{LIST_NAME}.tmp")
    tmp.write_text("".join(f"{n} 0\n" for n in names))
    os.replace(tmp, listing)
    logger.info("wrote %d clips of %d frames and %s", len(names), cfg.length + 1, listing)
    return listing


def main(argv: Optional[list] = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--world", choices=LAYOUTS, default="two_rooms")
    p.add_argument("--out", required=True, help="folder for clips/, train.csv and manifest.json")
    p.add_argument("--num-trajectories", type=int, default=2000)
    p.add_argument("--length", type=int, default=48, help="steps per episode (clips have length + 1 frames)")
    p.add_argument("--num-layouts", type=int, default=256, help="wall maps drawn from --layout-seed")
    p.add_argument("--layout-seed", type=int, default=1000)
    p.add_argument("--expert-fraction", type=float, default=0.5)
    p.add_argument("--seed", type=int, default=1000)
    p.add_argument("--img-size", type=int, default=64)
    p.add_argument("--fps", type=int, default=10)
    p.add_argument("--wall-shift", type=int, default=0, help="env.wall_shift (two_rooms: wall column varies)")
    p.add_argument("--door-cells", type=int, default=EnvConfig.door_cells, help="env.door_cells")
    p.add_argument("--door-cells-max", type=int, default=0, help="env.door_cells_max (door width varies)")
    p.add_argument("--layout-split", choices=["all", "train"], default="all",
                   help="train: only maps of the train split, so a world model's held-out maps stay unseen")
    a = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    env = EnvConfig(name=a.world, img_size=a.img_size, wall_shift=a.wall_shift, door_cells=a.door_cells,
                    door_cells_max=a.door_cells_max)
    cfg = TrajectoryConfig(env=env, num_trajectories=a.num_trajectories, length=a.length, num_layouts=a.num_layouts,
                           layout_seed=a.layout_seed, expert_fraction=a.expert_fraction, seed=a.seed,
                           layout_split=a.layout_split)
    write_env_videos(cfg, a.out, a.fps)


if __name__ == "__main__":
    main()
