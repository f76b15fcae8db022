"""Training stages of the progressive recipe (LightningModules) and the one stage registry.

`STAGES[name]` is a stage class. From it: `.Config` (its typed settings, a dataclass registered as the Hydra
structured config `stage/<name>_schema`), `.DATASET` (the stage dataset its batches come from) and
`.DATASET.CONTRACT` (the batch contract). Every module of this package is imported here, and defining a
`StageModule` subclass with a `STAGE` name registers it, so adding a stage touches: a module in this package, a
YAML in configs/stage/, and a dataset in `pdfgc.data.stage_datasets` only when no existing one fits
(docs/ARCHITECTURE.md, "Adding a stage").
"""
import importlib as _importlib
import pkgutil as _pkgutil

from pdfgc.stages.base import REGISTRY, GANStage, StageModule

for _m in _pkgutil.iter_modules(__path__):
    _importlib.import_module(f"{__name__}.{_m.name}")

STAGES: dict[str, type[StageModule]] = REGISTRY


def register_configs() -> None:
    """Register every stage's typed settings with Hydra's ConfigStore as `stage/<name>_schema` (the first entry
    of configs/stage/<name>.yaml's defaults list). Idempotent; call before composing a training config."""
    from hydra.core.config_store import ConfigStore

    cs = ConfigStore.instance()
    for name, cls in STAGES.items():
        cs.store(group="stage", name=f"{name}_schema", node=cls.Config)


__all__ = ["STAGES", "GANStage", "StageModule", "register_configs"]
