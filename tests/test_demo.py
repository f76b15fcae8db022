"""The demo's pictures are viewable as they are: panels upscaled (nearest, so the model's pixels are shown, not
invented) to >= 224 px with a caption naming each panel."""
import numpy as np


def test_viewable_upscales_by_an_integer_factor_and_captions():
    from pdfgc.demo import PANEL_LABELS, viewable

    rng = np.random.default_rng(0)
    panel = rng.integers(0, 256, (2, 56, 5 * 56, 3), dtype=np.uint8)
    out = viewable(panel, caption="one line")
    head = out.shape[1] - 224
    assert out.shape == (2, head + 224, 5 * 224, 3) and head > 0
    body = out[:, head:]
    # every model pixel became a 4x4 block of the same colour (hand-computed nearest-neighbour oracle)
    assert np.array_equal(body[:, ::4, ::4], panel)
    assert np.array_equal(body[:, 3::4, 3::4], panel)
    # the caption strip carries text over each of the five panels (dark pixels on white), the same on every frame
    strip = out[0, :head]
    for k in range(len(PANEL_LABELS)):
        assert (strip[:, k * 224:(k + 1) * 224] < 128).any(), k
    assert np.array_equal(out[0, :head], out[1, :head])
    # large panels are not upscaled
    assert viewable(rng.integers(0, 256, (1, 224, 5 * 224, 3), dtype=np.uint8)).shape[1:3] == (22 + 6 + 224, 1120)
