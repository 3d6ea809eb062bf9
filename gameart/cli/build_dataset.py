"""Build a "which game is this image from" dataset from Debian's game data packages.

python scripts/build_dataset.py                 # -> data/gameart/{train,test}/<game>/*.png|jpg
python scripts/build_dataset.py --games pingus,neverball --per-class 50
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from gameart.cli.common import choices_list, command_parser
from gameart.paths import DATASET, DEB_CACHE
from gameart.pipeline.dataset import GAMES, DatasetError, Filters, build


def build_parser() -> argparse.ArgumentParser:
    parser = command_parser(__doc__)
    parser.add_argument("--out", type=Path, default=DATASET)
    parser.add_argument("--debs", type=Path, default=DEB_CACHE, help="download cache")
    parser.add_argument(
        "--games",
        type=choices_list(sorted(GAMES)),
        default=sorted(GAMES),
        metavar="GAME,GAME",
        help=f"comma-separated subset of: {', '.join(sorted(GAMES))}",
    )
    defaults = Filters()
    parser.add_argument("--per-class", type=int, default=defaults.per_class)
    parser.add_argument("--min-side", type=int, default=defaults.min_side)
    parser.add_argument("--test-percent", type=int, default=defaults.test_percent)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    filters = Filters(
        min_side=args.min_side, per_class=args.per_class, test_percent=args.test_percent
    )
    games = {game: GAMES[game] for game in sorted(args.games)}
    try:
        build(args.out, args.debs, games, filters)
    except DatasetError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0
