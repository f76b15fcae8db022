"""Composing the training config outside `train.py` (tests, notebooks, scripts): the same configs/ tree, the same
typed stage settings, the same overrides as on the command line."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence

CONFIG_DIR_ENV = "PDFGC_CONFIG_DIR"


def config_dir() -> Path:
    """The Hydra config tree: `$PDFGC_CONFIG_DIR`, else the repository's configs/ (source checkout)."""
    env = os.environ.get(CONFIG_DIR_ENV, "").strip()
    return Path(env).expanduser() if env else Path(__file__).resolve().parents[3] / "configs"


def compose(overrides: Sequence[str] = (), config_name: str = "train"):
    """The composed config of `python train.py <overrides>` (a DictConfig), e.g.
    `compose(["stage=lip", "stage.iterations=10", "paths.output_dir=/tmp/run"])`; pass it to `pdfgc.train.train`."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    from pdfgc.stages import register_configs

    register_configs()
    with initialize_config_dir(config_dir=str(config_dir()), version_base=None):
        return hydra_compose(config_name, overrides=list(overrides))


# Hydra command-line flags that change what runs, not the config; a command line with a sweep is left to Hydra
_MULTIRUN_FLAGS = ("-m", "--multirun")


def check_command_line(argv: Sequence[str]) -> None:
    """Compose the config of `python train.py <argv>` once and check every stage config of the run
    (`pdfgc.train.run.check_run_config`), so that a misspelt key, a value of the wrong type or out of range is one
    `UserError` before Hydra starts the job (Hydra itself reports composition errors over several lines, exit 1).
    Sweeps (`-m`) and `hydra.*` overrides are left to Hydra."""
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    from pdfgc.stages.config import StageConfigError
    from pdfgc.train.run import check_run_config

    args = list(argv)
    if any(a in _MULTIRUN_FLAGS for a in args) or any(a.startswith("--config") for a in args):
        return
    overrides = [a for a in args if not a.startswith("-") and "=" in a
                 and not a.lstrip("+~").startswith("hydra.")]
    try:
        cfg = compose(overrides)
    except (HydraException, OmegaConfBaseException) as e:
        raise StageConfigError(_composition_message(e, overrides)) from e
    check_run_config(cfg)


def _composition_message(e: Exception, overrides: Sequence[str]) -> str:
    """One line for a Hydra/OmegaConf composition error: the override that caused it and why."""
    from hydra.errors import MissingConfigException

    if isinstance(e, MissingConfigException) and getattr(e, "options", None) is not None:
        group = str(getattr(e, "missing_cfg_file", "") or "").rpartition("/")[0]
        options = sorted(o for o in e.options if not o.endswith("_schema"))
        given = next((o for o in overrides if group and o.lstrip("+~").split("=", 1)[0] == group.split("/")[0]),
                     group)
        return f"{given}: no such option; choose one of {options}"
    cause = e.__cause__ if e.__cause__ is not None else e
    key = str(getattr(cause, "full_key", None) or "")
    why = "; ".join(ln.strip() for ln in str(cause).splitlines() if ln.strip() and not ln.strip().startswith(
        ("full_key:", "object_type=", "reference_type=", "To append")))
    first = str(e).splitlines()[0] if str(e) else type(e).__name__
    given = next((o for o in overrides if key and o.lstrip("+~").split("=", 1)[0] == key), None)
    if given:
        return f"{given}: {why} (python train.py --cfg job prints every setting)"
    return f"{first} {why}".strip() + " (python train.py --cfg job prints every setting)"
