"""TorchServe's keys, renewed before they expire.

TorchServe gives the inference and management keys a lifetime (`token_expiration_min`) and
never renews them: a day after start every client, the health check and the scaler get 400.
`renew_keys_while_running` asks TorchServe's token API (with the API key, which does not
expire) for new keys at half their lifetime, for as long as the server runs. TorchServe
rewrites key_file.json itself (in the run dir, which only the server's user can open); the
project's clients re-read it when a key is refused.
"""

from __future__ import annotations

import datetime as dt
import time
from collections.abc import Callable
from pathlib import Path

import psutil

from gameart.ops.client import TorchServeClient, TorchServeError, key_entries
from gameart.ops.properties import read_properties

RENEWED_KINDS = ("inference", "management")
DEFAULT_LIFETIME_MIN = 60 * 24  # TorchServe's own default for token_expiration_min
RENEW_AT = 0.5  # share of a key's lifetime after which it is renewed
POLL_S = 5.0  # how often the loop looks at the server and the clock


def key_lifetime_s(config: Path) -> float:
    """The keys' lifetime in seconds, as the run's config.properties sets it."""
    value = read_properties(config).get("token_expiration_min", str(DEFAULT_LIFETIME_MIN))
    return float(value) * 60.0


def token_authorisation_on(config: Path) -> bool:
    return read_properties(config).get("disable_token_authorization", "false").lower() != "true"


def expiries(run_dir: Path) -> dict[str, dt.datetime]:
    """When each key in the key file expires (empty when token authorisation is off)."""
    found = {}
    for kind, entry in key_entries(run_dir).items():
        if stamp := entry.get("expiration time"):
            found[kind] = dt.datetime.fromisoformat(stamp.replace("Z", "+00:00"))
    return found


def due_for_renewal(
    expiry: dict[str, dt.datetime], lifetime_s: float, now: dt.datetime
) -> list[str]:
    """The kinds whose remaining life is below (1 - RENEW_AT) of their lifetime (pure)."""
    margin = dt.timedelta(seconds=lifetime_s * (1.0 - RENEW_AT))
    return [kind for kind in RENEWED_KINDS if kind in expiry and expiry[kind] - now <= margin]


def renew_keys_while_running(
    run_dir: Path,
    server_pid: int,
    log: Callable[[str], None] = print,
    poll_s: float = POLL_S,
) -> int:
    """Renew the keys at half their lifetime until the server `server_pid` exits; the number
    of renewals made. A failed renewal is retried at the next poll."""
    run_dir = run_dir.resolve()
    config = run_dir / "config.properties"
    if not token_authorisation_on(config):
        return 0
    lifetime_s = key_lifetime_s(config)
    client = TorchServeClient.from_run_dir(run_dir, timeout=10)
    renewals = 0
    while psutil.pid_exists(server_pid) and _not_a_zombie(server_pid):
        now = dt.datetime.now(dt.timezone.utc)
        for kind in due_for_renewal(expiries(run_dir), lifetime_s, now):
            try:
                client.renew_key(kind)
                renewals += 1
                log(f"renewed the {kind} key (lifetime {lifetime_s / 60:g} min)")
            except (TorchServeError, OSError) as exc:
                log(f"could not renew the {kind} key yet: {exc}")
        time.sleep(min(poll_s, lifetime_s * (1.0 - RENEW_AT) / 4))
    return renewals


def _not_a_zombie(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False
