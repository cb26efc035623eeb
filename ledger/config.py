"""Settings, read once from the environment. Every knob is listed in the README.

A value the service cannot use is a `ConfigError` whose message is one line that
names the variable and what it expects; the `ledger` command prints it and exits
with status 2. Secrets are never echoed back.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

from ledger import limits

__all__ = ["ConfigError", "Settings"]

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8000
DEFAULT_DATA_DIR = ".ledger"
DEFAULT_DATABASE_NAME = "ledger"
DEFAULT_EXPIRY_SWEEP_INTERVAL_S = 1.0
DEFAULT_STRIPE_WEBHOOK_TOLERANCE_S = 300
DEFAULT_CARD_TOPUP_MIN_MICROS = 1_000_000  # 1 USD
DEFAULT_CARD_TOPUP_MAX_MICROS = 1_000_000_000  # 1,000 USD
DEFAULT_USDC_CONFIRMATIONS = 12
DEFAULT_USDC_BLOCK_RANGE_MAX = 1_000
DEFAULT_USDC_POLL_INTERVAL_S = 5
DEFAULT_USAGE_ROLLUP_INTERVAL_S = 1.0
DEFAULT_DASHBOARD_SESSION_S = 3600
LOG_FORMATS = ("text", "json")
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")
# Who may read /metrics: loopback clients or the operator API key (default), only
# the operator API key, or anyone.
METRICS_ACCESS = ("loopback", "operator", "open")


# A service listening on every interface is reached, by default, at the loopback one.
_REACHABLE_AS = {"0.0.0.0": "127.0.0.1", "::": "::1", "": "127.0.0.1"}  # noqa: S104


class ConfigError(Exception):
    """A setting has a value the service cannot use."""


def _int(env: dict[str, str], name: str, default: int, *, lo: int, hi: int) -> int:
    raw = env.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        raise ConfigError(f"{name} must be an integer, got {raw!r}") from None
    if not lo <= value <= hi:
        raise ConfigError(f"{name} must be between {lo} and {hi}, got {value}")
    return value


def _url(env: dict[str, str], name: str, *, schemes: tuple[str, ...] = ("http", "https")) -> str:
    """An absolute URL with one of `schemes` and a host (no query or fragment), or ""."""
    raw = (env.get(name) or "").strip()
    if not raw:
        return ""
    try:
        parts = urlsplit(raw)
        valid = parts.scheme in schemes and bool(parts.hostname)
        _ = parts.port  # raises ValueError for a port that is not a number
    except ValueError:
        valid = False
    if not valid or parts.query or parts.fragment:
        example = f"{schemes[-1]}://ledger.example.com"
        raise ConfigError(
            f"{name} must be an absolute {'/'.join(schemes)} URL such as {example}, got {raw!r}"
        )
    return raw.rstrip("/")


def _database_url(env: dict[str, str]) -> str | None:
    raw = (env.get("DATABASE_URL") or "").strip()
    if not raw:
        return None
    try:
        parts = urlsplit(raw)
        _ = parts.port
        valid = parts.scheme in ("postgres", "postgresql") and bool(parts.hostname or parts.query)
    except ValueError:
        valid = False
    if not valid:
        # The value may hold a password: it is not repeated.
        raise ConfigError(
            "DATABASE_URL must be a PostgreSQL URL such as "
            "postgresql://user:password@host:5432/dbname (the value set is not one)"
        )
    return raw


def _choice(env: dict[str, str], name: str, default: str, choices: tuple[str, ...]) -> str:
    raw = env.get(name) or default
    value = raw.upper() if choices is LOG_LEVELS else raw.lower()
    if value not in choices:
        raise ConfigError(f"{name} must be one of {', '.join(choices)}, got {raw!r}")
    return value


def _flag(env: dict[str, str], name: str, default: bool) -> bool:
    raw = (env.get(name) or "").lower()
    if raw == "":
        return default
    if raw in ("1", "true", "on", "yes"):
        return True
    if raw in ("0", "false", "off", "no"):
        return False
    raise ConfigError(f"{name} must be on or off, got {raw!r}")


def _address(env: dict[str, str], name: str) -> str | None:
    raw = env.get(name) or None
    if raw is not None and re.fullmatch(r"0x[0-9a-fA-F]{40}", raw) is None:
        raise ConfigError(f"{name} must be a 0x-prefixed 20-byte hex address")
    return raw


@dataclass(frozen=True, kw_only=True)
class Settings:
    database_url: str | None = None
    data_dir: Path = Path(DEFAULT_DATA_DIR)
    host: str = DEFAULT_HOST
    port: int = DEFAULT_PORT
    workers: int = 1
    public_url: str = ""
    pool_size_max: int = limits.POOL_SIZE_MAX
    pool_acquire_timeout_s: float = limits.POOL_ACQUIRE_TIMEOUT_S
    request_body_bytes_max: int = limits.REQUEST_BODY_BYTES_MAX
    request_header_bytes_max: int = limits.REQUEST_HEADER_BYTES_MAX
    request_headers_count_max: int = limits.REQUEST_HEADERS_COUNT_MAX
    expiry_sweep_interval_s: float = DEFAULT_EXPIRY_SWEEP_INTERVAL_S
    # Card top-ups (Stripe). Secrets are kept out of repr so they never reach a log.
    stripe_secret_key: str | None = field(default=None, repr=False)
    stripe_webhook_secret: str | None = field(default=None, repr=False)
    stripe_webhook_tolerance_s: int = DEFAULT_STRIPE_WEBHOOK_TOLERANCE_S
    stripe_api_base: str | None = None
    card_topup_min_micros: int = DEFAULT_CARD_TOPUP_MIN_MICROS
    card_topup_max_micros: int = DEFAULT_CARD_TOPUP_MAX_MICROS
    card_success_url: str = ""
    card_cancel_url: str = ""
    # USDC top-ups (an EVM chain). The watcher runs when rpc url, contract and treasury are set.
    usdc_rpc_url: str | None = None
    usdc_contract: str | None = None
    usdc_treasury: str | None = None
    usdc_chain_id: int = 1
    usdc_confirmations: int = DEFAULT_USDC_CONFIRMATIONS
    usdc_start_block: int | None = None
    usdc_block_range_max: int = DEFAULT_USDC_BLOCK_RANGE_MAX
    usdc_poll_interval_s: float = DEFAULT_USDC_POLL_INTERVAL_S
    # Visibility: logs, metrics, usage roll-up, dashboard sessions.
    log_format: str = "text"
    log_level: str = "INFO"
    access_log: bool = False
    metrics_access: str = "loopback"
    usage_rollup_interval_s: float = DEFAULT_USAGE_ROLLUP_INTERVAL_S
    dashboard_session_s: int = DEFAULT_DASHBOARD_SESSION_S
    extra: dict[str, str] = field(default_factory=dict)

    @property
    def base_url(self) -> str:
        """The service's public URL: every link it gives out (token `iss`, top-up
        URLs, problem types) starts with it. `LEDGER_PUBLIC_URL`, or where it listens
        (a wildcard address is reached at the loopback one)."""
        if self.public_url:
            return self.public_url
        host = _REACHABLE_AS.get(self.host, self.host)
        if ":" in host:
            host = f"[{host}]"
        return f"http://{host}:{self.port}"

    @property
    def usdc_configured(self) -> bool:
        return bool(self.usdc_rpc_url and self.usdc_contract and self.usdc_treasury)

    def __post_init__(self) -> None:
        if self.card_topup_min_micros > self.card_topup_max_micros:
            raise ConfigError("CARD_TOPUP_MIN_MICROS must not exceed CARD_TOPUP_MAX_MICROS")

    @classmethod
    def from_env(cls, environ: dict[str, str] | None = None) -> Settings:
        env = dict(os.environ if environ is None else environ)
        return cls(
            database_url=_database_url(env),
            data_dir=Path(env.get("LEDGER_DATA_DIR") or DEFAULT_DATA_DIR),
            host=env.get("LEDGER_HOST") or DEFAULT_HOST,
            port=_int(env, "LEDGER_PORT", DEFAULT_PORT, lo=1, hi=65535),
            workers=_int(env, "LEDGER_WORKERS", 1, lo=1, hi=64),
            public_url=_url(env, "LEDGER_PUBLIC_URL"),
            pool_size_max=_int(env, "LEDGER_POOL_SIZE_MAX", limits.POOL_SIZE_MAX, lo=2, hi=200),
            pool_acquire_timeout_s=_int(
                env,
                "LEDGER_POOL_ACQUIRE_TIMEOUT_MS",
                int(limits.POOL_ACQUIRE_TIMEOUT_S * 1000),
                lo=10,
                hi=600_000,
            )
            / 1000,
            request_body_bytes_max=_int(
                env,
                "LEDGER_REQUEST_BODY_BYTES_MAX",
                limits.REQUEST_BODY_BYTES_MAX,
                lo=1024,
                hi=10 * 1024 * 1024,
            ),
            stripe_secret_key=env.get("STRIPE_SECRET_KEY") or None,
            stripe_webhook_secret=env.get("STRIPE_WEBHOOK_SECRET") or None,
            stripe_webhook_tolerance_s=_int(
                env,
                "STRIPE_WEBHOOK_TOLERANCE_S",
                DEFAULT_STRIPE_WEBHOOK_TOLERANCE_S,
                lo=1,
                hi=86_400,
            ),
            stripe_api_base=_url(env, "STRIPE_API_BASE") or None,
            card_topup_min_micros=_int(
                env,
                "CARD_TOPUP_MIN_MICROS",
                DEFAULT_CARD_TOPUP_MIN_MICROS,
                lo=10_000,
                hi=limits.AMOUNT_MAX,
            ),
            card_topup_max_micros=_int(
                env,
                "CARD_TOPUP_MAX_MICROS",
                DEFAULT_CARD_TOPUP_MAX_MICROS,
                lo=10_000,
                hi=limits.AMOUNT_MAX,
            ),
            card_success_url=_url(env, "CARD_SUCCESS_URL"),
            card_cancel_url=_url(env, "CARD_CANCEL_URL"),
            usdc_rpc_url=_url(env, "USDC_RPC_URL") or None,
            usdc_contract=_address(env, "USDC_CONTRACT"),
            usdc_treasury=_address(env, "USDC_TREASURY"),
            usdc_chain_id=_int(env, "USDC_CHAIN_ID", 1, lo=1, hi=2**53),
            usdc_confirmations=_int(
                env, "USDC_CONFIRMATIONS", DEFAULT_USDC_CONFIRMATIONS, lo=1, hi=10_000
            ),
            usdc_start_block=(
                _int(env, "USDC_START_BLOCK", 0, lo=0, hi=2**62)
                if env.get("USDC_START_BLOCK")
                else None
            ),
            usdc_block_range_max=_int(
                env, "USDC_BLOCK_RANGE_MAX", DEFAULT_USDC_BLOCK_RANGE_MAX, lo=1, hi=100_000
            ),
            usdc_poll_interval_s=_int(
                env, "USDC_POLL_INTERVAL_S", DEFAULT_USDC_POLL_INTERVAL_S, lo=1, hi=3_600
            ),
            request_header_bytes_max=_int(
                env,
                "LEDGER_REQUEST_HEADER_BYTES_MAX",
                limits.REQUEST_HEADER_BYTES_MAX,
                lo=1024,
                hi=1024 * 1024,
            ),
            request_headers_count_max=_int(
                env,
                "LEDGER_REQUEST_HEADERS_COUNT_MAX",
                limits.REQUEST_HEADERS_COUNT_MAX,
                lo=10,
                hi=1000,
            ),
            log_format=_choice(env, "LEDGER_LOG_FORMAT", "text", LOG_FORMATS),
            log_level=_choice(env, "LEDGER_LOG_LEVEL", "INFO", LOG_LEVELS),
            access_log=_flag(env, "LEDGER_ACCESS_LOG", False),
            metrics_access=_choice(env, "LEDGER_METRICS_ACCESS", "loopback", METRICS_ACCESS),
            usage_rollup_interval_s=_int(
                env,
                "LEDGER_USAGE_ROLLUP_INTERVAL_MS",
                int(DEFAULT_USAGE_ROLLUP_INTERVAL_S * 1000),
                lo=50,
                hi=3_600_000,
            )
            / 1000,
            dashboard_session_s=_int(
                env, "LEDGER_DASHBOARD_SESSION_S", DEFAULT_DASHBOARD_SESSION_S, lo=60, hi=86_400
            ),
            extra={
                k: v
                for k, v in env.items()
                if k.startswith(("STRIPE_", "USDC_", "LEDGER_")) and "SECRET" not in k
            },
        )
