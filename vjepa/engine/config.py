"""Strict config loading: dataclass defaults <- YAML <- dotted CLI overrides.

An unknown key is an error naming the valid keys of its section; a value of the wrong type is an error
naming the key. Keys that reference V-JEPA YAMLs carry but that mean nothing here (launcher settings)
are dropped with a one-line notice, so reference configs run unchanged.

A job that stopped accepting a key it used to accept and ignore lists it in `RETIRED_KEYS` (dotted key
-> the value every config written then carried): that value is dropped with a notice, so configs and
checkpoints written before still load; any other value is an error, since the job never honoured it.
`RENAMED_KEYS` (old -> new dotted key) carries a value over to a key's new name.
"""
from __future__ import annotations

import copy
import logging
from dataclasses import fields, is_dataclass
from pathlib import Path
from typing import Any, Iterable, Optional, Sequence, Type, TypeVar, get_type_hints

import yaml
from omegaconf import OmegaConf
from omegaconf.errors import ConfigAttributeError, ConfigKeyError, OmegaConfBaseException

from data.errors import UserError

logger = logging.getLogger(__name__)
T = TypeVar("T")

# Reference keys with no meaning here: SLURM launch layout and the app selector (the `task` key picks
# the job here), `use_sdpa` (attention always goes through scaled_dot_product_attention), and I-JEPA's
# `copy_data` (a cluster's copy of the dataset to local disk; what a run computes is the same).
IGNORED_KEYS = ("app", "nodes", "tasks_per_node", "meta.use_sdpa", "meta.skip_batches", "meta.copy_data")


class ConfigError(UserError, ValueError):
    """A config that cannot run as written: train.py prints `config error: ...` (one line, exit 2)."""


def read_yaml(path: str | Path) -> dict:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    with open(path) as f:
        raw = yaml.safe_load(f) or {}
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: top level must be a mapping, got {type(raw).__name__}")
    return raw


def _drop_ignored(raw: dict, ignored: Iterable[str]) -> dict:
    for dotted in ignored:
        *parents, leaf = dotted.split(".")
        node = raw
        for p in parents:
            node = node.get(p) if isinstance(node, dict) else None
        if isinstance(node, dict) and leaf in node:
            logger.info("config: ignoring reference key %r (no effect in this codebase)", dotted)
            node.pop(leaf)
    return raw


def _find(node: dict, dotted: str, create: bool = False):
    """(the dict holding the leaf of `dotted`, the leaf name), or (None, leaf) when a parent is missing."""
    *parents, leaf = dotted.split(".")
    for p in parents:
        if create and p not in node:
            node[p] = {}
        node = node.get(p) if isinstance(node, dict) else None
    return (node if isinstance(node, dict) else None), leaf


def _retire(cls, node: dict, prefix: str) -> None:
    hook = getattr(cls, "UPGRADE", None)  # a section's own rewrite of an older layout (in place)
    if hook is not None:
        hook(node)
    for old, new in getattr(cls, "RENAMED_KEYS", {}).items():
        parent, leaf = _find(node, old)
        if parent is not None and leaf in parent:
            value = parent.pop(leaf)
            target, new_leaf = _find(node, new, create=True)
            if new_leaf in target:
                raise ConfigError(f"config keys {prefix + old!r} (old name) and {prefix + new!r} are both set")
            target[new_leaf] = value
            logger.info("config: %r is now called %r", prefix + old, prefix + new)
    for key, old_value in getattr(cls, "RETIRED_KEYS", {}).items():
        parent, leaf = _find(node, key)
        if parent is None or leaf not in parent:
            continue
        if parent[leaf] != old_value:
            raise ConfigError(f"config key {prefix + key!r} is not honoured by this job (it used to be accepted "
                              f"and ignored); remove it")
        parent.pop(leaf)
        logger.info("config: dropping %r (written by an older version; this job never used it)", prefix + key)
    hints = get_type_hints(cls)
    for f in fields(cls):
        sub = hints.get(f.name)
        if is_dataclass(sub) and isinstance(node.get(f.name), dict):
            _retire(sub, node[f.name], f"{prefix}{f.name}.")


def upgrade(cls: Type[T], raw: dict) -> dict:
    """`raw` with the retired and renamed keys of `cls` (and of its nested sections) handled."""
    raw = copy.deepcopy(raw)
    _retire(cls, raw, "")
    return raw


def _section_name(e: OmegaConfBaseException) -> str:
    return getattr(e.object_type, "__name__", "config")


def _valid_keys(e: OmegaConfBaseException) -> list[str]:
    return sorted(f.name for f in fields(e.object_type)) if is_dataclass(e.object_type) else []


def _merge(cfg, apply, source: str):
    try:
        return apply(cfg)
    except (ConfigKeyError, ConfigAttributeError) as e:
        key = e.full_key or str(e.key)
        raise ConfigError(f"unknown config key {key!r} in {_section_name(e)} (from {source}); "
                          f"valid keys: {_valid_keys(e)}") from None
    except OmegaConfBaseException as e:
        msg = str(e.msg).splitlines()[0]
        raise ConfigError(f"bad value for config key {e.full_key!r} (from {source}): {msg}") from None


def load_config(cls: Type[T], yaml_path: Optional[str | Path] = None, overrides: Sequence[str] = (),
                raw: Optional[dict] = None) -> T:
    """Build a `cls` instance from its defaults, a YAML file (or an already-read `raw` dict) and
    `key.sub=value` overrides, strictly."""
    if not is_dataclass(cls):
        raise TypeError(f"{cls} is not a dataclass")
    schema = OmegaConf.structured(cls)
    if raw is None:
        raw = read_yaml(yaml_path) if yaml_path else {}
    raw = upgrade(cls, _drop_ignored(dict(raw), IGNORED_KEYS))
    for o in overrides:
        if "=" not in o:
            raise ConfigError(f"override {o!r} is not of the form key.sub=value")
    merged = _merge(schema, lambda c: OmegaConf.merge(c, OmegaConf.create(raw)), "yaml")
    for o in overrides:
        key, value = o.split("=", 1)
        # update() understands list indices (mask.0.ratio=0.5); values are parsed as YAML scalars/lists.
        merged = _merge(merged, lambda c: (OmegaConf.update(c, key, yaml.safe_load(value), merge=True), c)[1],
                        f"command line {o!r}")
    return OmegaConf.to_object(merged)


def to_dict(cfg: Any) -> dict:
    return OmegaConf.to_container(OmegaConf.structured(cfg), resolve=True)


def to_yaml(cfg: Any) -> str:
    return OmegaConf.to_yaml(OmegaConf.structured(cfg))


def check_resume(saved: Optional[dict], cfg: Any, path, keys: Sequence[tuple], prefix: str = "") -> None:
    """A resume whose seed (or batch size) differs from the checkpoint's run would silently change the rest of
    the run's data order and masks: a config error naming the override that continues the run as it was.
    `saved`: the checkpoint's `config` (None for old checkpoints: nothing to compare); `keys`: (section, key)
    pairs; `prefix`: how the override is spelled where this config is nested (e.g. `pretrain.` in a quickstart)."""
    now = to_dict(cfg)
    for section, key in keys:
        was, want = (saved or {}).get(section, {}).get(key), now[section][key]
        if was is not None and was != want:
            hint = f" ({prefix}{section}.{key}={was} where this config is nested)" if prefix else ""
            raise ConfigError(f"{path} was trained with {section}.{key}={was}; resuming it with {section}.{key}="
                              f"{want} would change the rest of its data order: pass {section}.{key}={was}{hint}, "
                              f"or start a new run folder")
