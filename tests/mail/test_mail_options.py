"""The relay's mail options: flag, HOMEPORT_* environment and TOML, and clear refusals."""

from __future__ import annotations

from pathlib import Path

import pytest

from homeport.cli import build_parser, relay_config


def config_for(argv: list[str]) -> object:
    return relay_config(build_parser().parse_args(["relay", *argv]))


def test_no_smtp_means_mail_off() -> None:
    config = config_for([])
    assert config.smtp is None  # type: ignore[attr-defined]
    assert config.signup is False  # type: ignore[attr-defined]


def test_flags(tmp_path: Path) -> None:
    secret = tmp_path / "pw"
    secret.write_text("pw\n")
    config = config_for(
        [
            "--smtp-host", "smtp.example", "--smtp-user", "relay",
            "--smtp-password-file", str(secret), "--mail-from", "relay@example.net",
            "--signup", "open",
        ]
    )  # fmt: skip
    smtp = config.smtp  # type: ignore[attr-defined]
    assert (smtp.host, smtp.port, smtp.security, smtp.username, smtp.password) == (
        "smtp.example", 587, "starttls", "relay", "pw",
    )  # fmt: skip
    assert config.signup is True  # type: ignore[attr-defined]


def test_environment_and_toml(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    toml = tmp_path / "relay.toml"
    toml.write_text('[relay]\nsmtp-host = "mail.example"\nsmtp-security = "tls"\n')
    monkeypatch.setenv("HOMEPORT_MAIL_FROM", "relay@example.net")
    smtp = config_for(["--config", str(toml)]).smtp  # type: ignore[attr-defined]
    assert (smtp.host, smtp.port, smtp.security, smtp.mail_from) == (
        "mail.example", 465, "tls", "relay@example.net",
    )  # fmt: skip


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--mail-from", "a@b.example"], "--mail-from given without --smtp-host"),
        (["--smtp-host", "smtp.example"], "--mail-from is required"),
        (
            [
                "--smtp-host",
                "smtp.example",
                "--smtp-security",
                "none",
                "--mail-from",
                "a@b.example",
            ],
            "only allowed for a loopback",
        ),
        (["--signup", "open"], "--signup open needs mail"),
    ],
)
def test_bad_mail_options_stop_the_relay(argv: list[str], message: str) -> None:
    with pytest.raises(SystemExit, match=message):
        config_for(argv)
