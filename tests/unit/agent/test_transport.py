"""The agent's HTTP transport: retries, refusals never retried, and replies mapped to errors.

httpx's own test seam (``httpx.MockTransport``) stands in for the network: the driver boundary,
below which nothing of ours runs. Sleep and jitter are injected, so nothing here waits.
"""

from __future__ import annotations

import json
import ssl
from collections.abc import Callable

import httpx
import pytest

from iotrust.agent.transport import (
    MAX_DETAIL_CHARS,
    MAX_REPLY_BYTES,
    HttpTransport,
    RetryPolicy,
    check_reply,
    full_jitter,
    no_jitter,
    reply_error,
)
from iotrust.errors import BackendError, ConflictError, InputError, NotFoundError, TrustError

URL = "https://iotrust.test"


def error_body(reason: str, detail: str = "why", error: str = "TrustError") -> bytes:
    return json.dumps({"error": error, "reason": reason, "detail": detail}).encode()


class Script:
    """Answers requests from a list of steps: a response or an exception to raise."""

    def __init__(self, *steps: httpx.Response | Exception) -> None:
        self.steps = list(steps)
        self.requests: list[httpx.Request] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        step = self.steps.pop(0)
        if isinstance(step, Exception):
            raise step
        return step


def transport(script: Callable[[httpx.Request], httpx.Response], sleeps: list[float], *,
              policy: RetryPolicy | None = None) -> HttpTransport:
    return HttpTransport(URL, policy=policy, sleep=sleeps.append, jitter=no_jitter,
                         http_transport=httpx.MockTransport(script))


def test_success_returns_status_and_body() -> None:
    script = Script(httpx.Response(200, content=b'{"ok":1}'))
    sleeps: list[float] = []
    with transport(script, sleeps) as t:
        assert t.post_json("/v1/onboarding/hello", b"{}") == (200, b'{"ok":1}')
    request = script.requests[0]
    assert request.method == "POST"
    assert str(request.url) == "https://iotrust.test/v1/onboarding/hello"
    assert request.headers["content-type"] == "application/json"
    assert request.content == b"{}"
    assert sleeps == []


def test_base_url_with_a_path_prefix() -> None:
    script = Script(httpx.Response(204))
    t = HttpTransport(URL + "/iot/", sleep=lambda _s: None,
                      http_transport=httpx.MockTransport(script))
    assert t.post_json("/v1/onboarding/confirm", b"{}") == (204, b"")
    assert str(script.requests[0].url) == "https://iotrust.test/iot/v1/onboarding/confirm"


@pytest.mark.parametrize(("status", "error", "cls"), [
    (403, "TrustError", TrustError), (401, "AuthError", TrustError),
    (422, "InputError", InputError), (404, "NotFoundError", NotFoundError),
    (409, "ConflictError", ConflictError), (400, "InputError", InputError),
])
def test_a_refusal_is_never_retried(status: int, error: str, cls: type[Exception]) -> None:
    script = Script(httpx.Response(status, content=error_body("unknown_device", "no such",
                                                              error)))
    sleeps: list[float] = []
    with pytest.raises(cls) as info:
        transport(script, sleeps).post_json("/v1/onboarding/hello", b"{}")
    assert getattr(info.value, "reason", None) == "unknown_device"
    assert str(info.value) == "no such"
    assert len(script.requests) == 1
    assert sleeps == []


def test_network_errors_are_retried_with_backoff_then_succeed() -> None:
    script = Script(httpx.ConnectError("refused"), httpx.ReadTimeout("slow"),
                    httpx.Response(200, content=b"{}"))
    sleeps: list[float] = []
    assert transport(script, sleeps).post_json("/x", b"{}") == (200, b"{}")
    assert sleeps == [0.2, 0.4]


def test_retry_budget_exhausted_is_backend_network() -> None:
    script = Script(*[httpx.ConnectError("refused")] * 6)
    sleeps: list[float] = []
    with pytest.raises(BackendError) as info:
        transport(script, sleeps).post_json("/x", b"{}")
    assert info.value.reason == "network"
    assert "ConnectError" in info.value.message
    assert len(script.requests) == 6  # the first attempt and five retries
    assert sleeps == [0.2, 0.4, 0.8, 1.6, 3.2]


def test_backoff_is_capped_and_jittered() -> None:
    policy = RetryPolicy(retries=8, backoff_initial=1.0, backoff_max=5.0)
    assert [policy.delay(k, None, no_jitter) for k in range(5)] == [1.0, 2.0, 4.0, 5.0, 5.0]
    assert policy.delay(1000, None, no_jitter) == 5.0
    for _ in range(50):
        assert 2.5 <= full_jitter(5.0) <= 5.0


@pytest.mark.parametrize("status", [502, 503, 504])
def test_gateway_and_unavailable_are_retried(status: int) -> None:
    script = Script(httpx.Response(status), httpx.Response(200, content=b"{}"))
    sleeps: list[float] = []
    assert transport(script, sleeps).post_json("/x", b"{}") == (200, b"{}")
    assert sleeps == [0.2]


def test_500_is_not_retried() -> None:
    script = Script(httpx.Response(500, content=error_body("internal", "boom", "IotrustError")))
    sleeps: list[float] = []
    with pytest.raises(BackendError) as info:
        transport(script, sleeps).post_json("/x", b"{}")
    assert info.value.reason == "internal"
    assert sleeps == []


def test_429_honours_a_bounded_retry_after() -> None:
    script = Script(httpx.Response(429, headers={"Retry-After": "2"}),
                    httpx.Response(429, headers={"Retry-After": "100000"}),
                    httpx.Response(429, headers={"Retry-After": "Wed, 21 Oct 2015 07:28:00 GMT"}),
                    httpx.Response(200, content=b"{}"))
    sleeps: list[float] = []
    policy = RetryPolicy(retry_after_max=30.0)
    assert transport(script, sleeps, policy=policy).post_json("/x", b"{}") == (200, b"{}")
    assert sleeps == [2.0, 30.0, 0.8]  # the date form falls back to backoff (attempt 2)


def test_429_exhausted_is_rate_limited() -> None:
    script = Script(*[httpx.Response(429, content=error_body("rate_limited", "slow down"))] * 3)
    sleeps: list[float] = []
    with pytest.raises(BackendError) as info:
        transport(script, sleeps, policy=RetryPolicy(retries=2)).post_json("/x", b"{}")
    assert info.value.reason == "rate_limited"


def test_tls_verification_failure_is_not_retried() -> None:
    cause = ssl.SSLCertVerificationError(1, "[SSL: CERTIFICATE_VERIFY_FAILED] self-signed")
    error = httpx.ConnectError("[SSL: CERTIFICATE_VERIFY_FAILED] certificate verify failed")
    error.__cause__ = cause
    script = Script(error)
    sleeps: list[float] = []
    with pytest.raises(BackendError) as info:
        transport(script, sleeps).post_json("/x", b"{}")
    assert info.value.reason == "tls_verify_failed"
    assert sleeps == []


def test_an_oversized_reply_is_refused() -> None:
    script = Script(httpx.Response(200, content=b"x" * (MAX_REPLY_BYTES + 1)))
    with pytest.raises(InputError) as info:
        transport(script, []).post_json("/x", b"{}")
    assert info.value.reason == "reply_too_large"


def test_error_bodies_are_bounded_and_sanitised() -> None:
    nasty = "\x1b[31mred\x1b[0m\nsecond line\t" + "a" * 1000
    err = reply_error(403, error_body("voucher_invalid", nasty))
    assert err.reason == "voucher_invalid"
    assert "\x1b" not in err.message
    assert "\n" not in err.message
    assert len(err.message) <= MAX_DETAIL_CHARS
    # a reason that is not a reason code, or a body that is not JSON, falls back
    assert reply_error(403, error_body("Bad Reason!")).reason == "refused"
    assert reply_error(403, b"<html>forbidden</html>").reason == "refused"
    assert reply_error(403, b"[1, 2]").message == "the server answered HTTP 403"
    assert reply_error(422, b"x" * 10_000).reason == "invalid_input"
    assert reply_error(302, b"").reason == "unexpected_status"
    assert check_reply(204, b"") == b""


@pytest.mark.parametrize("url", ["ftp://host", "not a url", "https://", "file:///etc/passwd"])
def test_a_bad_server_url_is_input_error(url: str) -> None:
    with pytest.raises(InputError) as info:
        HttpTransport(url)
    assert info.value.reason == "invalid_url"


def test_an_unusable_ca_bundle_is_input_error() -> None:
    with pytest.raises(InputError) as info:
        HttpTransport(URL, verify="/nonexistent/bundle.pem")
    assert info.value.reason == "ca_bundle_unusable"


@pytest.mark.parametrize("kwargs", [{"retries": -1}, {"retries": 101},
                                    {"backoff_initial": 0.0},
                                    {"backoff_initial": 6.0, "backoff_max": 5.0},
                                    {"retry_after_max": -1.0}])
def test_retry_policy_checks_its_values(kwargs: dict[str, float]) -> None:
    with pytest.raises(ValueError):
        RetryPolicy(**kwargs)  # type: ignore[arg-type]
