"""Each email provider against a real server: what it sends, and how it classifies every failure."""

from __future__ import annotations

import json
import threading
from datetime import timedelta

import pytest
from werkzeug import Response

from tests.support.email import make_email
from tests.support.smtp import HANG, PERMANENT, TEMPORARY
from webapp.config import ConfigurationError, load
from webapp.domain.time import utcnow
from webapp.services.email.providers import (
    NotConfigured,
    ProviderMisconfigured,
    RejectedError,
    TransientProviderError,
)
from webapp.services.email.providers.base import parse_retry_after
from webapp.services.email.providers.postmark import PostmarkProvider
from webapp.services.email.providers.resend import ResendProvider
from webapp.services.email.providers.smtp import SmtpProvider, SmtpSettings

# --- SMTP -------------------------------------------------------------------------------------


def test_smtp_sends_text_and_html_with_the_operation_message_id(smtp_server):
    provider = SmtpProvider(smtp_server.url, timeout=5)

    first = provider.send(make_email(), utcnow())
    second = provider.send(make_email(), utcnow())  # a later attempt of the same operation

    received = smtp_server.received()
    assert len(received) == 2
    ids = [item.message["Message-ID"] for item in received]
    assert ids[0] == ids[1] == make_email().message_id
    assert ids[0].endswith("@shop.example>")
    assert received[0].mail_from == "noreply@shop.example"
    assert received[0].rcpt_tos == ("buyer@example.com",)
    parts = {part.get_content_type(): part.get_content() for part in received[0].message.iter_parts()}
    assert parts["text/plain"].strip() == "Thanks!"
    assert parts["text/html"].strip() == "<p>Thanks!</p>"
    assert first.message_id == "Q00001" and second.message_id == "Q00002"
    # Another operation gets another Message-ID.
    assert make_email("op-key-2").message_id != ids[0]


@pytest.mark.parametrize("mode, error", [(TEMPORARY, TransientProviderError), (PERMANENT, RejectedError)])
def test_smtp_reply_codes_are_classified(smtp_server, mode, error):
    smtp_server.set_mode(mode)

    with pytest.raises(error) as raised:
        SmtpProvider(smtp_server.url, timeout=5).send(make_email(), utcnow())

    assert type(raised.value) is error
    assert raised.value.status == (451 if mode == TEMPORARY else 550)
    assert smtp_server.received() == []


def test_smtp_server_that_hangs_times_out_as_transient(smtp_server):
    smtp_server.set_mode(HANG)

    with pytest.raises(TransientProviderError, match="timed out after 0.5s"):
        SmtpProvider(smtp_server.url, timeout=0.5).send(make_email(), utcnow())


def test_smtp_nobody_listening_is_transient():
    with pytest.raises(TransientProviderError, match="network error"):
        SmtpProvider("smtp://127.0.0.1:1", timeout=2).send(make_email(), utcnow())


def test_smtp_url_forms():
    plain = SmtpSettings.from_url("smtp://mail.example.com:2525?starttls=1")
    assert (plain.host, plain.port, plain.ssl, plain.starttls, plain.username) == (
        "mail.example.com",
        2525,
        False,
        True,
        None,
    )
    secure = SmtpSettings.from_url("smtps://user%40x.com:p%3Ass@mail.example.com")
    assert (secure.port, secure.ssl, secure.starttls) == (465, True, False)
    assert (secure.username, secure.password) == ("user@x.com", "p:ss")
    assert SmtpSettings.from_url("smtp://localhost").port == 25
    for bad in (None, "", "http://x", "smtp://"):
        with pytest.raises(NotConfigured):
            SmtpSettings.from_url(bad)


# --- HTTP providers ---------------------------------------------------------------------------


def resend(httpserver, timeout: float = 5) -> ResendProvider:
    return ResendProvider("re_test_key", httpserver.url_for("/resend"), timeout)


def postmark(httpserver, timeout: float = 5) -> PostmarkProvider:
    return PostmarkProvider("pm-token", httpserver.url_for("/postmark"), timeout)


def test_resend_sends_bearer_key_and_a_stable_idempotency_key(httpserver):
    httpserver.expect_request("/resend/emails", method="POST").respond_with_json({"id": "re_123"})
    provider = resend(httpserver)

    results = [provider.send(make_email(), utcnow()) for _ in range(2)]

    assert [r.message_id for r in results] == ["re_123", "re_123"]
    requests_seen = [request for request, _ in httpserver.log]
    keys = {request.headers["Idempotency-Key"] for request in requests_seen}
    assert keys == {make_email().idempotency_key}
    assert make_email().idempotency_key.startswith("backstop-email-")
    assert "op-key-1" not in make_email().idempotency_key  # a digest: no raw key (or address) leaks
    assert requests_seen[0].headers["Authorization"] == "Bearer re_test_key"
    body = json.loads(requests_seen[0].data)
    assert body["to"] == ["buyer@example.com"] and body["html"] == "<p>Thanks!</p>"
    assert body["text"] == "Thanks!\n" and body["from"] == "Backstop <noreply@shop.example>"


def test_postmark_sends_server_token_message_id_and_key_metadata(httpserver):
    httpserver.expect_request("/postmark/email", method="POST").respond_with_json(
        {"To": "buyer@example.com", "MessageID": "pm-456", "ErrorCode": 0, "Message": "OK"}
    )

    result = postmark(httpserver).send(make_email(), utcnow())

    assert result.message_id == "pm-456"
    request = httpserver.log[0][0]
    assert request.headers["X-Postmark-Server-Token"] == "pm-token"
    body = json.loads(request.data)
    assert body["Headers"] == [{"Name": "Message-ID", "Value": make_email().message_id}]
    assert body["Metadata"]["idempotency_key"] == make_email().idempotency_key
    assert body["TextBody"] == "Thanks!\n" and body["To"] == "buyer@example.com"


CLASSIFICATION = [
    # status, extra headers, expected class, has retry_after
    (429, {"Retry-After": "30"}, TransientProviderError, True),
    (429, {}, TransientProviderError, False),
    (408, {}, TransientProviderError, False),
    (500, {}, TransientProviderError, False),
    (503, {"Retry-After": "5"}, TransientProviderError, True),
    (401, {}, ProviderMisconfigured, False),
    (403, {}, ProviderMisconfigured, False),
    (422, {}, RejectedError, False),
    (400, {}, RejectedError, False),
]


@pytest.mark.parametrize("which", ["resend", "postmark"])
@pytest.mark.parametrize("status, headers, error, has_retry_after", CLASSIFICATION)
def test_http_error_classification(httpserver, which, status, headers, error, has_retry_after):
    path = "/resend/emails" if which == "resend" else "/postmark/email"
    body = {"name": "validation_error", "message": "bad"} if which == "resend" else {"ErrorCode": 300, "Message": "bad"}
    httpserver.expect_request(path).respond_with_json(body, status=status, headers=headers)
    provider = resend(httpserver) if which == "resend" else postmark(httpserver)
    now = utcnow()

    with pytest.raises(error) as raised:
        provider.send(make_email(), now)

    assert type(raised.value) is error
    assert raised.value.status == status
    assert f"HTTP {status}" in str(raised.value) and "bad" in str(raised.value)
    if has_retry_after:
        assert raised.value.retry_after == now + timedelta(seconds=int(headers["Retry-After"]))
    else:
        assert raised.value.retry_after is None


def test_resend_concurrent_idempotent_request_is_transient(httpserver):
    httpserver.expect_request("/resend/emails").respond_with_json(
        {"name": "concurrent_idempotent_requests", "message": "in progress"}, status=409
    )

    with pytest.raises(TransientProviderError):
        resend(httpserver).send(make_email(), utcnow())


def test_postmark_refusal_inside_a_200_is_rejected(httpserver):
    httpserver.expect_request("/postmark/email").respond_with_json({"ErrorCode": 406, "Message": "Inactive recipient"})

    with pytest.raises(RejectedError, match="ErrorCode 406: Inactive recipient"):
        postmark(httpserver).send(make_email(), utcnow())


def test_http_timeout_and_refused_connection_are_transient(httpserver):
    release = threading.Event()

    def slow(request):
        release.wait(5)
        return Response("{}", status=200)

    httpserver.expect_request("/resend/emails").respond_with_handler(slow)
    try:
        with pytest.raises(TransientProviderError, match="timed out"):
            resend(httpserver, timeout=0.3).send(make_email(), utcnow())
    finally:
        release.set()
    with pytest.raises(TransientProviderError, match="network error"):
        ResendProvider("k", "http://127.0.0.1:1", 2).send(make_email(), utcnow())


def test_missing_settings_and_unknown_names():
    with pytest.raises(NotConfigured):
        ResendProvider(None, "http://x", 1)
    with pytest.raises(NotConfigured):
        PostmarkProvider("", "http://x", 1)
    providers = load({"EMAIL_PROVIDERS": " SMTP, resend ,smtp,postmark"})["EMAIL_PROVIDERS"]
    assert providers == ("smtp", "resend", "postmark")
    with pytest.raises(ConfigurationError, match="EMAIL_PROVIDERS names an unknown provider 'sendgrid'"):
        load({"EMAIL_PROVIDERS": "smtp,sendgrid"})


def test_retry_after_forms():
    now = utcnow().replace(microsecond=0)
    assert parse_retry_after("12", now) == now + timedelta(seconds=12)
    http_date = (now + timedelta(seconds=90)).strftime("%a, %d %b %Y %H:%M:%S GMT")
    assert parse_retry_after(http_date, now) == now + timedelta(seconds=90)
    assert parse_retry_after("soon", now) is None
    assert parse_retry_after("-5", now) is None
    assert parse_retry_after("86400", now) is None  # a day is an outage, not a pause
