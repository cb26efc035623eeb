"""Every limit in one place. Qualifiers last: `amount_max`, `page_size_max`."""

from __future__ import annotations

import re
from typing import Annotated

from msgspec import Meta

# Money is integer micro-USD: 1 USD = 1_000_000.
MICROS_PER_USD = 1_000_000
# One transfer moves at most 1e12 micro-USD (1,000,000 USD); sums of many stay far
# below 2**63 so every bigint column in PostgreSQL is safe.
AMOUNT_MAX = 1_000_000_000_000

NAME_LENGTH_MAX = 200
METADATA_KEYS_MAX = 20
METADATA_KEY_LENGTH_MAX = 40
METADATA_VALUE_LENGTH_MAX = 500
PAGE_SIZE_DEFAULT = 50
PAGE_SIZE_MAX = 500
# Deepest page of an aggregate answer (its cursor is an offset).
USAGE_OFFSET_MAX = 100_000
REQUEST_BODY_BYTES_MAX = 64 * 1024
# Request line (path and query) plus every header name and value, in bytes.
REQUEST_HEADER_BYTES_MAX = 16 * 1024
REQUEST_HEADERS_COUNT_MAX = 100
# Arrays and objects open at once in a JSON body, token footer or event.
JSON_DEPTH_MAX = 32

# Database pool.
POOL_SIZE_MIN = 2
POOL_SIZE_MAX = 20
POOL_QUERIES_MAX = 50_000
STATEMENT_TIMEOUT_MS = 10_000
DB_CONNECT_TIMEOUT_S = 5.0
DB_COMMAND_TIMEOUT_S = 15.0
# Waiting for a pooled connection: past this a request is 503, never a hang.
POOL_ACQUIRE_TIMEOUT_S = 5.0
# Idle pooled connections are closed after this (asyncpg's default).
POOL_CONNECTION_IDLE_S_MAX = 300.0
# What a 503 asks clients to wait before retrying (Retry-After).
RETRY_AFTER_S = 1

Amount = Annotated[int, Meta(ge=1, le=AMOUNT_MAX, description="Amount in micro-USD.")]
PageSize = Annotated[int, Meta(ge=1, le=PAGE_SIZE_MAX)]
# Any Unicode text but NUL, which PostgreSQL cannot store: refused at the boundary,
# and said so in the OpenAPI document.
TEXT_PATTERN = "^[^\\x00]*$"
Name = Annotated[str, Meta(min_length=1, max_length=NAME_LENGTH_MAX, pattern=TEXT_PATTERN)]

# Idempotency keys (the `Idempotency-Key` header and the `idempotency_key` body
# fields): Stripe's maximum length, characters safe in a header and a log line.
IDEMPOTENCY_KEY_LENGTH_MAX = 255
IDEMPOTENCY_KEY_PATTERN = "^[A-Za-z0-9._:\\-]+$"
IDEMPOTENCY_KEY_RE = re.compile(IDEMPOTENCY_KEY_PATTERN)
# How long a remembered response answers a retry (at least 24 hours).
IDEMPOTENCY_KEY_RETENTION_S = 24 * 3600
IdempotencyKey = Annotated[
    str,
    Meta(
        min_length=1,
        max_length=IDEMPOTENCY_KEY_LENGTH_MAX,
        pattern=IDEMPOTENCY_KEY_PATTERN,
        description="Client-chosen; the same key with the same request returns the original result.",
    ),
]
# A hold not captured or voided by then is released (`expires_in_s`).
HOLD_EXPIRY_DEFAULT_S = 300
HOLD_EXPIRY_MAX_S = 24 * 3600
