"""SMTP (``SMTP_URL``): ``smtp://[user:pass@]host[:port][?starttls=1]`` or ``smtps://`` for TLS.

TLS (``smtps://``, or STARTTLS with ``?starttls=1``) always verifies the server's certificate
and host name: against the system's trusted CAs, or only against the CAs in ``SMTP_CA_FILE``
(a PEM bundle) when that is set, for a relay with a private CA. There is no switch that turns
verification off. A certificate that does not verify is our configuration's problem, not the
message's: it fails over like refused credentials (``ProviderMisconfigured``).

The conversation is driven step by step (EHLO, STARTTLS, AUTH, MAIL, RCPT, DATA) so that each
reply code is classified where it happens: 4xx is transient, 5xx on RCPT/DATA rejects the
message, 5xx on AUTH/MAIL FROM means our configuration is wrong (fail over). The message's
``Message-ID`` derives from the operation, so every attempt sends the same one.
"""

from __future__ import annotations

import os
import smtplib
import ssl
from dataclasses import dataclass
from datetime import datetime
from email.message import EmailMessage
from email.policy import SMTP as SMTP_POLICY
from email.utils import formatdate
from functools import lru_cache
from urllib.parse import parse_qs, unquote, urlsplit

from webapp.services.email.providers.base import (
    NotConfigured,
    OutgoingEmail,
    ProviderMisconfigured,
    RejectedError,
    SendResult,
    TransientProviderError,
)

TRUE = {"1", "true", "yes", "on"}


@dataclass(frozen=True)
class SmtpSettings:
    """What SMTP_URL says: where, how (SSL / STARTTLS) and as whom."""

    host: str
    port: int
    ssl: bool
    starttls: bool
    username: str | None
    password: str | None

    @classmethod
    def from_url(cls, url: str | None) -> SmtpSettings:
        """Parse SMTP_URL; raises NotConfigured when it is missing or malformed."""
        if not url:
            raise NotConfigured("SMTP_URL is not set")
        parts = urlsplit(url)
        if parts.scheme not in ("smtp", "smtps") or not parts.hostname:
            raise NotConfigured("SMTP_URL must look like smtp://host:port or smtps://host:port")
        query = parse_qs(parts.query)
        secure = parts.scheme == "smtps"
        try:
            port = parts.port or (465 if secure else 25)
        except ValueError:
            raise NotConfigured("SMTP_URL has an invalid port") from None
        return cls(
            host=parts.hostname,
            port=port,
            ssl=secure,
            starttls=(query.get("starttls", ["0"])[0].lower() in TRUE) and not secure,
            username=unquote(parts.username) if parts.username else None,
            password=unquote(parts.password) if parts.password else None,
        )


def build_message(email: OutgoingEmail) -> EmailMessage:
    """The MIME message: text with an HTML alternative, and our stable Message-ID."""
    message = EmailMessage()
    message["From"] = email.sender
    message["To"] = email.to
    message["Subject"] = email.subject
    message["Date"] = formatdate(localtime=False)
    message["Message-ID"] = email.message_id
    message["X-Backstop-Idempotency-Key"] = email.idempotency_key
    message.set_content(email.text)
    message.add_alternative(email.html, subtype="html")
    return message


class SmtpProvider:
    """Sends through an SMTP relay."""

    name = "smtp"

    def __init__(self, url: str | None, timeout: float, ssl_context: ssl.SSLContext | None = None):
        self.settings = SmtpSettings.from_url(url)
        self.timeout = timeout
        self.ssl_context = ssl_context

    @classmethod
    def from_config(cls, config) -> SmtpProvider:
        """The provider for ``SMTP_URL``, trusting ``SMTP_CA_FILE``'s CAs when it is set."""
        provider = cls(config["SMTP_URL"], config["EMAIL_TIMEOUT_SECONDS"])
        if provider.settings.ssl or provider.settings.starttls:
            provider.ssl_context = tls_context(config["SMTP_CA_FILE"])
        return provider

    def send(self, email: OutgoingEmail, now: datetime) -> SendResult:
        """Send one email; raises a ProviderError subclass on failure."""
        try:
            return self._send(email)
        except TimeoutError as exc:
            raise TransientProviderError(self.name, f"timed out after {self.timeout:g}s") from exc
        except ssl.SSLCertVerificationError as exc:
            raise ProviderMisconfigured(
                self.name,
                f"TLS certificate of {self.settings.host} not trusted: "
                f"{exc.verify_message or exc.reason or exc} (for a private CA, set SMTP_CA_FILE)",
            ) from exc
        except smtplib.SMTPServerDisconnected as exc:
            if isinstance(exc.__context__, TimeoutError):  # smtplib reports a read timeout this way
                raise TransientProviderError(self.name, f"timed out after {self.timeout:g}s") from exc
            raise TransientProviderError(self.name, f"server disconnected: {exc}") from exc
        except smtplib.SMTPConnectError as exc:
            raise TransientProviderError(
                self.name, f"connect refused: {exc.smtp_code} {_text(exc.smtp_error)}"
            ) from exc
        except ssl.SSLError as exc:
            raise TransientProviderError(self.name, f"TLS error: {exc.reason or exc}") from exc
        except OSError as exc:
            if isinstance(exc, smtplib.SMTPException):
                raise TransientProviderError(self.name, f"SMTP error: {exc}") from exc
            raise TransientProviderError(
                self.name, f"network error: {type(exc).__name__}: {exc.strerror or exc}"
            ) from exc

    def _send(self, email: OutgoingEmail) -> SendResult:
        settings = self.settings
        if settings.ssl:
            context = self.ssl_context or tls_context()
            client = smtplib.SMTP_SSL(settings.host, settings.port, timeout=self.timeout, context=context)
        else:
            client = smtplib.SMTP(settings.host, settings.port, timeout=self.timeout)
        try:
            try:
                client.ehlo_or_helo_if_needed()
            except smtplib.SMTPHeloError as exc:
                raise self._reply_error("EHLO", exc.smtp_code, exc.smtp_error, ours=True) from exc
            if settings.starttls:
                self._starttls(client, self.ssl_context or tls_context())
            if settings.username:
                self._login(client)
            reply = self._transaction(client, email)
        finally:
            _quit(client)
        return SendResult(self.name, _queue_id(reply) or email.message_id)

    def _starttls(self, client: smtplib.SMTP, context: ssl.SSLContext) -> None:
        try:
            client.starttls(context=context)
        except smtplib.SMTPNotSupportedError as exc:
            raise ProviderMisconfigured(self.name, "server does not offer STARTTLS") from exc
        except smtplib.SMTPResponseException as exc:
            raise self._reply_error("STARTTLS", exc.smtp_code, exc.smtp_error, ours=True) from exc
        client.ehlo()

    def _login(self, client: smtplib.SMTP) -> None:
        try:
            client.login(self.settings.username, self.settings.password or "")
        except smtplib.SMTPAuthenticationError as exc:
            # Never echo the credentials; the server's reply is enough.
            raise self._reply_error("AUTH", exc.smtp_code, exc.smtp_error, ours=True) from exc
        except smtplib.SMTPNotSupportedError as exc:
            hint = (
                ""
                if self.settings.ssl or self.settings.starttls
                else (
                    " on an unencrypted connection (servers offer AUTH only after TLS: add ?starttls=1 or use smtps://)"
                )
            )
            raise ProviderMisconfigured(self.name, f"server does not offer AUTH{hint}") from exc

    def _transaction(self, client: smtplib.SMTP, email: OutgoingEmail) -> bytes:
        sender = _envelope_address(email.sender)
        code, reply = client.mail(sender)
        if code != 250:
            _reset(client)
            raise self._reply_error("MAIL FROM", code, reply, ours=True)
        code, reply = client.rcpt(email.to)
        if code not in (250, 251):
            _reset(client)
            raise self._reply_error("RCPT TO", code, reply)
        try:
            # CRLF line endings: smtplib does not convert bare LFs in a bytes message.
            code, reply = client.data(build_message(email).as_bytes(policy=SMTP_POLICY))
        except smtplib.SMTPDataError as exc:  # the server refused to start DATA (not 354)
            raise self._reply_error("DATA", exc.smtp_code, exc.smtp_error) from exc
        if code != 250:
            raise self._reply_error("DATA", code, reply)
        return reply

    def _reply_error(self, stage: str, code: int, reply, *, ours: bool = False):
        detail = f"{stage} answered {code} {_text(reply)}"
        if 400 <= code < 500 or code < 200:
            return TransientProviderError(self.name, detail, status=code)
        if ours:
            return ProviderMisconfigured(self.name, detail, status=code)
        return RejectedError(self.name, detail, status=code)


def tls_context(ca_file: str | None = None) -> ssl.SSLContext:
    """A verifying client context: the system's CAs, or only those in ``ca_file`` (PEM).

    Built once per CA file (and again when the file changes): loading a trust store costs ~30 ms
    of CPU, which every send paid before. An unreadable ``ca_file`` is NotConfigured (the
    provider is skipped, and says why).
    """
    if not ca_file:
        return _context_trusting(None, None)
    try:
        stat = os.stat(ca_file)
        return _context_trusting(ca_file, (stat.st_mtime_ns, stat.st_size, stat.st_ino))
    except (OSError, ssl.SSLError) as exc:
        raise NotConfigured(f"SMTP_CA_FILE {ca_file!r} cannot be loaded: {exc}") from None


@lru_cache(maxsize=8)
def _context_trusting(ca_file: str | None, version) -> ssl.SSLContext:
    """A client context for ``ca_file`` as it was at ``version`` (an SSLContext is safe to share between threads)."""
    return ssl.create_default_context(cafile=ca_file)


def _envelope_address(sender: str) -> str:
    from email.utils import parseaddr

    return parseaddr(sender)[1] or sender


def _text(reply) -> str:
    if isinstance(reply, bytes):
        reply = reply.decode("utf-8", "replace")
    return str(reply).strip()[:300]


def _queue_id(reply: bytes) -> str | None:
    """The relay's queue id from a ``250 ... queued as X`` reply, when it gives one."""
    text = _text(reply)
    marker = "queued as "
    index = text.lower().find(marker)
    return text[index + len(marker) :].split()[0][:255] if index >= 0 else None


def _reset(client: smtplib.SMTP) -> None:
    try:
        client.rset()
    except (smtplib.SMTPException, OSError):
        pass


def _quit(client: smtplib.SMTP) -> None:
    try:
        client.quit()
    except (smtplib.SMTPException, OSError):
        client.close()
