"""The resumable training sampler: training length is counted in iterations, not epochs (StyleGAN's
InfiniteSampler habit), and a resumed run sees exactly the samples the uninterrupted run would have seen."""
from __future__ import annotations

from typing import Callable, Iterator

import torch
from torch.utils.data import Sampler


class ResumableInfiniteSampler(Sampler[int]):
    """Endless stream of dataset indices, resumable at any sample.

    Global sample g -> index:
      * mode "stream": g itself (mod `limit` if given). For datasets whose item is a pure function of an unbounded
        index (pdfgc's stage datasets: index i >= len draws a fresh sample), this is a never-repeating stream;
      * mode "permute": epoch e = g // n is a permutation of range(n) seeded by (seed, e); item perm_e[g % n].
    Under DDP rank r of W takes g = p*W + r at its local position p, so ranks see disjoint samples without
    Lightning's DistributedSampler. `position()` (a callable, read when iteration starts) gives the local position to
    start from: iteration x batch size after a resume.
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


class StagePosition:
    """Picklable `position()` for the sampler: samples consumed by this process so far, read from the stage
    module's iteration counter when the loader starts (after a restore)."""

    def __init__(self, module, batch_size: int):
        self.module, self.batch_size = module, batch_size

    def __call__(self) -> int:
        return int(self.module.iteration) * self.batch_size
