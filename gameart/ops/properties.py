"""config.properties as TorchServe reads it, and the effective copy a run directory holds."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

PATH_KEYS = ("metrics_config",)  # config values that name files next to the config file


def read_properties(path: Path) -> dict[str, str]:
    """Java-style key=value lines (no continuation lines; our config has none)."""
    props: dict[str, str] = {}
    for line in Path(path).read_text().splitlines():
        line = line.strip()
        if not line or line.startswith(("#", "!")) or "=" not in line:
            continue
        key, _, value = line.partition("=")
        props[key.strip()] = value.strip()
    return props


def effective_config(base: Path, overrides: Mapping[str, str]) -> str:
    """The base config.properties text with keys replaced (or appended) by overrides."""
    lines, seen = [], set()
    for line in Path(base).read_text().splitlines():
        key = line.split("=", 1)[0].strip()
        if "=" in line and not line.lstrip().startswith("#") and key in overrides:
            line = f"{key}={overrides[key]}"
            seen.add(key)
        lines.append(line)
    extra = [f"{k}={v}" for k, v in overrides.items() if k not in seen]
    if extra:
        lines += ["", "# overrides for this run", *extra]
    return "\n".join(lines) + "\n"


def absolute_paths(config: Path) -> dict[str, str]:
    """Relative file paths in the config, made absolute (the server runs in its run dir)."""
    props = read_properties(config)
    base = Path(config).resolve().parent
    return {
        key: str(base / props[key])
        for key in PATH_KEYS
        if props.get(key) and not Path(props[key]).is_absolute()
    }
