"""``iotrust``: the operator's command line.

Commands map one-to-one onto services; this module parses arguments, prints results (tables, or
JSON with ``--json``) and turns the error tree into exit codes. No domain logic lives here.
"""

from __future__ import annotations

import importlib
import os
import secrets as pysecrets
import sys
from pathlib import Path

import typer

from iotrust.adapters.files import write_atomic
from iotrust.cli import backup as backup_cli
from iotrust.cli import broker as broker_cli
from iotrust.cli import factory as factory_cli
from iotrust.cli import hw as hw_cli
from iotrust.cli import ingest as ingest_cli
from iotrust.cli import lifecycle as lifecycle_cli
from iotrust.cli import policy as policy_cli
from iotrust.cli import updates as updates_cli
from iotrust.cli.common import STATE, emit, emit_object, err, errors, out, progress
from iotrust.core.events import format_anchor, parse_anchor
from iotrust.core.lifecycle import RetirementReason
from iotrust.errors import InputError, IotrustError, NotFoundError, TrustError
from iotrust.ports import SystemClock
from iotrust.services import broker as broker_svc
from iotrust.services import (
    credentials,
    devices,
    domain,
    eventlog,
    manufacturers,
    safety,
    tokens,
)
from iotrust.services import vouchers as voucher_svc

app = typer.Typer(help="iotrust: keep an IoT fleet trustworthy from factory to retirement.",
                  no_args_is_help=True, pretty_exceptions_enable=False)
app.add_typer(factory_cli.app, name="factory")
app.add_typer(broker_cli.app, name="broker")
app.add_typer(hw_cli.app, name="hw")
app.add_typer(ingest_cli.app, name="ingest")
app.add_typer(hw_cli.model_app, name="model")
app.add_typer(policy_cli.app, name="policy")
app.add_typer(updates_cli.release_app, name="release")
app.add_typer(updates_cli.rollout_app, name="rollout")
app.add_typer(importlib.import_module("iotrust.cli.audit").app, name="audit")
app.command("demo")(importlib.import_module("iotrust.cli.demo").demo)
manufacturer_app = typer.Typer(help="Manufacturers we trust.", no_args_is_help=True)
voucher_app = typer.Typer(help="Vouchers: which devices are expected.", no_args_is_help=True)
devices_app = typer.Typer(help="The device registry.", no_args_is_help=True)
log_app = typer.Typer(help="The hash-chained event log.", no_args_is_help=True)
token_app = typer.Typer(help="Operator API tokens.", no_args_is_help=True)
domain_app = typer.Typer(help="The trust domain and its CAs.", no_args_is_help=True)
crl_app = typer.Typer(help="Certificate revocation lists.", no_args_is_help=True)
for sub, name in ((manufacturer_app, "manufacturer"), (voucher_app, "voucher"),
                  (devices_app, "devices"), (log_app, "log"), (token_app, "token"),
                  (domain_app, "domain"), (crl_app, "crl")):
    app.add_typer(sub, name=name)

CLOCK = SystemClock()
lifecycle_cli.install(app, devices_app)
hw_cli.install(devices_app)
backup_cli.install(app)


@app.callback()
def main_options(
    data: Path | None = typer.Option(None, "--data", envvar="IOTRUST_DATA",
                                     help="Data folder (default ./data)."),
    json_out: bool = typer.Option(False, "--json", help="Machine-readable output."),
) -> None:
    """Global options."""
    STATE.data = data
    STATE.json = json_out


def _backend(key_backend: str, pkcs11_module: str | None, pkcs11_token: str | None,
             *, allow_generated: bool) -> domain.KeyBackend:
    sec = STATE.secrets()
    passphrase = sec.passphrase
    if key_backend == "file" and passphrase is None and allow_generated:
        path = STATE.settings.data_dir / "passphrase"
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        passphrase = pysecrets.token_urlsafe(32).encode()
        write_atomic(path, passphrase + b"\n", mode=0o600)
        err.print(f"[yellow]note:[/] CA keys are encrypted with a generated passphrase kept in "
                  f"{path}; for production set IOTRUST_PASSPHRASE_FILE to a file kept elsewhere "
                  "or use --key-backend pkcs11.")
    if key_backend == "file" and passphrase is None:
        raise InputError("set IOTRUST_PASSPHRASE or IOTRUST_PASSPHRASE_FILE to encrypt CA keys",
                         reason="passphrase_missing")
    return domain.KeyBackend(kind=key_backend, passphrase=passphrase, pkcs11_module=pkcs11_module,
                             pkcs11_token=pkcs11_token, pkcs11_pin=sec.pin)


@app.command()
def init(
    name: str = typer.Option("iotrust", help="Trust domain name (appears in CA names)."),
    owner: str = typer.Option("owner", help="Owner name vouchers must name (slug)."),
    key_backend: str = typer.Option("file", help="file (encrypted PEM) or pkcs11."),
    pkcs11_module: str | None = typer.Option(None, envvar="IOTRUST_PKCS11_MODULE"),
    pkcs11_token: str | None = typer.Option(None, envvar="IOTRUST_PKCS11_TOKEN"),
    public_url: str = typer.Option("http://127.0.0.1:8443", help="Where devices reach us."),
    generate_passphrase: bool = typer.Option(
        False, "--generate-passphrase-file",
        help="Development only: keep a generated CA-key passphrase in DATA/passphrase."),
) -> None:
    """Create the trust domain: operational root CA, issuing CA, first CRL. Never overwrites."""
    with errors():
        db = STATE.db()
        backend = _backend(key_backend, pkcs11_module, pkcs11_token,
                           allow_generated=generate_passphrase)
        d = domain.init_domain(db, STATE.settings, CLOCK, name=name, owner=owner,
                               backend=backend, public_url=public_url)
        credentials.publish_crls(db, STATE.settings, STATE.secrets_with(backend), CLOCK,
                                 actor=STATE.actor())
        emit_object({"domain": d.name, "owner": d.owner, "server_id": d.server_id,
                     "root": str(STATE.settings.ca_dir / "root.pem"),
                     "data": str(STATE.settings.data_dir)})


@app.command()
def run(
    host: str = typer.Option("127.0.0.1"),
    port: int = typer.Option(8443),
    workers: int = typer.Option(1, min=1, max=64),
) -> None:
    """Initialise a trust domain if there is none (development passphrase file), then serve."""
    with errors():
        db = STATE.db()
        with db.transaction() as tx:
            exists = tx.get_domain() is not None
        if not exists:
            backend = _backend("file", None, None, allow_generated=True)
            domain.init_domain(db, STATE.settings, CLOCK, name="iotrust", owner="owner",
                               backend=backend, public_url=f"http://{host}:{port}")
            credentials.publish_crls(db, STATE.settings, STATE.secrets_with(backend), CLOCK,
                                     actor=STATE.actor())
            err.print(f"initialised a trust domain in {STATE.settings.data_dir}")
        db.close()
    _serve(host, port, workers, safety.StartupOptions(safety.Profile.DEVELOPMENT))


@app.command()
def serve(
    host: str = typer.Option("127.0.0.1"),
    port: int = typer.Option(8443),
    workers: int = typer.Option(1, min=1, max=64),
    tls_cert: Path | None = typer.Option(None, "--tls-cert", help="Server certificate (PEM)."),
    tls_key: Path | None = typer.Option(None, "--tls-key", help="Server key (PEM)."),
    production: bool = typer.Option(False, "--production",
                                    help="Production profile (also IOTRUST_PROFILE=production)."),
    unsafe_plain_http: bool = typer.Option(
        False, "--unsafe-plain-http", help="UNSAFE: plain HTTP in production (TLS proxy)."),
    unsafe_unencrypted_ca_key: bool = typer.Option(
        False, "--unsafe-unencrypted-ca-key", help="UNSAFE: start with unencrypted CA keys."),
) -> None:
    """Serve the HTTP API (onboarding, operators) on the configured registry."""
    with errors():
        options = safety.StartupOptions(
            safety.Profile.resolve(production=production), tls_cert=tls_cert, tls_key=tls_key,
            unsafe_plain_http=unsafe_plain_http,
            unsafe_unencrypted_ca_key=unsafe_unencrypted_ca_key)
    _serve(host, port, workers, options)


def _serve(host: str, port: int, workers: int, options: safety.StartupOptions) -> None:
    import uvicorn  # noqa: PLC0415 - only the serving commands need it

    with errors():
        db = STATE.db()
        try:
            safety.check_startup(db, STATE.settings, options)
            try:
                if broker_svc.ensure_published_crls(db, STATE.settings, STATE.secrets(), CLOCK):
                    err.print("republished the CRLs (they were missing, expiring or incomplete)")
            except IotrustError as exc:  # serving still works; say why the CRL is not fresh
                err.print(f"[yellow]warning:[/] could not refresh the CRLs: {exc.reason}")
        finally:
            db.close()
    os.environ["IOTRUST_DATA"] = str(STATE.settings.data_dir)
    scheme = "https" if options.tls else "http"
    err.print(f"iotrust serving on {scheme}://{host}:{port} (data {STATE.settings.data_dir}, "
              f"{options.profile} profile); "
              "create an operator token with `iotrust token create NAME --role admin`")
    uvicorn.run("iotrust.api.app:app_from_environment", factory=True, host=host, port=port,
                workers=workers, log_level=os.environ.get("IOTRUST_LOG_LEVEL", "warning"),
                ssl_certfile=options.tls_cert, ssl_keyfile=options.tls_key,
                # Never trust X-Forwarded-For by default: per-source rate limits count the peer.
                proxy_headers=False,
                # httptools + uvloop: a fraction of h11's and asyncio's CPU per request (see
                # iotrust.api.transport, which also bounds request heads as h11 did).
                http="iotrust.api.transport:NoDelayHttpToolsProtocol", loop="uvloop",
                # uvicorn kills a worker that has not answered its health ping within 5 s; a
                # worker still importing on a loaded 2-core machine takes longer, and the
                # supervisor then restarts it forever.
                timeout_worker_healthcheck=60)


@domain_app.command("show")
def domain_show() -> None:
    """The trust domain and its CAs."""
    with errors():
        db = STATE.db()
        with db.transaction() as tx:
            d = domain.require_domain(tx)
            cas = tx.list_cas()
        rows = [{"id": c.id, "role": c.role, "state": c.state, "not_after": c.not_after,
                 "key": c.key_ref.split(":", 1)[0]} for c in cas]
        if STATE.json:
            emit_object({"name": d.name, "owner": d.owner, "server_id": d.server_id,
                         "settings": dict(d.settings), "cas": rows})
            return
        emit(rows, ["id", "role", "state", "not_after", "key"],
             title=f"{d.name} (owner {d.owner})")
        emit([{"setting": k, "value": v} for k, v in sorted(d.settings.items())],
             ["setting", "value"], title="settings (`iotrust domain set KEY VALUE`)")


@domain_app.command("set")
def domain_set(
    key: str = typer.Argument(..., help="Setting name (see `iotrust domain show`)."),
    value: str = typer.Argument(...),
) -> None:
    """Change one trust-domain setting (broker endpoint, onboarding/rotation limits)."""
    with errors():
        from iotrust.services import domain_settings  # noqa: PLC0415 - pulls in the services

        stored = domain_settings.set_setting(STATE.db(), CLOCK, key, value, actor=STATE.actor())
        emit_object({"key": key, "value": stored})


@domain_app.command("export-root")
def export_root(
    out_dir: Path = typer.Argument(..., help="Where to write the root certificate and key."),
    remove: bool = typer.Option(False, "--remove-online-key",
                                help="Delete the online copy of the root key afterwards."),
) -> None:
    """Export the root CA (certificate and encrypted key) for offline keeping."""
    with errors():
        paths = domain.export_root(STATE.db(), out_dir, remove_online_key=remove)
        emit_object({"written": [str(p) for p in paths], "online_key_removed": remove})


@manufacturer_app.command("add")
def manufacturer_add(
    name: str = typer.Argument(..., help="Manufacturer name (slug)."),
    anchor: Path = typer.Option(..., exists=True, dir_okay=False,
                                help="Factory root CA certificate(s), PEM."),
    allow: list[str] = typer.Option(..., help="vendor:product this maker may vouch for."),
    unsafe_manufacturer_trust: bool = typer.Option(
        False, "--unsafe-manufacturer-trust",
        help="UNSAFE: admit any genuine device of an allowed model without a voucher."),
) -> None:
    """Trust a manufacturer's factory root for the given vendor:product ids."""
    with errors():
        m = manufacturers.add_manufacturer(
            STATE.db(), CLOCK, name=name, anchors_pem=anchor.read_bytes(), allowed=allow,
            actor=STATE.actor(), unsafe_manufacturer_trust=unsafe_manufacturer_trust)
        emit_object({"manufacturer": m.name, "allowed": m.allowed,
                     "unsafe_manufacturer_trust": m.unsafe_manufacturer_trust})


@manufacturer_app.command("list")
def manufacturer_list() -> None:
    """Registered manufacturers."""
    with errors():
        db = STATE.db()
        with db.transaction() as tx:
            rows = tx.list_manufacturers()
        emit([{"name": m.name, "allowed": ",".join(m.allowed), "revoked": m.revoked,
               "unsafe_manufacturer_trust": m.unsafe_manufacturer_trust} for m in rows],
             ["name", "allowed", "revoked", "unsafe_manufacturer_trust"])


@manufacturer_app.command("revoke")
def manufacturer_revoke(name: str) -> None:
    """Stop trusting a manufacturer."""
    with errors():
        manufacturers.revoke_manufacturer(STATE.db(), CLOCK, name, actor=STATE.actor())
        emit_object({"manufacturer": name, "revoked": True})


@voucher_app.command("import")
def voucher_import(
    files: list[Path] = typer.Argument(..., exists=True, dir_okay=False,
                                       help="Voucher files (one voucher per line)."),
) -> None:
    """Import vouchers: each valid one makes its device EXPECTED; refusals are logged."""
    with errors():
        db = STATE.db()
        items: list[bytes] = []
        for f in files:
            items.extend(voucher_svc.read_voucher_lines(f.read_bytes()))
        with progress(len(items), "importing") as tick:
            report = voucher_svc.import_vouchers(db, CLOCK, items, actor=STATE.actor(),
                                                 progress=tick)
        summary = {"imported": len(report.imported), "unchanged": report.unchanged,
                   "refused": len(report.refused),
                   "refusals": [{"index": i, "reason": r, "detail": d}
                                for i, r, d in report.refused]}
        emit_object(summary)
        if report.refused:
            first = report.refused[0]
            raise TrustError(f"{len(report.refused)} voucher(s) refused; first: {first[2]}",
                             reason=first[1])


@devices_app.command("list")
def devices_list(
    state: str | None = typer.Option(None, help="expected|active|quarantined|retired"),
    manufacturer: str | None = typer.Option(None),
    model: str | None = typer.Option(None, help="Only devices of this device model."),
    limit: int = typer.Option(100, min=1, max=10_000),
    after: str | None = typer.Option(None, help="Continue after this device id."),
) -> None:
    """List devices (keyset-paginated)."""
    with errors():
        rows = devices.list_devices(STATE.db(), state=state, manufacturer=manufacturer,
                                    model=model, limit=limit, after=after)
        emit([{"id": d.id, "manufacturer": d.manufacturer, "serial": d.serial,
               "state": d.state.value, "retired_reason": d.retired_reason,
               "owner": d.owner, "factory_spki_sha256": d.factory_spki_sha256,
               "product_id": d.product_id, "model": d.model,
               "key_storage": d.key_storage.value,
               "updated_at": d.updated_at.isoformat()} for d in rows],
             ["id", "manufacturer", "serial", "state", "model", "updated_at"])


@devices_app.command("show")
def devices_show(device_id: str) -> None:
    """One device with its credentials and latest events."""
    with errors():
        det = devices.show(STATE.db(), device_id)
        d = det.device
        emit_object({
            "id": d.id, "manufacturer": d.manufacturer, "serial": d.serial,
            "state": d.state.value, "retired_reason": d.retired_reason, "owner": d.owner,
            "factory_spki_sha256": d.factory_spki_sha256, "key_storage": d.key_storage.value,
            "vendor_id": d.vendor_id, "product_id": d.product_id, "model": d.model,
            "unsafe_admission": d.unsafe_admission,
            "credentials": [{"serial": c.serial_number, "state": c.state.value,
                             "not_after": c.not_after.isoformat()} for c in det.credentials],
            "events": [{"seq": e.seq, "at": e.at.isoformat(), "kind": e.kind,
                        "reason": e.reason} for e in det.events]})


@app.command("quarantine")
def quarantine_cmd(device_id: str, reason: str = typer.Option("operator")) -> None:
    """Quarantine a device: only its remediation channel stays open."""
    with errors():
        broker = broker_svc.open_broker(STATE.settings, CLOCK)
        try:
            result = broker_svc.quarantine(STATE.db(), CLOCK, broker, device_id,
                                           actor=STATE.actor(), reason=reason)
        finally:
            if broker is not None:
                broker.close()
        emit_object(result.as_dict())


@devices_app.command("release")
@app.command("unquarantine")
def release_cmd(device_id: str) -> None:
    """Release a device from quarantine (`iotrust release` is the firmware release group)."""
    with errors():
        broker = broker_svc.open_broker(STATE.settings, CLOCK)
        try:
            result = broker_svc.release(STATE.db(), CLOCK, broker, device_id, actor=STATE.actor())
        finally:
            if broker is not None:
                broker.close()
        emit_object(result.as_dict())


@app.command("retire")
def retire_cmd(
    device_id: str,
    reason: RetirementReason = typer.Option(..., help="Why the device's trust ends."),
) -> None:
    """Retire a device (one-way): revoke every credential, republish the CRL."""
    with errors():
        db = STATE.db()
        broker = broker_svc.open_broker(STATE.settings, CLOCK)
        try:
            result = broker_svc.retire(db, STATE.settings, STATE.secrets(), CLOCK, device_id,
                                       broker=broker, reason=reason, actor=STATE.actor())
        finally:
            if broker is not None:
                broker.close()
        emit_object({**result.as_dict(), "reason": reason.value})


@crl_app.command("publish")
def crl_publish() -> None:
    """Re-sign and publish the CRL of every issuing CA (atomically, verified first)."""
    with errors():
        ids = credentials.publish_crls(STATE.db(), STATE.settings, STATE.secrets(), CLOCK,
                                       actor=STATE.actor())
        emit_object({"published": ids, "file": str(STATE.settings.crl_dir / "all.crl.pem")})


@log_app.command("verify")
def log_verify(
    anchor: str | None = typer.Option(
        None, help="Expected head 'seq:hash' (default: the data folder's anchor file, if any)."),
) -> None:
    """Check the event chain; name every modified, deleted or reordered record."""
    with errors():
        db = STATE.db()
        head = None
        if anchor:
            head = parse_anchor(anchor)
        elif STATE.settings.anchor_file.exists():
            head = parse_anchor(STATE.settings.anchor_file.read_text().strip())
        report = eventlog.verify(db, head)
        result = {"records": report.count,
                  "head": format_anchor(report.head) if report.head else None,
                  "anchor": format_anchor(head) if head else None,
                  "intact": not report.breaks,
                  "breaks": [{"seq": b.seq, "kind": b.kind, "detail": b.detail}
                             for b in report.breaks]}
        emit_object(result)
        report.raise_for_breaks()


@log_app.command("anchor")
def log_anchor() -> None:
    """Export the current head ('seq:hash') to the anchor file and print it; keep a copy apart."""
    with errors():
        db = STATE.db()
        with db.transaction() as tx:
            head = tx.event_head()
        if head is None:
            raise NotFoundError("the event log is empty", reason="empty_log")
        text = format_anchor(head)
        write_atomic(STATE.settings.anchor_file, (text + "\n").encode(), mode=0o644)
        emit_object({"anchor": text, "file": str(STATE.settings.anchor_file)})


@log_app.command("tail")
def log_tail(
    limit: int = typer.Option(20, "-n", min=1, max=10_000),
    device: str | None = typer.Option(None, "--device"),
) -> None:
    """The latest events."""
    with errors():
        db = STATE.db()
        with db.transaction() as tx:
            rows = list(tx.iter_events(device_id=device))[-limit:]
        emit([{"seq": e.seq, "at": e.at.isoformat(), "kind": e.kind, "actor": e.actor,
               "device": e.device_id, "reason": e.reason} for e in rows],
             ["seq", "at", "kind", "actor", "device", "reason"])


@token_app.command("create")
def token_create(
    name: str = typer.Argument(...),
    role: str = typer.Option("operator", help="admin | operator | auditor"),
) -> None:
    """Create an operator token (printed once; only its hash is stored)."""
    with errors():
        rec, secret = tokens.create_token(STATE.db(), CLOCK, name=name, role=role,
                                          actor=STATE.actor())
        emit_object({"name": rec.name, "role": rec.role, "token": secret})


@token_app.command("list")
def token_list() -> None:
    """Operator tokens (names and roles; never the secrets)."""
    with errors():
        db = STATE.db()
        with db.transaction() as tx:
            rows = tx.list_tokens()
        emit([{"name": t.name, "role": t.role, "created_at": t.created_at.isoformat(),
               "revoked": t.revoked_at is not None} for t in rows],
             ["name", "role", "created_at", "revoked"])


@token_app.command("rotate")
def token_rotate(name: str) -> None:
    """Give a token a new secret (printed once); the old secret is refused from now on."""
    with errors():
        rec, secret = tokens.rotate_token(STATE.db(), CLOCK, name, actor=STATE.actor())
        emit_object({"name": rec.name, "role": rec.role, "token": secret})


@token_app.command("revoke")
def token_revoke(name: str) -> None:
    """Revoke an operator token."""
    with errors():
        tokens.revoke_token(STATE.db(), CLOCK, name, actor=STATE.actor())
        emit_object({"name": name, "revoked": True})


@app.command()
def bench(
    quick: bool = typer.Option(False, help="Small sizes (seconds, not minutes)."),
    output: Path = typer.Option(Path("benchmarks/results/latest.json"), "--out"),
) -> None:
    """Run the benchmarks: each operation next to its physical floor, with ratios."""
    checkout = Path(__file__).resolve().parents[3]  # src/iotrust/cli/main.py → the checkout
    if (checkout / "benchmarks" / "run.py").exists() and str(checkout) not in sys.path:
        sys.path.insert(0, str(checkout))
    try:
        runner = importlib.import_module("benchmarks.run")
    except ImportError:
        out.print("benchmarks/ is part of the source checkout; run `make bench` there")
        raise typer.Exit(1) from None
    runner.main(["--quick"] if quick else [], output=output)


def main() -> None:
    """Entry point of the ``iotrust`` script."""
    app(prog_name="iotrust")


if __name__ == "__main__":
    main()
