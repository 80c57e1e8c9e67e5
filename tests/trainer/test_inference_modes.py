"""trainer.inference_modes: every way of seeing a tile gives the same map for a model without context."""

import torch

from services.spec import load_organ_spec
from trainer.inference_modes import candidate_modes, tile_probabilities


def test_whole_tile_and_windows_agree_for_a_pointwise_model():
    torch.manual_seed(0)
    model = torch.jit.script(torch.nn.Conv2d(3, 1, 1).eval())
    x = torch.randn(1, 3, 100, 131)  # not a multiple of the stride, nor of the window
    expected = torch.sigmoid(model(x))[0, 0]
    modes = candidate_modes(load_organ_spec("cells"), crop=64)
    assert [spec.inference.mode for spec in modes.values()] == [
        "whole",
        "whole",
        "whole",
        "sliding",
        "sliding",
        "sliding",
    ]
    with torch.inference_mode():
        for name, spec in modes.items():
            prob = tile_probabilities(model, x, spec)
            assert prob.shape == (100, 131), name
            torch.testing.assert_close(prob, expected, atol=1e-5, rtol=0, msg=name)
