"""The run directory both trainers write: config.yaml, metrics.jsonl, eval/, checkpoints/, adapter/ (or model/).

`prepare_run_dir` decides, before anything is written, whether a run may start here: a folder that already holds a
run is refused unless the run is resumed, and a resume must use the recipe the run started with (keys that only say
how far or how a run goes, config.RUN_ONLY_KEYS, may change; each other change is listed with its two values).
"""

from __future__ import annotations

from pathlib import Path

import yaml

from .config import RUN_ONLY_KEYS, EggrollConfig, to_dict
from .io import atomic_write_text


def _flatten(values: dict, prefix: str = "") -> dict:
    out = {}
    for key, value in values.items():
        if isinstance(value, dict):
            out.update(_flatten(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def changed_keys(saved: dict, config: EggrollConfig) -> list[str]:
    """`key: saved → now` for every recipe key (run-only keys aside) where `config` differs from a saved config."""
    before, now = _flatten(saved), _flatten(to_dict(config))
    return [f"{key}: {before.get(key)!r} → {now.get(key)!r}" for key in sorted(set(before) | set(now))
            if key.split(".")[0] not in RUN_ONLY_KEYS and before.get(key) != now.get(key)]


def prepare_run_dir(config: EggrollConfig, resume: bool, write: bool = True) -> Path:
    """The run directory of `config`, checked for a fresh start or a resume; writes config.yaml when `write`."""
    run_dir = Path(config.output_dir)
    if (run_dir / "metrics.jsonl").exists() and not resume:
        raise FileExistsError(f"{run_dir} already holds a run; pass --resume (resume_from_checkpoint=True) to "
                              "continue it or choose another output_dir")
    if resume and (run_dir / "config.yaml").is_file():
        changed = changed_keys(yaml.safe_load((run_dir / "config.yaml").read_text()) or {}, config)
        if changed:
            raise ValueError(f"cannot resume {run_dir} with a different recipe ({'; '.join(changed)}); resume with "
                             "the recipe the run was started with")
    if write:
        atomic_write_text(run_dir / "config.yaml", yaml.safe_dump(to_dict(config), sort_keys=False))
    return run_dir
