"""Provider settings: flags, environment and TOML resolve to providers; bad ones are refused."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest
from joserfc.jwk import ECKey

from homeport.cli import build_parser, relay_config
from homeport.relay.oidc_settings import (
    APPLE_ISSUER,
    GOOGLE_ISSUER,
    OidcProvider,
    OidcSettingsError,
)


def _args(*argv: str) -> argparse.Namespace:
    return build_parser().parse_args(["relay", *argv])


def test_nothing_configured_means_no_providers(tmp_path: Path) -> None:
    assert relay_config(_args("--data-dir", str(tmp_path))).oidc_providers == ()


def test_google_apple_and_generic_from_flags_env_and_toml(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    secret = tmp_path / "google.secret"
    secret.write_text("g-secret\n")
    p8 = tmp_path / "apple.p8"
    p8.write_text(ECKey.generate_key("P-256").as_pem(private=True).decode())
    generic = tmp_path / "generic.secret"
    generic.write_text("o-secret")
    toml = tmp_path / "relay.toml"
    toml.write_text(
        "[relay]\n"
        'oidc-issuer = "https://login.example.org/realms/home"\n'
        'oidc-client-id = "homeport"\n'
        f'oidc-client-secret-file = "{generic}"\n'
        'oidc-label = "Example SSO"\n'
        'oidc-response-mode = "form_post"\n'
    )
    monkeypatch.setenv("HOMEPORT_APPLE_TEAM_ID", "TEAM1")
    monkeypatch.setenv("HOMEPORT_APPLE_KEY_ID", "KEY1")
    config = relay_config(
        _args(
            "--config", str(toml),
            "--data-dir", str(tmp_path),
            "--google-client-id", "g-id.apps.googleusercontent.com",
            "--google-client-secret-file", str(secret),
            "--apple-client-id", "com.example.web",
            "--apple-private-key-file", str(p8),
        )
    )  # fmt: skip
    google, apple, other = config.oidc_providers
    assert (google.name, google.issuer, google.client_secret) == (
        "google",
        GOOGLE_ISSUER,
        "g-secret",
    )
    assert google.accepted_issuers == (GOOGLE_ISSUER, "accounts.google.com")
    assert (apple.name, apple.issuer, apple.response_mode) == ("apple", APPLE_ISSUER, "form_post")
    assert apple.apple is not None
    assert (apple.apple.team_id, apple.apple.key_id) == ("TEAM1", "KEY1")
    assert (other.label, other.response_mode) == ("Example SSO", "form_post")
    assert other.metadata_url == (
        "https://login.example.org/realms/home/.well-known/openid-configuration"
    )
    # Secrets stay out of reprs (and so out of logs and tracebacks).
    assert "g-secret" not in repr(config)
    assert "PRIVATE KEY" not in repr(config)


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--google-client-id", "x"], "secret-file is missing"),
        (["--google-client-id", "x", "--google-client-secret-file", "/nonexistent"], "cannot read"),
        (["--apple-client-id", "x"], "apple-team-id"),
        (["--oidc-issuer", "http://idp.example", "--oidc-client-secret-file", "{secret}",
          "--oidc-client-id", "c"], "https://"),
        (["--oidc-issuer", "https://idp.example", "--oidc-client-secret-file", "{secret}"],
         "client id is missing"),
        (["--oidc-issuer", "https://idp.example", "--oidc-client-secret-file", "{empty}",
          "--oidc-client-id", "c"], "is empty"),
    ],
)  # fmt: skip
def test_bad_provider_settings_stop_the_relay_with_a_clear_error(
    tmp_path: Path, argv: list[str], message: str
) -> None:
    (tmp_path / "s").write_text("secret")
    (tmp_path / "e").write_text("\n")
    argv = [a.format(secret=tmp_path / "s", empty=tmp_path / "e") for a in argv]
    with pytest.raises(SystemExit) as stopped:
        relay_config(_args("--data-dir", str(tmp_path), *argv))
    assert message in str(stopped.value)


def test_provider_urls_must_be_https_except_loopback() -> None:
    for issuer in ("http://127.0.0.1:9400", "http://localhost:9400", "https://idp.example"):
        OidcProvider(name="x", label="X", issuer=issuer, client_id="c", client_secret="s")
    for issuer in ("http://idp.example", "ftp://idp.example", "idp.example", "https://"):
        with pytest.raises(OidcSettingsError):
            OidcProvider(name="x", label="X", issuer=issuer, client_id="c", client_secret="s")
    for name in ("Bad Name", "finish", "link", "confirm", ""):
        with pytest.raises(OidcSettingsError):
            OidcProvider(name=name, label="X", issuer="https://a.example", client_id="c",
                         client_secret="s")  # fmt: skip
