"""The CRL entry memo of :mod:`iotrust.core.pki._crl` follows the CRLs in force, never more."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import pytest
from cryptography import x509
from tests.unit.core.test_pki import SoftSigner

from iotrust.core import pki
from iotrust.core.pki import _crl
from iotrust.errors import InputError

NOW = datetime(2026, 1, 1, 12, 0, tzinfo=UTC)
DAY = timedelta(days=1)
YEAR = timedelta(days=365)


@pytest.fixture(autouse=True)
def empty_memo() -> Iterator[None]:
    _crl._memo.clear()
    yield
    _crl._memo.clear()


def _ca(name: str) -> tuple[SoftSigner, x509.Certificate]:
    signer = SoftSigner()
    return signer, pki.build_root_ca(signer, name, "Acme", NOW - DAY, 10 * YEAR)


def _build(ca: tuple[SoftSigner, x509.Certificate], entries: list[pki.RevokedEntry], *,
           at: datetime = NOW, number: int = 1) -> x509.CertificateRevocationList:
    return pki.build_crl(ca[0], ca[1], entries, crl_number=number, this_update=at,
                         next_update=at + 7 * DAY)


def _entries(serials: range, not_after: datetime | None = None) -> list[pki.RevokedEntry]:
    return [pki.RevokedEntry(s, NOW - DAY, not_after=not_after) for s in serials]


def test_memo_holds_exactly_the_last_crl_and_shrinks_when_entries_leave() -> None:
    ca = _ca("CA one")
    expiring = _entries(range(1, 41), not_after=NOW + DAY)
    lasting = _entries(range(100, 160))
    crl = _build(ca, expiring + lasting)
    assert list(_crl.memo_sizes().values()) == [len(crl)] == [100]
    # a month later the first 40 expired long enough to leave the CRL: the memo forgets them
    later = NOW + 30 * DAY
    crl = _build(ca, expiring + lasting, at=later, number=2)
    assert len(crl) == 60
    assert list(_crl.memo_sizes().values()) == [60]
    # revocations the registry no longer lists are forgotten too
    crl = _build(ca, lasting[:10], at=later, number=3)
    assert list(_crl.memo_sizes().values()) == [len(crl)] == [10]
    assert {e.serial_number for e in crl} == set(range(100, 110))


def test_remembered_entries_are_reused_and_never_stale() -> None:
    ca = _ca("CA reuse")
    entries = _entries(range(1, 6))
    _build(ca, entries)
    (first,) = (r.built for r in _crl._memo.values())
    crl = _build(ca, [*entries, *_entries(range(6, 8))], number=2)
    (again,) = (r.built for r in _crl._memo.values())
    assert again is not first  # replaced whole, never grown in place
    assert all(again[s][1] is first[s][1] for s in first)  # reused, not rebuilt
    assert {e.serial_number for e in crl} == set(again) == set(range(1, 8))
    changed = pki.RevokedEntry(3, NOW - YEAR, x509.ReasonFlags.key_compromise)
    listed = _build(ca, [changed], number=3).get_revoked_certificate_by_serial_number(3)
    assert listed is not None
    assert listed.revocation_date_utc == NOW - YEAR


def test_several_cas_do_not_evict_each_other() -> None:
    cas = [_ca(f"CA {i}") for i in range(4)]
    for round_ in range(3):
        for i, ca in enumerate(cas):
            _build(ca, _entries(range(1, 11 + i + round_)), number=round_ + 1)
        assert sorted(_crl.memo_sizes().values()) == [10 + i + round_ for i in range(4)]


def test_a_ca_no_longer_published_is_forgotten() -> None:
    kept, gone = _ca("CA kept"), _ca("CA gone")
    _build(gone, _entries(range(1, 30)))
    _build(kept, _entries(range(1, 5)))
    assert sorted(_crl.memo_sizes().values()) == [4, 29]
    # 'gone' was not re-signed before its CRL's nextUpdate: no longer published
    _build(kept, _entries(range(1, 5)), at=NOW + 8 * DAY, number=2)
    assert list(_crl.memo_sizes().values()) == [4]


def test_memo_is_bounded_across_cas(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_crl, "MEMO_MAX_CAS", 3)
    monkeypatch.setattr(_crl, "MEMO_MAX_ENTRIES", 50)
    cas = [_ca(f"CA bound {i}") for i in range(5)]
    for ca in cas:
        _build(ca, _entries(range(1, 21)))
        sizes = _crl.memo_sizes()
        assert len(sizes) <= 3
        assert sum(sizes.values()) <= 50
    # the CA just built is kept even when its CRL alone is over the entry bound
    crl = _build(cas[0], _entries(range(1, 81)), number=2)
    assert list(_crl.memo_sizes().values()) == [len(crl)] == [80]


def test_a_refused_crl_leaves_the_memo_as_it_was() -> None:
    ca = _ca("CA refused")
    _build(ca, _entries(range(1, 9)))
    with pytest.raises(InputError, match="listed twice"):
        _build(ca, [*_entries(range(1, 4)), *_entries(range(3, 4))], number=2)
    assert list(_crl.memo_sizes().values()) == [8]
