"""config.properties as TorchServe reads it, and the effective copy a run directory holds."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from urllib.parse import urlsplit

PATH_KEYS = ("metrics_config",)  # config values that name files next to the config file

# What a run may override (serve.py start --set, ServerSpec.overrides). Everything else, token
# authorisation, allowed_urls, the model store, the metrics config, stays as config.properties
# says: opening the server up takes an edit of that file, not a flag.
OVERRIDABLE = frozenset(
    {
        "inference_address",
        "management_address",
        "metrics_address",
        "grpc_inference_port",
        "grpc_management_port",
        "load_models",
        "enable_model_api",
        "token_expiration_min",
        "max_request_size",
        "max_response_size",
        "job_queue_size",
        "default_response_timeout",
        "default_workers_per_model",
        "number_of_netty_threads",
        "netty_client_threads",
        "metrics_mode",
    }
)
LOOPBACK_ONLY = ("management_address", "metrics_address")  # no token on metrics; scaling API
LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "[::1]")


class OverrideError(ValueError):
    """An override that would inject other keys or open the server."""


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


def checked_overrides(overrides: Mapping[str, str]) -> dict[str, str]:
    """The overrides, refused (OverrideError) unless each is an allowed key with a one-line
    value, and the management and metrics listeners stay on loopback."""
    for key, value in overrides.items():
        if any(c in f"{key}{value}" for c in "\r\n\0"):
            raise OverrideError(f"override {key!r}: keys and values are one line each")
        if key not in OVERRIDABLE:
            raise OverrideError(
                f"{key!r} cannot be overridden at start (edit config.properties if you mean "
                f"it); these can: {', '.join(sorted(OVERRIDABLE))}"
            )
        if key in LOOPBACK_ONLY:
            host = urlsplit(value).netloc.rsplit(":", 1)[0] if "//" in value else ""
            if host not in LOOPBACK_HOSTS:
                raise OverrideError(f"{key} must stay on loopback (127.0.0.1), got {value!r}")
    return dict(overrides)
