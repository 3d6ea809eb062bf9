"""Build the project's image with podman (no Docker engine or registry needed).

python scripts/build_image.py                       # localhost/gameart-serve:cpu on Debian
python scripts/build_image.py --base localhost/debian:bookworm --tag my/serve:cpu

A missing localhost/ base is made with debootstrap first. On a host with Docker, build the same
Dockerfile with `docker build` (see its header); the default base there is the CUDA runtime.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from gameart.cli.common import command_parser
from gameart.ops.container import STATE_DIR, ContainerError, Engine, ImageSpec, build_image

DEFAULTS = ImageSpec()


def build_parser() -> argparse.ArgumentParser:
    parser = command_parser(__doc__)
    parser.add_argument("--tag", default=DEFAULTS.tag, help="image name (default: %(default)s)")
    parser.add_argument(
        "--base", default=DEFAULTS.base_image, help="BASE_IMAGE build arg (default: %(default)s)"
    )
    parser.add_argument(
        "--state-dir",
        type=Path,
        default=STATE_DIR,
        help="podman's images, containers and config (default: %(default)s)",
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    engine = Engine(args.state_dir.resolve())
    log = engine.state_dir / "build.log"
    spec = ImageSpec(tag=args.tag, base_image=args.base)
    print(f"building {spec.tag} on {spec.base_image}; output in {log} ...", flush=True)
    try:
        built = build_image(engine, spec, log=log)
    except (ContainerError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(built.describe())
    conf = engine.state_dir
    print(
        f"run it: CONTAINERS_CONF={conf}/containers.conf "
        f"CONTAINERS_STORAGE_CONF={conf}/storage.conf podman run ... {spec.tag}"
    )
    return 0
