"""``DeviceModel``: a model may be bound to one product id, spelled as vouchers carry it."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from iotrust.core.records import DeviceModel
from iotrust.errors import InputError

AT = datetime(2026, 11, 25, tzinfo=UTC)


def _model(product_id: object) -> DeviceModel:
    return DeviceModel(name="sensor-s2", manufacturer="widgetco", credential_lifetime_s=60,
                       created_at=AT, product_id=product_id)  # type: ignore[arg-type]


@pytest.mark.parametrize("product_id", [None, "sensor-1", "A", "x" * 16, "ab_CD-09"])
def test_product_ids_as_vouchers_carry_them(product_id: str | None) -> None:
    assert _model(product_id).product_id == product_id


@pytest.mark.parametrize("product_id", ["", "x" * 17, "sensor 1", "sensor:1", "s/1", "é", 7,
                                        b"sensor-1"])
def test_other_product_ids_are_refused(product_id: object) -> None:
    with pytest.raises(InputError) as info:
        _model(product_id)
    assert info.value.reason == "invalid_product_id"


def test_a_model_is_unbound_by_default() -> None:
    model = DeviceModel(name="legacy", manufacturer="widgetco", credential_lifetime_s=60,
                        created_at=AT)
    assert model.product_id is None
