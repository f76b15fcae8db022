"""Lightning plumbing of a training run: atomic checkpoint writes, iteration-named checkpoints, and the callback
that puts the stage's training state into every checkpoint (in the format of `pdfgc.train.checkpoint`)."""
from __future__ import annotations

import logging
import shutil
from pathlib import Path
from typing import Any, Mapping

import torch

from pdfgc.fileio import atomic_path
from pdfgc.train import checkpoint as ckpt_format

try:
    import pytorch_lightning as pl
    from pytorch_lightning.plugins.io import TorchCheckpointIO
except ImportError:  # pragma: no cover
    import lightning.pytorch as pl
    from lightning.pytorch.plugins.io import TorchCheckpointIO

log = logging.getLogger(__name__)


class AtomicCheckpointIO(TorchCheckpointIO):
    """Write checkpoints to a temporary file in the target folder, fsync, then `os.replace` (atomic on POSIX):
    a crash or a full disk never leaves a truncated `last.ckpt` behind (the previous one stays intact)."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path, storage_options: Any | None = None) -> None:
        with atomic_path(path, fsync=True) as tmp, open(tmp, "wb") as f:
            torch.save(checkpoint, f)


def _atomic_copy(src: Path, dst: Path) -> None:
    with atomic_path(dst) as tmp:
        shutil.copyfile(src, tmp)


class TrainingState(pl.Callback):
    """Writes the stage's training state (`StageModule.training_state()`) into every checkpoint and restores it on
    resume; `run_config` (the resolved run config) is stored alongside for the record."""

    def __init__(self, run_config: Mapping | None = None):
        self.run_config = dict(run_config) if run_config else None

    def on_save_checkpoint(self, trainer, pl_module, checkpoint: dict) -> None:
        ckpt_format.write_state(checkpoint, pl_module.training_state(), self.run_config)

    def on_load_checkpoint(self, trainer, pl_module, checkpoint: dict) -> None:
        pl_module.load_training_state(ckpt_format.read_state(checkpoint, stage=pl_module.STAGE))


class IterationCheckpoint(pl.Callback):
    """Checkpoints named by stage iteration (not Lightning's optimizer-step count).

    Every `every` iterations: `last.ckpt` (atomic, via the trainer's CheckpointIO) and a copy
    `iter_<NNNNNNN>.ckpt`, keeping the newest `keep` periodic copies; `last.ckpt` again when training ends.
    `ckpt_path=<dirpath>/last.ckpt` resumes exactly. Temporary files a killed write left behind are removed when
    training starts.
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

    def on_train_start(self, trainer, pl_module) -> None:
        if trainer.is_global_zero and self.dirpath.is_dir():
            for stale in self.dirpath.glob(".tmp_*.ckpt*"):
                log.warning("removing %s, left by an interrupted checkpoint write", stale)
                stale.unlink(missing_ok=True)

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


class PreciseBatchNorm(pl.Callback):
    """After the stage's last iteration (`stage.iterations`), re-estimate the BatchNorm statistics of the layers it
    trains over `batches` fixed batches (`make_batches(n)`), before the final checkpoint is written (list this
    callback before `IterationCheckpoint`). See `StageModule.recalibrate_batchnorm`."""

    def __init__(self, batches: int, make_batches):
        self.batches = int(batches)
        self.make_batches = make_batches

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if self.batches > 0 and int(pl_module.iteration) == int(pl_module.config.iterations):
            n = pl_module.recalibrate_batchnorm(self.make_batches(self.batches))
            log.info("precise BN: re-estimated %d BatchNorm layers over %d batches", n, self.batches)
