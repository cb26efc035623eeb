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

-- The chain of a credit token: its ancestors (root first) and itself. The
-- ancestors are kept on the row (migrations/0002), so no recursion is needed.
CREATE FUNCTION credit_token_chain(p_jti uuid) RETURNS uuid[] LANGUAGE sql STABLE AS $$
    SELECT coalesce((SELECT ancestors || jti FROM credit_tokens WHERE jti = p_jti), ARRAY[p_jti])
$$;

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
--   | token_expired | max_per_call | token_cap | ancestor_cap | account_balance
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
--
-- Requests are decided in order, each applied in full or not at all, exactly as if
-- they had run one after another; but the work is set-based: lock every row the
-- batch touches once (global order), load the state into arrays, decide in memory,
-- then write all accepted requests with a few bulk statements (one journal insert,
-- one update per account, one per credit token). Batching is what lets many agents
-- share one wallet, one credit token and one merchant: the hot rows are locked and
-- committed once per batch instead of once per charge.
CREATE FUNCTION ledger_charge_batch(p_requests charge_request[])
RETURNS SETOF charge_result LANGUAGE plpgsql AS $$
DECLARE
    n integer := coalesce(array_length(p_requests, 1), 0);
    r charge_request;
    res charge_result;
    results charge_result[] := '{}';
    v_now timestamptz := now();
    v_row record;
    -- Every credit token involved (requested ones and their ancestors).
    t_ids uuid[]; t_parent uuid[]; t_parent_idx integer[] := '{}'; t_avail bigint[];
    t_max bigint[]; t_bad text[]; t_account uuid[];
    t_spent_delta bigint[]; t_held_delta bigint[];
    -- Every wallet involved.
    w_ids uuid[]; w_avail bigint[];
    -- Results already known from idempotency keys, by request index.
    known charge_result[];
    seen_keys text[] := '{}';
    seen_idx integer[] := '{}';
    i integer; j integer; ti integer; wi integer; k integer;
    v_limit bigint; v_remaining bigint; v_key text; v_why text;
    -- Accepted requests, for the bulk writes.
    a_idx integer[] := '{}';
BEGIN
    -- 1. Lock, in the global order: credit tokens (with ancestors), then accounts.
    PERFORM 1 FROM credit_tokens
     WHERE jti IN (SELECT unnest(t.ancestors || t.jti) FROM credit_tokens t
                    WHERE t.jti IN (SELECT (q).token_jti FROM unnest(p_requests) q))
     ORDER BY jti FOR UPDATE;
    PERFORM 1 FROM accounts
     WHERE id IN (SELECT t.account_id FROM credit_tokens t
                   WHERE t.jti IN (SELECT (q).token_jti FROM unnest(p_requests) q)
                  UNION SELECT (q).revenue_account_id FROM unnest(p_requests) q)
     ORDER BY id FOR UPDATE;

    -- 2. Idempotency: what was already done under these keys (read after locking,
    -- so a concurrent identical request is seen once it commits).
    known := array_fill(NULL::charge_result, ARRAY[n]);
    FOR v_row IN
        SELECT q.ordinality::integer AS idx, c.id, c.request_hash, c.token_jti, c.account_id, c.tool,
               c.amount_micros AS amount, c.receipt_id, c.receipt_kid,
               c.token_remaining_micros, c.account_balance_micros,
               NULL::timestamptz AS expires_at, c.created_at, q.request_hash AS asked
          FROM unnest(p_requests) WITH ORDINALITY AS q JOIN charges c
            ON q.kind = 'charge' AND c.merchant_id = q.merchant_id AND c.idempotency_key = q.idempotency_key
        UNION ALL
        SELECT q.ordinality::integer, h.id, h.request_hash, h.token_jti, h.account_id, h.tool, h.amount_micros,
               NULL, NULL, NULL, NULL, h.expires_at, h.created_at, q.request_hash
          FROM unnest(p_requests) WITH ORDINALITY AS q JOIN holds h
            ON q.kind = 'hold' AND h.merchant_id = q.merchant_id AND h.idempotency_key = q.idempotency_key
    LOOP
        known[v_row.idx] := ROW(v_row.idx,
            CASE WHEN v_row.request_hash = v_row.asked THEN 'exists' ELSE 'idempotency_conflict' END,
            v_row.id, NULL, v_row.token_jti, v_row.account_id, v_row.tool, v_row.amount,
            v_row.receipt_id, v_row.receipt_kid, v_row.token_remaining_micros,
            v_row.account_balance_micros, v_row.expires_at, v_row.created_at, NULL)::charge_result;
    END LOOP;

    -- 3. Load the state of every token and wallet involved into arrays.
    SELECT array_agg(t.jti ORDER BY t.jti), array_agg(t.parent_jti ORDER BY t.jti),
           array_agg(t.cap_micros - t.spent_micros - t.held_micros ORDER BY t.jti),
           array_agg(t.max_per_call_micros ORDER BY t.jti),
           array_agg(CASE WHEN t.revoked_at IS NOT NULL THEN 'token_revoked'
                          WHEN t.expires_at <= v_now OR t.not_before > v_now + interval '30 seconds'
                          THEN 'token_expired' END ORDER BY t.jti),
           array_agg(t.account_id ORDER BY t.jti)
      INTO t_ids, t_parent, t_avail, t_max, t_bad, t_account
      FROM credit_tokens t
     WHERE t.jti IN (SELECT unnest(x.ancestors || x.jti) FROM credit_tokens x
                      WHERE x.jti IN (SELECT (q).token_jti FROM unnest(p_requests) q));
    t_ids := coalesce(t_ids, '{}');
    FOR i IN 1 .. coalesce(array_length(t_ids, 1), 0) LOOP
        t_parent_idx[i] := array_position(t_ids, t_parent[i]);
    END LOOP;
    t_spent_delta := array_fill(0::bigint, ARRAY[coalesce(array_length(t_ids, 1), 0)]);
    t_held_delta := t_spent_delta;
    SELECT array_agg(a.id), array_agg(a.credits_posted - a.debits_posted - a.debits_pending)
      INTO w_ids, w_avail
      FROM accounts a WHERE a.id IN (SELECT DISTINCT unnest(t_account));
    w_ids := coalesce(w_ids, '{}');

    -- 4. Decide each request in order, in memory.
    FOR i IN 1 .. n LOOP
        r := p_requests[i];
        v_key := r.kind || ':' || r.merchant_id || ':' || r.idempotency_key;
        k := array_position(seen_keys, v_key);
        IF k IS NOT NULL THEN
            -- The same key earlier in this batch: answer as that request did.
            res := results[seen_idx[k]];
            res.idx := i;
            IF res.outcome = 'created' THEN
                res.outcome := CASE WHEN p_requests[seen_idx[k]].request_hash = r.request_hash
                                    THEN 'exists' ELSE 'idempotency_conflict' END;
                results := results || res;
                CONTINUE;
            END IF;
        END IF;
        IF (known[i]).outcome IS NOT NULL THEN  -- (a row IS NOT NULL only if every field is)
            res := known[i];
            res.kind := r.kind;
            results := results || res;
            CONTINUE;
        END IF;
        res := ROW(i, NULL, r.id, r.kind, r.token_jti, NULL, r.tool, r.amount, r.receipt_id,
                   r.receipt_kid, NULL, NULL, NULL, NULL, NULL)::charge_result;
        ti := array_position(t_ids, r.token_jti);
        IF ti IS NULL THEN
            res.outcome := 'token_unknown';
            results := results || res;
            CONTINUE;
        END IF;
        res.account_id := t_account[ti];
        wi := array_position(w_ids, t_account[ti]);
        -- Revocation and expiry of the token or any ancestor; then the limits in
        -- precedence order: max_per_call, the token's cap, every ancestor's, the wallet.
        v_why := NULL;
        j := ti;
        WHILE j IS NOT NULL AND v_why IS NULL LOOP
            v_why := t_bad[j];
            j := t_parent_idx[j];
        END LOOP;
        IF v_why IS NULL AND r.amount > t_max[ti] THEN
            v_why := 'max_per_call'; res.available := t_max[ti];
        END IF;
        IF v_why IS NULL AND r.amount > t_avail[ti] THEN
            v_why := 'token_cap'; res.available := t_avail[ti];
        END IF;
        IF v_why IS NULL THEN
            v_limit := NULL;
            j := t_parent_idx[ti];
            WHILE j IS NOT NULL LOOP
                v_limit := least(coalesce(v_limit, t_avail[j]), t_avail[j]);
                j := t_parent_idx[j];
            END LOOP;
            IF v_limit IS NOT NULL AND r.amount > v_limit THEN
                v_why := 'ancestor_cap'; res.available := v_limit;
            END IF;
        END IF;
        IF v_why IS NULL AND r.amount > w_avail[wi] THEN
            v_why := 'account_balance'; res.available := w_avail[wi];
        END IF;
        IF v_why IS NOT NULL THEN
            res.outcome := v_why;
            results := results || res;
            CONTINUE;
        END IF;

        -- Accepted: take the amount from the chain and the wallet (in memory).
        v_remaining := NULL;
        j := ti;
        WHILE j IS NOT NULL LOOP
            t_avail[j] := t_avail[j] - r.amount;
            IF r.kind = 'charge' THEN
                t_spent_delta[j] := t_spent_delta[j] + r.amount;
            ELSE
                t_held_delta[j] := t_held_delta[j] + r.amount;
            END IF;
            v_remaining := least(coalesce(v_remaining, t_avail[j]), t_avail[j]);
            j := t_parent_idx[j];
        END LOOP;
        w_avail[wi] := w_avail[wi] - r.amount;
        res.outcome := 'created';
        res.token_remaining := v_remaining;
        res.account_balance := w_avail[wi];
        res.created_at := v_now;
        IF r.kind = 'hold' THEN
            res.expires_at := v_now + make_interval(secs => r.hold_timeout_s);
        END IF;
        results := results || res;
        a_idx := a_idx || i;
        seen_keys := seen_keys || v_key;
        seen_idx := seen_idx || i;
    END LOOP;

    -- 5. Write every accepted request with bulk statements.
    IF array_length(a_idx, 1) IS NOT NULL THEN
        INSERT INTO transfers (id, debit_account_id, credit_account_id, amount, code, kind, metadata)
        SELECT q.id, x.account_id, q.revenue_account_id, q.amount,
               CASE WHEN q.kind = 'charge' THEN 'charge' ELSE 'hold' END,
               CASE WHEN q.kind = 'charge' THEN 'single' ELSE 'pending' END,
               jsonb_build_object('merchant_id', q.merchant_id, 'token_jti', q.token_jti, 'tool', q.tool)
          FROM unnest(a_idx) AS a(i)
          CROSS JOIN LATERAL (SELECT (p_requests[a.i]).*) q
          CROSS JOIN LATERAL (SELECT (results[a.i]).account_id) x;

        UPDATE accounts w
           SET debits_posted = w.debits_posted + d.posted, debits_pending = w.debits_pending + d.pending
          FROM (SELECT (results[a.i]).account_id AS id,
                       sum(CASE WHEN (p_requests[a.i]).kind = 'charge' THEN (p_requests[a.i]).amount ELSE 0 END) AS posted,
                       sum(CASE WHEN (p_requests[a.i]).kind = 'hold' THEN (p_requests[a.i]).amount ELSE 0 END) AS pending
                  FROM unnest(a_idx) AS a(i) GROUP BY 1) d
         WHERE w.id = d.id;
        UPDATE accounts m
           SET credits_posted = m.credits_posted + d.posted, credits_pending = m.credits_pending + d.pending
          FROM (SELECT (p_requests[a.i]).revenue_account_id AS id,
                       sum(CASE WHEN (p_requests[a.i]).kind = 'charge' THEN (p_requests[a.i]).amount ELSE 0 END) AS posted,
                       sum(CASE WHEN (p_requests[a.i]).kind = 'hold' THEN (p_requests[a.i]).amount ELSE 0 END) AS pending
                  FROM unnest(a_idx) AS a(i) GROUP BY 1) d
         WHERE m.id = d.id;
        UPDATE credit_tokens t
           SET spent_micros = t.spent_micros + d.spent, held_micros = t.held_micros + d.held
          FROM unnest(t_ids, t_spent_delta, t_held_delta) AS d(jti, spent, held)
         WHERE t.jti = d.jti AND (d.spent <> 0 OR d.held <> 0);

        INSERT INTO charges (id, merchant_id, idempotency_key, request_hash, token_jti, account_id,
                             tool, amount_micros, transfer_id, receipt_id, receipt_kid,
                             token_remaining_micros, account_balance_micros, metadata, created_at)
        SELECT q.id, q.merchant_id, q.idempotency_key, q.request_hash, q.token_jti, x.account_id,
               q.tool, q.amount, q.id, q.receipt_id, q.receipt_kid, x.token_remaining,
               x.account_balance, coalesce(q.metadata, '{}'::jsonb), v_now
          FROM unnest(a_idx) AS a(i)
          CROSS JOIN LATERAL (SELECT (p_requests[a.i]).*) q
          CROSS JOIN LATERAL (SELECT (results[a.i]).*) x
         WHERE q.kind = 'charge';
        INSERT INTO holds (id, merchant_id, idempotency_key, request_hash, token_jti, account_id,
                           tool, amount_micros, transfer_id, status, expires_at, metadata, created_at)
        SELECT q.id, q.merchant_id, q.idempotency_key, q.request_hash, q.token_jti, x.account_id,
               q.tool, q.amount, q.id, 'pending', x.expires_at, coalesce(q.metadata, '{}'::jsonb), v_now
          FROM unnest(a_idx) AS a(i)
          CROSS JOIN LATERAL (SELECT (p_requests[a.i]).*) q
          CROSS JOIN LATERAL (SELECT (results[a.i]).*) x
         WHERE q.kind = 'hold';
    END IF;

    RETURN QUERY SELECT * FROM unnest(results);
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
