"""Feature-level decorrelation with memory banks (L_decor of the emo stage, SPEC 4.1).

The emotion code must carry no information linearly predictable from the audio / lip features. With only a batch
the correlation estimate is noisy, so both features are concatenated with FIFO memory banks of recent (detached)
features before the statistic is computed; gradients flow through the current batch only.
"""
from __future__ import annotations

import torch
from torch import nn


def cross_correlation_loss(x: torch.Tensor, y: torch.Tensor, eps: float = 1e-5) -> torch.Tensor:
    """Mean squared Pearson correlation between every dimension of x and every dimension of y.

    x (N,Dx), y (N,Dy), rows paired (same sample). Each column is standardised over the N rows; the correlation
    matrix is `C = x_std^T y_std / N` (Dx,Dy) with entries in [-1,1]; the loss is `mean(C^2)` in [0,1]: 0 when the
    two sets are uncorrelated, 1 when every pair of dims is perfectly (anti-)correlated. N >= 2.
    """
    if x.shape[0] != y.shape[0] or x.shape[0] < 2:
        raise ValueError(f"cross_correlation_loss: need the same N >= 2 rows, got {x.shape[0]} and {y.shape[0]}")
    xs = (x - x.mean(0)) / (x.std(0, unbiased=False) + eps)
    ys = (y - y.mean(0)) / (y.std(0, unbiased=False) + eps)
    c = xs.t() @ ys / x.shape[0]
    return c.square().mean()


class MemoryBank(nn.Module):
    """FIFO bank of the last `size` feature rows `(D,)`, kept in buffers so checkpoints (and exact resume) carry it.

    `push(x (B,D))` stores detached rows (oldest overwritten); `with_bank(x)` returns `cat([x, bank])` (current rows
    first, gradients through x only). Under DDP each rank keeps its own bank (no all-gather: the bank only sharpens a
    statistic, it need not be global).
    """

    def __init__(self, dim: int, size: int):
        super().__init__()
        if size < 0:
            raise ValueError(f"memory bank size must be >= 0, got {size}")
        self.dim, self.size = dim, size
        self.register_buffer("bank", torch.zeros(size, dim))
        self.register_buffer("ptr", torch.zeros((), dtype=torch.long))
        self.register_buffer("count", torch.zeros((), dtype=torch.long))

    @torch.no_grad()
    def push(self, x: torch.Tensor) -> None:
        if self.size == 0:
            return
        x = x.detach().reshape(-1, self.dim)[-self.size:]
        idx = (self.ptr + torch.arange(len(x), device=x.device)) % self.size
        self.bank[idx] = x.to(self.bank.dtype)
        self.ptr.copy_((self.ptr + len(x)) % self.size)
        self.count.copy_(torch.clamp(self.count + len(x), max=self.size))

    def stored(self) -> torch.Tensor:
        """The valid rows, oldest first is not guaranteed (order does not matter for the statistic)."""
        return self.bank[: int(self.count)]

    def with_bank(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([x, self.stored().to(x)], dim=0)
