"""Loss functions of the progressive recipe. Each is a small pure function (or a tiny module when it owns weights
or state), tested in `tests/test_losses*.py`. Stages combine them with weights from the config."""
from pdfgc.losses.consistency import feature_consistency, lip_sync_consistency
from pdfgc.losses.contrastive import info_nce, bidirectional_info_nce, pairwise_similarity, triplet_info_nce
from pdfgc.losses.decorrelation import MemoryBank, cross_correlation_loss
from pdfgc.losses.gan import (d_loss, feature_matching_loss, g_loss, r1_penalty, final_logits)
from pdfgc.losses.perceptual import VGGPerceptualLoss
from pdfgc.losses.pyramid import laplacian_l1, laplacian_pyramid
from pdfgc.losses.regional import box_masks, region_l1
from pdfgc.losses.regression import masked_regression

__all__ = [
    "MemoryBank", "VGGPerceptualLoss", "bidirectional_info_nce", "cross_correlation_loss", "d_loss",
    "feature_consistency", "feature_matching_loss", "final_logits", "g_loss", "info_nce", "lip_sync_consistency",
    "masked_regression", "pairwise_similarity", "r1_penalty", "triplet_info_nce", "box_masks", "region_l1",
    "laplacian_l1", "laplacian_pyramid",
]
