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
