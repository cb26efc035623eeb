-- Usage analytics: spend rolled up from the charges and refunds rows by one writer.
--
-- The hot path writes nothing here. A roller (one at a time: it holds the state row's
-- lock) reads the journal (`transfers`) in `seq` order from a cursor, joins each charge,
-- capture and refund to its row, and adds it to hourly and daily buckets (UTC) keyed by
-- account, merchant, credit token and tool. `seq` values are handed out before their
-- transactions commit, so a gap may be a transfer still in flight: the roller only
-- passes a `seq` once every transaction that could hold a smaller one has ended (see
-- ledger/usage/rollup.py). `complete_through` is the time before which every committed
-- movement is counted: what usage answers say they are complete through.

CREATE TABLE usage_rollup_state (
    id boolean PRIMARY KEY DEFAULT true CONSTRAINT usage_rollup_state_one_row CHECK (id),
    cursor_seq bigint NOT NULL DEFAULT 0,   -- every transfer with seq <= cursor_seq is counted
    horizon_seq bigint,                     -- seqs handed out before horizon_at ...
    horizon_xmax xid8,                      -- ... by transactions older than this xid
    horizon_at timestamptz,
    complete_through timestamptz,
    updated_at timestamptz NOT NULL DEFAULT now()
);
INSERT INTO usage_rollup_state DEFAULT VALUES;

CREATE TABLE usage_hourly (
    account_id uuid NOT NULL,
    bucket timestamptz NOT NULL,            -- start of the UTC hour
    merchant_id uuid NOT NULL,
    token_jti uuid NOT NULL,
    tool text NOT NULL,
    charges bigint NOT NULL DEFAULT 0,
    charged_micros bigint NOT NULL DEFAULT 0,
    refunds bigint NOT NULL DEFAULT 0,
    refunded_micros bigint NOT NULL DEFAULT 0,
    PRIMARY KEY (account_id, bucket, merchant_id, token_jti, tool)
);
CREATE INDEX usage_hourly_merchant ON usage_hourly (merchant_id, bucket);

CREATE TABLE usage_daily (
    account_id uuid NOT NULL,
    bucket timestamptz NOT NULL,            -- start of the UTC day
    merchant_id uuid NOT NULL,
    token_jti uuid NOT NULL,
    tool text NOT NULL,
    charges bigint NOT NULL DEFAULT 0,
    charged_micros bigint NOT NULL DEFAULT 0,
    refunds bigint NOT NULL DEFAULT 0,
    refunded_micros bigint NOT NULL DEFAULT 0,
    PRIMARY KEY (account_id, bucket, merchant_id, token_jti, tool)
);
CREATE INDEX usage_daily_merchant ON usage_daily (merchant_id, bucket);
CREATE INDEX usage_daily_bucket ON usage_daily (bucket);

-- Listings read the rows themselves (always fresh), newest first, per account or merchant.
CREATE INDEX charges_account ON charges (account_id, created_at, id);
CREATE INDEX holds_account ON holds (account_id, created_at, id);
CREATE INDEX holds_merchant ON holds (merchant_id, created_at, id);
CREATE INDEX refunds_merchant ON refunds (merchant_id, created_at, id);
CREATE INDEX refunds_created ON refunds (created_at, id);
CREATE INDEX holds_created ON holds (created_at, id);
-- Operator lists: accounts and merchants by name.
CREATE INDEX accounts_name ON accounts (lower(name), id);
CREATE INDEX merchants_name ON merchants (lower(name), id);
