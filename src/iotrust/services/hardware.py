"""Hardware profile use cases: read profiles and timelines, assess, register device models.

Reading the profile and timeline YAML files is the only I/O here (bounded reads); parsing,
validation and the verdicts are :mod:`iotrust.core.hardware`. Registering a model stores its
profile text verbatim with the credential lifetime that follows from it, bound to the product id
its manufacturer's vouchers and factory certificates carry, in one transaction with a
``model.added`` event; the model-less, not retired devices of that product already known get the
model in the same transaction (the event counts them). Voucher import and unsafe onboarding
admission give new devices the model of their product the same way. :func:`set_device_model` is
the operator's explicit choice for one device (``device.model_set``). :func:`render_html` turns
an assessment into an HTML fragment for the report (standard library escaping only; no template
engine is a dependency of iotrust).

This module does not print, exit or decide verdicts.
"""

from __future__ import annotations

import dataclasses
import hashlib
import html
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Final

from iotrust.adapters.sql.store import Database, Tx
from iotrust.core import hardware as hw
from iotrust.core.lifecycle import Device, DeviceState
from iotrust.core.records import DeviceModel
from iotrust.errors import ConflictError, InputError, NotFoundError
from iotrust.ports import Clock
from iotrust.services import eventlog
from iotrust.services.policies import ChangeHook, PolicyChange

#: Event kind recorded when a device model is registered.
MODEL_ADDED: Final = "model.added"
#: Event kind recorded when an operator sets the model of one device.
DEVICE_MODEL_SET: Final = "device.model_set"
_TIMELINES_RESOURCE: Final = "crypto_timelines.yaml"


def _read_bounded(path: Path, limit: int, what: str) -> bytes:
    try:
        with path.open("rb") as f:
            data = f.read(limit + 1)
    except FileNotFoundError:
        raise NotFoundError(f"no {what} file {str(path)[:200]!r}",
                            reason=f"{what}_not_found") from None
    except OSError as exc:
        raise InputError(f"cannot read {what} file {str(path)[:200]!r}: {exc.strerror}",
                         reason=f"{what}_unreadable") from None
    if len(data) > limit:
        raise hw.ProfileError("$", f"document larger than {limit} bytes",
                              reason=f"{what}_invalid")
    return data


def read_profile(path: Path) -> bytes:
    """The raw bytes of a profile file (at most :data:`hw.MAX_PROFILE_BYTES`)."""
    return _read_bounded(path, hw.MAX_PROFILE_BYTES, "profile")


def load_profile(path: Path) -> hw.HardwareProfile:
    """Read and validate a profile file."""
    return hw.parse_profile(read_profile(path))


def load_timelines(path: Path | None = None) -> hw.Timelines:
    """The algorithm timelines: ``path``, or the ones shipped with iotrust."""
    if path is not None:
        return hw.parse_timelines(_read_bounded(path, hw.MAX_TIMELINES_BYTES, "timelines"))
    data = resources.files("iotrust.core").joinpath("data", _TIMELINES_RESOURCE).read_bytes()
    return hw.parse_timelines(data)


def assess_file(path: Path, *, now_year: int, lifetime_years: int | None = None,
                timelines: hw.Timelines | None = None) -> hw.Assessment:
    """Assess the profile in ``path``."""
    return hw.assess(load_profile(path), planned_lifetime_years=lifetime_years,
                     timelines=timelines or load_timelines(), now_year=now_year)


@dataclass(frozen=True, slots=True)
class RegisteredModel:
    """A registered model with the assessment and defaults it was given."""

    model: DeviceModel
    assessment: hw.Assessment
    defaults: hw.ModelDefaults
    devices_assigned: int = 0


def register_model(db: Database, clock: Clock, *, name: str, manufacturer: str,
                   profile_yaml: bytes, actor: str, product_id: str | None = None,
                   timelines: hw.Timelines | None = None) -> RegisteredModel:
    """Register device model ``name`` of ``manufacturer`` with its hardware profile.

    The credential lifetime comes from the profile (:func:`hw.model_defaults`). With
    ``product_id`` the model is bound to that product: the manufacturer must be allowed to ship
    it, and the model-less, not retired devices of that manufacturer and product get the model
    now (:attr:`RegisteredModel.devices_assigned`), new ones when their voucher is imported.
    Raises ``ProfileError`` for a bad profile, ``InputError(invalid_product_id)``,
    ``NotFoundError(unknown_manufacturer)``, ``InputError(product_not_allowed)``,
    ``ConflictError(model_exists)`` and ``ConflictError(model_product_exists)``.
    """
    profile = hw.parse_profile(profile_yaml)
    now = clock.now()
    assessment = hw.assess(profile, timelines=timelines or load_timelines(), now_year=now.year)
    defaults = assessment.defaults
    model = DeviceModel(name=name, manufacturer=manufacturer,
                        credential_lifetime_s=defaults.credential_lifetime_s, created_at=now,
                        hardware_profile=profile_yaml.decode("utf-8"), product_id=product_id)
    with db.transaction() as tx:
        if product_id is not None:
            _check_product(tx, model, product_id)
        tx.add_model(model)
        assigned = tx.assign_model_to_product(model, now)
        eventlog.record(tx, clock, MODEL_ADDED, actor=actor, data={
            "model": name, "manufacturer": manufacturer, "product_id": product_id,
            "profile_sha256": hashlib.sha256(profile_yaml).hexdigest(),
            "credential_lifetime_s": defaults.credential_lifetime_s,
            "sensitive_topics_allowed": defaults.sensitive_topics_allowed,
            "verdicts": {v.mechanism.value: v.level.value for v in assessment.verdicts},
            "devices_assigned": assigned})
    return RegisteredModel(model=model, assessment=assessment, defaults=defaults,
                           devices_assigned=assigned)


def _check_product(tx: Tx, model: DeviceModel, product_id: str) -> None:
    """The manufacturer ships ``product_id`` and no other model is bound to it."""
    maker = tx.get_manufacturer(model.manufacturer)
    if not any(pair.partition(":")[2] == product_id for pair in maker.allowed):
        raise InputError(
            f"manufacturer {maker.name} is not allowed product {product_id!r} "
            f"(allowed vendor:product pairs: {', '.join(maker.allowed)[:200]})",
            reason="product_not_allowed")
    taken = tx.find_model_for_product(model.manufacturer, product_id)
    if taken is not None:
        raise ConflictError(
            f"product {product_id} of {model.manufacturer} already has model {taken.name}",
            reason="model_product_exists")


@dataclass(frozen=True, slots=True)
class ModelChange:
    """The outcome of :func:`set_device_model`; ``changed`` is false when it already had it."""

    device: Device
    previous: str | None
    changed: bool


def set_device_model(db: Database, clock: Clock, device_id: str, model: str, *, actor: str,
                     changed: ChangeHook | None = None) -> ModelChange:
    """Set the model of one device explicitly (an operator's override of the product match).

    The model must be of the device's manufacturer; a retired device keeps its record as it
    was. The new model's credential lifetime applies from the device's next credential, its
    policy at once (``changed`` is called after the commit, for the broker's ACLs).
    Raises ``NotFoundError`` (``unknown_device``, ``unknown_model``), ``ConflictError``
    (``device_retired``, ``model_manufacturer_mismatch``, ``concurrent_update``).
    """
    with db.transaction() as tx:
        device = tx.get_device(device_id)
        target = tx.get_model(model)
        if device.state is DeviceState.RETIRED:
            raise ConflictError(f"device {device.id} is retired; its model cannot change",
                                reason="device_retired")
        if target.manufacturer != device.manufacturer:
            raise ConflictError(
                f"model {target.name} is made by {target.manufacturer}, device {device.id} "
                f"by {device.manufacturer}", reason="model_manufacturer_mismatch")
        if device.model == target.name:
            return ModelChange(device=device, previous=device.model, changed=False)
        moved = dataclasses.replace(device, model=target.name, updated_at=clock.now())
        tx.update_device(moved, expected_state=device.state)
        eventlog.record(tx, clock, DEVICE_MODEL_SET, actor=actor, device_id=device.id, data={
            "model": target.name, "previous": device.model, "product_id": device.product_id,
            "model_product_id": target.product_id})
    if changed is not None:
        changed(PolicyChange(DEVICE_MODEL_SET, model=target.name, device_ids=(device.id,)))
    return ModelChange(device=moved, previous=device.model, changed=True)


def defaults_of(model: DeviceModel, *, now_year: int,
                timelines: hw.Timelines | None = None) -> hw.ModelDefaults:
    """The defaults of a registered model, re-derived from its stored profile.

    A model without a profile keeps its stored credential lifetime and is barred from sensitive
    topics (fail closed).
    """
    if model.hardware_profile is None:
        return hw.ModelDefaults(credential_lifetime_s=model.credential_lifetime_s,
                                sensitive_topics_allowed=False,
                                reason="no hardware profile: sensitive topics barred")
    assessment = hw.assess(hw.parse_profile(model.hardware_profile.encode("utf-8")),
                           timelines=timelines or load_timelines(), now_year=now_year)
    return assessment.defaults


# --------------------------------------------------------------------------------------------
# HTML

_STYLE: Final = """
.hw-assessment table { border-collapse: collapse; width: 100%; }
.hw-assessment th, .hw-assessment td { border: 1px solid #ccc; padding: .3em .5em;
  text-align: left; vertical-align: top; }
.hw-assessment .feasible { background: #e6f4ea; }
.hw-assessment .degraded { background: #fff4e0; }
.hw-assessment .impossible { background: #fde7e9; }
"""


def render_html(assessment: hw.Assessment, *, standalone: bool = False) -> str:
    """An HTML fragment (a ``<section>``) with the verdict table; a whole page if ``standalone``.

    Every value from the profile is escaped.
    """
    e = html.escape
    p = assessment.profile
    d = assessment.defaults
    rows = "\n".join(
        f'<tr class="{e(v.level.value)}"><td>{e(v.mechanism.value.replace("_", " "))}</td>'
        f"<td>{e(v.level.value)}</td><td>{e(v.reason)}</td><td>{e(v.would_change_it)}</td></tr>"
        for v in assessment.verdicts)
    deployed = "" if p.deployed_year is None else f", deployed {p.deployed_year}"
    section = (
        f'<section class="hw-assessment" data-worst="{e(assessment.worst.value)}">\n'
        f"<h2>{e(p.model)}</h2>\n"
        f"<p>{e(p.vendor)} · class {e(p.device_class.value)} · key storage "
        f"{e(p.key_storage.value)} · {assessment.lifetime_years}-year life{e(deployed)}, "
        f"in service until {assessment.service_end_year}</p>\n"
        "<table>\n<thead><tr><th>mechanism</th><th>verdict</th><th>reason</th>"
        "<th>what would change it</th></tr></thead>\n"
        f"<tbody>\n{rows}\n</tbody>\n</table>\n"
        f"<p>Model defaults: {e(d.reason)}.</p>\n</section>")
    if not standalone:
        return section
    return ('<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
            f"<title>Hardware assessment: {e(p.model)}</title><style>{_STYLE}</style></head>"
            f"<body>\n{section}\n</body></html>\n")
