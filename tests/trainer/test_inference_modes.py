"""trainer.inference_modes: both ways of seeing a tile give the same map for a model without context."""

import torch

from trainer.inference_modes import whole, windows


def test_whole_tile_and_windows_agree_for_a_pointwise_model():
    torch.manual_seed(0)
    model = torch.jit.script(torch.nn.Conv2d(3, 1, 1).eval())
    x = torch.randn(1, 3, 100, 131)  # not a multiple of the stride, nor of the window
    expected = torch.sigmoid(model(x))[0, 0]
    with torch.inference_mode():
        torch.testing.assert_close(whole(model, x, 16), expected)
        torch.testing.assert_close(windows(model, x, 64, 0.25), expected, atol=1e-5, rtol=0)
        assert windows(model, x, 64, 0.5).shape == (100, 131)
