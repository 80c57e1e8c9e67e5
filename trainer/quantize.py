"""Post-training int8 quantisation, adopted only if it holds: Dice of f32 against int8 on the held-out fold.

    python -m trainer.quantize --organ cells [--mar model-store/cells.mar] [--method nncf|ort]
                               [--calibration N] [--rounds R] [--out model-store --version V]

Takes the archive's f32 ONNX network (exported from its TorchScript one when it has none) and quantises it:
`--method nncf` (the default) with NNCF's post-training quantisation (int8 weights per channel and int8
activations, min/max statistics on the calibration inputs, fast bias correction), `--method ort` with ONNX
Runtime's quantize_static (QDQ, per-channel weights, MinMax). The calibration inputs are `--calibration`
training images of the card's split, prepared as the organ server prepares them: resized to the training
size, or (an organ served whole) the whole image padded as served. Both networks are scored on the card's
held-out fold through the trainer's validation (trainer.export.measure) and timed in OpenVINO (which runs
the quantised layers in int8; `--method ort` also times ONNX Runtime). The table ends with the verdict:
adopt only if validation Dice drops by at most MAX_DICE_DROP and int8 is faster. With `--out` and
`--version`, an adopted int8 network is packed beside the f32 ones as model-int8.onnx with the spec's
runtime `openvino-int8` and the card's `runtime` block saying what was measured and by which command.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime as dt
import json
import logging
import shlex
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch

from services.preprocess import TTA_FLIPS, normalize, pad_to_multiple
from services.runtime import INPUT_NAME, build
from trainer.cv import run_split
from trainer.export import (
    compare,
    measure,
    organ_threads,
    served_input,
    time_passes,
    unpack_runtimes,
    validator,
)
from trainer.package import build_mar
from trainer.train import git_commit

MAX_DICE_DROP = 0.002
METHODS = ("nncf", "ort")


def quantize_int8(f32: Path, out: Path, calibration: list[np.ndarray]) -> Path:
    """ONNX Runtime's static quantisation (QDQ, per-channel int8 weights, int8 activations by MinMax)."""
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


def quantize_nncf(
    f32: Path, out: Path, calibration: list[np.ndarray], preset: str = "performance", bias: str = "fast"
) -> Path:
    """NNCF's post-training quantisation of the ONNX network (QDQ pairs OpenVINO runs in int8). `preset`
    "performance": symmetric int8 activations; "mixed": asymmetric ones (a ReLU's output uses all 256
    levels). `bias` "fast" or "full": NNCF's fast bias correction or its full one (slower, layer by layer)."""
    import nncf
    import onnx

    dataset = nncf.Dataset(calibration, lambda x: {INPUT_NAME: x})
    quantized = nncf.quantize(
        onnx.load(str(f32)),
        dataset,
        subset_size=len(calibration),
        preset=nncf.QuantizationPreset.MIXED if preset == "mixed" else nncf.QuantizationPreset.PERFORMANCE,
        fast_bias_correction=bias == "fast",
    )
    onnx.save(quantized, str(out))
    return out


def calibration_inputs(organ: str, card: dict, spec, trainer, count: int) -> list[np.ndarray]:
    """`count` training images of the card's split as the organ server hands them to the network: resized
    to the training size, or whole and padded (its mirror images hold the same values: not added)."""
    images = trainer.train_set.images[:count]
    if len(images) < count:  # validator keeps one training image: load the calibration set
        pairs, train_idx, _ = run_split(organ, card, spec)
        images = pairs.subset(train_idx[:count]).images
    inputs = []
    for image in images:
        x = normalize(image[None].float() / 255.0, spec)
        if spec.inference.mode == "resize":
            inputs.append(x.numpy())
            continue
        inputs.append(pad_to_multiple(x, spec.inference.pad_multiple)[0].numpy())
    return inputs


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--organ", default="liver")
    parser.add_argument("--mar", type=Path)
    parser.add_argument("--method", choices=METHODS, default="nncf")
    parser.add_argument("--calibration", type=int, default=32, help="training images to calibrate on")
    parser.add_argument(
        "--preset",
        choices=("performance", "mixed"),
        default="performance",
        help="nncf: symmetric (performance) or asymmetric (mixed) int8 activations",
    )
    parser.add_argument("--bias-correction", choices=("fast", "full"), default="fast", help="nncf")
    parser.add_argument("--threads", type=int)
    parser.add_argument("--rounds", type=int, help="timed passes per network (default 15, 3 above 512²)")
    parser.add_argument("--out", type=Path, help="model store to pack an adopted int8 network into")
    parser.add_argument("--version", help="with --out: the new model version")
    args = parser.parse_args(argv)
    if args.out and not args.version:
        parser.error("--out needs --version")
    logging.basicConfig(level=logging.WARNING)
    mar = args.mar or Path("model-store") / f"{args.organ}.mar"
    card = json.loads(mar.with_suffix(".json").read_text())
    threads = args.threads or organ_threads(args.organ)
    torch.set_num_threads(threads)
    work = Path(tempfile.mkdtemp(prefix=f"quantize-{args.organ}-"))
    spec = unpack_runtimes(mar, work)
    trainer = validator(args.organ, card, spec, threads)
    calibration = calibration_inputs(args.organ, card, spec, trainer, args.calibration)
    int8_dir = work / "int8"
    int8_dir.mkdir()
    if args.method == "nncf":
        quantize_nncf(
            work / "model.onnx", int8_dir / "model.onnx", calibration, args.preset, args.bias_correction
        )
    else:
        quantize_int8(work / "model.onnx", int8_dir / "model.onnx", calibration)

    models = {
        "openvino f32": build("openvino", work, threads),
        "openvino int8": build("openvino", int8_dir, threads),
    }
    if spec.runtime == "openvino-bf16":  # int8 must also be faster than what the organ is served in now
        models["openvino bf16"] = build("openvino-bf16", work, threads)
    if args.method == "ort":
        models = {
            "onnxruntime f32": build("onnxruntime", work, threads),
            "onnxruntime int8": build("onnxruntime", int8_dir, threads),
            **models,
        }
    scored = {name: measure(trainer, name, model) for name, model in models.items()}
    for name, r in scored.items():
        compare(scored[f"{name.split()[0]} f32"], r)
    x = served_input(trainer)
    rounds = args.rounds or (15 if x[0, 0].numel() <= 512 * 512 else 3)
    pass_ms = time_passes(models, x, rounds)
    passes = len(TTA_FLIPS[spec.inference.tta])
    for name, r in scored.items():
        r.ms_per_pass, r.ms_per_input = pass_ms[name], pass_ms[name] * passes
    print(
        f"{args.organ}: {len(trainer.val_set)} held-out cases (card fold {card['split']['fold']}), "
        f"{threads} thread(s), {args.method} calibrated on {len(calibration)} inputs from "
        f"{args.calibration} training images; card Dice {card['metrics']['val_dice']:.4f}; ms: median of "
        f"{rounds} interleaved passes of one {tuple(x.shape)} input, {passes} pass(es) per served input"
    )
    print("| network | val Dice @0.5 | Δ vs f32 (same runtime) | min mask Dice vs f32 | ms per pass |")
    print("|---|---:|---:|---:|---:|")
    verdicts = {}
    for name, r in scored.items():
        runtime = name.split()[0]
        delta = r.val_dice - scored[f"{runtime} f32"].val_dice
        print(f"| {name} | {r.val_dice:.4f} | {delta:+.4f} | {r.mask_dice_min:.5f} | {r.ms_per_pass:.1f} |")
        if name.endswith("int8"):
            others = [o.ms_per_pass for n, o in scored.items() if n.startswith(runtime) and n != name]
            verdicts[runtime] = (delta, r.ms_per_pass < min(others))
    for runtime, (delta, faster) in verdicts.items():
        holds = delta >= -MAX_DICE_DROP
        print(
            f"{runtime} int8: Dice {delta:+.4f} ({'holds' if holds else 'does not hold'}: limit "
            f"-{MAX_DICE_DROP}), {'faster' if faster else 'not faster'} than its other networks → "
            f"{'adopt' if holds and faster else 'not adopted'}"
        )
    delta, faster = verdicts["openvino"]
    if not args.out:
        return 0
    if delta < -MAX_DICE_DROP or not faster:
        print("openvino int8 is not adopted; nothing packaged")
        return 1
    out = _package(args, argv, work, spec, card, scored, int8_dir / "model.onnx", threads, rounds, x, passes)
    print(f"packed {out} (runtime openvino-int8, version {args.version})")
    return 0


def _package(args, argv, work: Path, spec, card: dict, scored: dict, int8: Path, threads, rounds, x, passes):
    """The archive's networks again, with the int8 one and the spec's runtime openvino-int8; the card keeps
    its fields, with the new version and a `runtime` block of what was measured."""
    f32, q = scored["openvino f32"], scored["openvino int8"]
    runtime = {
        "name": "openvino-int8",
        "threads": threads,
        "ms_per_input": round(q.ms_per_input, 1),
        "timing": f"median of {rounds} interleaved passes of one {tuple(x.shape)} input, × {passes} passes",
        "val_dice": q.val_dice,
        "val_dice_at_threshold": q.val_dice_at,
        "quantization": {
            "method": args.method,
            **(
                {"preset": args.preset, "bias_correction": args.bias_correction}
                if args.method == "nncf"
                else {}
            ),
            "calibration_images": args.calibration,
            "max_dice_drop": MAX_DICE_DROP,
            "dice_change_vs_f32": round(q.val_dice - f32.val_dice, 5),
        },
        "measured": {
            name.replace(" ", "-"): {
                "ms_per_input": round(r.ms_per_input, 1),
                "ms_per_pass": round(r.ms_per_pass, 1),
                "val_dice": r.val_dice,
                "min_mask_dice_vs_f32": r.mask_dice_min,
                "max_abs_prob_diff_vs_f32": r.max_prob_diff,
                "validation_forward_seconds": round(r.validation_seconds, 1),
            }
            for name, r in scored.items()
        },
        "quantized_from": {
            "mar": args.mar.name if args.mar else f"{args.organ}.mar",
            "version": card["version"],
        },
        "command": "python -m trainer.quantize " + shlex.join(argv if argv is not None else sys.argv[1:]),
        "commit": git_commit(),
        "at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "note": "measured on the shared 2-core build machine; times vary with its load",
    }
    new_card = {k: v for k, v in card.items() if k not in ("mar_file", "mar_sha256", "mar_bytes")}
    new_card["version"], new_card["runtime"] = args.version, {**runtime, "before": card.get("runtime")}
    return build_mar(
        work / "model.pt",
        args.organ,
        dataclasses.replace(spec, runtime="openvino-int8"),
        args.out,
        args.organ,
        args.version,
        card=new_card,
        onnx=work / "model.onnx",
        int8=int8,
    )


if __name__ == "__main__":
    raise SystemExit(main())
