"""Control parsing, driver looping and temporal post-processing against hand-computed values (SPEC 1.5-1.7)."""
import math

import numpy as np
import pytest
import torch

from pdfgc.models.latent import Controls, ControlsError, apply_controls, eye_mask
from pdfgc.pipeline.controls import driver_indices, gaussian_kernel, leading_drop, smooth_lip, smooth_pose
from pdfgc.pipeline.errors import PipelineError

parse_controls = Controls.parse

# Gaussian, size 3, sigma 1, normalised: side weight e^-1/2 / (1 + 2 e^-1/2), centre 1 / (1 + 2 e^-1/2)
SIDE = math.exp(-0.5) / (1 + 2 * math.exp(-0.5))
CENTRE = 1 / (1 + 2 * math.exp(-0.5))


def test_gaussian_kernel_matches_spec_values():
    k = gaussian_kernel(3, 1.0)
    assert k.tolist() == pytest.approx([0.27407, 0.45186, 0.27407], abs=1e-5)
    assert k.tolist() == pytest.approx([SIDE, CENTRE, SIDE], abs=1e-7)


def test_smooth_lip_zero_padded_gaussian_by_hand():
    x = torch.tensor([[1.0, 10.0], [2.0, 0.0], [4.0, 0.0], [8.0, -5.0]])
    y = smooth_lip(x)
    # column 0: edges see a zero neighbour (attenuated, not renormalised)
    col0 = [CENTRE * 1 + SIDE * 2, SIDE * 1 + CENTRE * 2 + SIDE * 4, SIDE * 2 + CENTRE * 4 + SIDE * 8,
            SIDE * 4 + CENTRE * 8]
    col1 = [CENTRE * 10, SIDE * 10, SIDE * -5, CENTRE * -5]
    assert y[:, 0].tolist() == pytest.approx(col0, abs=1e-5)
    assert y[:, 1].tolist() == pytest.approx(col1, abs=1e-5)


def test_smooth_lip_one_frame():
    assert smooth_lip(torch.tensor([[2.0]])).item() == pytest.approx(2 * CENTRE, abs=1e-6)


def test_smooth_pose_moving_average_with_reference_edges():
    x = torch.tensor([0.0, 3.0, 6.0, 12.0]).view(4, 1)
    # frame 0: (0+3)/2; frame 1: (0+3+6)/3; frame 2: (3+6+12)/3; last: (6+12)/2
    assert smooth_pose(x).flatten().tolist() == pytest.approx([1.5, 3.0, 7.0, 9.0])
    assert smooth_pose(torch.tensor([[5.0], [7.0]])).flatten().tolist() == pytest.approx([6.0, 6.0])
    assert smooth_pose(torch.tensor([[5.0, 1.0]])).tolist() == [[5.0, 1.0]]


def test_driver_indices_cyclic_and_short():
    assert driver_indices(10, 3).tolist() == [0, 1, 2, 0, 1, 2, 0, 1, 2, 0]
    assert driver_indices(5, 1).tolist() == [0, 0, 0, 0, 0]
    assert driver_indices(3, 100).tolist() == [0, 1, 2]
    # a batch of 8 that straddles the wrap of a 6-frame driver: frames 8..15 -> 2,3,4,5,0,1,2,3
    assert driver_indices(16, 6)[8:].tolist() == [2, 3, 4, 5, 0, 1, 2, 3]
    with pytest.raises(PipelineError):
        driver_indices(3, 0)


def test_leading_drop_keeps_at_least_one_frame():
    assert [leading_drop(n) for n in (1, 2, 3, 4, 363)] == [0, 1, 2, 2, 2]


def test_parse_controls():
    all_on = parse_controls(["all"])
    assert all_on.names() == ("mouth", "blink", "gaze", "emo", "headpose")
    assert parse_controls("all") == all_on
    assert parse_controls([]).names() == () and parse_controls(None).names() == ()
    assert parse_controls(["none"]).names() == ()
    assert parse_controls("mouth,pose").names() == ("mouth", "headpose")
    assert parse_controls(["emotion", "gaze"]).names() == ("gaze", "emo")
    with pytest.raises(ControlsError, match="unknown control 'smile'.*mouth, blink, gaze, emo, headpose"):
        parse_controls(["mouth", "smile"])
    # not a list of names (e.g. `controls=5` on the command line): one clear error, not a crash further down
    for bad in (5, 1.0, [1, 2], {"mouth": True}):
        with pytest.raises(ControlsError, match="controls: expected"):
            parse_controls(bad)
    c = Controls(mouth=True)
    assert parse_controls(c) is c and Controls.all() == all_on
    with pytest.raises(TypeError, match="bool"):
        Controls(mouth="yes")


def test_driver_needs_follow_controls():
    c = parse_controls(["mouth"])
    assert (c.needs_audio, c.needs_pose, c.needs_exp, c.needs_eye) == (True, False, False, False)
    c = parse_controls(["blink", "headpose"])
    assert (c.needs_audio, c.needs_pose, c.needs_exp, c.needs_eye) == (False, True, False, True)


@pytest.mark.parametrize("names,mask", [
    (["all"], [1, 1, 1, 1, 1, 1]),
    (["gaze"], [0, 0, 1, 1, 0, 0]),  # blink off -> mask (0,0,1,1,0,0)
    (["blink"], [1, 1, 0, 0, 1, 1]),  # gaze off -> mask (1,1,0,0,1,1)
    ([], [0, 0, 0, 0, 0, 0]),
])
def test_eye_mask(names, mask):
    assert eye_mask(parse_controls(names), 6).tolist() == mask


def test_apply_controls_zeroes_off_codes():
    lip, emo, eye, pose = torch.ones(2, 500), torch.full((2, 30), 2.0), torch.arange(1.0, 7.0).repeat(2, 1), \
        torch.full((2, 6), 3.0)
    l2, e2, y2, p2 = apply_controls(lip, emo, eye, pose, parse_controls(["mouth", "gaze"]))
    assert torch.equal(l2, lip) and not e2.any() and not p2.any()
    assert y2[0].tolist() == [0, 0, 3, 4, 0, 0]
    l3, e3, y3, p3 = apply_controls(lip, emo, eye, pose, parse_controls(["emo", "headpose", "blink"]))
    assert not l3.any() and torch.equal(e3, emo) and torch.equal(p3, pose)
    assert y3[0].tolist() == [1, 2, 0, 0, 5, 6]
    assert np.isclose(float(y3.sum()), 2 * (1 + 2 + 5 + 6))
