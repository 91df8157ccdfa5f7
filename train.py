"""The one entry point.

    python train.py                                   # built-in CPU quickstart (configs/quickstart.yaml)
    python train.py --config configs/pretrain/vitl16.yaml [key.sub=value ...] [--dry-run]
    accelerate launch --multi_gpu --num_processes 8 train.py --config ...

The config's `task` key picks the job; each job owns its config dataclass and its train function.
Reference V-JEPA configs (`app: vjepa`) run as `task: pretrain`; reference I-JEPA configs (recognised by
`mask.enc_mask_scale` / `meta.pred_depth`) as `task: ijepa`.
"""
from __future__ import annotations

import argparse
import importlib
import logging
import os
import sys
from pathlib import Path

from vjepa.engine.config import ConfigError, load_config, read_yaml

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
    getattr(module, fn_name)(cfg, dry_run=args.dry_run)
    return 0


if __name__ == "__main__":
    sys.exit(main())
