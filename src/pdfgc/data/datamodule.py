"""`PDFGCDataModule`: the LightningDataModule of every stage, on any `ClipSource` (the only data file importing
Lightning).

Constructor arguments are the keys of `configs/data/*.yaml`. Sources are given as a ClipSource object or as a
config dict with `_target_` (e.g. `pdfgc.data.synthetic.SyntheticSource` or `pdfgc.data.vox2.Vox2Source`); the
module adds `image_size` to a source config that does not set it, so the model's size flows to the data by one
interpolation (`data.image_size: ${model.image_size}` in train.yaml).
"""
from __future__ import annotations

import importlib
import inspect
from typing import Any, Mapping

import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader

from pdfgc.data.contract import STAGES
from pdfgc.data.sources import check_source
from pdfgc.data.stage_datasets import EpochSampler, build_stage_dataset


def instantiate_source(cfg: Any, image_size: int | None = None, what: str = "source"):
    """A ClipSource from an object (returned as is) or a mapping with `_target_` ("module.Class") and kwargs.

    `image_size` is passed when the mapping lacks it and the class accepts it.
    """
    if cfg is None:
        return None
    if not isinstance(cfg, Mapping):
        try:  # an OmegaConf DictConfig is a Mapping only after conversion
            from omegaconf import DictConfig, OmegaConf

            if isinstance(cfg, DictConfig):
                cfg = OmegaConf.to_container(cfg, resolve=True)
        except ImportError:
            pass
    if not isinstance(cfg, Mapping):
        return cfg
    cfg = dict(cfg)
    target = cfg.pop("_target_", None)
    if not target or "." not in str(target):
        raise ValueError(f"data.{what}: a source config needs `_target_: module.Class` "
                         f"(e.g. pdfgc.data.synthetic.SyntheticSource), got {target!r}")
    module, _, name = str(target).rpartition(".")
    try:
        cls = getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError) as e:
        raise ValueError(f"data.{what}._target_: cannot import {target!r} ({e})") from e
    if image_size is not None and "image_size" not in cfg:
        try:
            params = inspect.signature(cls).parameters
        except (TypeError, ValueError):
            params = {}
        if "image_size" in params:
            cfg["image_size"] = int(image_size)
    return cls(**cfg)


class PDFGCDataModule(pl.LightningDataModule):
    """Data of one training stage.

    Args:
        stage: motion | lip | pose | eye | emo (the batch contract, `pdfgc.data.contract`).
        image_size: S, the model's image size; the sources must produce it.
        batch_size: samples per batch (per process).
        num_workers: DataLoader workers (0 = in the main process).
        seed: sample seed; sample `index` is a pure function of (seed, index).
        train_source, val_source: ClipSource objects or `_target_` configs; val may be None.
        train_length: samples per training epoch (sources may be infinite; each epoch draws new samples).
        val_length: samples in the validation set (fixed across epochs).
        num_offsets: N, frames per clip in a lip batch element.
        window: K, consecutive frames of an emo batch element.
        min_gap: minimum distance (frames) between lip offsets when the clip allows it.
        augment: `DrivingAugment` fields for the motion stage (SPEC 4.2 defaults).
        eye_feather: soft edge of the eye paste as a fraction of S.
        eye_negative_candidates: eye negatives are the most different (in known eye state) of this many frames.
        pin_memory, persistent_workers, prefetch_factor: DataLoader options.
        drop_last: drop the last incomplete training batch.
    """

    def __init__(self, stage: str, image_size: int, batch_size: int = 8, num_workers: int = 0, seed: int = 0,
                 train_source: Any = None, val_source: Any = None, train_length: int = 10_000,
                 val_length: int = 256, num_offsets: int = 5, window: int = 5, min_gap: int = 5,
                 augment: Mapping | None = None, eye_feather: float = 0.04, eye_negative_candidates: int = 4,
                 pin_memory: bool = False,
                 persistent_workers: bool = False, prefetch_factor: int | None = None, drop_last: bool = True):
        super().__init__()
        if stage not in STAGES:
            raise ValueError(f"data.stage must be one of {list(STAGES)}, got {stage!r}")
        if train_source is None:
            raise ValueError("data.train_source is required (a ClipSource or a config with _target_)")
        for key, v in (("image_size", image_size), ("batch_size", batch_size), ("train_length", train_length)):
            if not isinstance(v, int) or v <= 0:
                raise ValueError(f"data.{key} must be a positive integer, got {v!r} (is it still '???'?)")
        self.stage = stage
        self.image_size = int(image_size)
        self.batch_size = int(batch_size)
        self.num_workers = int(num_workers)
        self.seed = int(seed)
        self.train_length = int(train_length)
        self.val_length = int(val_length)
        self.opts = dict(num_offsets=int(num_offsets), window=int(window), min_gap=int(min_gap),
                         augment=dict(augment) if augment else None, eye_feather=float(eye_feather),
                         eye_negative_candidates=int(eye_negative_candidates))
        self.loader_opts = dict(pin_memory=bool(pin_memory), persistent_workers=bool(persistent_workers)
                                and self.num_workers > 0)
        if prefetch_factor is not None and self.num_workers > 0:
            self.loader_opts["prefetch_factor"] = int(prefetch_factor)
        self.drop_last = bool(drop_last)
        self._train_cfg, self._val_cfg = train_source, val_source
        self.train_source = self.val_source = None
        self.train_set = self.val_set = None

    def setup(self, stage: str | None = None) -> None:
        """Build the sources and datasets (idempotent)."""
        if self.train_set is None:
            self.train_source = instantiate_source(self._train_cfg, self.image_size, "train_source")
            check_source(self.train_source, name="data.train_source")
            self.train_set = build_stage_dataset(self.stage, self.train_source, length=self.train_length,
                                                 seed=self.seed, image_size=self.image_size, **self.opts)
        if self.val_set is None and self._val_cfg is not None and self.val_length > 0:
            self.val_source = instantiate_source(self._val_cfg, self.image_size, "val_source")
            check_source(self.val_source, name="data.val_source")
            # a different seed stream from training; fixed across epochs (plain sequential indices)
            self.val_set = build_stage_dataset(self.stage, self.val_source, length=self.val_length,
                                               seed=self.seed + 1_000_003, image_size=self.image_size, **self.opts)

    def train_dataloader(self) -> DataLoader:
        self.setup()
        return DataLoader(self.train_set, batch_size=self.batch_size, sampler=EpochSampler(self.train_length),
                          num_workers=self.num_workers, drop_last=self.drop_last, **self.loader_opts)

    def val_dataloader(self):
        self.setup()
        if self.val_set is None:
            return []
        return DataLoader(self.val_set, batch_size=self.batch_size, shuffle=False, num_workers=self.num_workers,
                          drop_last=False, **self.loader_opts)

    def example_batch(self, split: str = "train") -> dict[str, torch.Tensor]:
        """One collated batch (no workers), e.g. for shape checks and sample grids."""
        self.setup()
        ds = self.train_set if split == "train" else self.val_set
        if ds is None:
            raise ValueError(f"PDFGCDataModule: no {split} dataset (data.val_source is null)")
        from torch.utils.data import default_collate

        return default_collate([ds[i] for i in range(min(self.batch_size, len(ds)))])
