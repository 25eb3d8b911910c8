"""``iotrust-agent``: the device agent's command line (argparse; it keeps the agent light).

Commands::

    iotrust-agent onboard --device DIR --state DIR --server URL
                          [--ca-bundle PEM | --insecure-first-contact]
    iotrust-agent status --state DIR [--json]
    iotrust-agent rotate --state DIR --server URL [--force] [--ca-bundle PEM] [--json]
    iotrust-agent run --state DIR [--interval S] [--count N] [--spool DIR]
    iotrust-agent gateway --state DIR --downstream DIR [DIR ...] [--count N]
    iotrust-agent update --state DIR --server URL [--hw-class H] [--install-hook CMD]
                         [--health-hook CMD] [--ca-bundle PEM | --insecure-http] [--json]

``run`` publishes signed telemetry (:mod:`.telemetry`) on the device's own MQTT connection, or
into a gateway's spool folder with ``--spool``; ``gateway`` relays the envelopes of downstream
devices from their spool folders on the gateway's own connection (:mod:`.gateway`). Both stop on
SIGTERM/SIGINT after the message in flight, persisting the message counter.

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
import os
import secrets
import signal
import sys
import threading
from datetime import UTC, datetime
from pathlib import Path
from types import FrameType
from typing import Final, TextIO

from iotrust.adapters.mqtt.client import MqttSession
from iotrust.agent.gateway import Gateway, Spool, SpoolPublisher
from iotrust.agent.keys import FILE_STORAGE, close_signer, open_operational_signer
from iotrust.agent.onboard import onboard
from iotrust.agent.rotate import rotate
from iotrust.agent.state import load_state
from iotrust.agent.telemetry import CounterFile, DeviceSealer, mqtt_endpoint, run_telemetry
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

    rn = sub.add_parser("run", help="Publish signed telemetry.",
                        description="Seal telemetry with the operational key and publish it on "
                                    "devices/<id>/telemetry (or spool it for a gateway).")
    rn.add_argument("--state", required=True, type=Path, help="The agent's state folder.")
    rn.add_argument("--interval", type=float, default=10.0, help="Seconds between messages.")
    rn.add_argument("--count", type=int, default=None, help="Stop after N messages.")
    rn.add_argument("--spool", type=Path, default=None,
                    help="Write sealed messages into this gateway spool folder instead of "
                         "publishing them.")

    up = sub.add_parser("update", help="Poll for signed updates and apply them.",
                        description="One update cycle: director and image repository (TUF), "
                                    "A/B install, health check, commit or roll back, signed "
                                    "status reports.")
    up.add_argument("--state", required=True, type=Path, help="The agent's state folder.")
    up.add_argument("--server", required=True, help="The server's base URL.")
    up.add_argument("--hw-class", default=None,
                    help="This device's hardware class (needed on the first update).")
    up.add_argument("--install-hook", default=None,
                    help="Command installing $IOTRUST_IMAGE into $IOTRUST_SLOT (exit 0: ok).")
    up.add_argument("--health-hook", default=None,
                    help="Command checking the new slot $IOTRUST_SLOT (exit 0: healthy).")
    uptls = up.add_mutually_exclusive_group()
    uptls.add_argument("--ca-bundle", type=Path, help="Verify TLS against this PEM bundle.")
    uptls.add_argument("--insecure-http", action="store_true",
                       help="Allow plain http:// (the TUF signatures still protect updates).")
    up.add_argument("--json", action="store_true", help="Print the outcomes as JSON.")

    gw = sub.add_parser("gateway", help="Relay signed messages of downstream devices.",
                        description="Publish the envelopes downstream devices sealed (spool "
                                    "folders) on the gateway's own MQTT connection.")
    gw.add_argument("--state", required=True, type=Path, help="The gateway's state folder.")
    gw.add_argument("--downstream", required=True, type=Path, nargs="+",
                    help="Spool folders of the downstream devices.")
    gw.add_argument("--poll", type=float, default=0.2, help="Seconds between spool scans.")
    gw.add_argument("--count", type=int, default=None, help="Stop after relaying N messages.")
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


def _stop_on_signals() -> threading.Event:
    stop = threading.Event()

    def handler(_signum: int, _frame: FrameType | None) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, handler)
    signal.signal(signal.SIGINT, handler)
    return stop


def _run(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    if not 0 <= args.interval <= 86_400:  # noqa: PLR2004
        parser.error("--interval must be 0..86400 seconds")
    if args.count is not None and args.count < 1:
        parser.error("--count must be at least 1")
    state = load_state(args.state)
    signer = open_operational_signer(state.operational_key_ref)
    sealer = DeviceSealer(state, signer, CounterFile(args.state))
    stop = _stop_on_signals()

    def refused(counter: int, code: int) -> None:
        _say(f"refused by the broker: message {counter} (reason code 0x{code:02x})", sys.stderr)

    try:
        if args.spool is not None:
            published, denied = run_telemetry(sealer, SpoolPublisher(args.spool),
                                              interval_s=args.interval, count=args.count,
                                              stop=stop, on_refused=refused)
        else:
            with MqttSession(mqtt_endpoint(args.state, state),
                             client_id=state.device_id) as session:
                session.connect()
                published, denied = run_telemetry(sealer, session, interval_s=args.interval,
                                                  count=args.count, stop=stop,
                                                  on_refused=refused)
    finally:
        sealer.close()
        close_signer(signer)
    _say(f"published {published} signed messages as {state.device_id}"
         + (f"; {denied} refused by the broker" if denied else ""))
    if denied:
        raise TrustError(f"the broker refused {denied} of {published + denied} messages",
                         reason="broker_refused")
    return EXIT_OK


def _gateway(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    if not 0 < args.poll <= 60:  # noqa: PLR2004
        parser.error("--poll must be in (0, 60]")
    state = load_state(args.state)
    gateway_stop = _stop_on_signals()
    spools = [Spool(path) for path in args.downstream]
    with MqttSession(mqtt_endpoint(args.state, state), client_id=state.device_id) as session:
        session.connect()
        _say(f"gateway {state.device_id} relaying for {len(spools)} spool folder(s)",
             sys.stderr)
        stats = Gateway(spools, session).run(gateway_stop, poll_s=args.poll,
                                             max_messages=args.count)
    _say(json.dumps(stats.as_dict(), sort_keys=True))
    return EXIT_OK


def _update(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    from iotrust.agent import updates  # noqa: PLC0415 - python-tuf is loaded only to update

    plain = args.server.lower().startswith("http://")
    if plain and not args.insecure_http:
        parser.error("a plain http:// server needs --insecure-http")
    verify: bool | str = str(args.ca_bundle) if args.ca_bundle is not None else not plain
    client, close = updates.client_for(args.state, server_url=args.server, verify=verify,
                                       pin=os.environ.get("IOTRUST_PKCS11_PIN"),
                                       install_command=args.install_hook,
                                       health_command=args.health_hook)
    try:
        if not (client.base / updates.STATE_FILE).exists():
            if args.hw_class is None:
                parser.error("the first update needs --hw-class")
            client.initialise(load_state(args.state).update_root, args.hw_class)
        outcomes = client.poll()
    finally:
        close()
    rows = [{"target": o.path, "status": o.status, "reason": o.reason} for o in outcomes]
    if args.json:
        _say(json.dumps(rows, indent=2))
    else:
        for row in rows or [{"target": "-", "status": "nothing offered", "reason": None}]:
            reason = f" ({row['reason']})" if row["reason"] else ""
            _say(f"{row['target']}: {row['status']}{reason}")
    return EXIT_OK


def run(argv: list[str] | None = None) -> int:
    """Parse ``argv`` and run the command; return the exit code."""
    parser = _parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # argparse exits on --help (0) and on usage errors (2)
        return exc.code if isinstance(exc.code, int) else EXIT_USAGE
    try:
        commands = {"onboard": _onboard, "rotate": _rotate, "run": _run, "gateway": _gateway,
                    "update": _update}
        command = commands.get(args.command)
        return command(args, parser) if command is not None else _status(args)
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

