"""`train(cfg)`: the function behind `python train.py` (Hydra) and the tests (in-process, composed config).

One stage (`stage=<name>`) or the whole progressive chain (`chain=[motion, lip, pose, eye, emo]`, set by the
experiment files) in one process: each chained stage starts from the previous stage's `last.ckpt`
(`stage.init_from`), and after a stage that holds all four inference networks (emo) the EMA generator and the
encoders are exported in the inference format (`pdfgc.train.export`) so `python infer.py ckpt=<export>` works.

Every stage config of the run is checked before anything is built (`check_run_config`): keys the stage's typed
settings do not have, `_target_`s that are not registered stages, and values out of range are one `UserError`.
"""
from __future__ import annotations

import dataclasses
import logging
import os
import time
from pathlib import Path
from typing import Any

import torch

from pdfgc.stages import STAGES, StageModule
from pdfgc.stages.config import StageConfig, StageConfigError, validate
from pdfgc.train import checkpoint as ckpt_format
from pdfgc.train.callbacks import AtomicCheckpointIO, IterationCheckpoint, PreciseBatchNorm, TrainingState
from pdfgc.train.sampler import StagePosition

try:
    import pytorch_lightning as pl
except ImportError:  # pragma: no cover
    import lightning.pytorch as pl

log = logging.getLogger(__name__)


def _to_dict(node) -> Any:
    from omegaconf import OmegaConf

    return OmegaConf.to_container(node, resolve=True, enum_to_str=True) if OmegaConf.is_config(node) else node


# ---------------------------------------------------------------------------------------------------- configs
def stage_class(target: str, where: str = "stage") -> type[StageModule]:
    """The registered stage class named by `_target_` (only registered stages can be built)."""
    for cls in STAGES.values():
        if target == f"{cls.__module__}.{cls.__qualname__}":
            return cls
    known = sorted(f"{c.__module__}.{c.__qualname__}" for c in STAGES.values())
    raise StageConfigError(f"{where}._target_={target!r} is not a registered stage; expected one of {known} "
                           "(configs/stage/*.yaml)")


def _unknown_keys(node, schema: type, prefix: str) -> list[str]:
    """Keys of the config `node` that the dataclass `schema` does not declare (recursively)."""
    from omegaconf import DictConfig

    fields = {f.name: f for f in dataclasses.fields(schema)}
    out = []
    for key in node.keys():
        if key not in fields:
            out.append(f"{prefix}.{key}")
            continue
        sub = node._get_node(key)
        child_schema = _dataclass_type(schema, key)
        if child_schema is not None and isinstance(sub, DictConfig) and not sub._is_none():
            out.extend(_unknown_keys(sub, child_schema, f"{prefix}.{key}"))
    return out


def _dataclass_type(schema: type, name: str) -> type | None:
    import typing

    hints = typing.get_type_hints(schema)
    t = hints.get(name)
    if t is None:
        return None
    args = [a for a in typing.get_args(t) if a is not type(None)]
    for cand in [t, *args]:
        if dataclasses.is_dataclass(cand):
            return cand
    return None


def stage_config(node, where: str = "stage") -> StageConfig:
    """Typed, checked settings of one stage from its config node (`cfg.stage` or `cfg.chain_stages.<name>`)."""
    from omegaconf import OmegaConf
    from omegaconf.errors import OmegaConfBaseException

    if node is None or "_target_" not in node:
        raise StageConfigError(f"{where}: no stage `_target_`; select a stage with stage=<name> "
                               f"({sorted(STAGES)})")
    cls = stage_class(str(node["_target_"]), where)
    unknown = _unknown_keys(node, cls.Config, where)
    if unknown:
        raise StageConfigError(f"unknown setting(s) {unknown} for stage '{cls.STAGE}' "
                               f"({cls.Config.__module__}.{cls.Config.__name__}); check the spelling, or print the "
                               f"settings with `python train.py stage={cls.STAGE} --cfg job`")
    try:
        values = OmegaConf.to_container(node, resolve=True) if OmegaConf.is_config(node) else dict(node)
        typed = OmegaConf.merge(OmegaConf.structured(cls.Config), values)
        config = OmegaConf.to_object(typed)
    except OmegaConfBaseException as e:
        key = getattr(e, "full_key", None) or "?"
        msg = str(e).splitlines()[0]
        raise StageConfigError(f"{where}.{key}: {msg}") from e
    return validate(config, where)


def _check_lr_mul(config: StageConfig, where: str) -> None:
    """`optim.<g|d>.lr_mul` names components the stage builds (the discriminator only under `d`)."""
    cls = stage_class(config._target_, where)
    for opt_name in ("g", "d"):
        opt = getattr(config.optim, opt_name, None)
        for comp in (getattr(opt, "lr_mul", None) or {}):
            allowed = ("discriminator",) if opt_name == "d" else tuple(c for c in cls.COMPONENTS
                                                                          if c != "discriminator")
            if comp not in allowed:
                raise StageConfigError(f"{where}.optim.{opt_name}.lr_mul: {comp!r} is not a component this optimizer "
                                       f"trains in stage '{cls.STAGE}' (choose from {list(allowed)})")


def _check_trainable(config: StageConfig, model_cfg, where: str) -> None:
    """`stage.trainable` names components the stage builds and roles those networks have (read from the classes
    the model config names; nothing is built)."""
    from pdfgc.models.config import component_class

    if not config.trainable:
        return
    cls = stage_class(config._target_, where)
    if not isinstance(config.trainable, dict):
        raise StageConfigError(f"{where}.trainable={config.trainable!r}: expected {{component: all | [roles] | []}}")
    for comp, roles in config.trainable.items():
        if comp not in cls.COMPONENTS:
            raise StageConfigError(f"{where}.trainable: stage '{cls.STAGE}' has no component {comp!r} (it builds "
                                   f"{list(cls.COMPONENTS)})")
        if roles in ("all", None) or roles == []:
            continue
        roles = [roles] if isinstance(roles, str) else list(roles)
        entry = (model_cfg or {}).get(comp) or {}
        known = getattr(component_class(str(entry.get("_target_", ""))), "ROLES", ()) if entry else None
        if known is not None:
            bad = [r for r in roles if r != "all" and r not in known]
            if bad:
                raise StageConfigError(f"{where}.trainable.{comp}={roles}: unknown role(s) {bad}; "
                                       f"{comp} has roles {list(known) or ['all']} (or `all`, or [] for none)")


def check_run_config(cfg) -> dict[str, StageConfig]:
    """Check every stage config of the run (the chain's, or `stage`) before anything is built; returns them by
    stage name."""
    out = _check_stages(cfg)
    model_cfg = _to_dict(cfg.get("model"))
    where = "chain_stages" if cfg.get("chain") else None
    for name, config in out.items():
        _check_trainable(config, model_cfg, f"{where}.{name}" if where else "stage")
        _check_lr_mul(config, f"{where}.{name}" if where else "stage")
    return out


def _check_stages(cfg) -> dict[str, StageConfig]:
    chain = cfg.get("chain")
    if chain:
        stages = cfg.get("chain_stages") or {}
        out = {}
        for name in chain:
            if name not in stages:
                raise StageConfigError(f"chain lists stage '{name}' but chain_stages has no entry for it (have "
                                       f"{sorted(stages)}); add `- /stage@chain_stages.{name}: {name}` to the "
                                       "experiment's defaults")
            out[str(name)] = stage_config(stages[name], f"chain_stages.{name}")
        return out
    config = stage_config(cfg.get("stage"), "stage")
    return {config.name: config}


# ---------------------------------------------------------------------------------------------------- builders
def build_stage(cfg) -> StageModule:
    """The stage LightningModule of `cfg.stage`, initialised from `stage.init_from` when set."""
    config = stage_config(cfg.stage)
    cls = stage_class(config._target_)
    module = cls(config, model=_to_dict(cfg.model), seed=int(cfg.seed))
    if config.init_from:
        ckpt = ckpt_format.read(config.init_from)
        module.init_from(ckpt.components, source=str(ckpt.path))
    return module


def build_datamodule(cfg, module: StageModule):
    """The data module of `cfg.data` for `module`'s dataset, its sampler positioned by the module's iteration."""
    from hydra.utils import instantiate

    from hydra.errors import InstantiationException

    from pdfgc.errors import UserError

    options = dataclasses.asdict(module.config.dataset) if hasattr(module.config, "dataset") else None
    try:
        return instantiate(cfg.data, dataset=type(module).DATASET, dataset_options=options,
                           position=StagePosition(module, module.batch_size), limit=cfg.get("data_limit"),
                           _recursive_=False, _convert_="all")
    except InstantiationException as e:  # an unknown data key or a refused value: one line, not Hydra's wrapper
        if isinstance(e.__cause__, UserError):
            raise e.__cause__ from None
        raise StageConfigError(f"data: cannot build {cfg.data.get('_target_')}: "
                               f"{(str(e.__cause__ or e).splitlines() or [''])[0]}") from e


def _setup_wandb_env() -> None:
    # Never prompt for a login: without an API key (and without an explicit mode) wandb runs offline.
    if not os.environ.get("WANDB_API_KEY") and not os.environ.get("WANDB_MODE"):
        os.environ["WANDB_MODE"] = "offline"
    os.environ.setdefault("WANDB_SILENT", "true")


def _instantiate_loggers(cfg) -> list:
    from hydra.utils import instantiate

    node = cfg.get("logger")
    if not node:
        return []
    loggers = []
    for name, lcfg in node.items():
        if lcfg is None:
            continue
        if "Wandb" in str(lcfg.get("_target_", "")):
            _setup_wandb_env()
        Path(str(lcfg.get("save_dir", "."))).mkdir(parents=True, exist_ok=True)
        loggers.append(instantiate(lcfg))
    return loggers


def _finish_wandb_run(logger) -> None:
    """End a stage's wandb run, so that the next stage of a chain starts its own (its steps restart at 0; wandb
    would otherwise reuse the run and drop the new stage's earlier steps)."""
    try:
        from pytorch_lightning.loggers import WandbLogger
    except ImportError:  # pragma: no cover
        return
    if isinstance(logger, WandbLogger):
        import wandb

        wandb.finish()


def _instantiate_callbacks(cfg) -> list:
    from hydra.utils import instantiate

    node = cfg.get("callbacks")
    return [instantiate(c) for c in node.values() if c is not None] if node else []


def _backend_info() -> Any:
    try:
        import pdfgc_ops

        return pdfgc_ops.backend_info()
    except Exception as e:  # the ops' report must not break training if it fails
        return f"unavailable ({type(e).__name__}: {e})"


# ---------------------------------------------------------------------------------------------------- running
def run_stage(cfg) -> dict:
    """Train one stage as configured; returns {"stage", "last_ckpt", "module", "trainer", "seconds",
    "iterations"}."""
    from hydra.utils import instantiate

    _quiet_known_warnings()
    check_run_config(cfg)
    ckpt = cfg.get("ckpt_path")
    if ckpt:  # a wrong or damaged file is one clear line before anything is built
        ckpt_format.read_state(ckpt_format.load(ckpt), ckpt, stage=stage_config(cfg.stage).name)
    pl.seed_everything(int(cfg.seed), workers=True, verbose=False)
    out_dir = Path(str(cfg.paths.output_dir))
    out_dir.mkdir(parents=True, exist_ok=True)
    module = build_stage(cfg)
    datamodule = build_datamodule(cfg, module)
    loader = datamodule.train_dataloader()
    loggers = _instantiate_loggers(cfg)
    resolved = _to_dict(cfg)
    module.draw_batches = datamodule.calibration_batches  # fixed seeded batches for a stage's own set-up fits
    precise = PreciseBatchNorm(module.config.precise_bn, datamodule.calibration_batches)
    callbacks = [precise] + _instantiate_callbacks(cfg) + [TrainingState(run_config=resolved)]
    max_steps = module.optimizer_steps()
    extra = {}
    accel = str(cfg.trainer.get("accelerator", "auto"))
    if cfg.trainer.get("sync_batchnorm") and (accel == "cpu" or not torch.cuda.is_available()):
        # torch's SyncBatchNorm is CUDA-only; on CPU (gloo) each process keeps its own BN statistics.
        log.warning("trainer.sync_batchnorm=true ignored: SyncBatchNorm needs CUDA (running on CPU)")
        extra["sync_batchnorm"] = False
    trainer = instantiate(cfg.trainer, logger=loggers if loggers else False, callbacks=callbacks,
                          plugins=[AtomicCheckpointIO()], max_steps=max_steps, enable_checkpointing=False, **extra)
    for lg in loggers:
        lg.log_hyperparams({"config": resolved, "ops_backend": _backend_info(), "stage": module.STAGE,
                            "optimizer_steps_per_run": max_steps})
    t0 = time.perf_counter()
    trainer.fit(module, train_dataloaders=loader, ckpt_path=str(ckpt) if ckpt else None, weights_only=True)
    seconds = time.perf_counter() - t0
    last = None
    for cb in callbacks:
        if isinstance(cb, IterationCheckpoint) and cb.last_path.exists():
            last = cb.last_path
    for lg in loggers:
        if hasattr(lg, "finalize"):
            lg.finalize("success")
        _finish_wandb_run(lg)
    log.info("stage %s: %d iterations in %.1f s (global_step %d) -> %s", module.STAGE, module.iteration,
             seconds, trainer.global_step, last)
    return {"stage": module.STAGE, "last_ckpt": last, "module": module, "trainer": trainer,
            "seconds": seconds, "iterations": module.iteration}


def _stage_cfg(cfg, name: str, out_dir: Path, init_from: str | None):
    """A copy of `cfg` whose `stage` is `chain_stages[name]`, writing under `out_dir`."""
    from omegaconf import OmegaConf, open_dict

    sub = OmegaConf.create(OmegaConf.to_container(cfg, resolve=False))
    with open_dict(sub):
        sub.stage = OmegaConf.to_container(cfg.chain_stages[name], resolve=False)
        sub.chain = None
        sub.chain_stages = {}
        sub.paths.output_dir = str(out_dir)
        sub.task_name = name
        if init_from is not None:
            sub.stage.init_from = str(init_from)
    return sub


def _quiet_known_warnings() -> None:
    import warnings

    # Frozen parts and the EMA generator are in eval mode on purpose (see StageModule.train).
    warnings.filterwarnings("ignore", message=r".*module\(s\) in eval mode at the start of training.*")


def train(cfg) -> dict:
    """Run `cfg` (a composed Hydra config): one stage, or the chain. Returns a summary dict:
    {"stages": [per-stage results without modules], "last_ckpt": path, "export": path or None,
     "first_ckpt": {stage name: last.ckpt}}."""
    from pdfgc.train.export import export_from_checkpoint

    check_run_config(cfg)
    torch.set_float32_matmul_precision("high")
    _quiet_known_warnings()
    threads = cfg.get("torch_threads")
    if threads:
        # Measured on the shared 2-core machine: the demo's stage 1 ran at 0.98 optimizer steps/s with torch's
        # default 2 threads + 1 loader worker + other jobs, and at 13.6 steps/s with 1 thread (OpenMP threads
        # spinning against the loader worker and each other).
        torch.set_num_threads(int(threads))
    chain = cfg.get("chain")
    root = Path(str(cfg.paths.output_dir))
    results = []
    if chain:
        prev = cfg.chain_stages[chain[0]].get("init_from")
        for i, name in enumerate(chain):
            sub = _stage_cfg(cfg, str(name), root / f"{i + 1}_{name}", prev)
            r = run_stage(sub)
            if r["last_ckpt"] is None:
                raise StageConfigError(f"stage {name} wrote no last.ckpt (callbacks.iteration_checkpoint missing?); "
                                       "the chain cannot continue")
            prev = r["last_ckpt"]
            results.append(r)
    else:
        results.append(run_stage(cfg))
    summary = {"stages": [{k: v for k, v in r.items() if k not in ("module", "trainer")} for r in results],
               "last_ckpt": results[-1]["last_ckpt"], "export": None,
               "checkpoints": {r["stage"]: r["last_ckpt"] for r in results}}
    export_cfg = cfg.get("export") or {}
    last_module = results[-1]["module"]
    if export_cfg.get("enabled", False) and summary["last_ckpt"] is not None and \
            {"appearance", "motion", "audio", "generator"} <= set(last_module.nets):
        summary["export"] = export_from_checkpoint(summary["last_ckpt"], Path(str(export_cfg["dir"])))
        log.info("exported inference networks to %s (python infer.py ckpt=%s)", summary["export"],
                 summary["export"])
    return summary
