"""The whole lifecycle in one run (``iotrust demo``): the orchestration, told as numbered steps.

:class:`Demo` builds a throw-away trust domain in a folder (SQLite), a simulated factory and a
rogue one, starts a real Mosquitto (configured by :mod:`iotrust.services.broker`), a real
``iotrust serve`` subprocess and real ``iotrust-agent`` processes, and goes through the story:
mint, register the product's device model with its hardware profile (shipped as package data),
vouch, onboard, refusals (replayed attest, rogue device, clone), signed telemetry (ingest runs
in-process), a staged rollout that aborts itself on an injected failure, a quarantine measured
by the broker service, a rotation, a retirement followed by a zombie knocking, and the posture
audit. Every step returns its outcome as a JSON-able dict with ``ok``; the narration goes
through a :data:`Narrate` callback, so this module prints nothing.

Processes are started in their own process groups and stopped by their pid only (:meth:`close`;
:mod:`iotrust.services.demo_processes` holds that machinery; what the demo does by hand in a
device's place is :mod:`iotrust.services.demo_devices`).
This module does not decide anything itself: every decision is the services' and the server's;
it does not exit or handle signals (the CLI does).
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets as pysecrets
import shutil
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, Final

from iotrust.adapters.files import write_atomic
from iotrust.adapters.mqtt.mosquitto import (
    BrokerSettings,
    MosquittoBroker,
    MosquittoProcess,
    find_dynsec_plugin,
    find_mosquitto,
    free_port,
)
from iotrust.adapters.sql.store import Database
from iotrust.adapters.sql.updates import UpdateTx
from iotrust.core import hardware as hw
from iotrust.core import pki
from iotrust.core import rollout as ro
from iotrust.core.lifecycle import RetirementReason
from iotrust.core.records import TrustDomain
from iotrust.core.updates import ReleaseInfo
from iotrust.errors import IotrustError, NotFoundError
from iotrust.ports import Clock, SystemClock
from iotrust.services import (
    audit,
    credentials,
    devices,
    domain,
    factory,
    hardware,
    manufacturers,
    rollouts,
    tokens,
    updates,
    zombies,
)
from iotrust.services import broker as broker_svc
from iotrust.services import ingest as ingest_svc
from iotrust.services import vouchers as voucher_svc
from iotrust.services.demo_devices import AgentDevice, mqtt_knock, replayed_onboarding
from iotrust.services.demo_processes import (
    PROCESS_TIMEOUT_S,
    Finished,
    IngestThread,
    Processes,
    agent_command,
    refusal,
    update_statuses,
    wait_healthy,
)
from iotrust.services.domain import KeyBackend, Secrets
from iotrust.services.settings import Settings

ACTOR: Final = "demo@iotrust"
OWNER: Final = "demo-owner"
MAKER: Final = "acme-sensors"
ROGUE: Final = "shady-works"
VENDOR: Final = "0x1234"
PRODUCT: Final = "sensor-1"
MODEL: Final = "acme-sensor-s2"
#: The hardware profile of :data:`MODEL`, shipped as package data (also
#: ``examples/hardware/mcu-secure-element.yaml``).
MODEL_PROFILE: Final = ("data", "hardware", "mcu-secure-element.yaml")
INSTALL_HINT: Final = "sudo apt-get install mosquitto"
DEMO_WAVES: Final = (50, 100)

#: ``narrate(kind, text)``; kind is ``step``, ``info``, ``ok``, ``refused`` or ``warn``.
Narrate = Callable[[str, str], None]


def mosquitto_missing() -> str | None:
    """What is missing to run the demo's broker (``None``: nothing)."""
    if find_mosquitto() is None:
        return "mosquitto"
    if find_dynsec_plugin() is None:
        return "the mosquitto dynamic-security plugin"
    return None


def model_profile() -> bytes:
    """The demo model's hardware profile (a secure-element MCU sensor)."""
    return resources.files("iotrust.core").joinpath(*MODEL_PROFILE).read_bytes()


def _verdict_summary(assessment: hw.Assessment) -> str:
    """``6 feasible, 2 degraded (signed updates, rollback protection)``."""
    counts = Counter(v.level for v in assessment.verdicts)
    short = [v.mechanism.value.replace("_", " ") for v in assessment.verdicts
             if v.level is not hw.Level.FEASIBLE]
    text = ", ".join(f"{counts[level]} {level.value}" for level in hw.Level if counts[level])
    return f"{text} ({', '.join(short)})" if short else text


@dataclass(slots=True)
class Demo:
    """One demo run in ``base`` (created if missing; must not hold a trust domain yet)."""

    base: Path
    devices: int = 8
    fast: bool = False
    narrate: Narrate = lambda _kind, _text: None
    clock: Clock = field(default_factory=SystemClock)
    procs: Processes = field(default_factory=Processes)
    outcome: dict[str, Any] = field(default_factory=dict)
    fleet: list[AgentDevice] = field(default_factory=list)
    token: str | None = None
    server_url: str = ""
    _settings: Settings | None = None
    _passphrase: bytes = b""
    _db: Database | None = None
    _broker: MosquittoBroker | None = None
    _mosquitto: MosquittoProcess | None = None
    _server: subprocess.Popen[str] | None = None
    _ingest: ingest_svc.IngestService | None = None
    _ingest_thread: IngestThread = field(default_factory=IngestThread)
    _ingest_db: Database | None = None
    _witness: AgentDevice | None = None
    _rogue: AgentDevice | None = None

    # -- plumbing --------------------------------------------------------------------------

    @property
    def settings(self) -> Settings:
        """The demo's data folder settings."""
        if self._settings is None:
            raise RuntimeError("the demo was not set up")
        return self._settings

    @property
    def db(self) -> Database:
        """The registry."""
        if self._db is None:
            raise RuntimeError("the demo was not set up")
        return self._db

    @property
    def broker(self) -> MosquittoBroker:
        """The running broker."""
        if self._broker is None:
            raise RuntimeError("the broker is not configured")
        return self._broker

    @property
    def secrets(self) -> Secrets:
        """The CA-key passphrase of this run."""
        return Secrets(passphrase=self._passphrase)

    @property
    def dashboard_url(self) -> str:
        """Where the dashboard is."""
        return f"{self.server_url}/ui/"

    def env(self) -> dict[str, str]:
        """The environment for ``iotrust`` subprocesses on this data folder."""
        env = dict(os.environ)
        env.pop("IOTRUST_PASSPHRASE", None)
        env.pop("IOTRUST_DATABASE_URL", None)
        env.update({"IOTRUST_DATA": str(self.settings.data_dir),
                    "IOTRUST_PASSPHRASE_FILE": str(self.settings.data_dir / "passphrase")})
        return env

    def _agent(self, *args: str, timeout: float = PROCESS_TIMEOUT_S) -> Finished:
        return self.procs.run([*agent_command(), *args], timeout=timeout)

    def _say(self, kind: str, text: str) -> None:
        self.narrate(kind, text)

    def _record(self, name: str, result: dict[str, Any]) -> dict[str, Any]:
        self.outcome[name] = result
        self._say("ok" if result.get("ok") else "warn",
                  f"{name}: {'ok' if result.get('ok') else 'NOT as expected'}")
        return result

    def close(self) -> None:
        """Stop ingest, every child process and the broker; close the registry."""
        self._ingest_thread.stop()
        self.procs.stop_all()
        if self._mosquitto is not None:
            self._mosquitto.stop()
            self._mosquitto = None
        for db in (self._ingest_db, self._db):
            if db is not None:
                db.close()
        self._ingest_db = self._db = None

    def run(self) -> dict[str, Any]:
        """Every step in order; the outcome of each (also in :attr:`outcome`)."""
        self.setup()
        self.onboard()
        self.refusals()
        self.telemetry()
        self.rollout()
        self.quarantine()
        self.rotation()
        self.retirement()
        self.audit()
        return self.outcome

    # -- 1. factory, trust domain, broker ----------------------------------------------------

    def setup(self) -> dict[str, Any]:
        """Trust domain, factory, minted devices, vouchers, broker, ingest and admin token."""
        self._say("step", "1. A simulated factory mints the fleet; the owner registers its "
                          "model and imports vouchers")
        data = self.base / "data"
        if (data / "iotrust.db").exists():
            raise IotrustError(f"{data} already holds a trust domain; give an empty --dir",
                               reason="demo_dir_not_empty")
        data.mkdir(parents=True, exist_ok=True, mode=0o700)
        self._settings = Settings(data_dir=data, database_url=f"sqlite:///{data / 'iotrust.db'}")
        self._passphrase = pysecrets.token_urlsafe(32).encode()
        write_atomic(data / "passphrase", self._passphrase + b"\n", mode=0o600)
        self._db = Database.open(self.settings.database_url)
        port = free_port()
        self.server_url = f"http://127.0.0.1:{port}"
        backend = KeyBackend(kind="file", passphrase=self._passphrase)
        domain.init_domain(self.db, self.settings, self.clock, name="demo-fleet", owner=OWNER,
                           backend=backend, public_url=self.server_url)
        credentials.publish_crls(self.db, self.settings, self.secrets, self.clock, actor=ACTOR)
        updates.init_updates(self.settings, backend, self.clock)
        factory_pass = pysecrets.token_urlsafe(24).encode()
        fac = factory.init_factory(self.base / "factories" / MAKER, self.clock, name=MAKER,
                                   vendor_id=VENDOR, product_id=PRODUCT, passphrase=factory_pass)
        minted = factory.mint(fac, self.clock, self.devices, passphrase=factory_pass, prefix="AS")
        vouchers = factory.write_vouchers(
            fac, self.clock, [m.folder for m in minted], owner=OWNER,
            owner_root_pem=(self.settings.ca_dir / "root.pem").read_bytes(),
            passphrase=factory_pass)
        manufacturers.add_manufacturer(
            self.db, self.clock, name=MAKER, anchors_pem=(fac.path / "root.crt.pem").read_bytes(),
            allowed=[f"{VENDOR}:{PRODUCT}"], actor=ACTOR)
        model = self._register_model()
        report = voucher_svc.import_vouchers(self.db, self.clock, vouchers, actor=ACTOR)
        with_model = len(devices.list_devices(self.db, model=MODEL, limit=10_000))
        agents = self.base / "agents"
        self.fleet = [AgentDevice(m.serial, m.folder, agents / m.serial) for m in minted]
        self._witness = self.fleet[0]
        rogue_fac = factory.init_factory(self.base / "factories" / ROGUE, self.clock, name=ROGUE,
                                         vendor_id=VENDOR, product_id=PRODUCT,
                                         passphrase=factory_pass)
        (rogue,) = factory.mint(rogue_fac, self.clock, 1, passphrase=factory_pass, prefix="SH")
        self._rogue = AgentDevice(rogue.serial, rogue.folder, agents / rogue.serial)
        self._say("info", f"minted {len(minted)} devices at {MAKER} (serials {minted[0].serial}"
                          f"..{minted[-1].serial}); imported {len(report.imported)} vouchers")
        self._say("info", f"{ROGUE} (not a registered manufacturer) minted {rogue.serial}")
        self._start_broker()
        self._start_ingest()
        _, self.token = tokens.create_token(self.db, self.clock, name="demo-admin", role="admin",
                                            actor=ACTOR)
        return self._record("mint", {
            "ok": len(report.imported) == self.devices and not report.refused
            and with_model == self.devices,
            "minted": len(minted), "vouchers_imported": len(report.imported),
            "model": MODEL, "model_worst": model.assessment.worst.value,
            "credential_lifetime_days": model.defaults.credential_lifetime_s // 86_400,
            "devices_with_model": with_model, "broker_port": self.broker.settings.port})

    def _register_model(self) -> hardware.RegisteredModel:
        """``iotrust model add`` for the factory's product, before its vouchers arrive."""
        model = hardware.register_model(self.db, self.clock, name=MODEL, manufacturer=MAKER,
                                        profile_yaml=model_profile(), actor=ACTOR,
                                        product_id=PRODUCT)
        days = model.defaults.credential_lifetime_s // 86_400
        self._say("info", f"model {MODEL} ({model.assessment.profile.key_storage.value} key "
                          f"storage) for product {PRODUCT}: "
                          f"{_verdict_summary(model.assessment)}; {days}-day credentials")
        return model

    def _start_broker(self) -> None:
        settings = BrokerSettings(port=free_port(), services=(ingest_svc.INGEST_GRANT,))
        self._broker = broker_svc.configure(self.db, self.settings, self.secrets, self.clock,
                                            broker_settings=settings)
        self._mosquitto = MosquittoProcess(self.broker)
        self._mosquitto.start()
        with self.db.transaction() as tx:
            current = domain.require_domain(tx)
            tx.update_domain(TrustDomain(
                name=current.name, owner=current.owner, created_at=current.created_at,
                server_id=current.server_id, root_ca_id=current.root_ca_id,
                settings={**dict(current.settings), "broker_host": "127.0.0.1",
                          "broker_port": settings.port}))
        self._say("info", f"Mosquitto runs on 127.0.0.1:{settings.port} (mutual TLS, per-device "
                          "ACL, CRL) configured from the registry")

    def _start_ingest(self) -> None:
        files = ingest_svc.ensure_identity(self.db, self.settings, self.secrets, self.clock)
        endpoint = ingest_svc.broker_endpoint(self.settings, self.clock, files)
        self._ingest_db = Database.open(self.settings.database_url)
        self._ingest = ingest_svc.IngestService(
            self._ingest_db, self.clock, [ingest_svc.DatabaseSink(self._ingest_db)],
            aggregate_interval_s=1.0)
        self._ingest_thread.start(self._ingest, endpoint)

    # -- 2. server and onboarding -------------------------------------------------------------

    def start_server(self) -> None:
        """``iotrust serve`` on the chosen port; wait for ``/v1/health``."""
        port = self.server_url.rsplit(":", 1)[1]
        self._server = self.procs.start(
            [sys.executable, "-m", "iotrust.cli.main", "serve", "--host", "127.0.0.1",
             "--port", port], env=self.env(), log=self.base / "server.log")
        wait_healthy(self._server, self.server_url, self.base / "server.log")

    def onboard(self) -> dict[str, Any]:
        """Start the server; onboard every device but the witness with real agent processes."""
        self._say("step", "2. The server starts; devices onboard with iotrust-agent processes")
        self.start_server()
        self._say("info", f"iotrust serve answers on {self.server_url}")
        started = time.perf_counter()
        agents = [d for d in self.fleet if d is not self._witness]
        running = [(d, self.procs.start([*agent_command(), "onboard", "--device",
                                         str(d.folder), "--state", str(d.state), "--server",
                                         self.server_url, "--insecure-first-contact", "--json"]))
                   for d in agents]
        failures = []
        for d, proc in running:
            done = self.procs.wait(proc)
            if done.returncode == 0:
                d.device_id = json.loads(done.stdout)["device_id"]
                self._say("info", f"{d.serial} onboarded as {d.device_id}")
            else:
                failures.append({"serial": d.serial, "exit": done.returncode,
                                 "reason": refusal(done.stderr)})
        broker_svc.sync(self.db, self.broker)  # the new ACTIVE devices' rules, now
        seconds = time.perf_counter() - started
        self._say("info", f"{len(agents) - len(failures)} devices onboarded in {seconds:.1f} s "
                          "(hello, attest with a fresh nonce, confirm)")
        return self._record("onboard", {"ok": not failures, "onboarded": len(agents) -
                                        len(failures), "failures": failures,
                                        "seconds": round(seconds, 2)})

    @property
    def onboarded(self) -> list[AgentDevice]:
        """Devices that hold an agent state."""
        return [d for d in self.fleet if d.device_id is not None]

    # -- 3. refusals ----------------------------------------------------------------------------

    def refusals(self) -> dict[str, Any]:
        """A replayed attest, a rogue device and a clone: each refused with its reason."""
        self._say("step", "3. Attacks on onboarding: a replay, a rogue device, a clone")
        if self._witness is None or self._rogue is None:
            raise RuntimeError("the demo was not set up")
        replay = replayed_onboarding(self._witness, server_url=self.server_url,
                                     factory_dir=self.base / "factories" / MAKER)
        self._say("refused" if replay["reason"] else "warn",
                  f"replayed attest of {self._witness.serial}: HTTP {replay['status']} "
                  f"{replay['reason']} (the server nonce is single-use)")
        rogue = self._agent("onboard", "--device", str(self._rogue.folder), "--state",
                            str(self._rogue.state), "--server", self.server_url,
                            "--insecure-first-contact", "--retries", "0")
        rogue_reason = refusal(rogue.stderr)
        self._say("refused", f"rogue {self._rogue.serial} from {ROGUE}: exit {rogue.returncode}"
                             f" {rogue_reason} (no voucher, no registered manufacturer)")
        clone_state = self.base / "agents" / f"clone-of-{self._witness.serial}"
        clone = self._agent("onboard", "--device", str(self._witness.folder), "--state",
                            str(clone_state), "--server", self.server_url,
                            "--insecure-first-contact", "--retries", "0")
        clone_reason = refusal(clone.stderr)
        self._say("refused", f"a second device presenting {self._witness.serial}'s factory "
                             f"identity: exit {clone.returncode} {clone_reason}")
        reasons = [r for r in (replay["reason"], rogue_reason, clone_reason) if r]
        return self._record("refusals", {
            "ok": replay["reason"] == "nonce_replayed" and clone_reason == "clone_suspected"
            and rogue_reason in {"unknown_device", "chain_invalid"},
            "reasons": reasons, "replay": replay["reason"], "rogue": rogue_reason,
            "clone": clone_reason})

    # -- 4. telemetry -----------------------------------------------------------------------------

    def _stored(self, device_id: str | None = None) -> int:
        with self.db.transaction(readonly=True) as tx:
            return tx.count_ingested_messages(device_id)

    def _until(self, predicate: Callable[[], bool], timeout: float = 20.0) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if predicate():
                return True
            time.sleep(0.05)
        return predicate()

    def telemetry(self, count: int = 3) -> dict[str, Any]:
        """Every onboarded agent publishes ``count`` signed messages; ingest verifies them."""
        self._say("step", "4. Devices publish signed telemetry; ingest verifies every message")
        assert self._ingest is not None
        before = self._ingest.stats.accepted
        devices_ = [d for d in self.onboarded if d is not self._witness]
        running = [self.procs.start([*agent_command(), "run", "--state", str(d.state),
                                     "--count", str(count), "--interval", "0.05"])
                   for d in devices_]
        exits = [self.procs.wait(p).returncode for p in running]
        expected = before + count * len(devices_)
        ingest = self._ingest
        self._until(lambda: ingest.stats.accepted >= expected)
        accepted = ingest.stats.accepted - before
        self._say("info", f"{len(devices_)} devices published {count} COSE-signed, "
                          f"counter-stamped messages each; ingest accepted {accepted}, "
                          f"refused {sum(ingest.stats.refused.values())}")
        return self._record("telemetry", {"ok": accepted == count * len(devices_) and
                                          not any(exits),
                                          "accepted": accepted, "devices": len(devices_),
                                          "refused": dict(ingest.stats.refused)})

    # -- 5. rollout -------------------------------------------------------------------------------

    def _update(self, device: AgentDevice, *, healthy: bool) -> Finished:
        hook = shutil.which("true" if healthy else "false") or ("/bin/true" if healthy
                                                                else "/bin/false")
        return self._agent("update", "--state", str(device.state), "--server", self.server_url,
                           "--insecure-http", "--hw-class", PRODUCT, "--health-hook", hook,
                           "--json")

    def rollout(self) -> dict[str, Any]:
        """Release 2 in two waves; the first device's health check fails: the rollout aborts."""
        self._say("step", "5. A staged rollout; an injected failure in wave 1 aborts it")
        agents = [d for d in self.onboarded if d is not self._witness]
        by_id = {d.device_id: d for d in agents if d.device_id is not None}
        ids = list(by_id)
        rid, waves = _rollout_id(ids)
        rollouts.add_release(self.db, self.settings, self.secrets, self.clock,
                             data=b"demo firmware 2 " * 256,
                             info=ReleaseInfo("main", (PRODUCT,), 2), actor=ACTOR)
        policy = ro.RolloutPolicy(waves=DEMO_WAVES, success_percent=100,
                                  abort_failure_percent=50, abort_min_finished=1)
        rollouts.create_rollout(self.db, self.settings, self.secrets, self.clock, "main-2",
                                actor=ACTOR, policy=policy, device_ids=ids, rollout_id=rid)
        first_wave = sorted((d for d, w in waves.items() if w == 0),
                            key=lambda d: ro.bucket(rid, d))
        later = {d for d, w in waves.items() if w > 0}
        self._say("info", f"rollout {rid}: {len(first_wave)} device(s) in wave 1 "
                          f"({DEMO_WAVES[0]} %), {len(later)} in wave 2")
        failing = by_id[first_wave[0]]
        failed = self._update(failing, healthy=False)
        self._say("refused", f"{failing.serial} installs main-2, its health check fails: "
                             f"{update_statuses(failed)}")
        others = [(d, self.procs.start([*agent_command(), "update", "--state", str(d.state),
                                        "--server", self.server_url, "--insecure-http",
                                        "--hw-class", PRODUCT, "--health-hook",
                                        shutil.which("true") or "/bin/true", "--json"]))
                  for d in agents if d is not failing]
        offered_later = []
        for d, proc in others:
            done = self.procs.wait(proc)
            if d.device_id in later and update_statuses(done):
                offered_later.append(d.device_id)
        view = rollouts.status(self.db, rid)
        with self.db.transaction(readonly=True) as tx:
            rows = UpdateTx(tx).rollout_devices(rid)
        released_later = [r.device_id for r in rows if r.wave > 0 and r.released_at is not None]
        self._say("info", f"rollout {view.rollout.state} ({view.rollout.reason}); wave-2 "
                          f"devices offered the release: {len(offered_later)}")
        return self._record("rollout", {
            "ok": view.rollout.state == "aborted" and not offered_later and not released_later,
            "rollout": rid, "status": view.rollout.state, "reason": view.rollout.reason,
            "first_wave": len(first_wave), "later_wave": len(later),
            "later_offered": len(offered_later) + len(released_later),
            "status_counts": dict(view.counts)})

    # -- 6. quarantine ----------------------------------------------------------------------------

    def _compromised(self) -> AgentDevice:
        agents = [d for d in self.onboarded if d is not self._witness]
        return agents[-1]

    def _rotating(self) -> AgentDevice:
        agents = [d for d in self.onboarded if d is not self._witness]
        return agents[0]

    def quarantine(self) -> dict[str, Any]:
        """Quarantine a talking device; the others keep talking."""
        self._say("step", "6. A compromised device is quarantined while the others keep talking")
        target = self._compromised()
        peers = [d for d in self.onboarded if d is not self._witness and d is not target]
        talkers = {d.device_id: self.procs.start(
            [*agent_command(), "run", "--state", str(d.state), "--count", "25",
             "--interval", "0.1"]) for d in [target, *peers]}
        assert target.device_id is not None
        self._until(lambda: self._stored(target.device_id) > 0, timeout=15)
        peers_before = sum(self._stored(d.device_id) for d in peers)
        result = broker_svc.quarantine(self.db, self.clock, self.broker, target.device_id,
                                       actor=ACTOR, reason="compromised")
        quarantine_ms = result.timings_ms.get("total", 0.0)
        self._say("info", f"{target.serial} quarantined in {quarantine_ms:.0f} ms "
                          f"(registry {result.timings_ms.get('transition', 0):.0f} ms, broker "
                          f"rules {result.timings_ms.get('rules', 0):.0f} ms, kick "
                          f"{result.timings_ms.get('kick', 0):.0f} ms)")
        finished = {k: self.procs.wait(p) for k, p in talkers.items()}
        peers_after = sum(self._stored(d.device_id) for d in peers)
        target_run = finished[target.device_id]
        denied = "refused by the broker" in target_run.stderr
        peers_ok = all(finished[d.device_id].returncode == 0 for d in peers)
        self._say("refused", f"{target.serial}'s telemetry after the quarantine: refused by the "
                             f"broker ({'yes' if denied else 'no'}); the {len(peers)} others "
                             f"delivered {peers_after - peers_before} more messages")
        return self._record("quarantine", {
            "ok": quarantine_ms < 1000 and result.broker == "applied" and peers_ok  # noqa: PLR2004
            and peers_after > peers_before,
            "device": target.device_id, "quarantine_ms": round(quarantine_ms, 1),
            "timings_ms": {k: round(v, 1) for k, v in result.timings_ms.items()},
            "target_refused_by_broker": denied,
            "peer_messages_after": peers_after - peers_before})

    # -- 7. rotation ------------------------------------------------------------------------------

    def rotation(self) -> dict[str, Any]:
        """``iotrust-agent rotate --force``: a new key, a new credential, the old one revoked."""
        self._say("step", "7. A device rotates its credential (new key, proven with the old)")
        device = self._rotating()
        old = pki.load_certificate((device.state / "operational.crt.pem").read_bytes())
        done = self._agent("rotate", "--state", str(device.state), "--server", self.server_url,
                           "--force", "--json")
        shown = json.loads(done.stdout) if done.returncode == 0 else {}
        new_serial = shown.get("credential_serial")
        self._say("info", f"{device.serial}: credential {old.serial_number:x} → {new_serial} "
                          f"(exit {done.returncode}); the old one is revoked on confirmation")
        return self._record("rotation", {
            "ok": done.returncode == 0 and shown.get("rotated") is True
            and new_serial != f"{old.serial_number:x}",
            "device": device.device_id, "old_serial": f"{old.serial_number:x}",
            "new_serial": new_serial})

    # -- 8. retirement and a zombie -----------------------------------------------------------

    def retirement(self) -> dict[str, Any]:
        """Retire the compromised device; it knocks again and is recorded as a zombie."""
        self._say("step", "8. The compromised device is retired; then it knocks again")
        target = self._compromised()
        assert target.device_id is not None
        result = broker_svc.retire(self.db, self.settings, self.secrets, self.clock,
                                   target.device_id, broker=self.broker,
                                   reason=RetirementReason.COMPROMISED, actor=ACTOR)
        self._say("info", f"{target.serial} retired: credentials revoked, CRL published and "
                          f"installed in {result.timings_ms.get('total', 0):.0f} ms")
        mqtt_refused = mqtt_knock(target, port=self.broker.settings.port)
        self._say("refused", f"MQTT connect with its revoked certificate: "
                             f"{'refused' if mqtt_refused else 'ACCEPTED'}")
        knock = self._agent("onboard", "--device", str(target.folder), "--state",
                            str(self.base / "agents" / f"zombie-{target.serial}"), "--server",
                            self.server_url, "--insecure-first-contact", "--retries", "0")
        reason = refusal(knock.stderr)
        self._say("refused", f"onboarding hello with its factory identity: exit "
                             f"{knock.returncode} {reason}")
        log = broker_svc.broker_dir(self.settings) / "mosquitto.log"
        with contextlib.suppress(IotrustError, OSError):
            zombies.scan_broker_log(self.db, self.clock, log,
                                    state_dir=broker_svc.broker_dir(self.settings))
        found = [z for z in zombies.list_zombies(self.db) if z.device_id == target.device_id]
        contacts = sum(z.count for z in found)
        channels: dict[str, int] = {}
        for z in found:
            for k, v in z.channels.items():
                channels[k] = channels.get(k, 0) + v
        self._say("info", f"zombie contacts recorded for {target.serial}: {contacts} {channels}")
        return self._record("retirement", {
            "ok": contacts >= 1 and mqtt_refused and reason == "retired",
            "device": target.device_id, "mqtt_refused": mqtt_refused, "hello_reason": reason,
            "zombie_contacts": contacts, "zombie_channels": channels})

    # -- 9. audit ---------------------------------------------------------------------------------

    def audit(self) -> dict[str, Any]:
        """The posture audit over registry and event log; the final device states."""
        self._say("step", "9. The posture audit")
        report = audit.run_audit(self.db, self.settings, self.clock, actor=ACTOR)
        for f in report.findings[:12]:
            self._say("info", f"[{f.severity.value}] {f.check_id}: {f.title}")
        fleet = devices.list_devices(self.db, limit=10_000)
        states: Counter[str] = Counter(d.state.value for d in fleet)
        storage: Counter[str] = Counter(d.key_storage.value for d in fleet)
        self._say("info", f"devices by state: {dict(states)}")
        self._say("info", f"key storage as recorded: {dict(storage)} (model {MODEL}'s profile "
                          "has a secure element; these agents keep development key files, so "
                          "key-storage-underused reports the shortcut, and weak-key-storage "
                          "flags any of them given more than its own topics)")
        return self._record("audit", {
            "ok": True, "findings": [{"check": f.check_id, "severity": f.severity.value,
                                      "title": f.title, "affected": len(f.affected)}
                                     for f in report.findings],
            "by_severity": report.by_severity, "checks": len(report.runs),
            "device_states": dict(states), "devices": sum(states.values()),
            "key_storage": dict(storage)})


def _rollout_id(device_ids: Sequence[str]) -> tuple[str, dict[str, int]]:
    """A rollout id whose wave assignment puts devices in both waves (the demo needs both)."""
    if len(device_ids) < 2:  # noqa: PLR2004
        raise NotFoundError("the rollout needs at least two onboarded devices",
                            reason="no_devices")
    stamp = pysecrets.token_hex(3)
    for i in range(10_000):
        rid = f"ro-demo-{stamp}-{i}"
        waves = {d: w for d, (_, w) in ro.assign(rid, device_ids, DEMO_WAVES).items()}
        first = sum(1 for w in waves.values() if w == 0)
        if 0 < first < len(device_ids):
            return rid, waves
    raise RuntimeError("no rollout id splits the devices into two waves")  # pragma: no cover
