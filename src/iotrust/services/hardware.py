"""Hardware profile use cases: read profiles and timelines, assess, register device models.

Reading the profile and timeline YAML files is the only I/O here (bounded reads); parsing,
validation and the verdicts are :mod:`iotrust.core.hardware`. Registering a model stores its
profile text verbatim with the credential lifetime that follows from it, in one transaction with
a ``model.added`` event. :func:`render_html` turns an assessment into an HTML fragment for the
report (standard library escaping only; no template engine is a dependency of iotrust).

This module does not print, exit or decide verdicts.
"""

from __future__ import annotations

import hashlib
import html
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Final

from iotrust.adapters.sql.store import Database
from iotrust.core import hardware as hw
from iotrust.core.records import DeviceModel
from iotrust.errors import InputError, NotFoundError
from iotrust.ports import Clock
from iotrust.services import eventlog

#: Event kind recorded when a device model is registered.
MODEL_ADDED: Final = "model.added"
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


def register_model(db: Database, clock: Clock, *, name: str, manufacturer: str,
                   profile_yaml: bytes, actor: str,
                   timelines: hw.Timelines | None = None) -> RegisteredModel:
    """Register device model ``name`` of ``manufacturer`` with its hardware profile.

    The credential lifetime comes from the profile (:func:`hw.model_defaults`). Raises
    ``ProfileError`` for a bad profile, ``NotFoundError(unknown_manufacturer)`` and
    ``ConflictError(model_exists)`` from the registry.
    """
    profile = hw.parse_profile(profile_yaml)
    now = clock.now()
    assessment = hw.assess(profile, timelines=timelines or load_timelines(), now_year=now.year)
    defaults = assessment.defaults
    model = DeviceModel(name=name, manufacturer=manufacturer,
                        credential_lifetime_s=defaults.credential_lifetime_s, created_at=now,
                        hardware_profile=profile_yaml.decode("utf-8"))
    with db.transaction() as tx:
        tx.add_model(model)
        eventlog.record(tx, clock, MODEL_ADDED, actor=actor, data={
            "model": name, "manufacturer": manufacturer,
            "profile_sha256": hashlib.sha256(profile_yaml).hexdigest(),
            "credential_lifetime_s": defaults.credential_lifetime_s,
            "sensitive_topics_allowed": defaults.sensitive_topics_allowed,
            "verdicts": {v.mechanism.value: v.level.value for v in assessment.verdicts}})
    return RegisteredModel(model=model, assessment=assessment, defaults=defaults)


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
