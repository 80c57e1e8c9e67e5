"""Which runtime trainer.export chooses: the fastest that agrees with TorchScript. A full-precision runtime
agrees with masks at Dice ≥ MASK_DICE on every held-out image; a reduced-precision one (bfloat16) computes
the same network in another arithmetic, so its held-out Dice decides and its masks are held to a looser bound
that still catches a broken runtime."""

from __future__ import annotations

from trainer.export import MASK_DICE, Measured, _choose, mask_dice_bound


def measured(runtime: str, ms: float, val_dice: float = 0.8196, mask_dice: float = 1.0) -> Measured:
    return Measured(runtime, val_dice, {}, [], ms_per_input=ms, mask_dice_min=mask_dice)


def test_the_fastest_runtime_that_agrees_is_chosen_and_bfloat16_has_its_own_mask_bound():
    assert mask_dice_bound("openvino") == mask_dice_bound("onnxruntime") == MASK_DICE
    assert MASK_DICE > mask_dice_bound("openvino-bf16") >= 0.995
    results = {
        "torchscript": measured("torchscript", 7052),
        "openvino": measured("openvino", 4457, mask_dice=0.99999),
        # cells 1.10: every mask ≥ 0.99885 against TorchScript, the held-out Dice the same
        "openvino-bf16": measured("openvino-bf16", 2428, mask_dice=0.99885),
    }
    assert _choose("auto", results, 0.8196).runtime == "openvino-bf16"
    # the same masks from a full-precision runtime would not agree
    results["onnxruntime"] = measured("onnxruntime", 1000, mask_dice=0.99885)
    assert _choose("auto", results, 0.8196).runtime == "openvino-bf16"
    # bfloat16 that moved the held-out Dice, or masks a broken runtime would give, is not chosen
    for broken in (
        measured("openvino-bf16", 2428, val_dice=0.8170),
        measured("openvino-bf16", 2428, mask_dice=0.98),
    ):
        assert _choose("auto", {**results, "openvino-bf16": broken}, 0.8196).runtime == "openvino"
