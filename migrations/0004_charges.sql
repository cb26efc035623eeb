-- Merchants, charges, holds and refunds: verify-and-debit.
--
-- The journal stays in `transfers`; these tables add what the charge path needs:
-- idempotency per (merchant, key), the token each movement was charged against, and
-- the receipt facts, so that a retry returns the original receipt.
--
-- Lock order, everywhere: credit_tokens rows (by jti), then accounts rows (by id).
-- ledger_create_transfer locks only accounts (by id), so the order is global and
-- concurrent batches cannot deadlock.

CREATE TABLE merchants (
    id uuid PRIMARY KEY,
    name text NOT NULL CONSTRAINT merchants_name_length CHECK (length(name) BETWEEN 1 AND 200),
    revenue_account_id uuid NOT NULL CONSTRAINT merchants_revenue_account UNIQUE REFERENCES accounts (id),
    created_at timestamptz NOT NULL DEFAULT now()
);

-- A posted movement from a wallet to a merchant: a direct charge or a hold's capture.
CREATE TABLE charges (
    id uuid PRIMARY KEY,
    merchant_id uuid NOT NULL REFERENCES merchants (id),
    idempotency_key text NOT NULL,
    request_hash bytea NOT NULL,
    token_jti uuid NOT NULL REFERENCES credit_tokens (jti),
    account_id uuid NOT NULL REFERENCES accounts (id),
    tool text NOT NULL,
    amount_micros bigint NOT NULL CONSTRAINT charges_amount_range CHECK (amount_micros BETWEEN 1 AND 1000000000000),
    refunded_micros bigint NOT NULL DEFAULT 0,
    transfer_id uuid NOT NULL REFERENCES transfers (id),
    hold_id uuid,
    receipt_id uuid NOT NULL CONSTRAINT charges_receipt_id UNIQUE,
    receipt_kid text NOT NULL,
    token_remaining_micros bigint NOT NULL,
    account_balance_micros bigint NOT NULL,
    metadata jsonb NOT NULL DEFAULT '{}'::jsonb,
    created_at timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT charges_idempotency_key UNIQUE (merchant_id, idempotency_key),
    CONSTRAINT charges_refunds_within_amount CHECK (refunded_micros BETWEEN 0 AND amount_micros)
);
CREATE INDEX charges_merchant ON charges (merchant_id, created_at);
CREATE INDEX charges_token ON charges (token_jti);
CREATE INDEX charges_created ON charges (created_at);

-- An authorization: a pending transfer of up to `amount_micros` plus the same amount
-- held on the credit token (and its ancestors) until captured, voided or expired.
CREATE TABLE holds (
    id uuid PRIMARY KEY,
    merchant_id uuid NOT NULL REFERENCES merchants (id),
    idempotency_key text NOT NULL,
    request_hash bytea NOT NULL,
    token_jti uuid NOT NULL REFERENCES credit_tokens (jti),
    account_id uuid NOT NULL REFERENCES accounts (id),
    tool text NOT NULL,
    amount_micros bigint NOT NULL CONSTRAINT holds_amount_range CHECK (amount_micros BETWEEN 1 AND 1000000000000),
    transfer_id uuid NOT NULL REFERENCES transfers (id),
    status text NOT NULL CONSTRAINT holds_status CHECK (status IN ('pending', 'captured', 'voided', 'expired')),
    captured_micros bigint,
    charge_id uuid REFERENCES charges (id),
    resolution_transfer_id uuid REFERENCES transfers (id),
    expires_at timestamptz NOT NULL,
    metadata jsonb NOT NULL DEFAULT '{}'::jsonb,
    created_at timestamptz NOT NULL DEFAULT now(),
    resolved_at timestamptz,
    CONSTRAINT holds_idempotency_key UNIQUE (merchant_id, idempotency_key),
    CONSTRAINT holds_captured_within_amount CHECK (captured_micros IS NULL OR captured_micros BETWEEN 1 AND amount_micros),
    CONSTRAINT holds_resolution CHECK ((status = 'pending') = (resolution_transfer_id IS NULL)),
    CONSTRAINT holds_capture_has_charge CHECK ((status = 'captured') = (charge_id IS NOT NULL))
);
CREATE INDEX holds_pending_expiry ON holds (expires_at) WHERE status = 'pending';
ALTER TABLE charges ADD CONSTRAINT charges_hold FOREIGN KEY (hold_id) REFERENCES holds (id);
CREATE UNIQUE INDEX charges_one_capture_per_hold ON charges (hold_id) WHERE hold_id IS NOT NULL;

CREATE TABLE refunds (
    id uuid PRIMARY KEY,
    charge_id uuid NOT NULL REFERENCES charges (id),
    merchant_id uuid NOT NULL REFERENCES merchants (id),
    idempotency_key text NOT NULL,
    request_hash bytea NOT NULL,
    amount_micros bigint NOT NULL CONSTRAINT refunds_amount_range CHECK (amount_micros BETWEEN 1 AND 1000000000000),
    transfer_id uuid NOT NULL REFERENCES transfers (id),
    receipt_id uuid NOT NULL CONSTRAINT refunds_receipt_id UNIQUE,
    receipt_kid text NOT NULL,
    token_remaining_micros bigint NOT NULL,
    account_balance_micros bigint NOT NULL,
    reason text,
    created_at timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT refunds_idempotency_key UNIQUE (merchant_id, idempotency_key)
);
CREATE INDEX refunds_charge ON refunds (charge_id);

-- The chain of a credit token: itself first, then each ancestor up to the root.
CREATE FUNCTION credit_token_chain(p_jti uuid) RETURNS uuid[] LANGUAGE plpgsql STABLE AS $$
DECLARE
    v_chain uuid[] := ARRAY[p_jti];
    v_parent uuid;
BEGIN
    SELECT parent_jti INTO v_parent FROM credit_tokens WHERE jti = p_jti;
    WHILE v_parent IS NOT NULL LOOP
        v_chain := v_chain || v_parent;
        SELECT parent_jti INTO v_parent FROM credit_tokens WHERE jti = v_parent;
    END LOOP;
    RETURN v_chain;
END $$;

-- One charge or hold request of a batch.
CREATE TYPE charge_request AS (
    id uuid,                -- the charge/hold id; also its transfer's id
    kind text,              -- 'charge' | 'hold'
    merchant_id uuid,
    revenue_account_id uuid,
    idempotency_key text,
    request_hash bytea,
    token_jti uuid,
    tool text,
    amount bigint,
    receipt_id uuid,
    receipt_kid text,
    hold_timeout_s integer,
    metadata jsonb
);

-- One result per request, in request order. `outcome` is one of:
--   created | exists | idempotency_conflict | token_unknown | token_revoked
--   | token_expired | wrong_account | max_per_call | token_cap | ancestor_cap
--   | account_balance
-- For created/exists the receipt facts are filled in; for refusals `available`.
CREATE TYPE charge_result AS (
    idx integer,
    outcome text,
    id uuid,
    kind text,
    token_jti uuid,
    account_id uuid,
    tool text,
    amount bigint,
    receipt_id uuid,
    receipt_kid text,
    token_remaining bigint,
    account_balance bigint,
    expires_at timestamptz,
    created_at timestamptz,
    available bigint
);

-- Verify-and-debit for a batch of requests in ONE round trip and one transaction.
-- Requests are applied in order; each either applies in full or writes nothing.
-- Batching is what lets many agents share one wallet and one credit token: the hot
-- rows are locked once and the commit (WAL flush) is paid once for the whole batch.
CREATE FUNCTION ledger_charge_batch(p_requests charge_request[])
RETURNS SETOF charge_result LANGUAGE plpgsql AS $$
DECLARE
    r charge_request;
    res charge_result;
    i integer := 0;
    v_chain uuid[];
    v_token credit_tokens%ROWTYPE;
    v_wallet accounts%ROWTYPE;
    v_ancestor_available bigint;
    v_token_available bigint;
    v_wallet_available bigint;
    v_now timestamptz := now();
    v_row record;
    v_all_tokens uuid[] := '{}';
    v_all_accounts uuid[] := '{}';
BEGIN
    -- Take every lock the batch needs up front, in the global order.
    FOREACH r IN ARRAY p_requests LOOP
        v_all_tokens := v_all_tokens || credit_token_chain(r.token_jti);
        v_all_accounts := v_all_accounts || r.revenue_account_id;
    END LOOP;
    SELECT coalesce(array_agg(DISTINCT account_id), '{}') INTO v_chain
      FROM credit_tokens WHERE jti = ANY (v_all_tokens);
    v_all_accounts := v_all_accounts || v_chain;
    PERFORM 1 FROM credit_tokens WHERE jti = ANY (v_all_tokens) ORDER BY jti FOR UPDATE;
    PERFORM 1 FROM accounts WHERE id = ANY (v_all_accounts) ORDER BY id FOR UPDATE;

    FOREACH r IN ARRAY p_requests LOOP
        i := i + 1;
        res := ROW(i, NULL, r.id, r.kind, r.token_jti, NULL, r.tool, r.amount, r.receipt_id,
                   r.receipt_kid, NULL, NULL, NULL, NULL, NULL)::charge_result;

        -- 1. Idempotency: a key answers with what it did the first time.
        IF r.kind = 'charge' THEN
            SELECT id, request_hash, token_jti, account_id, tool, amount_micros AS amount,
                   receipt_id, receipt_kid, token_remaining_micros, account_balance_micros,
                   NULL::timestamptz AS expires_at, created_at
              INTO v_row FROM charges
             WHERE merchant_id = r.merchant_id AND idempotency_key = r.idempotency_key;
        ELSE
            SELECT id, request_hash, token_jti, account_id, tool, amount_micros AS amount,
                   NULL::uuid AS receipt_id, NULL::text AS receipt_kid,
                   NULL::bigint AS token_remaining_micros, NULL::bigint AS account_balance_micros,
                   expires_at, created_at
              INTO v_row FROM holds
             WHERE merchant_id = r.merchant_id AND idempotency_key = r.idempotency_key;
        END IF;
        IF FOUND THEN
            IF v_row.request_hash <> r.request_hash THEN
                res.outcome := 'idempotency_conflict';
            ELSE
                res.outcome := 'exists';
                res.id := v_row.id; res.token_jti := v_row.token_jti;
                res.account_id := v_row.account_id; res.tool := v_row.tool;
                res.amount := v_row.amount; res.receipt_id := v_row.receipt_id;
                res.receipt_kid := v_row.receipt_kid;
                res.token_remaining := v_row.token_remaining_micros;
                res.account_balance := v_row.account_balance_micros;
                res.expires_at := v_row.expires_at; res.created_at := v_row.created_at;
            END IF;
            RETURN NEXT res;
            CONTINUE;
        END IF;

        -- 2. The credit token, as the database knows it (revocation, window, budget).
        SELECT * INTO v_token FROM credit_tokens WHERE jti = r.token_jti;
        IF NOT FOUND THEN
            res.outcome := 'token_unknown';
            RETURN NEXT res;
            CONTINUE;
        END IF;
        res.account_id := v_token.account_id;
        v_chain := credit_token_chain(r.token_jti);
        IF EXISTS (SELECT 1 FROM credit_tokens WHERE jti = ANY (v_chain) AND revoked_at IS NOT NULL) THEN
            res.outcome := 'token_revoked';
        ELSIF EXISTS (SELECT 1 FROM credit_tokens WHERE jti = ANY (v_chain)
                      AND (expires_at <= v_now OR not_before > v_now + interval '30 seconds')) THEN
            res.outcome := 'token_expired';
        ELSIF r.amount > v_token.max_per_call_micros THEN
            res.outcome := 'max_per_call';
            res.available := v_token.max_per_call_micros;
        END IF;
        IF res.outcome IS NOT NULL THEN
            RETURN NEXT res;
            CONTINUE;
        END IF;

        -- 3. Budgets, in precedence order: the token's own cap, every ancestor's, the wallet.
        v_token_available := v_token.cap_micros - v_token.spent_micros - v_token.held_micros;
        SELECT min(cap_micros - spent_micros - held_micros) INTO v_ancestor_available
          FROM credit_tokens WHERE jti = ANY (v_chain[2:]);
        SELECT * INTO v_wallet FROM accounts WHERE id = v_token.account_id;
        v_wallet_available := v_wallet.credits_posted - v_wallet.debits_posted - v_wallet.debits_pending;
        IF r.amount > v_token_available THEN
            res.outcome := 'token_cap'; res.available := v_token_available;
        ELSIF v_ancestor_available IS NOT NULL AND r.amount > v_ancestor_available THEN
            res.outcome := 'ancestor_cap'; res.available := v_ancestor_available;
        ELSIF r.amount > v_wallet_available THEN
            res.outcome := 'account_balance'; res.available := v_wallet_available;
        END IF;
        IF res.outcome IS NOT NULL THEN
            RETURN NEXT res;
            CONTINUE;
        END IF;

        -- 4. Apply: token chain, journal, balances, and the charge/hold row.
        IF r.kind = 'charge' THEN
            UPDATE credit_tokens SET spent_micros = spent_micros + r.amount WHERE jti = ANY (v_chain);
            INSERT INTO transfers (id, debit_account_id, credit_account_id, amount, code, kind, metadata)
            VALUES (r.id, v_token.account_id, r.revenue_account_id, r.amount, 'charge', 'single',
                    jsonb_build_object('merchant_id', r.merchant_id, 'token_jti', r.token_jti, 'tool', r.tool));
            UPDATE accounts SET debits_posted = debits_posted + r.amount WHERE id = v_token.account_id;
            UPDATE accounts SET credits_posted = credits_posted + r.amount WHERE id = r.revenue_account_id;
        ELSE
            UPDATE credit_tokens SET held_micros = held_micros + r.amount WHERE jti = ANY (v_chain);
            INSERT INTO transfers (id, debit_account_id, credit_account_id, amount, code, kind, metadata)
            VALUES (r.id, v_token.account_id, r.revenue_account_id, r.amount, 'hold', 'pending',
                    jsonb_build_object('merchant_id', r.merchant_id, 'token_jti', r.token_jti, 'tool', r.tool));
            UPDATE accounts SET debits_pending = debits_pending + r.amount WHERE id = v_token.account_id;
            UPDATE accounts SET credits_pending = credits_pending + r.amount WHERE id = r.revenue_account_id;
        END IF;
        SELECT min(cap_micros - spent_micros - held_micros) INTO res.token_remaining
          FROM credit_tokens WHERE jti = ANY (v_chain);
        res.account_balance := v_wallet_available - r.amount;
        res.created_at := v_now;
        IF r.kind = 'charge' THEN
            INSERT INTO charges (id, merchant_id, idempotency_key, request_hash, token_jti, account_id,
                                 tool, amount_micros, transfer_id, receipt_id, receipt_kid,
                                 token_remaining_micros, account_balance_micros, metadata, created_at)
            VALUES (r.id, r.merchant_id, r.idempotency_key, r.request_hash, r.token_jti,
                    v_token.account_id, r.tool, r.amount, r.id, r.receipt_id, r.receipt_kid,
                    res.token_remaining, res.account_balance, coalesce(r.metadata, '{}'), v_now);
        ELSE
            res.expires_at := v_now + make_interval(secs => r.hold_timeout_s);
            INSERT INTO holds (id, merchant_id, idempotency_key, request_hash, token_jti, account_id,
                               tool, amount_micros, transfer_id, status, expires_at, metadata, created_at)
            VALUES (r.id, r.merchant_id, r.idempotency_key, r.request_hash, r.token_jti,
                    v_token.account_id, r.tool, r.amount, r.id, 'pending', res.expires_at,
                    coalesce(r.metadata, '{}'), v_now);
        END IF;
        res.outcome := 'created';
        RETURN NEXT res;
    END LOOP;
END $$;

-- Effective remaining budget of a credit token: the least over its chain.
CREATE FUNCTION credit_token_remaining(p_chain uuid[]) RETURNS bigint LANGUAGE sql STABLE AS $$
    SELECT min(cap_micros - spent_micros - held_micros) FROM credit_tokens WHERE jti = ANY (p_chain)
$$;

CREATE FUNCTION wallet_available(p_account uuid) RETURNS bigint LANGUAGE sql STABLE AS $$
    SELECT credits_posted - debits_posted - debits_pending FROM accounts WHERE id = p_account
$$;

-- Lock what a movement on hold/charge of `p_token` between `p_wallet` and
-- `p_revenue` touches, in the global order (tokens by jti, then accounts by id).
CREATE FUNCTION lock_charge_rows(p_chain uuid[], p_wallet uuid, p_revenue uuid) RETURNS void
LANGUAGE plpgsql AS $$
BEGIN
    PERFORM 1 FROM credit_tokens WHERE jti = ANY (p_chain) ORDER BY jti FOR UPDATE;
    PERFORM 1 FROM accounts WHERE id IN (p_wallet, p_revenue) ORDER BY id FOR UPDATE;
END $$;

-- Capture `p_amount` (<= held) of a pending hold; the rest is released. One round trip.
-- Outcomes: created | exists | hold_not_found | hold_not_pending | hold_expired
--           | exceeds_hold. Returns the outcome and the capture's receipt facts.
CREATE FUNCTION ledger_capture_hold(
    p_hold_id uuid, p_merchant_id uuid, p_amount bigint, p_charge_id uuid,
    p_receipt_id uuid, p_receipt_kid text
) RETURNS jsonb LANGUAGE plpgsql AS $$
DECLARE
    h holds%ROWTYPE;
    c charges%ROWTYPE;
    m merchants%ROWTYPE;
    v_chain uuid[];
    v_outcome text;
    v_now timestamptz := now();
BEGIN
    SELECT * INTO h FROM holds WHERE id = p_hold_id AND merchant_id = p_merchant_id;
    IF NOT FOUND THEN
        RETURN jsonb_build_object('outcome', 'hold_not_found');
    END IF;
    SELECT * INTO m FROM merchants WHERE id = p_merchant_id;
    v_chain := credit_token_chain(h.token_jti);
    PERFORM lock_charge_rows(v_chain, h.account_id, m.revenue_account_id);
    SELECT * INTO h FROM holds WHERE id = p_hold_id FOR UPDATE;

    IF h.status = 'captured' THEN
        SELECT * INTO c FROM charges WHERE id = h.charge_id;
        IF h.captured_micros <> p_amount THEN
            RETURN jsonb_build_object('outcome', 'hold_not_pending', 'status', h.status);
        END IF;
        RETURN jsonb_build_object('outcome', 'exists') || to_jsonb(c) - 'request_hash';
    ELSIF h.status <> 'pending' THEN
        RETURN jsonb_build_object('outcome', 'hold_not_pending', 'status', h.status);
    ELSIF h.expires_at <= v_now THEN
        RETURN jsonb_build_object('outcome', 'hold_expired', 'status', 'expired');
    ELSIF p_amount > h.amount_micros THEN
        RETURN jsonb_build_object('outcome', 'exceeds_hold', 'available', h.amount_micros);
    END IF;

    UPDATE credit_tokens
       SET held_micros = held_micros - h.amount_micros, spent_micros = spent_micros + p_amount
     WHERE jti = ANY (v_chain);
    v_outcome := ledger_resolve_pending(p_charge_id, h.transfer_id, true, p_amount, 'capture',
                                        jsonb_build_object('hold_id', h.id), true);
    IF v_outcome <> 'created' THEN
        RAISE EXCEPTION 'capture of hold % could not post its transfer: %', h.id, v_outcome;
    END IF;
    INSERT INTO charges (id, merchant_id, idempotency_key, request_hash, token_jti, account_id, tool,
                         amount_micros, transfer_id, hold_id, receipt_id, receipt_kid,
                         token_remaining_micros, account_balance_micros, metadata, created_at)
    VALUES (p_charge_id, h.merchant_id, 'capture:' || h.id, h.request_hash, h.token_jti,
            h.account_id, h.tool, p_amount, p_charge_id, h.id, p_receipt_id, p_receipt_kid,
            credit_token_remaining(v_chain), wallet_available(h.account_id), h.metadata, v_now)
    RETURNING * INTO c;
    UPDATE holds SET status = 'captured', captured_micros = p_amount, charge_id = p_charge_id,
                     resolution_transfer_id = p_charge_id, resolved_at = v_now
     WHERE id = h.id;
    RETURN jsonb_build_object('outcome', 'created') || to_jsonb(c) - 'request_hash';
END $$;

-- Release a pending hold: on request (`p_status` = 'voided') or by expiry ('expired').
-- Outcomes: created | exists (already voided or expired) | hold_not_found | hold_not_pending.
CREATE FUNCTION ledger_void_hold(p_hold_id uuid, p_merchant_id uuid, p_status text)
RETURNS jsonb LANGUAGE plpgsql AS $$
DECLARE
    h holds%ROWTYPE;
    m merchants%ROWTYPE;
    v_chain uuid[];
    v_outcome text;
    v_void_id uuid := md5(p_hold_id::text || ':release')::uuid;
BEGIN
    SELECT * INTO h FROM holds WHERE id = p_hold_id AND (p_merchant_id IS NULL OR merchant_id = p_merchant_id);
    IF NOT FOUND THEN
        RETURN jsonb_build_object('outcome', 'hold_not_found');
    END IF;
    SELECT * INTO m FROM merchants WHERE id = h.merchant_id;
    v_chain := credit_token_chain(h.token_jti);
    PERFORM lock_charge_rows(v_chain, h.account_id, m.revenue_account_id);
    SELECT * INTO h FROM holds WHERE id = p_hold_id FOR UPDATE;
    IF h.status IN ('voided', 'expired') THEN
        RETURN jsonb_build_object('outcome', 'exists', 'status', h.status);
    ELSIF h.status = 'captured' THEN
        RETURN jsonb_build_object('outcome', 'hold_not_pending', 'status', h.status);
    END IF;

    UPDATE credit_tokens SET held_micros = held_micros - h.amount_micros WHERE jti = ANY (v_chain);
    v_outcome := ledger_resolve_pending(v_void_id, h.transfer_id, false, NULL,
                                        CASE WHEN p_status = 'expired' THEN 'hold_expired' ELSE 'void' END,
                                        jsonb_build_object('hold_id', h.id), true);
    IF v_outcome <> 'created' THEN
        RAISE EXCEPTION 'release of hold % could not void its transfer: %', h.id, v_outcome;
    END IF;
    UPDATE holds SET status = p_status, resolution_transfer_id = v_void_id, resolved_at = now()
     WHERE id = h.id;
    RETURN jsonb_build_object('outcome', 'created', 'status', p_status);
END $$;

-- Refund part or all of a charge to the wallet and to the credit token's budget.
-- Outcomes: created | exists | idempotency_conflict | charge_not_found
--           | exceeds_charge | merchant_balance_insufficient.
CREATE FUNCTION ledger_refund(
    p_refund_id uuid, p_charge_id uuid, p_merchant_id uuid, p_idempotency_key text,
    p_request_hash bytea, p_amount bigint, p_receipt_id uuid, p_receipt_kid text, p_reason text
) RETURNS jsonb LANGUAGE plpgsql AS $$
DECLARE
    c charges%ROWTYPE;
    m merchants%ROWTYPE;
    f refunds%ROWTYPE;
    v_chain uuid[];
    v_outcome text;
BEGIN
    SELECT * INTO c FROM charges WHERE id = p_charge_id AND merchant_id = p_merchant_id;
    IF NOT FOUND THEN
        RETURN jsonb_build_object('outcome', 'charge_not_found');
    END IF;
    SELECT * INTO m FROM merchants WHERE id = p_merchant_id;
    v_chain := credit_token_chain(c.token_jti);
    PERFORM lock_charge_rows(v_chain, c.account_id, m.revenue_account_id);
    SELECT * INTO c FROM charges WHERE id = p_charge_id FOR UPDATE;

    SELECT * INTO f FROM refunds WHERE merchant_id = p_merchant_id AND idempotency_key = p_idempotency_key;
    IF FOUND THEN
        IF f.request_hash <> p_request_hash THEN
            RETURN jsonb_build_object('outcome', 'idempotency_conflict');
        END IF;
        RETURN jsonb_build_object('outcome', 'exists', 'refunded_total_micros', c.refunded_micros,
                                  'token_jti', c.token_jti, 'account_id', c.account_id, 'tool', c.tool)
               || to_jsonb(f) - 'request_hash';
    END IF;
    IF c.refunded_micros + p_amount > c.amount_micros THEN
        RETURN jsonb_build_object('outcome', 'exceeds_charge',
                                  'available', c.amount_micros - c.refunded_micros);
    END IF;

    v_outcome := ledger_create_transfer(p_refund_id, m.revenue_account_id, c.account_id, p_amount,
                                        'refund', false, NULL,
                                        jsonb_build_object('charge_id', c.id, 'token_jti', c.token_jti));
    IF v_outcome = 'exceeds_credits' THEN
        RETURN jsonb_build_object('outcome', 'merchant_balance_insufficient');
    ELSIF v_outcome <> 'created' THEN
        RAISE EXCEPTION 'refund % could not create its transfer: %', p_refund_id, v_outcome;
    END IF;
    UPDATE charges SET refunded_micros = refunded_micros + p_amount WHERE id = c.id;
    UPDATE credit_tokens SET spent_micros = spent_micros - p_amount WHERE jti = ANY (v_chain);
    INSERT INTO refunds (id, charge_id, merchant_id, idempotency_key, request_hash, amount_micros,
                         transfer_id, receipt_id, receipt_kid, token_remaining_micros,
                         account_balance_micros, reason)
    VALUES (p_refund_id, c.id, p_merchant_id, p_idempotency_key, p_request_hash, p_amount,
            p_refund_id, p_receipt_id, p_receipt_kid, credit_token_remaining(v_chain),
            wallet_available(c.account_id), p_reason)
    RETURNING * INTO f;
    RETURN jsonb_build_object('outcome', 'created', 'refunded_total_micros', c.refunded_micros + p_amount,
                              'token_jti', c.token_jti, 'account_id', c.account_id, 'tool', c.tool)
           || to_jsonb(f) - 'request_hash';
END $$;
