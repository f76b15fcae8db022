"""Contrastive losses: audio-visual InfoNCE (lip stage, SPEC 4.1/4.3) and eye triplets (eye stage).

Similarity of two feature sets (after L2 normalisation of each row):
  * "cosine":  s(a, v) = <a, v>                           (standard InfoNCE / CLIP)
  * "inv_l2":  s(a, v) = 1 / (||a - v||_2 + eps)          (the form found in the reference's leaked 2021 trainer)
Both are divided by a temperature before the softmax cross-entropy.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

SIMILARITIES = ("cosine", "inv_l2")


def pairwise_similarity(a: torch.Tensor, b: torch.Tensor, kind: str = "cosine", eps: float = 1e-6) -> torch.Tensor:
    """`a (N,D)`, `b (M,D)` -> similarity matrix `(N,M)` of the L2-normalised rows."""
    if kind not in SIMILARITIES:
        raise ValueError(f"similarity: expected one of {SIMILARITIES}, got {kind!r}")
    a = F.normalize(a, dim=-1)
    b = F.normalize(b, dim=-1)
    if kind == "cosine":
        return a @ b.t()
    # cdist's backward is unstable at distance 0; the explicit form with eps inside the root is not.
    d2 = (a[:, None, :] - b[None, :, :]).square().sum(-1)
    return 1.0 / (torch.sqrt(d2 + eps * eps) + eps)


def info_nce(query: torch.Tensor, keys: torch.Tensor, temperature: float = 0.07, similarity: str = "cosine",
             mask: torch.Tensor | None = None) -> torch.Tensor:
    """One-directional InfoNCE: query i's positive is keys[i], every other key is a negative.

    query (N,D), keys (N,D); `mask (N,N)` bool, optional: False entries are excluded from the softmax (used to
    restrict negatives, e.g. to the same clip). Returns the mean over queries of
    `-log softmax_j(s(q_i, k_j) / T)[i]`.
    """
    if query.shape != keys.shape:
        raise ValueError(f"info_nce: query {tuple(query.shape)} and keys {tuple(keys.shape)} must match")
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    logits = pairwise_similarity(query, keys, similarity) / temperature
    if mask is not None:
        mask = mask | torch.eye(len(query), dtype=torch.bool, device=query.device)
        logits = logits.masked_fill(~mask, float("-inf"))
    target = torch.arange(len(query), device=query.device)
    return F.cross_entropy(logits, target)


def bidirectional_info_nce(audio: torch.Tensor, visual: torch.Tensor, temperature: float = 0.07,
                           similarity: str = "cosine", detach_other: bool = True,
                           mask: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
    """Audio->visual and visual->audio InfoNCE (L_a2v, L_v2a of SPEC 4.1).

    audio (N,D), visual (N,D): row i of both comes from the same instant of the same clip (the positive pair);
    negatives are all other rows (other offsets of the same clip and other clips), optionally restricted by `mask`.
    With `detach_other` each direction only trains its query modality (the leaked trainer's choice): a2v moves
    audio towards fixed visual keys, v2a moves visual towards fixed audio keys.
    Returns {"a2v": scalar, "v2a": scalar}.
    """
    v_keys = visual.detach() if detach_other else visual
    a_keys = audio.detach() if detach_other else audio
    return {
        "a2v": info_nce(audio, v_keys, temperature, similarity, mask),
        "v2a": info_nce(visual, a_keys, temperature, similarity, None if mask is None else mask.t()),
    }


def triplet_info_nce(anchor: torch.Tensor, positive: torch.Tensor, negative: torch.Tensor,
                     temperature: float = 0.1, similarity: str = "cosine",
                     batch_negatives: bool = True) -> torch.Tensor:
    """Eye triplet contrastive loss (SPEC 4.1, eye): the anchor (frame A with P's eye region pasted in) must be closer
    to the positive P than to the negative (another frame of the clip).

    anchor, positive, negative: (B,D). Per row: `-log( e^{s(a,p)/T} / (e^{s(a,p)/T} + sum_n e^{s(a,n)/T}) )` where
    the negatives n are this row's negative and, with `batch_negatives`, every other row's positive and negative
    (frames with other eyes). Returns the mean over rows.
    """
    b = anchor.shape[0]
    pos = pairwise_similarity(anchor, positive, similarity)  # (B,B), diagonal = positives
    neg = pairwise_similarity(anchor, negative, similarity)  # (B,B)
    if not batch_negatives:
        logits = torch.stack([pos.diagonal(), neg.diagonal()], dim=1) / temperature
        return F.cross_entropy(logits, torch.zeros(b, dtype=torch.long, device=anchor.device))
    logits = torch.cat([pos, neg], dim=1) / temperature  # (B, 2B); column i is row i's positive
    return F.cross_entropy(logits, torch.arange(b, device=anchor.device))
