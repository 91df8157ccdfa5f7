"""The one entry point.

    python train.py                                   # built-in CPU quickstart (configs/quickstart.yaml)
    python train.py --config configs/pretrain/vitl16.yaml [key.sub=value ...] [--dry-run] [--debug]
    accelerate launch --multi_gpu --num_processes 8 train.py --config ...

The config's `task` key picks the job; each job owns its config dataclass and its train function.
Reference V-JEPA configs (`app: vjepa`) run as `task: pretrain`; reference I-JEPA configs (recognised by
`mask.enc_mask_scale` / `meta.pred_depth`) as `task: ijepa`.

Expected mistakes (a config error, a missing checkpoint or data list, a checkpoint that is not the
model's or cannot be read, a fresh run over an existing checkpoint, no decodable video, an option this
machine cannot run) end in one line on stderr and exit code 2; Ctrl-C ends in one line and exit code 130;
`--debug` (or JEPA_DEBUG=1) adds the traceback. Anything else is a bug and shows its traceback.
"""
from __future__ import annotations

import argparse
import importlib
import logging
import os
import sys
from pathlib import Path

from vjepa.engine.config import ConfigError, load_config, read_yaml
from vjepa.errors import UserError, one_line

logger = logging.getLogger("train")

QUICKSTART = Path(__file__).resolve().parent / "configs" / "quickstart.yaml"

# task -> (module, config class, train function)
TASKS = {
    "pretrain": ("vjepa.pretrain", "PretrainConfig", "train"),
    "ijepa": ("vjepa.ijepa", "IJEPAConfig", "train"),
    "ijepa_quickstart": ("vjepa.ijepa_quickstart", "IJEPAQuickstartConfig", "run"),
    "quickstart": ("vjepa.quickstart", "QuickstartConfig", "run"),
    "probe": ("vjepa.probe_train", "ProbeConfig", "train"),
    "hjepa": ("hjepa.train", "HJEPAConfig", "train"),
    "horizon_study": ("hjepa.study", "HorizonStudyConfig", "run"),
    "worldmodel": ("hjepa.world_model.train", "WorldModelConfig", "train"),
    "plan": ("hjepa.world_model.evaluate", "PlanConfig", "run"),
    "crossover": ("hjepa.world_model.crossover", "CrossoverConfig", "run"),
}


def pick_task(raw: dict, overrides: list[str]) -> str:
    for o in overrides:
        if o.startswith("task="):
            return o.split("=", 1)[1]
    if "task" in raw:
        return raw["task"]
    mask, meta = raw.get("mask"), raw.get("meta")
    if (isinstance(mask, dict) and "enc_mask_scale" in mask) or (isinstance(meta, dict) and "pred_depth" in meta):
        return "ijepa"  # reference I-JEPA configs (facebookresearch/ijepa): no task or app key
    if "eval_name" in raw:  # reference eval configs (video_classification_frozen, image_classification_frozen)
        return "probe"
    return "pretrain"  # reference pretraining configs say `app: vjepa`


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", type=Path, default=None, help=f"YAML config (default: {QUICKSTART.name})")
    parser.add_argument("--dry-run", action="store_true", help="build everything, print the resolved config, "
                        "parameter counts and mask statistics, and exit")
    parser.add_argument("--debug", action="store_true", help="show the traceback of expected errors too "
                        "(same as JEPA_DEBUG=1)")
    parser.add_argument("overrides", nargs="*", help="dotted overrides, e.g. optimization.lr=3e-4")
    args = parser.parse_args(argv)

    from vjepa.engine.runtime import setup_logging

    setup_logging(int(os.environ.get("RANK", "0")) == 0)
    try:
        raw = read_yaml(args.config or QUICKSTART)
        task = pick_task(raw, args.overrides)
        if task not in TASKS:
            raise ConfigError(f"unknown task {task!r}; valid tasks: {sorted(TASKS)}")
        module_name, cfg_name, fn_name = TASKS[task]
        module = importlib.import_module(module_name)
        cfg = load_config(getattr(module, cfg_name), raw=raw, overrides=args.overrides)
    except ConfigError as e:
        print(f"config error: {e}", file=sys.stderr)
        return 2
    try:
        getattr(module, fn_name)(cfg, dry_run=args.dry_run)
    except UserError as e:
        if args.debug or os.environ.get("JEPA_DEBUG", "") not in ("", "0"):
            raise
        print(f"{'config error' if isinstance(e, ConfigError) else 'error'}: {one_line(e)}", file=sys.stderr)
        return 2
    return 0


def close_process_group() -> None:
    """Tear down a multi-process launch's process group, so that gloo does not abort at interpreter exit."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def cli(argv=None) -> int:
    """`main`, with Ctrl-C ended in one line (exit code 130) and the process group closed."""
    argv = sys.argv[1:] if argv is None else argv
    try:
        return main(argv)
    except KeyboardInterrupt:  # checkpoints are saved atomically, with Ctrl-C held back: the last one is whole
        if "--debug" in argv or os.environ.get("JEPA_DEBUG", "") not in ("", "0"):
            raise
        print("interrupted: the run folder keeps its last saved checkpoint, whole; the same command with "
              "meta.load_checkpoint=true resumes a training job from it (a probe: resume_checkpoint=true, a "
              "quickstart: pretrain.meta.load_checkpoint=true)", file=sys.stderr)
        return 130
    finally:
        close_process_group()


if __name__ == "__main__":
    sys.exit(cli())
