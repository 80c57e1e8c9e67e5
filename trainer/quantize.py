"""Post-training int8 quantisation, adopted only if it holds: Dice of f32 against int8 on the held-out fold.

    python -m trainer.quantize --organ liver [--mar model-store/liver.mar] [--calibration 32]

Exports (or takes from the archive) the f32 ONNX network, quantises it with ONNX Runtime's quantize_static
(QDQ, per-channel int8 weights, int8 activations calibrated by MinMax on `--calibration` training images of
the card's split, prepared as the server prepares them), scores both on the card's held-out fold through
the trainer's validation (trainer.export.measure), times one pass of each in ONNX Runtime and OpenVINO (which
runs the QDQ model with int8 kernels), and prints the table with the verdict: adopt only if validation Dice
drops by at most MAX_DICE_DROP. Nothing is packaged: a kept int8 model would be packed by trainer.export.
"""

from __future__ import annotations

import argparse
import json
import logging
import tempfile
from pathlib import Path

import numpy as np
import torch

from services.preprocess import normalize
from services.runtime import INPUT_NAME, build
from trainer.cv import run_split
from trainer.export import measure, organ_threads, time_passes, unpack_runtimes, validator

MAX_DICE_DROP = 0.002


def quantize_int8(f32: Path, out: Path, calibration: list[np.ndarray]) -> Path:
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.items = iter(calibration)

        def get_next(self):
            item = next(self.items, None)
            return None if item is None else {INPUT_NAME: item}

    prepared = out.with_name("prepared.onnx")
    quant_pre_process(str(f32), str(prepared), skip_symbolic_shape=True)
    quantize_static(
        str(prepared),
        str(out),
        Reader(),
        quant_format=QuantFormat.QDQ,
        per_channel=True,
        activation_type=QuantType.QInt8,
        weight_type=QuantType.QInt8,
    )
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--organ", default="liver")
    parser.add_argument("--mar", type=Path)
    parser.add_argument("--calibration", type=int, default=32, help="training images to calibrate on")
    parser.add_argument("--threads", type=int)
    parser.add_argument("--rounds", type=int, default=15)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    mar = args.mar or Path("model-store") / f"{args.organ}.mar"
    card = json.loads(mar.with_suffix(".json").read_text())
    threads = args.threads or organ_threads(args.organ)
    torch.set_num_threads(threads)
    work = Path(tempfile.mkdtemp(prefix=f"quantize-{args.organ}-"))
    spec = unpack_runtimes(mar, work)
    trainer = validator(args.organ, card, spec, threads)
    if spec.inference.mode != "resize":
        raise SystemExit("calibration here feeds training-size images: only for organs served resized")
    images = trainer.train_set.images[: args.calibration]
    if len(images) < args.calibration:  # validator keeps one training image: load the calibration set
        pairs, train_idx, _ = run_split(args.organ, card, spec)
        images = pairs.subset(train_idx[: args.calibration]).images
    calibration = [normalize(img[None].float() / 255.0, spec).numpy() for img in images]
    int8_dir = work / "int8"
    int8_dir.mkdir()
    quantize_int8(work / "model.onnx", int8_dir / "model.onnx", calibration)

    models = {
        "onnxruntime f32": build("onnxruntime", work, threads),
        "onnxruntime int8": build("onnxruntime", int8_dir, threads),
        "openvino f32": build("openvino", work, threads),
        "openvino int8": build("openvino", int8_dir, threads),
    }
    scored = {name: measure(trainer, name, model) for name, model in models.items()}
    x = normalize(trainer.val_set.images[:1].float() / 255.0, spec).contiguous()
    pass_ms = time_passes(models, x, args.rounds)
    print(
        f"{args.organ}: {len(trainer.val_set)} held-out cases (card fold {card['split']['fold']}), "
        f"{threads} thread(s), calibrated on {len(calibration)} training images; "
        f"card Dice {card['metrics']['val_dice']:.4f}; ms: median of {args.rounds} interleaved passes"
    )
    print("| model | val Dice @0.5 | Δ vs f32 (same runtime) | ms per pass |")
    print("|---|---:|---:|---:|")
    verdicts = []
    for name, r in scored.items():
        runtime = name.split()[0]
        delta = r.val_dice - scored[f"{runtime} f32"].val_dice
        print(f"| {name} | {r.val_dice:.4f} | {delta:+.4f} | {pass_ms[name]:.1f} |")
        if name.endswith("int8"):
            verdicts.append((runtime, delta, pass_ms[name] < pass_ms[f"{runtime} f32"]))
    for runtime, delta, faster in verdicts:
        holds = delta >= -MAX_DICE_DROP
        print(
            f"{runtime} int8: Dice {delta:+.4f} ({'holds' if holds else 'does not hold'}: limit "
            f"-{MAX_DICE_DROP}), {'faster' if faster else 'not faster'} than f32 → "
            f"{'adopt' if holds and faster else 'not adopted'}"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
