"""Break the code on purpose, once per mutation, and check that the suite notices.

    .venv/bin/python tests/mutation_check.py                  # every mutation, its tests
    .venv/bin/python tests/mutation_check.py alpha            # one mutation
    .venv/bin/python tests/mutation_check.py --tests tests/test_torchserve_integration.py

Each mutation is a one-line edit of the serving code (applied to the working tree and always
restored) that a user would feel: answers on the wrong background, through the wrong decode
policy, in the wrong order, on unnormalised pixels, under the wrong class names, or a batch
that one item's failure costs again. For each, the listed tests are run and must fail. Not
part of `make test` (it runs the heavy tests once per mutation).
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
UNIT = ["tests/test_service.py", "tests/test_decode_policy.py", "tests/test_preprocess.py"]
ISOLATION = ["tests/test_isolation.py"]
HTTP = ["tests/test_torchserve_integration.py"]
GPU_DECODE = ["tests/test_gpu_decode.py"]
OVERLAP = ["tests/test_overlap.py"]


@dataclass(frozen=True)
class Mutation:
    name: str
    file: str
    before: str
    after: str
    tests: tuple[str, ...]


MUTATIONS = [
    Mutation(
        "alpha",  # project policy: transparent pixels composited on black instead of white
        "modelspec/imaging.py",
        'canvas = Image.new("RGBA", rgba.size, (*background, 255))',
        'canvas = Image.new("RGBA", rgba.size, (0, 0, 0, 255))',
        (*UNIT, *HTTP),
    ),
    Mutation(
        "policy",  # torchvision policy: alpha composited (the old handler's behaviour)
        "modelspec/imaging.py",
        'return image if image.mode == "RGB" else image.convert("RGB")',
        "return _composite_rgb(image, policy.background)",
        (*UNIT, *HTTP),
    ),
    Mutation(
        "reverse",  # a batch's answers handed back in reverse order
        "handler/service.py",
        "for item, row in zip(items, rows, strict=True):",
        "for item, row in zip(items, reversed(rows), strict=True):",
        (*UNIT, *HTTP),
    ),
    Mutation(
        "normalise",  # the mean/std normalisation dropped (only scaled to 0..1)
        "modelspec/imaging.py",
        "batch = torch.addcmul(-self.shift, batch, self.scale)",
        "batch = batch / 255.0",
        (*UNIT, *HTTP),
    ),
    Mutation(
        "classes",  # the first two class names swapped in the answers
        "handler/postprocess.py",
        'top = [{"label": class_names[i], "probability": round(float(row[i]), 6)} for i in order]',
        "names = [class_names[1], class_names[0], *class_names[2:]]\n"
        '    top = [{"label": names[i], "probability": round(float(row[i]), 6)} for i in order]',
        (*UNIT, *HTTP),
    ),
    Mutation(
        "guard",  # the per-item guard catches only what the code expected
        "handler/items.py",
        "except Exception as exc:  # MemoryError and torch's allocation failures included",
        "except MemoryError as exc:",
        (*ISOLATION, *HTTP),
    ),
    Mutation(
        "bisect",  # a failing model call fails the whole batch again
        "handler/service.py",
        "if len(items) == 1 or budget[0] < 2:",
        "if True:",
        (*ISOLATION, *HTTP),
    ),
    Mutation(
        "eligible",  # grey and CMYK JPEGs sent to the batch decoder, which converts them its way
        "handler/gpu_decode.py",
        "if not inspected.plain_jpeg:",
        'if inspected.format != "JPEG":',
        (*GPU_DECODE, *HTTP),
    ),
    Mutation(
        "crop_order",  # the batch decoder's crops of one size handed back in reverse order
        "handler/gpu_decode.py",
        "for index, crop in zip(indices, resized, strict=True):",
        "for index, crop in zip(indices, resized.flip(0), strict=True):",
        (*GPU_DECODE, *HTTP),
    ),
    Mutation(
        "serial",  # the next micro-batch prepared before the model call, not beside it
        "handler/overlap.py",
        "return self._helper.submit(self._prepare_on_side, prepare, chunk)",
        "return (f := self._helper.submit(self._prepare_on_side, prepare, chunk), f.result())[0]",
        (*OVERLAP,),
    ),
]


def run(mutation: Mutation, tests: list[str] | None = None) -> tuple[bool, str, float]:
    """(caught, pytest's last line, seconds) with the mutation applied."""
    path = ROOT / mutation.file
    original = path.read_text()
    if original.count(mutation.before) != 1:
        raise SystemExit(f"{mutation.name}: the line to mutate is not in {mutation.file} once")
    started = time.monotonic()
    try:
        path.write_text(original.replace(mutation.before, mutation.after))
        result = subprocess.run(
            [
                sys.executable,
                "-m",
                "pytest",
                "-q",
                "-x",
                "-p",
                "no:randomly",
                *(tests or mutation.tests),
            ],
            cwd=ROOT,
            capture_output=True,
            text=True,
            check=False,
        )
    finally:
        path.write_text(original)
    lines = [line for line in result.stdout.splitlines() if line.strip()]
    failed = [line for line in lines if line.startswith("FAILED")]
    summary = (failed[0] if failed else "") + " | " + (lines[-1] if lines else "")
    return result.returncode == 1, summary, time.monotonic() - started


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("names", nargs="*", help=f"mutations, of {[m.name for m in MUTATIONS]}")
    parser.add_argument("--tests", nargs="+", help="run these tests instead of each's own")
    args = parser.parse_args(argv)
    chosen = [m for m in MUTATIONS if not args.names or m.name in args.names]
    survived = 0
    for mutation in chosen:
        print(f"mutation {mutation.name}: {mutation.file} ...", flush=True)
        caught, summary, seconds = run(mutation, args.tests)
        survived += not caught
        print(f"  {'caught' if caught else 'SURVIVED'} in {seconds:.0f}s: {summary}", flush=True)
    print(f"{len(chosen) - survived} of {len(chosen)} mutations caught")
    return 1 if survived else 0


if __name__ == "__main__":
    sys.exit(main())
