"""Laplacian-pyramid L1 (`pdfgc.losses.pyramid`): exact inversion, hand values, and what it weighs that L1 does
not."""
from __future__ import annotations

import pytest
import torch

from pdfgc.losses.pyramid import default_levels, laplacian_l1, laplacian_pyramid, reconstruct


def test_default_levels_stop_at_seven_pixels():
    assert [default_levels(s) for s in (7, 13, 14, 28, 56, 224, 256)] == [1, 1, 2, 3, 4, 5, 5]


@pytest.mark.parametrize("size", [56, 57, 30])
def test_pyramid_inverts_exactly_and_halves_each_level(size):
    x = torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(0))
    bands = laplacian_pyramid(x, 4)
    sides = [b.shape[-1] for b in bands]
    assert sides[0] == size and all(sides[i + 1] == (sides[i] + 1) // 2 for i in range(3))
    torch.testing.assert_close(reconstruct(bands), x, atol=1e-5, rtol=0)


def test_constant_offset_lives_only_in_the_low_pass_band():
    # blur and bilinear upsampling keep a constant: every band-pass band of a constant is 0, the residual is c
    real = torch.rand(1, 3, 56, 56, generator=torch.Generator().manual_seed(1))
    fake = real + 0.3
    bands = laplacian_pyramid(fake - real, 4)
    for b in bands[:-1]:
        assert b.abs().max() < 1e-6
    assert float(laplacian_l1(fake, real)) == pytest.approx(0.3 / 4, abs=1e-6)
    assert float(laplacian_l1(real, real)) == 0.0


def test_fine_detail_costs_more_than_under_plain_l1():
    # a missing 2x2 dark spot (an eye at 56 px) against a global colour shift of the same plain-L1 cost:
    # the pyramid loss ranks the missing detail as the larger error, plain L1 rates them equal
    real = torch.zeros(1, 1, 56, 56)
    spot = real.clone()
    spot[..., 20:22, 20:22] = 1.0
    l1_spot = float((spot - real).abs().mean())
    shifted = real + l1_spot
    assert float((shifted - real).abs().mean()) == pytest.approx(l1_spot)
    assert float(laplacian_l1(spot, real)) > 3 * float(laplacian_l1(shifted, real))


def test_shape_mismatch_is_an_error():
    with pytest.raises(ValueError, match="differ"):
        laplacian_l1(torch.zeros(1, 3, 8, 8), torch.zeros(1, 3, 8, 9))
