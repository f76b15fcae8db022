"""Loss functions against hand-computed values; gradients reach only the intended tensors."""
import math
import warnings

import numpy as np
import pytest
import torch

from pdfgc.losses import (MemoryBank, VGGPerceptualLoss, bidirectional_info_nce, cross_correlation_loss, d_loss,
                          feature_consistency, feature_matching_loss, g_loss, info_nce, lip_sync_consistency,
                          masked_regression, r1_penalty, triplet_info_nce)


# ----------------------------------------------------------------------------------------------- GAN
def test_hinge_d_loss_hand_value_single_and_multiscale():
    real = torch.tensor([2.0, 0.5]).view(2, 1, 1, 1)
    fake = torch.tensor([-2.0, 0.0]).view(2, 1, 1, 1)
    # real: relu(1-2)=0, relu(1-0.5)=0.5 -> 0.25 ; fake: relu(1-2)=0, relu(1+0)=1 -> 0.5
    assert d_loss([[real]], [[fake]], "hinge").item() == pytest.approx(0.75)
    # second scale perfectly separated -> 0; the scales are averaged
    r2, f2 = torch.full((2, 1, 2, 2), 3.0), torch.full((2, 1, 2, 2), -3.0)
    assert d_loss([[real], [r2]], [[fake], [f2]], "hinge").item() == pytest.approx(0.375)
    assert d_loss(r2, f2, "hinge").item() == 0.0  # plain tensor accepted, zero when separated by the margin


def test_logistic_losses_hand_value():
    real = torch.tensor([[1.0]])
    fake = torch.tensor([[-1.0]])
    sp = math.log1p(math.exp(-1.0))  # softplus(-1)
    assert d_loss(real, fake, "logistic").item() == pytest.approx(2 * sp)
    assert g_loss(fake, "logistic").item() == pytest.approx(math.log1p(math.exp(1.0)))
    assert g_loss(torch.tensor([[0.5, 1.5]]), "hinge").item() == pytest.approx(-1.0)
    with pytest.raises(ValueError, match="hinge"):
        g_loss(fake, "wgan")


def test_feature_matching_value_zero_and_gradient_to_fake_only():
    real_feats = [[torch.ones(1, 2, 2, 2), torch.zeros(1, 1, 2, 2), torch.randn(1, 1, 1, 1)]]
    fake0 = torch.zeros(1, 2, 2, 2, requires_grad=True)
    fake1 = torch.full((1, 1, 2, 2), 0.5, requires_grad=True)
    real_req = real_feats[0][0].clone().requires_grad_(True)
    # layer 0: |0-1| = 1 (x first_layer_weight 2); layer 1: |0.5-0| = 0.5; logits excluded
    out = feature_matching_loss([[real_req, real_feats[0][1], real_feats[0][2]]],
                                [[fake0, fake1, torch.full((1, 1, 1, 1), 100.0)]], first_layer_weight=2.0)
    assert out.item() == pytest.approx(2.5)
    out.backward()
    assert real_req.grad is None and fake0.grad is not None
    same = [[f.clone() for f in real_feats[0]]]
    assert feature_matching_loss(real_feats, same).item() == 0.0


def test_r1_penalty_of_a_linear_discriminator_is_squared_weight_norm():
    w = torch.tensor([1.0, -2.0, 0.5]).view(1, 3, 1, 1)
    x = torch.randn(4, 3, 2, 2, requires_grad=True)
    out = [[(x * w).sum(dim=(1, 2, 3), keepdim=True)]]
    # d/dx sum(w*x) = w at each of 4 pixels -> ||grad||^2 = 4 * (1 + 4 + 0.25)
    assert r1_penalty(out, x).item() == pytest.approx(4 * 5.25)


# ----------------------------------------------------------------------------------------------- contrastive
def test_info_nce_cosine_hand_value():
    a = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    v = torch.tensor([[0.6, 0.8], [0.8, 0.6]])
    # cos: rows [0.6, 0.8] and [0.8, 0.6]; /T=0.5 -> [1.2, 1.6], [1.6, 1.2]; positive on the diagonal
    expected = math.log1p(math.exp(1.6 - 1.2))
    assert info_nce(a, v, temperature=0.5).item() == pytest.approx(expected, rel=1e-4)
    assert info_nce(v, a, temperature=0.5).item() == pytest.approx(expected, rel=1e-4)


def test_info_nce_inv_l2_hand_value():
    a = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    v = torch.tensor([[0.6, 0.8], [0.8, 0.6]])
    s_pos, s_neg = 1 / math.sqrt(0.8), 1 / math.sqrt(0.4)  # |a0-v0|^2 = 0.16+0.64, |a0-v1|^2 = 0.04+0.36
    expected = math.log1p(math.exp((s_neg - s_pos) / 0.5))
    assert info_nce(a, v, 0.5, "inv_l2").item() == pytest.approx(expected, rel=1e-4)


def test_info_nce_mask_restricts_negatives_and_perfect_alignment_is_near_zero():
    a = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 0.0]])
    # with every negative masked out only the positive remains -> loss exactly 0
    mask = torch.zeros(3, 3, dtype=torch.bool)
    assert info_nce(a, a, 0.1, mask=mask).item() == pytest.approx(0.0, abs=1e-7)
    b = torch.eye(4)
    assert info_nce(b, b, 0.01).item() < 1e-6


def test_bidirectional_info_nce_detach_routes_gradients():
    audio = torch.randn(6, 8, requires_grad=True)
    visual = torch.randn(6, 8, requires_grad=True)
    d = bidirectional_info_nce(audio, visual, 0.1, detach_other=True)
    d["a2v"].backward()
    assert audio.grad is not None and visual.grad is None
    audio.grad = None
    d = bidirectional_info_nce(audio, visual, 0.1, detach_other=True)
    d["v2a"].backward()
    assert visual.grad is not None and audio.grad is None


def test_triplet_info_nce_hand_value():
    a = torch.tensor([[1.0, 0.0]])
    p = torch.tensor([[1.0, 1.0]])
    n = torch.tensor([[0.0, 1.0]])
    s_ap, s_an = 1 / math.sqrt(2), 0.0
    expected = -math.log(math.exp(s_ap / 0.1) / (math.exp(s_ap / 0.1) + math.exp(s_an / 0.1)))
    assert triplet_info_nce(a, p, n, 0.1, batch_negatives=False).item() == pytest.approx(expected, rel=1e-4)
    assert triplet_info_nce(a, p, n, 0.1, batch_negatives=True).item() == pytest.approx(expected, rel=1e-4)


def _triplet_by_hand(a, p, n, t, batch_negatives):
    """Explicit loops (numpy, float64): row i's positive is p[i]; its negatives are n[i] and, with batch
    negatives, every other row's positive p[j] and negative n[j]."""
    def cos(u, v):
        return float(np.dot(u, v) / (np.linalg.norm(u) * np.linalg.norm(v)))

    b = len(a)
    total = 0.0
    for i in range(b):
        pos = math.exp(cos(a[i], p[i]) / t)
        den = pos + math.exp(cos(a[i], n[i]) / t)
        if batch_negatives:
            for j in range(b):
                if j != i:
                    den += math.exp(cos(a[i], p[j]) / t) + math.exp(cos(a[i], n[j]) / t)
        total += -math.log(pos / den)
    return total / b


@pytest.mark.parametrize("batch_negatives", [False, True])
def test_triplet_info_nce_hand_value_at_batch_4(batch_negatives):
    """At batch 1 every index is 0: a wrong positive index (or label) is invisible. At batch 4 with rows whose
    positives differ, it changes the value."""
    rng = np.random.default_rng(3)
    a, p, n = (rng.normal(size=(4, 5)) for _ in range(3))
    p[:, 0] += 2.0 * np.arange(4)  # rows' positives clearly distinct
    t = 0.2
    want = _triplet_by_hand(a, p, n, t, batch_negatives)
    got = triplet_info_nce(*(torch.tensor(x) for x in (a, p, n)), t, batch_negatives=batch_negatives).item()
    assert got == pytest.approx(want, rel=1e-9)
    # the oracle is sensitive to the positive index: rolling the positives gives another value
    assert abs(_triplet_by_hand(a, np.roll(p, 1, 0), n, t, batch_negatives) - want) > 0.05


# ----------------------------------------------------------------------------------------------- regression etc.
def test_masked_regression_ignores_nan_and_matches_hand_values():
    pred = torch.tensor([[1.0, 2.0], [3.0, 4.0]], requires_grad=True)
    target = torch.tensor([[1.5, float("nan")], [3.0, 2.0]])
    assert masked_regression(pred, target, "l1").item() == pytest.approx((0.5 + 0 + 2) / 3)
    assert masked_regression(pred, target, "mse").item() == pytest.approx((0.25 + 0 + 4) / 3)
    # smooth L1 with beta 1: 0.5*0.5^2 = 0.125 ; |2| - 0.5 = 1.5
    assert masked_regression(pred, target, "smooth_l1", beta=1.0).item() == pytest.approx((0.125 + 1.5) / 3)
    loss = masked_regression(pred, target, "l1")
    loss.backward()
    assert pred.grad[0, 1] == 0 and torch.isfinite(pred.grad).all()
    all_nan = torch.full((2, 2), float("nan"))
    assert masked_regression(pred, all_nan).item() == 0.0


def test_consistency_losses():
    a = torch.tensor([[1.0, 0.0]])
    b = torch.tensor([[0.0, 1.0]])
    assert feature_consistency(a, b, "l1").item() == pytest.approx(1.0)
    assert feature_consistency(a, b, "mse").item() == pytest.approx(1.0)
    assert feature_consistency(a, b, "cosine").item() == pytest.approx(1.0)
    assert feature_consistency(a, 3 * a, "cosine").item() == pytest.approx(0.0, abs=1e-6)
    v = a.clone().requires_grad_(True)
    t = b.clone().requires_grad_(True)
    lip_sync_consistency(v, t).backward()
    assert v.grad is not None and t.grad is None


# ----------------------------------------------------------------------------------------------- decorrelation
def test_cross_correlation_hand_values_and_gradient_path():
    x = torch.tensor([[1.0], [-1.0], [1.0], [-1.0]])
    y_orth = torch.tensor([[1.0], [1.0], [-1.0], [-1.0]])
    assert cross_correlation_loss(x, y_orth).item() == pytest.approx(0.0, abs=1e-6)
    assert cross_correlation_loss(x, 2 * x + 1).item() == pytest.approx(1.0, abs=1e-4)
    assert cross_correlation_loss(x, -x).item() == pytest.approx(1.0, abs=1e-4)
    # two dims of y: one perfectly correlated, one orthogonal -> mean of (1, 0)
    assert cross_correlation_loss(x, torch.cat([x, y_orth], 1)).item() == pytest.approx(0.5, abs=1e-4)


def test_memory_bank_fifo_and_gradients_only_through_current_rows():
    bank = MemoryBank(dim=2, size=3)
    assert bank.stored().shape == (0, 2)
    bank.push(torch.tensor([[1.0, 1.0], [2.0, 2.0]]))
    bank.push(torch.tensor([[3.0, 3.0], [4.0, 4.0]]))  # overwrites the oldest row
    rows = sorted(bank.stored()[:, 0].tolist())
    assert rows == [2.0, 3.0, 4.0]
    x = torch.randn(2, 2, requires_grad=True)
    y = torch.randn(5, 2)
    cross_correlation_loss(bank.with_bank(x), y).backward()
    assert x.grad is not None and not bank.bank.requires_grad
    assert set(bank.state_dict()) == {"bank", "ptr", "count"}


# ----------------------------------------------------------------------------------------------- perceptual
def test_perceptual_zero_on_identical_gradients_to_fake_only(tmp_path):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        loss = VGGPerceptualLoss(layer_weights=(1.0, 1.0))  # two slices: cheap
    real = torch.rand(1, 3, 32, 32) * 2 - 1
    assert loss(real, real).item() == 0.0
    fake = (real + 0.3 * torch.randn_like(real)).requires_grad_(True)
    out = loss(fake, real)
    assert out.item() > 0
    out.backward()
    assert fake.grad is not None
    assert all(p.grad is None and not p.requires_grad for p in loss.parameters())
    loss.train()
    assert not loss.training


def test_perceptual_loads_weights_from_path_and_errors_clearly(tmp_path):
    import torch.nn.functional as F

    # a torchvision-style state_dict (only the first conv matters for relu1_1)
    w0, b0 = torch.randn(64, 3, 3, 3), torch.randn(64)
    sd = {"features.0.weight": w0, "features.0.bias": b0, "classifier.0.weight": torch.zeros(1)}
    path = tmp_path / "vgg19.pth"
    torch.save(sd, path)
    loss = VGGPerceptualLoss(weights_path=str(path), layer_weights=(1.0,))
    x = torch.rand(1, 3, 16, 16) * 2 - 1
    mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    # independent expectation: relu(conv3x3(ImageNet-normalised input)) with the file's weights
    expected = F.relu(F.conv2d(((x + 1) / 2 - mean) / std, w0, b0, padding=1))
    assert torch.allclose(loss._features(x)[0], expected, atol=1e-5)
    with pytest.raises(FileNotFoundError, match="vgg19"):
        VGGPerceptualLoss(weights_path=str(tmp_path / "missing.pth"))
    torch.save({"features.0.weight": w0}, path)
    with pytest.raises(KeyError, match="0.bias"):
        VGGPerceptualLoss(weights_path=str(path), layer_weights=(1.0,))


def test_vicreg_consistency_hand_values_and_anti_collapse():
    from pdfgc.losses.consistency import variance_hinge

    # +-1 columns: unbiased std over 4 rows = sqrt(4/3) > 1 -> no variance penalty; equal inputs -> 0 in total
    x = torch.tensor([[1.0, -1.0], [-1.0, 1.0], [1.0, 1.0], [-1.0, -1.0]])
    assert feature_consistency(x, x.clone(), "vicreg").item() == pytest.approx(0.0, abs=1e-6)
    # a constant feature is penalised: std = sqrt(0 + 1e-4) = 0.01 in each dim -> hinge 0.99, for a and for b
    c = torch.ones(4, 2)
    assert variance_hinge(c).item() == pytest.approx(0.99, abs=1e-6)
    assert feature_consistency(c, c.clone(), "vicreg").item() == pytest.approx(1.98, abs=1e-5)
    # MSE part: b = a + 0.5 everywhere -> 0.25, spread unchanged
    assert feature_consistency(x, x + 0.5, "vicreg").item() == pytest.approx(0.25, abs=1e-6)
    # the gradient of the variance term pushes a collapsed batch apart (increases its spread)
    a = (torch.ones(4, 2) + 0.001 * torch.randn(4, 2)).requires_grad_(True)
    variance_hinge(a).backward()
    stepped = a - 10.0 * a.grad
    assert stepped.std(0).mean() > a.std(0).mean()


# ----------------------------------------------------------------------------------------------- regional L1
def test_box_masks_are_exact_pixel_coverage():
    from pdfgc.losses import box_masks

    # 4x4 image, box x 0.125..0.625 (0.5..2.5 px), y 0.25..0.5 (1..2 px): columns 0..2 covered 0.5, 1, 0.5; row 1
    m = box_masks(torch.tensor([[0.125, 0.25, 0.625, 0.5]]), 4, 4)[0, 0]
    want = torch.zeros(4, 4)
    want[1, :3] = torch.tensor([0.5, 1.0, 0.5])
    assert torch.equal(m, want)
    assert box_masks(torch.tensor([[0.0, 0.0, 1.0, 1.0]]), 3, 5).sum() == 15  # the whole image
    with pytest.raises(ValueError, match=r"\(N, 4\)"):
        box_masks(torch.zeros(2, 3), 4, 4)


def test_region_l1_hand_value_unknown_boxes_and_gradient():
    from pdfgc.losses import region_l1

    real = torch.zeros(2, 3, 4, 4)
    fake = torch.zeros(2, 3, 4, 4, requires_grad=True)
    with torch.no_grad():
        fake[0, :, 0:2, 0:2] = 1.0    # inside sample 0's box (the top-left 2x2 quarter)
        fake[0, :, 3, 3] = 100.0      # outside it: must not count
        fake[1] += 7.0                # sample 1's box is unknown: must not count
    boxes = torch.tensor([[0.0, 0.0, 0.5, 0.5], [float("nan")] * 4])
    loss = region_l1(fake, real, boxes)
    assert loss.item() == pytest.approx(1.0)  # mean |1 - 0| over the 2x2x3 region of sample 0
    loss.backward()
    g = fake.grad
    assert torch.all(g[0, :, 0:2, 0:2] == 1.0 / 12) and g[0, :, 3, 3].abs().sum() == 0 and g[1].abs().sum() == 0
    # no known box: zero, still differentiable
    z = region_l1(fake, real, torch.full((2, 4), float("nan")))
    assert z.item() == 0.0 and z.requires_grad
