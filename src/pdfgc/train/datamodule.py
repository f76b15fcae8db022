"""`PDFGCDataModule`: the LightningDataModule of every stage, on any `ClipSource`.

Constructor arguments are the keys of `configs/data/*.yaml` plus what the stage decides: `dataset` (the stage's
dataset class, `StageModule.DATASET`) and `dataset_options` (its typed `stage.dataset` settings), and, for training,
`position` (where the resumable sampler starts: the stage's iteration x batch size) and `limit`. Sources are given
as ClipSource objects or as `_target_` configs that Hydra builds in `setup` (the data config's `image_size` reaches
them by interpolation, `data.image_size: ${model.image_size}` in train.yaml).

The training loader is built here, once, around `ResumableInfiniteSampler`: nothing rebuilds it later.
"""
from __future__ import annotations

from typing import Any, Callable, Mapping

import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader

from pdfgc.data.sources import check_source
from pdfgc.data.stage_datasets import StageDataset
from pdfgc.errors import UserError
from pdfgc.stages.config import StageConfigError
from pdfgc.train.sampler import ResumableInfiniteSampler


def build_source(cfg: Any, what: str = "source"):
    """A ClipSource from an object (returned as is) or a `_target_` config (built by Hydra)."""
    if cfg is None:
        return None
    from omegaconf import DictConfig, OmegaConf

    if isinstance(cfg, DictConfig):
        cfg = OmegaConf.to_container(cfg, resolve=True)
    if not isinstance(cfg, Mapping):
        return cfg
    if "_target_" not in cfg:
        raise StageConfigError(f"data.{what}: a source config needs `_target_: module.Class` (e.g. "
                               f"pdfgc.data.synthetic.SyntheticSource), got keys {sorted(cfg)}")
    from hydra.errors import InstantiationException
    from hydra.utils import instantiate

    try:
        return instantiate(dict(cfg), _convert_="all")
    except InstantiationException as e:  # Hydra wraps what the source raised: a user error stays one line
        if isinstance(e.__cause__, UserError):
            raise e.__cause__ from None
        raise StageConfigError(f"data.{what}: cannot build {cfg['_target_']}: "
                               f"{(str(e.__cause__ or e).splitlines() or [''])[0]}") from e


class PDFGCDataModule(pl.LightningDataModule):
    """Data of one training stage.

    Args:
        dataset: the stage dataset class (a `StageDataset` subclass: motion, lip, pose, eye or emo samples).
        dataset_options: its options (an instance of `dataset.Options`; None = defaults).
        image_size: S, the model's image size; the sources must produce it.
        batch_size: samples per batch (per process).
        num_workers: DataLoader workers (0 = in the main process).
        seed: sample seed; sample `index` is a pure function of (seed, index); also seeds the sampler.
        train_source, val_source: ClipSource objects or `_target_` configs; val may be None.
        train_length: the dataset's nominal length (sources may be infinite; the sampler streams past it).
        val_length: samples in the validation set (fixed).
        pin_memory, persistent_workers, prefetch_factor: DataLoader options.
        position: callable giving the sampler's start (samples already consumed by this process); None = 0.
        limit: cycle over the first `limit` dataset items only (debug=overfit).
    """

    def __init__(self, dataset: type[StageDataset], image_size: int, dataset_options: Any = None,
                 batch_size: int = 8, num_workers: int = 0, seed: int = 0, train_source: Any = None,
                 val_source: Any = None, train_length: int = 10_000, val_length: int = 256,
                 pin_memory: bool = False, persistent_workers: bool = False, prefetch_factor: int | None = None,
                 position: Callable[[], int] | None = None, limit: int | None = None):
        super().__init__()
        if not (isinstance(dataset, type) and issubclass(dataset, StageDataset)):
            raise StageConfigError(f"PDFGCDataModule: dataset must be a StageDataset class, got {dataset!r}")
        if train_source is None:
            raise StageConfigError("data.train_source is required (a ClipSource or a config with _target_)")
        for key, v in (("image_size", image_size), ("batch_size", batch_size), ("train_length", train_length)):
            if not isinstance(v, int) or isinstance(v, bool) or v <= 0:
                raise StageConfigError(f"data.{key} must be a positive integer, got {v!r} (is it still '???'?)")
        if not isinstance(num_workers, int) or num_workers < 0:
            raise StageConfigError(f"data.num_workers must be an integer >= 0, got {num_workers!r}")
        if limit is not None and (not isinstance(limit, int) or limit < 1):
            raise StageConfigError(f"data_limit must be a positive integer or null, got {limit!r}")
        self.dataset = dataset
        self.dataset_options = dataset_options
        self.image_size = int(image_size)
        self.batch_size = int(batch_size)
        self.num_workers = int(num_workers)
        self.seed = int(seed)
        self.train_length = int(train_length)
        self.val_length = int(val_length)
        self.pin_memory = bool(pin_memory)
        self.persistent_workers = bool(persistent_workers) and self.num_workers > 0
        self.prefetch_factor = prefetch_factor
        self.position = position
        self.limit = limit
        self._train_cfg, self._val_cfg = train_source, val_source
        self.train_source = self.val_source = None
        self.train_set = self.val_set = None

    def setup(self, stage: str | None = None) -> None:
        """Build the sources and datasets (idempotent)."""
        if self.train_set is None:
            self.train_source = build_source(self._train_cfg, "train_source")
            check_source(self.train_source, name="data.train_source")
            self.train_set = self.dataset(self.train_source, length=self.train_length, seed=self.seed,
                                          image_size=self.image_size, options=self.dataset_options)
        if self.val_set is None and self._val_cfg is not None and self.val_length > 0:
            self.val_source = build_source(self._val_cfg, "val_source")
            check_source(self.val_source, name="data.val_source")
            # a different seed stream from training; fixed (plain sequential indices)
            self.val_set = self.dataset(self.val_source, length=self.val_length, seed=self.seed + 1_000_003,
                                        image_size=self.image_size, options=self.dataset_options)

    def train_dataloader(self) -> DataLoader:
        """The resumable training loader: the next sample is a function of (seed, position), so a resumed run
        continues exactly; under DDP each rank takes its own samples."""
        self.setup()
        ds = self.train_set
        mode = "stream" if getattr(ds, "unbounded", False) else "permute"
        sampler = ResumableInfiniteSampler(len(ds), seed=self.seed, position=self.position, mode=mode,
                                           limit=self.limit)
        extra = {"prefetch_factor": int(self.prefetch_factor)} if self.prefetch_factor and self.num_workers else {}
        return DataLoader(ds, batch_size=self.batch_size, sampler=sampler, num_workers=self.num_workers,
                          pin_memory=self.pin_memory, drop_last=True, persistent_workers=self.persistent_workers,
                          generator=torch.Generator().manual_seed(self.seed), **extra)

    def val_dataloader(self):
        self.setup()
        if self.val_set is None:
            return []
        return DataLoader(self.val_set, batch_size=self.batch_size, shuffle=False, num_workers=self.num_workers,
                          drop_last=False, pin_memory=self.pin_memory)

    def calibration_batches(self, n: int):
        """`n` collated training batches for re-estimating BatchNorm statistics (`stage.precise_bn`): a fixed
        seeded draw, the same in every run and after a resume (under `limit`, from the first `limit` items);
        built in this process."""
        from torch.utils.data import default_collate

        self.setup()
        ds = self.train_set
        mode = "stream" if getattr(ds, "unbounded", False) else "permute"
        sampler = iter(ResumableInfiniteSampler(len(ds), seed=self.seed + 104_729, mode=mode, limit=self.limit))
        for _ in range(int(n)):
            yield default_collate([ds[next(sampler)] for _ in range(self.batch_size)])

    def example_batch(self, split: str = "train") -> dict[str, torch.Tensor]:
        """One collated batch (no workers), e.g. for shape checks and sample grids."""
        self.setup()
        ds = self.train_set if split == "train" else self.val_set
        if ds is None:
            raise StageConfigError(f"PDFGCDataModule: no {split} dataset (data.val_source is null)")
        from torch.utils.data import default_collate

        return default_collate([ds[i] for i in range(min(self.batch_size, len(ds)))])
