"""Settings, read once from the environment. Every knob is listed in the README."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from ledger import limits

__all__ = ["ConfigError", "Settings"]

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8000
DEFAULT_DATA_DIR = ".ledger"
DEFAULT_DATABASE_NAME = "ledger"
DEFAULT_EXPIRY_SWEEP_INTERVAL_S = 1.0


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
    extra: dict[str, str] = field(default_factory=dict)

    @property
    def base_url(self) -> str:
        return self.public_url or f"http://{self.host}:{self.port}"

    @classmethod
    def from_env(cls, environ: dict[str, str] | None = None) -> Settings:
        env = dict(os.environ if environ is None else environ)
        return cls(
            database_url=env.get("DATABASE_URL") or None,
            data_dir=Path(env.get("LEDGER_DATA_DIR") or DEFAULT_DATA_DIR),
            host=env.get("LEDGER_HOST") or DEFAULT_HOST,
            port=_int(env, "LEDGER_PORT", DEFAULT_PORT, lo=1, hi=65535),
            workers=_int(env, "LEDGER_WORKERS", 1, lo=1, hi=64),
            public_url=(env.get("LEDGER_PUBLIC_URL") or "").rstrip("/"),
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
            extra={k: v for k, v in env.items() if k.startswith(("STRIPE_", "USDC_", "LEDGER_"))},
        )
