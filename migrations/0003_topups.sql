-- Top-ups: card payments through Stripe and USDC deposits on an EVM chain.
--
-- Money itself moves only through the journal (transfers from the card or USDC
-- clearing account to a wallet). These tables record what came from outside and
-- which transfer answered it; each outside fact has a UNIQUE key, and every
-- ledger transfer id is derived from that key, so a replay answers `exists`.

-- Every verified Stripe event, once. A replayed event id changes nothing.
CREATE TABLE stripe_events (
    event_id text PRIMARY KEY CONSTRAINT stripe_events_id_length CHECK (length(event_id) BETWEEN 1 AND 255),
    type text NOT NULL,
    outcome text NOT NULL,
    received_at timestamptz NOT NULL DEFAULT now()
);

-- A paid card payment, credited once (one row per payment intent).
CREATE TABLE card_payments (
    payment_id text PRIMARY KEY,           -- Stripe payment intent (or session, if none)
    session_id text NOT NULL CONSTRAINT card_payments_session UNIQUE,
    account_id uuid NOT NULL REFERENCES accounts (id),
    amount_micros bigint NOT NULL CONSTRAINT card_payments_amount_range
        CHECK (amount_micros BETWEEN 1 AND 1000000000000),
    transfer_id uuid NOT NULL CONSTRAINT card_payments_transfer UNIQUE REFERENCES transfers (id),
    -- What refunds and disputes claimed back so far (<= amount), and how it was settled.
    refunded_micros bigint NOT NULL DEFAULT 0,
    disputed_micros bigint NOT NULL DEFAULT 0,
    recovered_micros bigint NOT NULL DEFAULT 0,
    shortfall_micros bigint NOT NULL DEFAULT 0,
    created_at timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT card_payments_claims_nonneg CHECK (
        refunded_micros >= 0 AND disputed_micros >= 0 AND recovered_micros >= 0 AND shortfall_micros >= 0),
    CONSTRAINT card_payments_settled_within_amount CHECK (recovered_micros + shortfall_micros <= amount_micros)
);
CREATE INDEX card_payments_account ON card_payments (account_id, created_at);

-- A dispute counts once, whatever events mention it.
CREATE TABLE card_disputes (
    dispute_id text PRIMARY KEY,
    payment_id text NOT NULL REFERENCES card_payments (payment_id),
    amount_micros bigint NOT NULL CONSTRAINT card_disputes_amount_nonneg CHECK (amount_micros >= 0),
    created_at timestamptz NOT NULL DEFAULT now()
);

-- Each claw-back after a refund or dispute: what was debited back from the wallet,
-- and what could not be (the wallet had already spent it): the shortfall, which an
-- operator sees in the shortfall listing.
CREATE TABLE card_reversals (
    id uuid PRIMARY KEY,
    payment_id text NOT NULL REFERENCES card_payments (payment_id),
    account_id uuid NOT NULL REFERENCES accounts (id),
    event_id text NOT NULL,
    reason text NOT NULL CONSTRAINT card_reversals_reason CHECK (reason IN ('refund', 'dispute')),
    recovered_micros bigint NOT NULL CONSTRAINT card_reversals_recovered_nonneg CHECK (recovered_micros >= 0),
    shortfall_micros bigint NOT NULL CONSTRAINT card_reversals_shortfall_nonneg CHECK (shortfall_micros >= 0),
    transfer_id uuid REFERENCES transfers (id),
    created_at timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT card_reversals_something CHECK (recovered_micros + shortfall_micros > 0),
    CONSTRAINT card_reversals_transfer_iff_recovered CHECK ((transfer_id IS NULL) = (recovered_micros = 0))
);
CREATE INDEX card_reversals_shortfall ON card_reversals (created_at) WHERE shortfall_micros > 0;

-- Sign-In with Ethereum challenges: single-use, expiring.
CREATE TABLE wallet_challenges (
    nonce text PRIMARY KEY CONSTRAINT wallet_challenges_nonce_format CHECK (nonce ~ '^[A-Za-z0-9]{8,64}$'),
    account_id uuid NOT NULL REFERENCES accounts (id),
    address text NOT NULL CONSTRAINT wallet_challenges_address CHECK (address ~ '^0x[0-9a-f]{40}$'),
    message text NOT NULL,
    expires_at timestamptz NOT NULL,
    used_at timestamptz,
    created_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX wallet_challenges_expiry ON wallet_challenges (expires_at);

-- One address links to one account (addresses stored lower-case).
CREATE TABLE linked_wallets (
    address text PRIMARY KEY CONSTRAINT linked_wallets_address CHECK (address ~ '^0x[0-9a-f]{40}$'),
    account_id uuid NOT NULL REFERENCES accounts (id),
    linked_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX linked_wallets_account ON linked_wallets (account_id);

-- Confirmed USDC transfers to the treasury, one row per log. Credited at once when
-- the sender is linked; otherwise unattributed until an operator assigns it.
CREATE TABLE usdc_deposits (
    id uuid PRIMARY KEY,                   -- also the id of the credit transfer
    chain_id bigint NOT NULL,
    tx_hash text NOT NULL CONSTRAINT usdc_deposits_tx_hash CHECK (tx_hash ~ '^0x[0-9a-f]{64}$'),
    log_index integer NOT NULL CONSTRAINT usdc_deposits_log_index CHECK (log_index >= 0),
    block_number bigint NOT NULL,
    block_hash text NOT NULL,
    from_address text NOT NULL,
    amount_micros bigint NOT NULL CONSTRAINT usdc_deposits_amount_positive CHECK (amount_micros >= 1),
    account_id uuid REFERENCES accounts (id),
    status text NOT NULL CONSTRAINT usdc_deposits_status CHECK (status IN ('credited', 'unattributed')),
    created_at timestamptz NOT NULL DEFAULT now(),
    credited_at timestamptz,
    CONSTRAINT usdc_deposits_log UNIQUE (chain_id, tx_hash, log_index),
    CONSTRAINT usdc_deposits_credited_has_account CHECK ((status = 'credited') = (account_id IS NOT NULL))
);
CREATE INDEX usdc_deposits_unattributed ON usdc_deposits (created_at) WHERE status = 'unattributed';

-- Where the watcher resumes: the next block to scan, and the hash of the last one
-- scanned (a changed hash there is a reorg deeper than the confirmation depth).
CREATE TABLE usdc_cursors (
    chain_id bigint NOT NULL,
    contract text NOT NULL,
    treasury text NOT NULL,
    next_block bigint NOT NULL CONSTRAINT usdc_cursors_next_block CHECK (next_block >= 0),
    last_block_hash text,
    halted_reason text,
    updated_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (chain_id, contract, treasury)
);

-- Reorgs deeper than the confirmation depth, as the watcher found them.
CREATE TABLE usdc_reorg_alerts (
    id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    chain_id bigint NOT NULL,
    block_number bigint NOT NULL,
    expected_hash text NOT NULL,
    found_hash text,
    affected_deposits jsonb NOT NULL DEFAULT '[]'::jsonb,
    detected_at timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT usdc_reorg_alerts_once UNIQUE (chain_id, block_number, expected_hash)
);
