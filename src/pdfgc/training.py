"""`train(cfg)`: the function behind `python train.py` (Hydra) and the tests (in-process, composed config).

One stage (`stage=<name>`) or the whole progressive chain (`chain=[motion, lip, pose, eye, emo]`, set by the
experiment files) in one process: each chained stage starts from the previous stage's `last.ckpt`
(`stage.init_from`), and after a stage that holds all four inference networks (emo) the EMA generator and the
encoders are exported in the inference format (`PDFGCModels.save_pretrained`) so `python infer.py ckpt=<export>`
works. With `demo.enabled` a video with swapped controls and the synthetic evaluation report follow.

Also here: the resumable infinite sampler (exact resume, DDP sharding), the atomic checkpoint writer and the
iteration-named checkpoint callback.
"""
from __future__ import annotations

import logging
import os
import shutil
import time
from pathlib import Path
from typing import Any, Callable, Iterator

import torch
from torch.utils.data import DataLoader, Sampler

from pdfgc.fileio import atomic_path

try:
    import pytorch_lightning as pl
    from pytorch_lightning.plugins.io import TorchCheckpointIO
except ImportError:  # pragma: no cover
    import lightning.pytorch as pl
    from lightning.pytorch.plugins.io import TorchCheckpointIO

log = logging.getLogger(__name__)


# ---------------------------------------------------------------------------------------------------- sampling
class ResumableInfiniteSampler(Sampler[int]):
    """Endless stream of dataset indices, resumable at any sample (training length is counted in iterations, not
    epochs: StyleGAN's InfiniteSampler habit).

    Global sample g -> index:
      * mode "stream": g itself (mod `limit` if given). For datasets whose item is a pure function of an unbounded
        index (pdfgc's stage datasets: index i >= len draws a fresh sample), this is a never-repeating stream;
      * mode "permute": epoch e = g // n is a permutation of range(n) seeded by (seed, e); item perm_e[g % n].
    Under DDP rank r of W takes g = p*W + r at its local position p, so ranks see disjoint samples without
    Lightning's DistributedSampler. `position()` (a callable, read when iteration starts) gives the local position to
    start from: iteration x batch size after a resume, so the resumed run sees exactly the samples the
    uninterrupted run would have seen.
    """

    def __init__(self, dataset_len: int, seed: int = 0, position: Callable[[], int] | None = None,
                 mode: str = "permute", limit: int | None = None):
        if dataset_len <= 0:
            raise ValueError(f"ResumableInfiniteSampler: the dataset is empty (len {dataset_len})")
        if mode not in ("stream", "permute"):
            raise ValueError(f"sampler mode must be 'stream' or 'permute', got {mode!r}")
        self.n = min(dataset_len, limit) if limit else dataset_len
        self.limit = int(limit) if limit else None
        self.seed = int(seed)
        self.position = position or (lambda: 0)
        self.mode = mode

    def _perm(self, epoch: int) -> torch.Tensor:
        g = torch.Generator().manual_seed(self.seed * 7919 + epoch)
        return torch.randperm(self.n, generator=g)

    def index(self, g: int, _cache: dict | None = None) -> int:
        """Dataset index of global sample g."""
        if self.mode == "stream":
            return g % self.limit if self.limit else g
        e = g // self.n
        if _cache is not None:
            if _cache.get("epoch") != e:
                _cache["epoch"], _cache["perm"] = e, self._perm(e)
            perm = _cache["perm"]
        else:
            perm = self._perm(e)
        return int(perm[g % self.n])

    def __iter__(self) -> Iterator[int]:
        import torch.distributed as dist

        world, rank = 1, 0
        if dist.is_available() and dist.is_initialized():
            world, rank = dist.get_world_size(), dist.get_rank()
        p = int(self.position())
        cache: dict = {}
        while True:
            yield self.index(p * world + rank, cache)
            p += 1


class _StagePosition:
    """Picklable `position()` for the sampler: samples consumed by this process so far (read after a restore)."""

    def __init__(self, module, batch_size: int):
        self.module, self.batch_size = module, batch_size

    def __call__(self) -> int:
        return int(self.module.iteration) * self.batch_size


def resumable_loader(loader: DataLoader, module, seed: int, limit: int | None = None) -> DataLoader:
    """Rebuild `loader` (from the data module) around a `ResumableInfiniteSampler` driven by `module.iteration`.

    The dataset, batch size, collate function and worker settings are kept. Exactness of a resume also needs the
    dataset item to be a function of its index (true for data=synthetic and the vox2 shards; augmentation is
    seeded per index in pdfgc.data). Iterable datasets are returned unchanged (with a warning).
    """
    from torch.utils.data import IterableDataset

    ds = loader.dataset
    if isinstance(ds, IterableDataset):
        log.warning("the training dataset is iterable: using its loader as is (resume is not sample-exact)")
        return loader
    bs = loader.batch_size
    if bs is None:
        raise ValueError("data module's train_dataloader must use batch_size (not a batch_sampler)")
    # pdfgc's stage datasets are functions of an unbounded index (their EpochSampler feeds epoch*len + i)
    mode = "stream" if hasattr(loader.sampler, "set_epoch") and type(loader.sampler).__name__ == "EpochSampler" \
        else "permute"
    sampler = ResumableInfiniteSampler(len(ds), seed=seed, position=_StagePosition(module, bs), mode=mode,
                                       limit=limit)
    nw = loader.num_workers
    return DataLoader(ds, batch_size=bs, sampler=sampler, num_workers=nw, collate_fn=loader.collate_fn,
                      pin_memory=loader.pin_memory, drop_last=True, worker_init_fn=loader.worker_init_fn,
                      persistent_workers=bool(nw and loader.persistent_workers),
                      generator=torch.Generator().manual_seed(seed))


# ---------------------------------------------------------------------------------------------------- checkpoints
class AtomicCheckpointIO(TorchCheckpointIO):
    """Write checkpoints to a temporary file in the target folder, fsync, then `os.replace` (atomic on POSIX):
    a crash or a full disk never leaves a truncated `last.ckpt` behind (the previous one stays intact)."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path, storage_options: Any | None = None) -> None:
        with atomic_path(path, fsync=True) as tmp, open(tmp, "wb") as f:
            torch.save(checkpoint, f)


def _atomic_copy(src: Path, dst: Path) -> None:
    with atomic_path(dst) as tmp:
        shutil.copyfile(src, tmp)


class IterationCheckpoint(pl.Callback):
    """Checkpoints named by stage iteration (not Lightning's optimizer-step count).

    Every `every` iterations: `last.ckpt` (atomic, via the trainer's CheckpointIO) and a copy
    `iter_<NNNNNNN>.ckpt`, keeping the newest `keep` periodic copies; `last.ckpt` again when training ends.
    `ckpt_path=<dirpath>/last.ckpt` resumes exactly.
    """

    def __init__(self, dirpath: str, every: int = 0, keep: int = 3, save_on_train_end: bool = True):
        self.dirpath = Path(dirpath)
        self.every = int(every or 0)
        self.keep = int(keep)
        self.save_on_train_end = save_on_train_end
        self._last_saved: int | None = None

    @property
    def last_path(self) -> Path:
        return self.dirpath / "last.ckpt"

    def _save(self, trainer, it: int, periodic: bool) -> None:
        trainer.save_checkpoint(self.last_path)
        self._last_saved = it
        if periodic and trainer.is_global_zero:
            _atomic_copy(self.last_path, self.dirpath / f"iter_{it:07d}.ckpt")
            olds = sorted(self.dirpath.glob("iter_*.ckpt"))
            for p in olds[: max(0, len(olds) - self.keep)]:
                p.unlink()
        trainer.strategy.barrier("pdfgc_checkpoint")

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        it = int(pl_module.iteration)
        if self.every and it % self.every == 0:
            self._save(trainer, it, periodic=True)

    def on_train_end(self, trainer, pl_module):
        if self.save_on_train_end and self._last_saved != int(pl_module.iteration):
            self._save(trainer, int(pl_module.iteration), periodic=False)


# ---------------------------------------------------------------------------------------------------- train()
def _to_dict(node) -> Any:
    from omegaconf import OmegaConf

    return OmegaConf.to_container(node, resolve=True) if OmegaConf.is_config(node) else node


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


def _instantiate_callbacks(cfg) -> list:
    from hydra.utils import instantiate

    node = cfg.get("callbacks")
    return [instantiate(c) for c in node.values() if c is not None] if node else []


def _backend_info() -> Any:
    try:
        import pdfgc_ops

        return pdfgc_ops.backend_info()
    except Exception as e:  # the ops owner's function must not break training if it fails
        return f"unavailable ({type(e).__name__}: {e})"


def build_module(cfg):
    """The stage LightningModule for `cfg.stage` (class from `pdfgc.stages.STAGES[cfg.stage.name]`)."""
    from pdfgc.stages import STAGES

    name = str(cfg.stage.name)
    if name not in STAGES:
        raise KeyError(f"stage.name={name!r}: expected one of {list(STAGES)} (configs/stage/*.yaml)")
    run_config = _to_dict(cfg)
    return STAGES[name](model=_to_dict(cfg.model), stage=_to_dict(cfg.stage), batch_size=int(cfg.stage.batch_size),
                        seed=int(cfg.seed), run_config=run_config)


def build_dataloader(cfg, module) -> DataLoader:
    """Instantiate `cfg.data` (a LightningDataModule), take its train loader and make it resumable."""
    from hydra.utils import instantiate

    dm = instantiate(cfg.data)
    if hasattr(dm, "prepare_data"):
        dm.prepare_data()
    if hasattr(dm, "setup"):
        dm.setup("fit")
    loader = dm.train_dataloader()
    return resumable_loader(loader, module, int(cfg.seed), limit=cfg.get("data_limit"))


def run_stage(cfg) -> dict:
    """Train one stage as configured; returns {"stage", "last_ckpt", "module", "seconds", "iterations"}."""
    from hydra.utils import instantiate

    _quiet_known_warnings()
    pl.seed_everything(int(cfg.seed), workers=True, verbose=False)
    out_dir = Path(str(cfg.paths.output_dir))
    out_dir.mkdir(parents=True, exist_ok=True)
    module = build_module(cfg)
    loader = build_dataloader(cfg, module)
    loggers = _instantiate_loggers(cfg)
    callbacks = _instantiate_callbacks(cfg)
    iterations = int(cfg.stage.iterations)
    max_steps = type(module).optimizer_steps(iterations, _to_dict(cfg.stage))
    extra = {}
    accel = str(cfg.trainer.get("accelerator", "auto"))
    if cfg.trainer.get("sync_batchnorm") and (accel == "cpu" or not torch.cuda.is_available()):
        # torch's SyncBatchNorm is CUDA-only; on CPU (gloo) each process keeps its own BN statistics.
        log.warning("trainer.sync_batchnorm=true ignored: SyncBatchNorm needs CUDA (running on CPU)")
        extra["sync_batchnorm"] = False
    trainer = instantiate(cfg.trainer, logger=loggers if loggers else False, callbacks=callbacks,
                          plugins=[AtomicCheckpointIO()], max_steps=max_steps, enable_checkpointing=False, **extra)
    resolved = _to_dict(cfg)
    for lg in loggers:
        lg.log_hyperparams({"config": resolved, "ops_backend": _backend_info(), "stage": str(cfg.stage.name),
                            "optimizer_steps_per_run": max_steps})
    t0 = time.perf_counter()
    ckpt = cfg.get("ckpt_path")
    trainer.fit(module, train_dataloaders=loader, ckpt_path=str(ckpt) if ckpt else None)
    seconds = time.perf_counter() - t0
    last = None
    for cb in callbacks:
        if isinstance(cb, IterationCheckpoint) and cb.last_path.exists():
            last = cb.last_path
    for lg in loggers:
        if hasattr(lg, "finalize"):
            lg.finalize("success")
    log.info("stage %s: %d iterations in %.1f s (global_step %d) -> %s", cfg.stage.name, module.iteration,
             seconds, trainer.global_step, last)
    return {"stage": str(cfg.stage.name), "last_ckpt": last, "module": module, "trainer": trainer,
            "seconds": seconds, "iterations": module.iteration}


def _stage_cfg(cfg, name: str, out_dir: Path, init_from: str | None):
    """A copy of `cfg` whose `stage` is `chain_stages[name]`, writing under `out_dir`."""
    from omegaconf import OmegaConf, open_dict

    if name not in (cfg.get("chain_stages") or {}):
        raise KeyError(f"chain lists stage '{name}' but chain_stages has no entry for it (have "
                       f"{sorted(cfg.get('chain_stages') or {})}); add `- /stage@chain_stages.{name}: {name}` "
                       f"to the experiment's defaults")
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


def export_from_checkpoint(ckpt_path, out_dir) -> Path:
    """Write the inference export (`PDFGCModels.save_pretrained`) from a stage checkpoint that holds (or carries)
    appearance, motion, audio and a generator; the EMA generator is preferred. Returns the export folder."""
    from pdfgc.models.bundle import PDFGCModels, build_component
    from pdfgc.stages.base import CHECKPOINT_KEY, components_from_checkpoint

    ckpt = torch.load(ckpt_path, map_location="cpu", weights_only=False)
    comps = components_from_checkpoint(ckpt)
    model_cfg = ckpt[CHECKPOINT_KEY]["model"]
    nets = {}
    for name, sources in (("appearance", ("appearance",)), ("motion", ("motion",)), ("audio", ("audio",)),
                          ("generator", ("generator_ema", "generator"))):
        src = next((s for s in sources if s in comps), None)
        if src is None:
            raise KeyError(f"{ckpt_path}: cannot export, no '{name}' network in the checkpoint (has "
                           f"{sorted(comps)}); export needs a checkpoint of the emo stage (or later)")
        net = build_component(model_cfg[name])
        net.load_state_dict(comps[src], strict=True)
        nets[name] = net.eval()
    models = PDFGCModels(**nets)
    return Path(models.save_pretrained(out_dir))


def _quiet_known_warnings() -> None:
    import warnings

    # Frozen parts and the EMA generator are in eval mode on purpose (see StageModule.train).
    warnings.filterwarnings("ignore", message=r".*module\(s\) in eval mode at the start of training.*")


def train(cfg) -> dict:
    """Run `cfg` (a composed Hydra config): one stage, or the chain. Returns a summary dict:
    {"stages": [per-stage results without modules], "last_ckpt": path, "export": path or None, "demo": {...}}."""
    from omegaconf import OmegaConf

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
        prev = cfg.chain_stages[chain[0]].get("init_from") if chain[0] in (cfg.get("chain_stages") or {}) else None
        for i, name in enumerate(chain):
            sub = _stage_cfg(cfg, str(name), root / f"{i + 1}_{name}", prev)
            r = run_stage(sub)
            if r["last_ckpt"] is None:
                raise RuntimeError(f"stage {name} wrote no last.ckpt (callbacks.iteration_checkpoint missing?); "
                                   "the chain cannot continue")
            prev = r["last_ckpt"]
            results.append(r)
    else:
        results.append(run_stage(cfg))
    summary = {"stages": [{k: v for k, v in r.items() if k not in ("module", "trainer")} for r in results],
               "last_ckpt": results[-1]["last_ckpt"], "export": None, "demo": None}
    export_cfg = cfg.get("export") or {}
    last_module = results[-1]["module"]
    if export_cfg.get("enabled", False) and summary["last_ckpt"] is not None and \
            {"appearance", "motion", "audio", "generator"} <= set(last_module.nets):
        summary["export"] = export_from_checkpoint(summary["last_ckpt"], Path(str(export_cfg["dir"])))
        log.info("exported inference networks to %s (python infer.py ckpt=%s)", summary["export"],
                 summary["export"])
    demo_cfg = cfg.get("demo") or {}
    if demo_cfg.get("enabled", False) and summary["export"] is not None:
        from pdfgc.stages.export import run_demo

        summary["demo"] = run_demo(summary["export"], root / "demo", OmegaConf.to_container(cfg.data, resolve=True),
                                   num_frames=int(demo_cfg.get("num_frames", 50)),
                                   eval_clips=int(demo_cfg.get("eval_clips", 4)), seed=int(cfg.seed),
                                   estimator_steps=int(demo_cfg.get("estimator_steps", 300)),
                                   stage1_ckpt=next((r["last_ckpt"] for r in results
                                                     if getattr(r["module"], "STAGE", None) == "motion"), None))
    return summary
