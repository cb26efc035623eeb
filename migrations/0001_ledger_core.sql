-- The double-entry core: accounts, an immutable journal of transfers, API keys.
--
-- Balances live on the account row as four monotonically growing counters
-- (TigerBeetle style); the journal (transfers) is the source of truth they must
-- match, which `ledger audit` checks. Money is integer micro-USD (bigint).

CREATE TABLE accounts (
    id uuid PRIMARY KEY,
    kind text NOT NULL CONSTRAINT accounts_kind CHECK (
        kind IN ('customer_wallet', 'merchant_revenue',
                 'card_clearing', 'usdc_clearing', 'adjustment_clearing')),
    name text NOT NULL CONSTRAINT accounts_name_length CHECK (length(name) BETWEEN 1 AND 200),
    -- A wallet may never spend more than it holds; clearing accounts may go negative.
    debits_must_not_exceed_credits boolean NOT NULL,
    debits_pending bigint NOT NULL DEFAULT 0 CONSTRAINT accounts_debits_pending_nonneg CHECK (debits_pending >= 0),
    debits_posted bigint NOT NULL DEFAULT 0 CONSTRAINT accounts_debits_posted_nonneg CHECK (debits_posted >= 0),
    credits_pending bigint NOT NULL DEFAULT 0 CONSTRAINT accounts_credits_pending_nonneg CHECK (credits_pending >= 0),
    credits_posted bigint NOT NULL DEFAULT 0 CONSTRAINT accounts_credits_posted_nonneg CHECK (credits_posted >= 0),
    created_at timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT accounts_debits_exceed_credits CHECK (
        NOT debits_must_not_exceed_credits
        OR debits_posted + debits_pending <= credits_posted)
);

-- System clearing accounts: the other side of money entering or leaving the ledger.
INSERT INTO accounts (id, kind, name, debits_must_not_exceed_credits) VALUES
    ('00000000-0000-0000-0000-00000000c001', 'card_clearing', 'card clearing (Stripe)', false),
    ('00000000-0000-0000-0000-00000000c002', 'usdc_clearing', 'USDC clearing (on-chain)', false),
    ('00000000-0000-0000-0000-00000000c003', 'adjustment_clearing', 'operator adjustments', false);

-- The journal. A row is never updated or deleted (see the trigger below).
--   single        moves `amount` at once
--   pending       reserves `amount` (a hold) until posted, voided, or expired
--   post_pending  posts `amount` (<= held) of pending transfer `pending_id`; the rest is released
--   void_pending  releases pending transfer `pending_id` (amount = the held amount)
CREATE TABLE transfers (
    id uuid PRIMARY KEY,
    seq bigint GENERATED ALWAYS AS IDENTITY CONSTRAINT transfers_seq UNIQUE,
    debit_account_id uuid NOT NULL REFERENCES accounts (id),
    credit_account_id uuid NOT NULL REFERENCES accounts (id),
    amount bigint NOT NULL CONSTRAINT transfers_amount_range CHECK (amount BETWEEN 1 AND 1000000000000),
    code text NOT NULL CONSTRAINT transfers_code_format CHECK (code ~ '^[a-z][a-z0-9_]{0,31}$'),
    kind text NOT NULL CONSTRAINT transfers_kind CHECK (
        kind IN ('single', 'pending', 'post_pending', 'void_pending')),
    pending_id uuid REFERENCES transfers (id),
    expires_at timestamptz,
    metadata jsonb NOT NULL DEFAULT '{}'::jsonb,
    created_at timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT transfers_distinct_accounts CHECK (debit_account_id <> credit_account_id),
    CONSTRAINT transfers_pending_id_iff_resolution CHECK (
        (kind IN ('post_pending', 'void_pending')) = (pending_id IS NOT NULL)),
    CONSTRAINT transfers_expiry_only_pending CHECK (expires_at IS NULL OR kind = 'pending')
);

-- A hold is resolved (posted or voided) at most once.
CREATE UNIQUE INDEX transfers_pending_resolved_once ON transfers (pending_id) WHERE pending_id IS NOT NULL;
CREATE INDEX transfers_debit_account ON transfers (debit_account_id, seq);
CREATE INDEX transfers_credit_account ON transfers (credit_account_id, seq);
CREATE INDEX transfers_pending_expiry ON transfers (expires_at) WHERE kind = 'pending';

CREATE FUNCTION transfers_immutable() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'transfers are immutable' USING ERRCODE = 'restrict_violation';
END $$;

CREATE TRIGGER transfers_immutable BEFORE UPDATE OR DELETE ON transfers
    FOR EACH ROW EXECUTE FUNCTION transfers_immutable();
CREATE TRIGGER transfers_no_truncate BEFORE TRUNCATE ON transfers
    FOR EACH STATEMENT EXECUTE FUNCTION transfers_immutable();

-- Create a single-phase or pending transfer. Returns the outcome, an ordered set of
-- named results checked as early returns:
--   created | exists | exists_with_different_fields | accounts_must_be_different
--   | debit_account_not_found | credit_account_not_found | exceeds_credits
-- Nothing is written unless the outcome is `created`.
CREATE FUNCTION ledger_create_transfer(
    p_id uuid, p_debit uuid, p_credit uuid, p_amount bigint, p_code text,
    p_pending boolean, p_timeout_s integer, p_metadata jsonb
) RETURNS text LANGUAGE plpgsql AS $$
DECLARE
    v_kind text := CASE WHEN p_pending THEN 'pending' ELSE 'single' END;
    v_existing transfers%ROWTYPE;
    v_debit accounts%ROWTYPE;
    v_inserted uuid;
BEGIN
    IF p_debit = p_credit THEN
        RETURN 'accounts_must_be_different';
    END IF;
    -- Lock both accounts in id order so concurrent transfers never deadlock.
    PERFORM 1 FROM accounts WHERE id IN (p_debit, p_credit) ORDER BY id FOR UPDATE;

    SELECT * INTO v_existing FROM transfers WHERE id = p_id;
    IF FOUND THEN
        IF v_existing.debit_account_id <> p_debit OR v_existing.credit_account_id <> p_credit
           OR v_existing.amount <> p_amount OR v_existing.code <> p_code
           OR v_existing.kind <> v_kind THEN
            RETURN 'exists_with_different_fields';
        END IF;
        RETURN 'exists';
    END IF;

    SELECT * INTO v_debit FROM accounts WHERE id = p_debit;
    IF NOT FOUND THEN
        RETURN 'debit_account_not_found';
    END IF;
    PERFORM 1 FROM accounts WHERE id = p_credit;
    IF NOT FOUND THEN
        RETURN 'credit_account_not_found';
    END IF;
    IF v_debit.debits_must_not_exceed_credits
       AND v_debit.debits_posted + v_debit.debits_pending + p_amount > v_debit.credits_posted THEN
        RETURN 'exceeds_credits';
    END IF;

    INSERT INTO transfers (id, debit_account_id, credit_account_id, amount, code, kind,
                           expires_at, metadata)
    VALUES (p_id, p_debit, p_credit, p_amount, p_code, v_kind,
            CASE WHEN p_pending AND p_timeout_s IS NOT NULL
                 THEN now() + make_interval(secs => p_timeout_s) END,
            coalesce(p_metadata, '{}'::jsonb))
    ON CONFLICT (id) DO NOTHING
    RETURNING id INTO v_inserted;
    IF v_inserted IS NULL THEN
        RETURN 'exists';  -- a concurrent request with the same id won the race
    END IF;

    IF p_pending THEN
        UPDATE accounts SET debits_pending = debits_pending + p_amount WHERE id = p_debit;
        UPDATE accounts SET credits_pending = credits_pending + p_amount WHERE id = p_credit;
    ELSE
        UPDATE accounts SET debits_posted = debits_posted + p_amount WHERE id = p_debit;
        UPDATE accounts SET credits_posted = credits_posted + p_amount WHERE id = p_credit;
    END IF;
    RETURN 'created';
END $$;

-- Post (p_post = true, amount <= held; NULL amount = all of it) or void a pending
-- transfer. Outcomes, in precedence order:
--   created | exists | exists_with_different_fields | pending_transfer_not_found
--   | pending_transfer_not_pending | pending_transfer_already_posted
--   | pending_transfer_already_voided | pending_transfer_expired
--   | exceeds_pending_transfer_amount
-- `p_allow_expired` is for the expiry sweeper, which voids expired holds.
CREATE FUNCTION ledger_resolve_pending(
    p_id uuid, p_pending_id uuid, p_post boolean, p_amount bigint, p_code text,
    p_metadata jsonb, p_allow_expired boolean
) RETURNS text LANGUAGE plpgsql AS $$
DECLARE
    v_kind text := CASE WHEN p_post THEN 'post_pending' ELSE 'void_pending' END;
    v_pending transfers%ROWTYPE;
    v_existing transfers%ROWTYPE;
    v_amount bigint;
    v_inserted uuid;
BEGIN
    SELECT * INTO v_pending FROM transfers WHERE id = p_pending_id;
    IF NOT FOUND THEN
        RETURN 'pending_transfer_not_found';
    END IF;
    IF v_pending.kind <> 'pending' THEN
        RETURN 'pending_transfer_not_pending';
    END IF;
    PERFORM 1 FROM accounts
        WHERE id IN (v_pending.debit_account_id, v_pending.credit_account_id)
        ORDER BY id FOR UPDATE;

    v_amount := CASE WHEN p_post THEN coalesce(p_amount, v_pending.amount) ELSE v_pending.amount END;
    SELECT * INTO v_existing FROM transfers WHERE id = p_id;
    IF FOUND THEN
        IF v_existing.pending_id IS DISTINCT FROM p_pending_id OR v_existing.kind <> v_kind
           OR v_existing.amount <> v_amount OR v_existing.code <> p_code THEN
            RETURN 'exists_with_different_fields';
        END IF;
        RETURN 'exists';
    END IF;

    SELECT * INTO v_existing FROM transfers WHERE pending_id = p_pending_id;
    IF FOUND THEN
        RETURN CASE WHEN v_existing.kind = 'post_pending'
                    THEN 'pending_transfer_already_posted'
                    ELSE 'pending_transfer_already_voided' END;
    END IF;
    IF NOT p_allow_expired AND v_pending.expires_at IS NOT NULL AND v_pending.expires_at <= now() THEN
        RETURN 'pending_transfer_expired';
    END IF;
    IF v_amount > v_pending.amount THEN
        RETURN 'exceeds_pending_transfer_amount';
    END IF;

    INSERT INTO transfers (id, debit_account_id, credit_account_id, amount, code, kind,
                           pending_id, metadata)
    VALUES (p_id, v_pending.debit_account_id, v_pending.credit_account_id, v_amount, p_code,
            v_kind, p_pending_id, coalesce(p_metadata, '{}'::jsonb))
    ON CONFLICT DO NOTHING
    RETURNING id INTO v_inserted;
    IF v_inserted IS NULL THEN
        RETURN 'exists';
    END IF;

    UPDATE accounts
       SET debits_pending = debits_pending - v_pending.amount,
           debits_posted = debits_posted + CASE WHEN p_post THEN v_amount ELSE 0 END
     WHERE id = v_pending.debit_account_id;
    UPDATE accounts
       SET credits_pending = credits_pending - v_pending.amount,
           credits_posted = credits_posted + CASE WHEN p_post THEN v_amount ELSE 0 END
     WHERE id = v_pending.credit_account_id;
    RETURN 'created';
END $$;

-- API keys are stored only as SHA-256 hashes of the full key (keys are 256-bit
-- random, so a fast hash is enough). `subject_id` is the account for an owner key
-- and the merchant for a merchant key; operator keys have none.
CREATE TABLE api_keys (
    id uuid PRIMARY KEY,
    role text NOT NULL CONSTRAINT api_keys_role CHECK (role IN ('operator', 'owner', 'merchant')),
    subject_id uuid,
    key_hash bytea NOT NULL CONSTRAINT api_keys_key_hash UNIQUE,
    key_prefix text NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now(),
    revoked_at timestamptz,
    CONSTRAINT api_keys_subject CHECK ((role = 'operator') = (subject_id IS NULL))
);
CREATE INDEX api_keys_subject ON api_keys (subject_id);
