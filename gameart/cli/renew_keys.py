"""Renew TorchServe's inference and management keys at half their lifetime while it runs.

Started by `serve.py start` beside every server (its log: <run dir>/logs/key_renewal.log) and
ended with it; nobody has to run it by hand.

  python -m gameart.cli.renew_keys --run-dir .run/torchserve --pid 12345
"""

from __future__ import annotations

from gameart.cli.common import command_parser, run_dir_parent
from gameart.ops.keys import renew_keys_while_running


def main(argv: list[str] | None = None) -> int:
    parser = command_parser(__doc__, run_dir_parent())
    parser.add_argument("--pid", type=int, required=True, help="the TorchServe frontend's pid")
    args = parser.parse_args(argv)

    def log(line: str) -> None:
        print(line, flush=True)

    renewals = renew_keys_while_running(args.run_dir, args.pid, log)
    log(f"server {args.pid} gone after {renewals} renewal(s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
