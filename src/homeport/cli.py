"""``homeport`` command line: relay, addon, admin, keys, dev.

Options come from a flag, else an environment variable ``HOMEPORT_<NAME>``,
else the TOML file given with ``--config`` (section ``[relay]`` / ``[addon]``),
else the built-in default — in that order of precedence.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import signal
import sys
import tomllib
from collections.abc import Callable, Coroutine, Sequence
from pathlib import Path
from typing import Any

from homeport import __version__
from homeport.logs import setup_logging
from homeport.tls.acme_settings import add_acme_arguments


def default_data_dir() -> Path:
    base = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(base) / "homeport"


class Options:
    """Looks an option up in flag → environment → TOML section → default."""

    def __init__(self, args: argparse.Namespace, section: str) -> None:
        self._args = args
        self._toml: dict[str, Any] = {}
        if getattr(args, "config", None):
            with open(args.config, "rb") as fh:
                self._toml = tomllib.load(fh).get(section, {})

    def get(self, name: str, default: Any = None) -> Any:
        value = getattr(self._args, name, None)
        if value is not None:
            return value
        env = os.environ.get("HOMEPORT_" + name.upper())
        if env:
            return env
        toml_value = self._toml.get(name.replace("_", "-"), self._toml.get(name))
        if toml_value is not None:
            return toml_value
        return default

    def path(self, name: str, default: Path | None = None) -> Path | None:
        value = self.get(name)
        return Path(value).expanduser() if value else default


def _run(main: Coroutine[Any, Any, None]) -> None:
    try:
        import uvloop

        uvloop.run(main)
    except ImportError:  # pragma: no cover - platforms without uvloop
        asyncio.run(main)


async def _until_signalled(stop: Callable[[], Coroutine[Any, Any, None]]) -> None:
    done = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError):
            loop.add_signal_handler(sig, done.set)
    await done.wait()
    await stop()


# ----------------------------------------------------------------------- relay


def relay_config(args: argparse.Namespace) -> Any:
    from homeport.relay.config import SECURITY_CONTACT, SECURITY_POLICY, RelayConfig
    from homeport.tls.acme_settings import acme_settings

    opts = Options(args, "relay")
    listen = str(opts.get("listen", "127.0.0.1:8443"))
    host, _, port = listen.rpartition(":")
    public_port = opts.get("public_port")
    tls_profile = str(opts.get("tls_profile", "modern")).lower()
    if tls_profile not in ("modern", "intermediate"):
        raise SystemExit(f"error: --tls-profile must be modern or intermediate: {tls_profile!r}")
    http_listen = opts.get("http_listen")
    from homeport.mail.options import signup_open, smtp_settings
    from homeport.mail.settings import MailSettingsError

    try:
        smtp = smtp_settings(opts)
        signup = signup_open(opts, smtp)
    except MailSettingsError as exc:
        raise SystemExit(f"error: {exc}") from exc
    http_host, _, http_port = str(http_listen).rpartition(":") if http_listen else ("", "", "")
    limits = _limit_options(opts)
    acme = acme_settings(opts.get)
    if acme is not None and acme.challenge == "http-01" and not http_port:
        raise SystemExit("error: --acme-challenge http-01 needs --http-listen (port 80)")
    return RelayConfig(
        data_dir=opts.path("data_dir", default_data_dir()) or default_data_dir(),
        account_host=str(opts.get("account_host", "homeport.localhost")).lower(),
        tenant_domain=str(opts.get("tenant_domain", "home.localhost")).lower(),
        listen_host=host.strip("[]") or "127.0.0.1",
        listen_port=int(port),
        public_port=int(public_port) if public_port is not None else None,
        database_url=opts.get("database_url"),
        tls_cert=opts.path("tls_cert"),
        tls_key=opts.path("tls_key"),
        server_key=opts.path("server_key"),
        tls_profile=tls_profile,
        http_listen_host=http_host.strip("[]") or "127.0.0.1",
        http_listen_port=int(http_port) if http_port else None,
        security_contact=str(opts.get("security_contact", SECURITY_CONTACT)),
        security_policy=str(opts.get("security_policy", SECURITY_POLICY)),
        oidc_providers=_oidc_providers(opts),
        smtp=smtp,
        signup=signup,
        max_body_bytes=limits["max_body_bytes"],
        tenant_max_requests=limits["tenant_max_requests"],
        client_max_requests=limits["client_max_requests"],
        tenant_bandwidth=limits["tenant_bandwidth"],
        tenant_burst=limits["tenant_burst"],
        upload_min_bytes=limits["upload_min_bytes"],
        upload_window=limits["upload_window"],
        account_max_requests=limits["account_max_requests"],
        account_body_seconds=limits["account_body_seconds"],
        acme=acme,
        metrics_listen=_metrics_listen(opts.get("metrics_listen")),
    )


def _metrics_listen(value: Any) -> tuple[str, int] | None:
    """``--metrics-listen host:port``; None when unset (no metrics listener)."""
    if not value:
        return None
    host, _, port = str(value).rpartition(":")
    if not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise SystemExit(f"error: --metrics-listen must be host:port: {value!r}")
    return host.strip("[]"), int(port)


def _oidc_providers(opts: Options) -> Any:
    from homeport.relay.oidc_settings import OidcSettingsError, providers_from_options

    try:
        return providers_from_options(opts.get, opts.path)
    except OidcSettingsError as exc:
        raise SystemExit(f"error: {exc}") from exc


def _limit_options(opts: Options) -> dict[str, Any]:
    """The edge limits (``homeport.relay.limits``); a malformed value stops the relay."""
    from homeport.relay.config import RelayConfig
    from homeport.relay.limits import parse_seconds, parse_size

    defaults = RelayConfig(data_dir=Path())
    try:
        sizes = {
            name: parse_size(opts.get(name, getattr(defaults, name)), option=f"--{flag}")
            for name, flag in LIMIT_FLAGS.items()
        }
        seconds = {
            name: parse_seconds(opts.get(name, getattr(defaults, name)), option=f"--{flag}")
            for name, flag in SECONDS_FLAGS.items()
        }
    except ValueError as exc:
        raise SystemExit(f"error: {exc}") from None
    return sizes | seconds


#: RelayConfig field -> flag; each takes a size (``16G``, ``512M``) or a count; 0 = no limit.
LIMIT_FLAGS = {
    "max_body_bytes": "max-body",
    "tenant_max_requests": "tenant-max-requests",
    "client_max_requests": "client-max-requests",
    "tenant_bandwidth": "tenant-bandwidth",
    "tenant_burst": "tenant-burst",
    "upload_min_bytes": "upload-min-bytes",
    "account_max_requests": "account-max-requests",
}
#: RelayConfig field -> flag; each takes seconds (``10``, ``2.5``); 0 = no limit.
SECONDS_FLAGS = {
    "upload_window": "upload-window",
    "account_body_seconds": "account-body-timeout",
}


def cmd_relay(args: argparse.Namespace) -> int:
    from homeport.relay.app import Relay
    from homeport.tls.check import CertificateProblem
    from homeport.tls.openssl_groups import reexec_with_groups

    config = relay_config(args)
    reexec_with_groups(config.data_dir)  # R-TLS-05: groups need OPENSSL_CONF at process start

    async def main() -> None:
        try:
            relay = Relay(config)
        except CertificateProblem as exc:
            raise SystemExit(f"error: {exc}") from exc
        await relay.start()
        print(f"Relay listening on {config.listen_host}:{config.listen_port}", flush=True)
        print(f"Account site: {config.account_origin}/", flush=True)
        print(relay.mail.summary(config), flush=True)
        await _until_signalled(relay.stop)

    _run(main())
    return 0


# ----------------------------------------------------------------------- addon


def cmd_addon(args: argparse.Namespace) -> int:
    from homeport.addon.client import AddonConfig
    from homeport.keys import parse_pinned_keys

    opts = Options(args, "addon")
    relay = opts.get("relay")
    pins = opts.get("server_pubkey")
    ha_url = opts.get("ha_url")
    pinned_keys = None
    options_file = opts.path("options")
    if options_file is not None:
        # The add-on's /data/options.json; flags and environment still win.
        from homeport.addon.options import OptionsError, load_options

        try:
            addon_options = load_options(options_file)
        except OptionsError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
        relay = relay or addon_options.relay_url
        ha_url = ha_url or addon_options.ha_url
        if not pins:
            pinned_keys = addon_options.pinned_keys
    if not relay or not (pins or pinned_keys):
        print("error: --relay and --server-pubkey (or --options) are required", file=sys.stderr)
        return 2
    from homeport.addon.runtime import AddonRuntime, StartupError, parse_panel

    supervisor_token = os.environ.get("SUPERVISOR_TOKEN") or None
    try:
        panel = parse_panel(
            opts.get("panel_listen"), opts.get("panel_allow"), supervised=bool(supervisor_token)
        )
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    config = AddonConfig(
        relay_url=str(relay),
        ha_url=str(ha_url or "http://127.0.0.1:8123"),
        state_dir=opts.path("state_dir", default_data_dir() / "addon") or Path("."),
        pinned_keys=pinned_keys or tuple(parse_pinned_keys(str(pins))),
        relay_ca=opts.path("relay_ca"),
    )
    runtime = AddonRuntime(
        config, supervisor_token=supervisor_token, panel=panel, ha_url_given=bool(ha_url)
    )

    async def main() -> None:
        try:
            async with runtime.running():
                await _until_signalled(_nothing)
        except StartupError as exc:
            print(f"error: {exc}", file=sys.stderr)
            raise SystemExit(2) from None

    _run(main())
    return 0


async def _nothing() -> None:
    return None


# ----------------------------------------------------------------------- admin


def _database(args: argparse.Namespace) -> Any:
    from homeport.accounts.db import Database, default_sqlite_url

    opts = Options(args, "relay")
    url = opts.get("database_url")
    if not url:
        data_dir = opts.path("data_dir", default_data_dir()) or default_data_dir()
        data_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        url = default_sqlite_url(data_dir)
    return Database(str(url))


def _admin(args: argparse.Namespace, action: Callable[[Any], Coroutine[Any, Any, int]]) -> int:
    from homeport.accounts.service import Accounts

    async def main() -> int:
        database = _database(args)
        await database.connect()
        try:
            await database.migrate()
            return await action(Accounts(database))
        finally:
            await database.close()

    return asyncio.run(main())


def cmd_user_create(args: argparse.Namespace) -> int:
    from homeport.accounts.errors import AccountsError
    from homeport.accounts.passwords import PasswordPolicyError

    password = sys.stdin.readline().rstrip("\r\n")

    async def action(accounts: Any) -> int:
        try:
            user = await accounts.create_user(args.email, password)
        except (AccountsError, PasswordPolicyError) as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 1
        print(f"Created user {user.email}")
        return 0

    return _admin(args, action)


def cmd_user_list(args: argparse.Namespace) -> int:
    async def action(accounts: Any) -> int:
        for user in await accounts.list_users():
            print(user.email)
        return 0

    return _admin(args, action)


def cmd_link(args: argparse.Namespace) -> int:
    from homeport.accounts.errors import AccountsError

    async def action(accounts: Any) -> int:
        try:
            instance = await accounts.link_instance(args.code, args.email)
        except AccountsError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 1
        print(f"Linked instance {instance.id} to {args.email}")
        return 0

    return _admin(args, action)


def cmd_instance_list(args: argparse.Namespace) -> int:
    from homeport.relay.config import RelayConfig

    config: RelayConfig = relay_config(args)

    async def action(accounts: Any) -> int:
        rows = [
            {
                "id": row.id,
                "owner": row.owner_email,
                "name": row.name,
                "connected": row.connected,
                "url": config.tenant_origin(row.id),
            }
            for row in await accounts.list_instances()
        ]
        if args.json:
            print(json.dumps(rows, indent=2))
        else:
            for row in rows:
                state = "connected" if row["connected"] else "offline"
                print(f"{row['id']}  {row['owner']}  {state}  {row['url']}")
        return 0

    return _admin(args, action)


# ------------------------------------------------------------------------ keys


def cmd_keys_show(args: argparse.Namespace) -> int:
    from homeport.keys import key_id, load_or_create_private_key, public_key_text

    config = relay_config(args)
    key = load_or_create_private_key(config.server_key_path)
    public = key.public_key()
    print(public_key_text(public))
    print(f"# key id {key_id(public)}, from {config.server_key_path}", file=sys.stderr)
    return 0


# ------------------------------------------------------------------------- dev


def cmd_dev(args: argparse.Namespace) -> int:
    from homeport.dev import run_dev
    from homeport.mail.options import signup_open, smtp_settings
    from homeport.mail.settings import MailSettingsError

    try:
        opts = Options(args, "relay")
        args.smtp = smtp_settings(opts)
        args.signup_open = signup_open(opts, args.smtp, dev=True)
    except MailSettingsError as exc:
        raise SystemExit(f"error: {exc}") from exc
    _run(run_dev(args))
    return 0


# ---------------------------------------------------------------------- parser


def _relay_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", help="TOML config file ([relay] section)")
    parser.add_argument("--listen", help="address:port to listen on (default 127.0.0.1:8443)")
    parser.add_argument("--account-host", dest="account_host")
    parser.add_argument("--tenant-domain", dest="tenant_domain")
    parser.add_argument("--public-port", dest="public_port", type=int)
    parser.add_argument("--data-dir", dest="data_dir")
    parser.add_argument("--database-url", dest="database_url")
    parser.add_argument("--tls-cert", dest="tls_cert")
    parser.add_argument("--tls-key", dest="tls_key")
    parser.add_argument("--server-key", dest="server_key", help="Ed25519 signing key (PEM)")
    parser.add_argument(
        "--tls-profile",
        dest="tls_profile",
        choices=["modern", "intermediate"],
        help="modern (default): TLS 1.3 only; intermediate: also TLS 1.2 with ECDHE+AEAD suites",
    )
    parser.add_argument(
        "--http-listen",
        dest="http_listen",
        help="address:port for plain HTTP (e.g. 0.0.0.0:80); default off. It only "
        "redirects (308) to https:// on the same host, never serves content",
    )
    parser.add_argument(
        "--metrics-listen",
        dest="metrics_listen",
        help="address:port for Prometheus GET /metrics over plain HTTP (e.g. 127.0.0.1:9464); "
        "default off. Bind it to loopback or a private interface: it has no authentication",
    )
    from homeport.relay.oidc_settings import add_oidc_arguments

    add_oidc_arguments(parser)
    from homeport.mail.options import add_mail_arguments

    add_mail_arguments(parser)
    limits = parser.add_argument_group("limits on tenant hosts (0 = no limit)")
    limits.add_argument("--max-body", dest="max_body_bytes", help="request body cap (16G)")
    limits.add_argument(
        "--tenant-max-requests", dest="tenant_max_requests", help="open requests per home (256)"
    )
    limits.add_argument(
        "--client-max-requests", dest="client_max_requests", help="open requests per address (512)"
    )
    limits.add_argument(
        "--tenant-bandwidth", dest="tenant_bandwidth", help="bytes/s per home and direction (0)"
    )
    limits.add_argument("--tenant-burst", dest="tenant_burst", help="bandwidth burst (4M)")
    limits.add_argument(
        "--upload-min-bytes",
        dest="upload_min_bytes",
        help="a request body must move at least this much per --upload-window (16K)",
    )
    limits.add_argument(
        "--upload-window", dest="upload_window", help="seconds for --upload-min-bytes (30)"
    )
    account = parser.add_argument_group("limits on the account site (0 = no limit)")
    account.add_argument(
        "--account-body-timeout",
        dest="account_body_seconds",
        help="seconds for a whole request body to arrive (10)",
    )
    account.add_argument(
        "--account-max-requests",
        dest="account_max_requests",
        help="open requests per address, IPv6 per /64 (32)",
    )
    add_acme_arguments(parser)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="homeport", description=__doc__.splitlines()[0])
    parser.add_argument("--version", action="version", version=f"homeport {__version__}")
    parser.add_argument("--log-level", default=os.environ.get("HOMEPORT_LOG_LEVEL", "info"))
    sub = parser.add_subparsers(dest="command", required=True)

    relay = sub.add_parser("relay", help="run the relay")
    _relay_options(relay)
    relay.set_defaults(func=cmd_relay)

    addon = sub.add_parser("addon", help="run the add-on beside Home Assistant")
    addon.add_argument("--config", help="TOML config file ([addon] section)")
    addon.add_argument("--relay", help="wss://relay-host/v1/tunnel")
    addon.add_argument("--ha-url", dest="ha_url")
    addon.add_argument("--state-dir", dest="state_dir")
    addon.add_argument("--relay-ca", dest="relay_ca", help="extra CA file to trust")
    addon.add_argument("--server-pubkey", dest="server_pubkey", help="pinned relay key(s)")
    addon.add_argument(
        "--panel-listen", dest="panel_listen", help="host:port of the ingress panel, or off"
    )
    addon.add_argument(
        "--panel-allow", dest="panel_allow", help="peer addresses the panel serves (ingress proxy)"
    )
    addon.add_argument(
        "--options", help="add-on options JSON (e.g. /data/options.json), after flags and env"
    )
    addon.set_defaults(func=cmd_addon)

    admin = sub.add_parser("admin", help="manage accounts and instances")
    admin_sub = admin.add_subparsers(dest="admin_command", required=True)
    user = admin_sub.add_parser("user", help="accounts")
    user_sub = user.add_subparsers(dest="user_command", required=True)
    create = user_sub.add_parser("create", help="create an account (password on stdin)")
    create.add_argument("email")
    _relay_options(create)
    create.set_defaults(func=cmd_user_create)
    listing = user_sub.add_parser("list", help="list accounts")
    _relay_options(listing)
    listing.set_defaults(func=cmd_user_list)
    link = admin_sub.add_parser("link", help="link an add-on to an account by its code")
    link.add_argument("code")
    link.add_argument("email")
    _relay_options(link)
    link.set_defaults(func=cmd_link)
    instance = admin_sub.add_parser("instance", help="instances")
    instance_sub = instance.add_subparsers(dest="instance_command", required=True)
    inst_list = instance_sub.add_parser("list", help="list instances")
    inst_list.add_argument("--json", action="store_true")
    _relay_options(inst_list)
    inst_list.set_defaults(func=cmd_instance_list)

    keys = sub.add_parser("keys", help="the relay's signing key")
    keys_sub = keys.add_subparsers(dest="keys_command", required=True)
    show = keys_sub.add_parser("show", help="print the public key for pinning")
    _relay_options(show)
    show.set_defaults(func=cmd_keys_show)

    dev = sub.add_parser("dev", help="relay + add-on + Home Assistant (or a stand-in) locally")
    dev.add_argument("--ha-url", dest="ha_url", default="http://127.0.0.1:8123")
    dev.add_argument("--data-dir", dest="data_dir", default=".homeport/dev")
    dev.add_argument("--port", type=int, default=8443)
    from homeport.mail.options import add_mail_arguments

    add_mail_arguments(dev)
    dev.set_defaults(func=cmd_dev)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    setup_logging(args.log_level)
    result: int = args.func(args)
    return result


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
