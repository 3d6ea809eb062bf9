"""`python -m export`: checkpoint -> TorchScript, ONNX, AOTInductor + model_meta.json, checked."""

from __future__ import annotations

import argparse
import copy
import dataclasses
import datetime as dt
import json
import platform
import sys
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

import torch

from export.aot import MAX_BATCH, files_entry, write_aoti
from export.architectures import ArchitectureError
from export.checkpoint import CheckpointError, LoadedModel, load_checkpoint
from export.parity import ParityReport, check_parity, image_paths
from export.pipeline_check import (
    DEFAULT_MARGIN,
    PipelineReport,
    check_pipeline,
)
from export.quantize import write_int8_onnx
from export.spec import ExportSpec, spec_defaults
from export.writers import example_batch, last_conv_stage, write_onnx, write_torchscript
from modelspec.aoti import AotiError
from modelspec.meta import (
    COLOR_POLICIES,
    MODEL_FILES,
    PROJECT_POLICY,
    RESIZE_MODES,
    TORCHVISION_POLICY,
    DecodePolicy,
    MetaError,
    ModelMeta,
    PreprocessSpec,
)

# torch.jit is deprecated upstream but is what TorchServe loads; its warnings are noise here.
warnings.filterwarnings("ignore", message=r".*torch\.jit.*deprecated", category=FutureWarning)


class ExportError(RuntimeError):
    """Export stopped; the message says why."""


# what an export can fail with, each saying why in its message
EXPORT_ERRORS = (CheckpointError, ArchitectureError, MetaError, ExportError, AotiError)


@dataclass
class ExportResult:
    out_dir: Path
    meta: ModelMeta
    parity: ParityReport
    pipeline: PipelineReport


def parse_args(argv: list[str] | None = None) -> ExportSpec:
    parser = argparse.ArgumentParser(
        prog="python -m export",
        description="Export a trained image classifier to TorchScript and ONNX, with a parity "
        "check against the original model and a model_meta.json for the handler.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument(
        "--checkpoint",
        required=True,
        type=Path,
        help="state_dict, {'model_state_dict': ...}, whole pickled model, or TorchScript",
    )
    parser.add_argument("--out", required=True, type=Path, help="output directory")
    parser.add_argument("--name", help="model name (default: the output directory's name)")
    parser.add_argument(
        "--arch",
        help="architecture of a weights-only checkpoint: a registered one (resnet50, "
        "efficientnet_v2_s, efficientnet_lite0), any torchvision classifier, or timm/<name>",
    )
    classes = parser.add_mutually_exclusive_group()
    classes.add_argument("--classes", type=Path, help="file with one class name per line")
    classes.add_argument("--class-names", help="comma-separated class names, in index order")
    parser.add_argument(
        "--trust-checkpoint",
        action="store_true",
        help="allow unpickling Python objects (whole saved models): only for "
        "files from a source you trust",
    )
    # Preprocessing: flags win, then what the checkpoint records (scripts/train.py writes it),
    # then the defaults shown: Resize(256) on the shorter side, CenterCrop(224), ImageNet stats.
    parser.add_argument(
        "--resize-mode",
        choices=RESIZE_MODES,
        help="shorter_side: Resize(N) keeping aspect; square: Resize((N, N)) [shorter_side]",
    )
    parser.add_argument("--resize-size", type=int, help="[256]")
    parser.add_argument("--input-size", type=int, help="CenterCrop size [224]")
    parser.add_argument("--mean", type=float, nargs=3, help="[ImageNet: 0.485 0.456 0.406]")
    parser.add_argument("--std", type=float, nargs=3, help="[ImageNet: 0.229 0.224 0.225]")
    # The decode policy: how uploaded bytes become RGB. It must be what the model was trained
    # on: a sprite's transparent pixels, a 16-bit PNG or an EXIF-rotated photo otherwise get
    # confidently different answers. Default: torchvision's ImageFolder loader
    # (Image.open().convert("RGB")); checkpoints from scripts/train.py record their own.
    parser.add_argument(
        "--color-policy",
        choices=COLOR_POLICIES,
        help="convert: Image.convert('RGB'), alpha dropped (torchvision's loader); composite: "
        "alpha over --background, 16-bit rescaled (scripts/train.py) [convert]",
    )
    parser.add_argument(
        "--exif",
        choices=("ignore", "apply"),
        help="the EXIF Orientation tag: ignore it as Image.open() does, or rotate [ignore]",
    )
    parser.add_argument(
        "--background", type=int, nargs=3, help="composite: the colour under transparency"
    )
    parser.add_argument(
        "--preprocessing",
        choices=("auto", "fast", "exact"),
        help="fast: JPEG draft + PyTorch's resize; exact: full decode + PIL's resize; auto: "
        "fast unless it changes answers on the parity images (see --max-delta)",
    )
    parser.add_argument(
        "--max-delta",
        type=float,
        help="auto keeps the fast path while no class probability moves more than this and "
        f"top-1 holds wherever the reference's top-2 margin exceeds {DEFAULT_MARGIN}",
    )
    parser.add_argument(
        "--fp16", action="store_true", help="also write fp16 TorchScript and ONNX (for GPU workers)"
    )
    parser.add_argument(
        "--parity-images",
        type=Path,
        help="folder of real images for the parity check",
    )
    parser.add_argument(
        "--tolerance",
        type=float,
        help="fp32: allowed max|Δlogit| relative to max(1, max|logit|)",
    )
    parser.add_argument(
        "--int8",
        action="store_true",
        help="also write an INT8 ONNX (static quantization, for CPU workers), calibrated on "
        "--calibration-images",
    )
    parser.add_argument(
        "--calibration-images",
        type=Path,
        help="folder of real images for INT8 calibration (default: --parity-images)",
    )
    parser.add_argument(
        "--int8-min-agreement",
        type=float,
        help="int8: least top-1 agreement with the eager model on the parity images",
    )
    parser.add_argument(
        "--fp16-tolerance",
        type=float,
        help="fp16: allowed max|Δlogit| relative to max(1, max|logit|)",
    )
    parser.add_argument(
        "--aot",
        action="store_true",
        help="also write an AOTInductor package (.pt2, loaded without compiling): fp16 "
        "channels_last for cuda, fp32 for cpu; it runs only there and under this torch version",
    )
    parser.add_argument(
        "--aot-device",
        choices=("cpu", "cuda"),
        help="the device the package is compiled for and runs on",
    )
    parser.set_defaults(**spec_defaults())  # the spec holds every default
    args = parser.parse_args(argv)
    for key in ("mean", "std", "background"):  # nargs=3 lists -> the spec's tuples
        if getattr(args, key) is not None:
            setattr(args, key, tuple(getattr(args, key)))
    return ExportSpec(**vars(args))


def resolve_class_names(args: argparse.Namespace, loaded: LoadedModel, count: int) -> list[str]:
    if args.classes:
        if not args.classes.is_file():
            raise ExportError(f"classes file not found: {args.classes}")
        names = [line.strip() for line in args.classes.read_text().splitlines() if line.strip()]
        source = str(args.classes)
    elif args.class_names:
        names = [n.strip() for n in args.class_names.split(",") if n.strip()]
        source = "--class-names"
    elif loaded.class_names:
        names, source = loaded.class_names, "the checkpoint"
    else:
        raise ExportError(
            f"the model has {count} classes but no names were given: pass --classes FILE "
            "(one per line) or --class-names 'a,b,c'"
        )
    if len(names) != count:
        raise ExportError(
            f"{source} lists {len(names)} class names but the model has {count} outputs"
        )
    return names


def resolve_decode(args: argparse.Namespace, recorded: dict) -> DecodePolicy:
    """Flags, then what the checkpoint records, then torchvision's loader. A checkpoint with a
    "preprocess" record but no "decode" comes from an older scripts/train.py: project policy."""
    if "decode" in recorded:
        base = DecodePolicy.from_dict(recorded["decode"])
    else:
        base = PROJECT_POLICY if recorded else TORCHVISION_POLICY
    return DecodePolicy(
        color=args.color_policy or base.color,
        exif=(args.exif == "apply") if args.exif else base.exif,
        background=tuple(args.background) if args.background else base.background,
        path=args.preprocessing if args.preprocessing != "auto" else "fast",
    )


def resolve_preprocess(args: argparse.Namespace, loaded: LoadedModel) -> PreprocessSpec:
    recorded = loaded.preprocess or {}
    defaults = PreprocessSpec()

    def pick(name: str):
        flag = getattr(args, name)
        return flag if flag is not None else recorded.get(name, getattr(defaults, name))

    return PreprocessSpec(
        input_size=int(pick("input_size")),
        resize_size=int(pick("resize_size")),
        resize_mode=pick("resize_mode"),
        mean=tuple(float(v) for v in pick("mean")),
        std=tuple(float(v) for v in pick("std")),
        decode=resolve_decode(args, recorded),
    )


def _versions() -> dict[str, str]:
    import onnx
    import onnxruntime
    import torchvision

    return {
        "torch": torch.__version__,
        "torchvision": torchvision.__version__,
        "onnx": onnx.__version__,
        "onnxruntime": onnxruntime.__version__,
        "python": platform.python_version(),
    }


class _Steps:
    """Numbered progress lines with the time each step took."""

    def __init__(self, total: int):
        self.total, self.done, self.started = total, 0, time.perf_counter()

    def __call__(self, label: str) -> None:
        now = time.perf_counter()
        if self.done:
            print(f"      done in {now - self.started:.1f}s", flush=True)
        self.done += 1
        self.started = now
        print(f"[{self.done}/{self.total}] {label}", flush=True)

    def finish(self) -> None:
        print(f"      done in {time.perf_counter() - self.started:.1f}s", flush=True)


def export_model(args: ExportSpec) -> ExportResult:
    out_dir: Path = args.out
    steps = _Steps(5 + args.fp16 + args.int8 + args.aot)
    steps(f"loading {args.checkpoint}")
    loaded = load_checkpoint(args.checkpoint, args.arch, args.trust_checkpoint)
    spec = resolve_preprocess(args, loaded)
    example = example_batch(spec.input_size)
    with torch.no_grad():
        logits = loaded.model(example)
    class_names = resolve_class_names(args, loaded, int(logits.shape[1]))
    print(f"      {loaded.format}, {loaded.architecture}, {len(class_names)} classes")

    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "model_meta.json").unlink(missing_ok=True)  # a failed export must not look done
    files = {
        "torchscript/fp32": MODEL_FILES[("torchscript", "fp32")],
        "onnx/fp32": MODEL_FILES[("onnx", "fp32")],
    }
    steps("writing TorchScript (traced, frozen) and ONNX (dynamic batch)")
    cam_layer = last_conv_stage(loaded.model, example)
    write_torchscript(loaded.model, out_dir / files["torchscript/fp32"], example, cam_layer)
    exporter = write_onnx(loaded.model, out_dir / files["onnx/fp32"], example)
    if args.fp16:
        steps("writing fp16 TorchScript and ONNX")
        half = _half_copy(loaded)
        files["torchscript/fp16"] = MODEL_FILES[("torchscript", "fp16")]
        files["onnx/fp16"] = MODEL_FILES[("onnx", "fp16")]
        write_torchscript(half, out_dir / files["torchscript/fp16"], example.half(), cam_layer)
        write_onnx(half, out_dir / files["onnx/fp16"], example.half())

    if args.int8:
        steps("writing INT8 ONNX (static quantization, calibrated on real images)")
        files["onnx/int8"] = MODEL_FILES[("onnx", "int8")]
        calibration = image_paths(args.calibration_images or args.parity_images)
        used = write_int8_onnx(
            out_dir / files["onnx/fp32"], out_dir / files["onnx/int8"], spec, calibration
        )
        print(f"      calibrated on {used} inputs ({len(calibration[:used])} real images)")

    aoti = None
    if args.aot:
        key, name = files_entry(args.aot_device)
        steps(f"compiling AOTInductor {key} for batch 1-{MAX_BATCH} (minutes for large models)")
        aoti = write_aoti(loaded.model, out_dir / name, spec.input_size, args.aot_device)
        files[key] = name
        print(f"      {(out_dir / name).stat().st_size / 2**20:.1f} MiB, torch {aoti.torch}")

    steps("parity check: eager vs each exported file (TorchScript, ONNX Runtime, AOTInductor)")
    report = check_parity(
        loaded.model,
        out_dir,
        files,
        spec,
        image_paths(args.parity_images),
        {"fp32": args.tolerance, "fp16": args.fp16_tolerance, "int8": 1.0},
        int8_min_agreement=args.int8_min_agreement,
    )
    print(report.table())
    steps("bytes -> label: the served image pipeline vs the reference, fast and exact paths")
    pipeline = check_pipeline(
        loaded.model,
        spec,
        image_paths(args.parity_images),
        requested=args.preprocessing,
        max_delta=args.max_delta,
    )
    print(pipeline.table())
    (out_dir / "parity.json").write_text(
        json.dumps({**report.to_dict(), "pipeline": pipeline.to_dict()}, indent=2) + "\n"
    )
    if not report.passed:
        raise ExportError(f"parity check failed; details in {out_dir / 'parity.json'}")
    chosen = pipeline.by_path(pipeline.chosen)
    if chosen is not None and not chosen.passed and args.preprocessing == "auto":
        raise ExportError(
            f"even the exact image pipeline differs from the reference (max |Δp| "
            f"{chosen.max_delta:.4f}); details in {out_dir / 'parity.json'}"
        )
    spec = dataclasses.replace(spec, decode=dataclasses.replace(spec.decode, path=pipeline.chosen))

    steps("writing model_meta.json")
    meta = ModelMeta(
        name=args.name or out_dir.resolve().name,
        architecture=loaded.architecture,
        class_names=class_names,
        preprocess=spec,
        files=files,
        cam_layer=cam_layer,
        export={
            **_versions(),
            "onnx_exporter": exporter,
            **({"aoti": dataclasses.asdict(aoti)} if aoti else {}),
            "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        },
        source={
            "checkpoint": Path(args.checkpoint).name,
            "format": loaded.format,
            "sha256": loaded.sha256,
            **{k: v for k, v in loaded.extras.items()},
        },
    )
    meta.save(out_dir)
    steps.finish()
    return ExportResult(out_dir, meta, report, pipeline)


def _half_copy(loaded: LoadedModel) -> torch.nn.Module:
    if loaded.is_torchscript and not any(True for _ in loaded.model.parameters()):
        raise ExportError(
            "--fp16 needs weights, but this TorchScript file is frozen; export "
            "fp16 from the original checkpoint instead"
        )
    return copy.deepcopy(loaded.model).half().eval()


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        result = export_model(args)
    except EXPORT_ERRORS as exc:
        print(f"export failed: {exc}", file=sys.stderr)
        return 2
    print(
        f"exported {result.meta.name} to {result.out_dir}: {', '.join(result.meta.files.values())}"
    )
    return 0
