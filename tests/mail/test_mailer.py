"""Mail settings and sending, against a real SMTP server (aiosmtpd) on loopback."""

from __future__ import annotations

import asyncio
import io
import logging
import time
from pathlib import Path

import pytest
from smtp_sink import SmtpSink

from homeport.mail.mailer import ConsoleMailer, Mail, Outbox, SmtpMailer
from homeport.mail.messages import MailWriter, describe_device, describe_network
from homeport.mail.settings import MailSettingsError, SmtpSettings

FROM = "relay@homeport.example"
TO = "owner@example.com"
CHROME = (
    "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) "
    "Chrome/131.0.0.0 Safari/537.36"
)


def mail(text: str = "Hello.\n") -> Mail:
    return Mail(to=TO, subject="Test", text=text, kind="test")


def test_settings_defaults_and_checks(tmp_path: Path) -> None:
    s = SmtpSettings.build(host="smtp.example", mail_from=FROM)
    assert (s.port, s.security, s.username, s.password) == (587, "starttls", None, None)
    assert SmtpSettings.build(host="smtp.example", mail_from=FROM, security="tls").port == 465
    assert SmtpSettings.build(host="127.0.0.1", mail_from=FROM, security="none").port == 25
    secret = tmp_path / "pw"
    secret.write_text("s3cret\n")
    with_login = SmtpSettings.build(
        host="smtp.example", mail_from=FROM, username="relay", password_file=secret
    )
    assert with_login.password == "s3cret"
    assert "s3cret" not in repr(with_login)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"security": "none", "host": "smtp.example"}, "loopback"),
        ({"security": "ssl"}, "starttls, tls or none"),
        ({"mail_from": None}, "--mail-from is required"),
        ({"mail_from": "not an address"}, "not an email address"),
        ({"mail_from": "a@b.example\r\nBcc: x@y"}, "not an email address"),
        ({"port": 70000}, "out of range"),
        ({"password_file": Path("/nonexistent/pw"), "username": "u"}, "cannot read"),
    ],
)
def test_bad_settings_are_refused_clearly(kwargs: dict[str, object], message: str) -> None:
    base: dict[str, object] = {"host": "smtp.example", "mail_from": FROM}
    base.update(kwargs)
    with pytest.raises(MailSettingsError, match=message):
        SmtpSettings.build(**base)  # type: ignore[arg-type]


def test_password_needs_user_and_tls(tmp_path: Path) -> None:
    secret = tmp_path / "pw"
    secret.write_text("pw")
    with pytest.raises(MailSettingsError, match="needs --smtp-user"):
        SmtpSettings.build(host="smtp.example", mail_from=FROM, password_file=secret)
    with pytest.raises(MailSettingsError, match="without TLS"):
        SmtpSettings.build(
            host="127.0.0.1",
            mail_from=FROM,
            security="none",
            username="u",
            password_file=secret,
        )


async def test_plain_loopback_delivery() -> None:
    with SmtpSink() as sink:
        settings = SmtpSettings.build(
            host="127.0.0.1", port=sink.port, security="none", mail_from=FROM
        )
        await SmtpMailer(settings).send(mail("Line one.\nLine two.\n"))
        got = await sink.wait_for(TO)
    assert got.mail_from == FROM
    assert got.message["Subject"] == "Test"
    assert got.message["Auto-Submitted"] == "auto-generated"
    assert got.text == "Line one.\nLine two.\n"


async def test_starttls_with_login(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    secret = tmp_path / "pw"
    secret.write_text("letter box key\n")
    with SmtpSink(tls_dir=tmp_path / "ca", login=("relay", "letter box key")) as sink:
        assert sink.ca_path is not None
        # The client verifies the server certificate against the system store; point
        # that store at the development CA (as an operator's private CA would be).
        monkeypatch.setenv("SSL_CERT_FILE", str(sink.ca_path))
        settings = SmtpSettings.build(
            host="localhost",
            port=sink.port,
            mail_from=FROM,
            username="relay",
            password_file=secret,
        )
        await SmtpMailer(settings).send(mail())
        assert (await sink.wait_for(TO)).text == "Hello.\n"


async def test_starttls_is_required_not_opportunistic() -> None:
    with SmtpSink() as sink:  # offers no STARTTLS
        settings = SmtpSettings.build(host="127.0.0.1", port=sink.port, mail_from=FROM)
        with pytest.raises(Exception, match=r"(?i)starttls|tls"):
            await SmtpMailer(settings).send(mail())
        assert sink.received == []


async def test_untrusted_certificate_is_refused(tmp_path: Path) -> None:
    with SmtpSink(tls_dir=tmp_path / "ca") as sink:
        settings = SmtpSettings.build(host="localhost", port=sink.port, mail_from=FROM)
        with pytest.raises(Exception):  # noqa: B017, PT011  - any TLS verification error
            await SmtpMailer(settings).send(mail())
        assert sink.received == []


async def test_silent_server_times_out_and_is_logged(caplog: pytest.LogCaptureFixture) -> None:
    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await asyncio.sleep(60)

    server = await asyncio.start_server(silent, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    settings = SmtpSettings(host="127.0.0.1", port=port, security="none", mail_from=FROM, timeout=1)
    outbox = Outbox(SmtpMailer(settings))
    try:
        with caplog.at_level(logging.INFO, logger="homeport.mail.mailer"):
            started = time.monotonic()
            assert outbox.post(mail("code 123456"))
            assert time.monotonic() - started < 0.5  # the caller never waits for SMTP
            async with asyncio.timeout(20):
                while not any(r.getMessage() == "mail.send_failed" for r in caplog.records):
                    await asyncio.sleep(0.05)
    finally:
        server.close()
    failed = next(r for r in caplog.records if r.getMessage() == "mail.send_failed")
    assert failed.domain == "example.com"  # type: ignore[attr-defined]
    assert "owner@" not in caplog.text
    assert "123456" not in caplog.text


async def test_outbox_delivers_in_background() -> None:
    with SmtpSink() as sink:
        settings = SmtpSettings.build(
            host="127.0.0.1", port=sink.port, security="none", mail_from=FROM
        )
        outbox = Outbox(SmtpMailer(settings))
        for n in range(3):
            outbox.post(Mail(to=TO, subject=f"n{n}", text="x\n", kind="test"))
        await outbox.drain(timeout=20)
        assert sorted(str(r.message["Subject"]) for r in sink.received) == ["n0", "n1", "n2"]


async def test_header_injection_is_refused() -> None:
    with SmtpSink() as sink:
        settings = SmtpSettings.build(
            host="127.0.0.1", port=sink.port, security="none", mail_from=FROM
        )
        bad = Mail(to=TO, subject="Hi\r\nBcc: victim@example.net", text="x", kind="test")
        with pytest.raises(ValueError):  # noqa: PT011
            await SmtpMailer(settings).send(bad)
        assert sink.received == []


async def test_console_mailer_prints() -> None:
    out = io.StringIO()
    await ConsoleMailer(out).send(mail("the body\n"))
    assert "dev mail, not sent" in out.getvalue()
    assert "the body" in out.getvalue()


def test_device_and_network_summaries() -> None:
    assert describe_device(CHROME) == "Chrome 131 on Linux"
    assert describe_device("") == "an unknown device"
    assert describe_device("\x1b[31mEvil\x00") == "an unknown device"
    assert describe_network("198.51.100.7") == "198.51.100.7"
    assert describe_network("2001:db8::1") == "2001:db8::1 (network 2001:db8::/64)"
    assert describe_network(None) == "an unknown address"


def test_signin_code_mail_says_what_when_where() -> None:
    from datetime import UTC, datetime

    writer = MailWriter("https://homeport.example")
    m = writer.signin_code(
        TO,
        code="012345",
        minutes=10,
        deny_url="https://homeport.example/signin/not-me?t=abc",
        moment=datetime(2030, 1, 2, 3, 4, tzinfo=UTC),
        ip="198.51.100.7",
        user_agent=CHROME,
        second_factor=True,
    )
    assert "012345" in m.subject
    for part in ("012345", "10 minutes", "198.51.100.7", "Chrome 131 on Linux", "03:04 UTC"):
        assert part in m.text
    assert "/signin/not-me?t=abc" in m.text
    assert "second factor" in m.text


def test_notice_mails_name_the_change_and_carry_no_code() -> None:
    from datetime import UTC, datetime

    writer = MailWriter("https://homeport.example")
    moment = datetime(2030, 1, 2, 3, 4, tzinfo=UTC)
    change = writer.security_change(
        TO, what="two-step verification was turned on", moment=moment, ip="::1", user_agent=""
    )
    assert "two-step verification was turned on" in change.text
    assert "https://homeport.example/signin/forgot" in change.text
    notice = writer.new_signin(
        TO, deny_url="https://x/signin/not-me?t=1", moment=moment, ip="::1", user_agent=CHROME
    )
    assert "Chrome 131 on Linux" in notice.text
    assert "/signin/not-me?t=1" in notice.text


class _StuckMailer:
    """An SMTP server that never finishes: every send waits until released."""

    def __init__(self) -> None:
        self.release = asyncio.Event()
        self.started = 0

    async def send(self, mail: Mail) -> None:
        self.started += 1
        await self.release.wait()


async def test_full_outbox_drops_and_logs(
    caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("homeport.mail.mailer.OUTBOX_LIMIT", 5)
    stuck = _StuckMailer()
    outbox = Outbox(stuck)
    with caplog.at_level(logging.INFO, logger="homeport.mail.mailer"):
        accepted = [outbox.post(mail()) for _ in range(6)]
        await asyncio.sleep(0.2)
        assert accepted == [True] * 5 + [False]
        assert stuck.started == 4  # at most 4 at once; the rest wait their turn
        assert [r.getMessage() for r in caplog.records] == ["mail.dropped"]
        stuck.release.set()
        await outbox.drain(timeout=10)
    assert [r.getMessage() for r in caplog.records].count("mail.sent") == 5


async def test_drain_cancels_what_cannot_finish(caplog: pytest.LogCaptureFixture) -> None:
    stuck = _StuckMailer()
    outbox = Outbox(stuck)
    outbox.post(mail())
    await asyncio.sleep(0.05)
    with caplog.at_level(logging.INFO, logger="homeport.mail.mailer"):
        await outbox.drain(timeout=0.2)
    assert "mail.unsent_at_shutdown" in [r.getMessage() for r in caplog.records]
