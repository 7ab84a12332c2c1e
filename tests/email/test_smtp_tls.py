"""SMTP over TLS (STARTTLS and implicit ``smtps://``) with AUTH, against a real aiosmtpd server.

The server's certificate is issued at test time by a throw-away CA (trustme). The client
trusts it only through ``SMTP_CA_FILE``: without that setting verification stays on and the
connection is refused, which is the point.
"""

from __future__ import annotations

import ssl

import pytest
import trustme
from aiosmtpd.smtp import AuthResult, LoginPassword

from tests.conftest import make_app
from tests.support.email import Clock, email_log, load, make_email, queue, run
from tests.support.smtp import SmtpServer
from webapp import config
from webapp.domain.time import utcnow
from webapp.extensions import db
from webapp.services.email.providers import NotConfigured, ProviderMisconfigured, build_provider
from webapp.services.email.providers.smtp import tls_context

pytestmark = pytest.mark.filterwarnings("ignore:Requiring AUTH while not requiring TLS")

USER, PASSWORD = "mailer@shop.example", "s3cret-Passw0rd"


@pytest.fixture(scope="module")
def ca():
    """A throw-away certificate authority."""
    return trustme.CA()


@pytest.fixture(scope="module")
def ca_file(ca, tmp_path_factory):
    """The CA's certificate as a PEM file, for SMTP_CA_FILE."""
    path = tmp_path_factory.mktemp("ca") / "ca.pem"
    ca.cert_pem.write_to_path(str(path))
    return str(path)


@pytest.fixture(scope="module")
def server_context(ca):
    """The server side of TLS: a certificate for 127.0.0.1 issued by ``ca``."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1", "localhost").configure_cert(context)
    return context


def authenticator(server, session, envelope, mechanism, auth_data):
    """Accept exactly USER / PASSWORD."""
    ok = isinstance(auth_data, LoginPassword) and (auth_data.login, auth_data.password) == (
        USER.encode(),
        PASSWORD.encode(),
    )
    return AuthResult(success=ok, handled=False, auth_data=auth_data if ok else None)


def started(**options) -> SmtpServer:
    """Start a server with aiosmtpd Controller options."""
    return SmtpServer(**options).start()


@pytest.fixture
def starttls_server(server_context):
    """STARTTLS required before MAIL, AUTH offered only after TLS (aiosmtpd's default)."""
    server = started(tls_context=server_context, require_starttls=True, authenticator=authenticator, auth_required=True)
    yield server
    server.stop()


@pytest.fixture
def smtps_server(server_context):
    """Implicit TLS from the first byte, with AUTH. (aiosmtpd only counts STARTTLS as TLS for
    ``auth_require_tls``; here the whole connection is TLS, which the test checks per message.)"""
    server = started(
        ssl_context=server_context, authenticator=authenticator, auth_required=True, auth_require_tls=False
    )
    yield server
    server.stop()


def url(server: SmtpServer, *, scheme: str = "smtp", password: str = PASSWORD, query: str = "") -> str:
    """SMTP_URL with credentials for ``server``."""
    user = USER.replace("@", "%40")
    return f"{scheme}://{user}:{password}@{server.host}:{server.port}{query}"


def provider(smtp_url: str, ca_file: str | None = None):
    """The SMTP provider exactly as delivery builds it from the config."""
    settings = config.load({}, {"SMTP_URL": smtp_url, "SMTP_CA_FILE": ca_file, "EMAIL_TIMEOUT_SECONDS": 5})
    return build_provider("smtp", settings)


def test_starttls_and_auth_send_over_an_encrypted_authenticated_session(starttls_server, ca_file):
    result = provider(url(starttls_server, query="?starttls=1"), ca_file).send(make_email(), utcnow())

    [received] = starttls_server.received()
    assert received.tls is True and received.login == USER
    assert received.message["Message-ID"] == make_email().message_id
    assert result.provider == "smtp" and result.message_id == "Q00001"


def test_implicit_tls_smtps_with_auth(smtps_server, ca_file):
    provider(url(smtps_server, scheme="smtps"), ca_file).send(make_email(), utcnow())

    [received] = smtps_server.received()
    assert received.tls is True and received.login == USER


@pytest.mark.parametrize("scheme, query", [("smtp", "?starttls=1"), ("smtps", "")])
def test_certificate_from_an_untrusted_ca_is_refused_by_default(starttls_server, smtps_server, scheme, query):
    """No SMTP_CA_FILE: the system trust store does not know the test CA, so nothing is sent."""
    server = starttls_server if scheme == "smtp" else smtps_server

    with pytest.raises(ProviderMisconfigured, match="TLS certificate of 127.0.0.1 not trusted") as raised:
        provider(url(server, scheme=scheme, query=query)).send(make_email(), utcnow())

    assert "SMTP_CA_FILE" in raised.value.detail
    assert server.received() == [] and server.offered == []


def test_certificate_for_another_host_name_is_refused(ca, ca_file):
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("mail.elsewhere.example").configure_cert(context)
    server = started(tls_context=context, authenticator=authenticator)
    try:
        with pytest.raises(ProviderMisconfigured, match="not trusted"):
            provider(url(server, query="?starttls=1"), ca_file).send(make_email(), utcnow())
        assert server.offered == []
    finally:
        server.stop()


def test_wrong_password_is_our_misconfiguration_and_never_echoed(starttls_server, ca_file):
    with pytest.raises(ProviderMisconfigured) as raised:
        provider(url(starttls_server, password="wrong-password", query="?starttls=1"), ca_file).send(
            make_email(), utcnow()
        )

    assert raised.value.status == 535
    assert "AUTH answered 535" in raised.value.detail
    assert "wrong-password" not in str(raised.value) and PASSWORD not in str(raised.value)
    assert starttls_server.offered == []


def test_credentials_without_tls_are_not_sent_and_the_error_says_what_to_add(server_context):
    """The server offers AUTH only after TLS, so a URL without ?starttls=1 cannot log in."""
    server = started(tls_context=server_context, authenticator=authenticator)
    try:
        with pytest.raises(
            ProviderMisconfigured, match=r"does not offer AUTH on an unencrypted connection.*starttls=1"
        ):
            provider(url(server)).send(make_email(), utcnow())
        assert server.offered == []
    finally:
        server.stop()


def test_server_requiring_starttls_refuses_a_plain_session(starttls_server):
    bare = f"smtp://{starttls_server.host}:{starttls_server.port}"

    with pytest.raises(ProviderMisconfigured, match="MAIL FROM answered 530"):
        provider(bare).send(make_email(), utcnow())

    assert starttls_server.offered == []


def test_starttls_asked_of_a_server_without_it_is_misconfiguration(ca_file):
    server = started()
    try:
        with pytest.raises(ProviderMisconfigured, match="does not offer STARTTLS"):
            provider(f"smtp://{server.host}:{server.port}?starttls=1", ca_file).send(make_email(), utcnow())
        assert server.offered == []
    finally:
        server.stop()


def test_unreadable_ca_file_is_not_configured(tmp_path, starttls_server):
    with pytest.raises(NotConfigured, match="SMTP_CA_FILE"):
        provider(url(starttls_server, query="?starttls=1"), str(tmp_path / "missing.pem"))
    # A plain relay needs no CA file, so a stale SMTP_CA_FILE does not stop it.
    assert provider("smtp://127.0.0.1:25", str(tmp_path / "missing.pem")).settings.ssl is False


def test_a_trust_store_is_loaded_once_per_version_of_the_ca_file(ca, tmp_path):
    """Loading CAs costs ~30 ms of CPU: sends share one context until SMTP_CA_FILE's file changes."""
    path = tmp_path / "ca.pem"
    path.write_bytes(ca.cert_pem.bytes())
    first = tls_context(str(path))
    assert tls_context(str(path)) is first
    assert tls_context() is tls_context()  # the system's CAs, for relays with public certificates

    rotated = trustme.CA()  # the relay's CA is replaced: the new file is read, not the cached one
    path.write_bytes(rotated.cert_pem.bytes() + b"\n")
    second = tls_context(str(path))
    assert second is not first
    server_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    rotated.issue_cert("127.0.0.1").configure_cert(server_context)
    server = started(tls_context=server_context, require_starttls=True)
    try:
        settings = config.load(
            {}, {"SMTP_URL": f"smtp://{server.host}:{server.port}?starttls=1", "SMTP_CA_FILE": str(path)}
        )
        assert build_provider("smtp", settings).send(make_email(), utcnow()).provider == "smtp"
    finally:
        server.stop()


def test_delivery_through_the_engine_uses_smtp_ca_file(sqlite_backend, starttls_server, ca_file):
    """SMTP_CA_FILE set in the app config reaches the provider an email operation sends with."""
    app = make_app(
        sqlite_backend,
        EMAIL_PROVIDERS="smtp",
        EMAIL_FROM="Shop <noreply@shop.example>",
        SMTP_URL=url(starttls_server, query="?starttls=1"),
        SMTP_CA_FILE=ca_file,
    )
    with app.app_context():
        operation_id = queue("welcome", to="ada@example.com")

        assert run(operation_id, Clock()).outcome == "succeeded"

        assert load(operation_id).state == "succeeded"
        [received] = starttls_server.received()
        assert received.tls and received.login == USER and received.rcpt_tos == ("ada@example.com",)
        assert [(row.provider, row.status) for row in email_log(operation_id)] == [("smtp", "sent")]
        db.session.remove()
        db.engine.dispose()
