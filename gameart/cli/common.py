"""Options and value syntaxes shared by the commands, written once."""

from __future__ import annotations

import argparse
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar

import yaml

from gameart.paths import RUN_DIR

T = TypeVar("T")


def command_parser(doc: str | None, *parents: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """A command's parser: its module docstring as the help text, layout kept."""
    return argparse.ArgumentParser(
        description=doc, formatter_class=argparse.RawDescriptionHelpFormatter, parents=parents
    )


def run_dir_parent() -> argparse.ArgumentParser:
    """--run-dir: which server instance (its config, logs and key file)."""
    parent = argparse.ArgumentParser(add_help=False)
    parent.add_argument(
        "--run-dir",
        type=Path,
        default=RUN_DIR,
        help="the server instance's directory: config, logs, keys (default: %(default)s)",
    )
    return parent


def token_parent() -> argparse.ArgumentParser:
    """--token: a key given by hand instead of the run directory's key file."""
    parent = argparse.ArgumentParser(add_help=False)
    parent.add_argument(
        "--token",
        help="inference key (default: read from the run directory's key file, re-read when "
        "the server renews it)",
    )
    return parent


def comma_list(item: Callable[[str], T] = str) -> Callable[[str], list[T]]:
    """The one list syntax of every command: comma-separated, e.g. --devices cpu,cuda."""

    def parse(text: str) -> list[T]:
        try:
            return [item(part.strip()) for part in text.split(",") if part.strip()]
        except ValueError as exc:
            raise argparse.ArgumentTypeError(f"{text!r}: {exc}") from exc

    parse.__name__ = f"comma-separated {getattr(item, '__name__', 'value')} list"
    return parse


def choices_list(allowed: Sequence[str]) -> Callable[[str], list[str]]:
    """A comma-separated list whose items must be among `allowed`."""

    def item(text: str) -> str:
        if text not in allowed:
            raise ValueError(f"{text!r} is not one of {', '.join(allowed)}")
        return text

    item.__name__ = "choice"
    return comma_list(item)


def key_values(pairs: Sequence[str], *, parse_values: bool = False) -> dict[str, Any]:
    """KEY=VALUE options (--set, --handler-set) as a dict; values parsed as YAML scalars when
    asked (so 20000000 is a number and true a boolean)."""
    found: dict[str, Any] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            raise ValueError(f"expected KEY=VALUE, got {pair!r}")
        found[key.strip()] = yaml.safe_load(value) if parse_values else value.strip()
    return found
