"""``iotrust-agent``: the device agent's command line (argparse; it keeps the agent light).

Commands::

    iotrust-agent onboard --device DIR --state DIR --server URL
                          [--ca-bundle PEM | --insecure-first-contact]
    iotrust-agent status --state DIR [--json]
    iotrust-agent rotate --state DIR --server URL [--force] [--ca-bundle PEM] [--json]

**TLS at first contact.** A device cannot know its owner's TLS root before onboarding: that is
what onboarding tells it. What protects the device is not the server's TLS certificate but the
voucher's **owner pin**: the device verifies the voucher against the manufacturer root it
shipped with, pins the owner root key the voucher names, and refuses an issued chain that does
not end in that key (``owner_mismatch``). A rogue server therefore cannot hand the device a
credential, with or without TLS. TLS still keeps the exchange private and is checked whenever
it can be: against ``--ca-bundle`` if given, else against the system roots for ``https://``.
``--insecure-first-contact`` turns checking off (and is required for plain ``http://``); it is
named for what it is.

Exit codes: 0 ok; 77 refused (prints ``refused: <reason>: <detail>``); 69 server or network
unavailable after retries, or a key store failure; 65 bad input (device folder, state, reply);
66 not found (e.g. ``status`` before onboarding); 67 conflict (already onboarded); 2 usage.
This module is the only place in the agent that prints or exits.
"""

from __future__ import annotations

import argparse
import json
import secrets
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Final, TextIO

from iotrust.agent.keys import FILE_STORAGE
from iotrust.agent.onboard import onboard
from iotrust.agent.rotate import rotate
from iotrust.agent.state import load_state
from iotrust.agent.transport import HttpTransport, RetryPolicy
from iotrust.errors import IotrustError, TrustError

EXIT_OK: Final = 0
EXIT_USAGE: Final = 2
EXIT_INTERRUPTED: Final = 130

FILE_KEY_WARNING: Final = (
    "warning: this device keeps its keys in development key files (key_storage=file): anyone "
    "who can read them owns the device's identity, and the posture audit flags file keys. "
    "Use a PKCS#11 token (secure element, TPM, HSM) in production."
)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="iotrust-agent", description="The iotrust device agent.")
    sub = parser.add_subparsers(dest="command", required=True)

    ob = sub.add_parser("onboard", help="First contact: prove the device, get its credential.",
                        description="Onboard this device with its owner's iotrust server.")
    ob.add_argument("--device", required=True, type=Path,
                    help="The minted device folder (device.json, factory.crt.pem, ...).")
    ob.add_argument("--state", required=True, type=Path, help="The agent's state folder.")
    ob.add_argument("--server", required=True, help="The server's base URL, e.g. https://host.")
    tls = ob.add_mutually_exclusive_group()
    tls.add_argument("--ca-bundle", type=Path,
                     help="Verify the server's TLS certificate against this PEM bundle.")
    tls.add_argument("--insecure-first-contact", action="store_true",
                     help="Do not verify the server's TLS certificate (required for http://). "
                          "The voucher's owner pin still protects the credential.")
    ob.add_argument("--timeout", type=float, default=10.0, help="Seconds per request.")
    ob.add_argument("--retries", type=int, default=5,
                    help="Retries on network errors and 429/502/503/504 (never on refusals).")
    ob.add_argument("--json", action="store_true", help="Print the result as JSON.")

    ro = sub.add_parser("rotate", help="Renew the operational credential (new key).",
                        description="Renew the operational credential if due or requested.")
    ro.add_argument("--state", required=True, type=Path, help="The agent's state folder.")
    ro.add_argument("--server", required=True, help="The server's base URL.")
    ro.add_argument("--force", action="store_true", help="Renew now even if not due.")
    ro.add_argument("--ca-bundle", type=Path, help="Verify the server's TLS certificate.")
    ro.add_argument("--timeout", type=float, default=10.0, help="Seconds per request.")
    ro.add_argument("--retries", type=int, default=5, help="Retries on network errors.")
    ro.add_argument("--json", action="store_true", help="Print the result as JSON.")

    st = sub.add_parser("status", help="Show what the agent holds.")
    st.add_argument("--state", required=True, type=Path, help="The agent's state folder.")
    st.add_argument("--json", action="store_true", help="Print JSON.")
    return parser


def _say(text: str, stream: TextIO | None = None) -> None:
    """Write one line to stdout (or ``stream``): this CLI's only output."""
    out = stream if stream is not None else sys.stdout
    out.write(text + "\n")
    out.flush()


def _print_error(exc: IotrustError, stream: TextIO) -> None:
    if isinstance(exc, TrustError):
        _say(f"refused: {exc.reason}: {exc.message}", stream)
    else:
        _say(f"error: {exc.reason}: {exc.message}", stream)


def _verify_for(args: argparse.Namespace, parser: argparse.ArgumentParser) -> bool | str:
    plain = args.server.lower().startswith("http://")
    if args.ca_bundle is not None:
        if plain:
            parser.error("--ca-bundle needs an https:// server")
        return str(args.ca_bundle)
    if args.insecure_first_contact:
        _say("warning: the server's TLS certificate is not verified (--insecure-first-contact);"
             " the voucher's owner pin protects the credential", sys.stderr)
        return False
    if plain:
        parser.error("a plain http:// server needs --insecure-first-contact")
    return True


def _show(summary: dict[str, object], as_json: bool) -> None:
    if as_json:
        _say(json.dumps(summary, indent=2, sort_keys=True))
        return
    for key, value in summary.items():
        shown = json.dumps(value) if isinstance(value, dict) else value
        _say(f"{key}: {shown}")


def _onboard(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    if not 0 < args.timeout <= 600:  # noqa: PLR2004
        parser.error("--timeout must be in (0, 600]")
    if not 0 <= args.retries <= 100:  # noqa: PLR2004
        parser.error("--retries must be 0..100")
    verify = _verify_for(args, parser)
    with HttpTransport(args.server, timeout=args.timeout, verify=verify,
                       policy=RetryPolicy(retries=args.retries)) as transport:
        state = onboard(args.device, args.state, transport, now=lambda: datetime.now(UTC),
                        random=secrets.token_bytes, server_url=transport.base_url)
    if state.key_storage == FILE_STORAGE:
        _say(FILE_KEY_WARNING, sys.stderr)
    summary = state.summary(datetime.now(UTC))
    if args.json:
        _show(summary, as_json=True)
    else:
        _say(f"onboarded {state.serial} as {state.device_id} (owner {state.owner}, "
              f"server {state.server_id}); state in {args.state}")
    return EXIT_OK


def _rotate(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    if not 0 < args.timeout <= 600 or not 0 <= args.retries <= 100:  # noqa: PLR2004
        parser.error("--timeout must be in (0, 600] and --retries 0..100")
    verify: bool | str = str(args.ca_bundle) if args.ca_bundle is not None else True
    if args.server.lower().startswith("http://"):
        # Every rotation message is signed and the new chain must end in the pinned owner, so
        # plain HTTP exposes metadata, not the credential; still, say so.
        _say("warning: plain http:// (no TLS) to the server", sys.stderr)
        verify = False
    with HttpTransport(args.server, timeout=args.timeout, verify=verify,
                       policy=RetryPolicy(retries=args.retries)) as transport:
        outcome = rotate(args.state, transport, now=lambda: datetime.now(UTC),
                         random=secrets.token_bytes, force=args.force)
    if args.json:
        _show(outcome.summary(), as_json=True)
    elif outcome.rotated:
        _say(f"rotated: credential {outcome.credential_serial} valid until "
             f"{outcome.summary()['not_after']} ({outcome.reason})")
    else:
        _say(f"not due: renewal at {outcome.summary()['renew_at']}")
    return EXIT_OK


def _status(args: argparse.Namespace) -> int:
    state = load_state(args.state)
    _show(state.summary(datetime.now(UTC)), as_json=args.json)
    return EXIT_OK


def run(argv: list[str] | None = None) -> int:
    """Parse ``argv`` and run the command; return the exit code."""
    parser = _parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # argparse exits on --help (0) and on usage errors (2)
        return exc.code if isinstance(exc.code, int) else EXIT_USAGE
    try:
        if args.command == "onboard":
            return _onboard(args, parser)
        if args.command == "rotate":
            return _rotate(args, parser)
        return _status(args)
    except SystemExit as exc:  # parser.error() inside a command
        return exc.code if isinstance(exc.code, int) else EXIT_USAGE
    except IotrustError as exc:
        _print_error(exc, sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        _say("interrupted", sys.stderr)
        return EXIT_INTERRUPTED


def main() -> None:
    """The ``iotrust-agent`` entry point."""
    sys.exit(run())

