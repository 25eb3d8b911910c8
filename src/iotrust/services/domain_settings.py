"""Changing the trust domain's settings (broker endpoint, onboarding and rotation limits).

Settings live in the registry (``trust_domain.settings``) so every worker reads the same values.
Only the keys listed in :data:`SETTINGS` can be set; each new value is checked by the same
parsers the services use (``OnboardingConfig`` / ``RotationConfig``) before it is stored, and
every change is one event naming the operator.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from typing import Any

from iotrust.adapters.sql.store import Database
from iotrust.errors import InputError
from iotrust.ports import Clock
from iotrust.services import eventlog
from iotrust.services.domain import require_domain
from iotrust.services.onboarding import OnboardingConfig
from iotrust.services.rotation import RotationConfig

EVENT_SETTING_CHANGED = "domain.setting_changed"
MAX_URL = 200


def _int(text: str) -> int:
    try:
        return int(text, 10)
    except ValueError:
        raise InputError(f"{text!r:.40} is not a whole number", reason="invalid_setting") from None


def _number(text: str) -> float | int:
    try:
        value = float(text)
    except ValueError:
        raise InputError(f"{text!r:.40} is not a number", reason="invalid_setting") from None
    return int(value) if value.is_integer() else value


def _bool(text: str) -> bool:
    if text.lower() in {"true", "yes", "1", "on"}:
        return True
    if text.lower() in {"false", "no", "0", "off"}:
        return False
    raise InputError(f"{text!r:.40} is not true/false", reason="invalid_setting")


#: Settable keys and how their text is read.
SETTINGS: Mapping[str, Callable[[str], Any]] = {
    "public_url": str,
    "broker_host": str,
    "broker_port": _int,
    "onboarding_rate_per_serial": _int,
    "onboarding_rate_per_source": _int,
    "onboarding_rate_window_s": _int,
    "onboarding_session_ttl_s": _int,
    "onboarding_confirm_s": _int,
    "rotation_renew_fraction": _number,
    "rotation_overlap_grace_s": _int,
    "rotation_confirm_s": _int,
    "rotation_session_ttl_s": _int,
    "rotation_kick": _bool,
}


def set_setting(db: Database, clock: Clock, key: str, text: str, *,
                actor: str) -> Any:  # noqa: ANN401 - the parsed value
    """Validate and store one setting; returns the stored value."""
    parse = SETTINGS.get(key)
    if parse is None:
        raise InputError(f"unknown setting {key!r:.40}; settable: {', '.join(SETTINGS)}",
                         reason="unknown_setting")
    value = parse(text)
    url_ok = str(value).startswith(("http://", "https://")) and len(str(value)) <= MAX_URL
    if key == "public_url" and not url_ok:
        raise InputError("public_url must be an http(s) URL", reason="invalid_setting")
    with db.transaction() as tx:
        domain = require_domain(tx)
        merged = {**domain.settings, key: value}
        OnboardingConfig.from_settings(merged)  # raises InputError(invalid_setting)
        RotationConfig.from_settings(merged)
        tx.update_domain(dataclasses.replace(domain, settings=merged))
        eventlog.record(tx, clock, EVENT_SETTING_CHANGED, actor=actor,
                        data={"key": key, "value": str(value)})
    return value
