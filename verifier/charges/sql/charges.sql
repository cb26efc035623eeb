-- name: charge_batch
-- Verify-and-debit for a batch of charge/hold requests: one round trip (migrations/0004).
-- The requests go as one array per field (see the function's header).
SELECT * FROM ledger_charge_batch($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13) ORDER BY idx;

-- name: capture_hold
SELECT ledger_capture_hold($1, $2, $3, $4, $5, $6);

-- name: void_hold
SELECT ledger_void_hold($1, $2, $3);

-- name: refund
SELECT ledger_refund($1, $2, $3, $4, $5, $6, $7, $8, $9);

-- name: expired_holds
-- Pending holds past their expiry, oldest first (with what the release log line names).
SELECT id, merchant_id, account_id, token_jti, tool, amount_micros
  FROM holds WHERE status = 'pending' AND expires_at <= now() ORDER BY expires_at LIMIT $1;

-- name: find_charge_by_key
-- A charge by idempotency key, to replay it when the credit token has since expired.
SELECT * FROM charges WHERE merchant_id = $1 AND idempotency_key = $2;

-- name: insert_merchant
INSERT INTO merchants (id, name, revenue_account_id) VALUES ($1, $2, $3) RETURNING *;

-- name: get_merchant
SELECT * FROM merchants WHERE id = $1;

-- name: get_hold
SELECT * FROM holds WHERE id = $1 AND merchant_id = $2;

-- name: merchant_with_revenue
-- A merchant and its revenue account's balances: posted (what it holds) and pending
-- (holds it may still capture).
SELECT m.id, m.name, m.revenue_account_id, m.created_at,
       a.credits_posted - a.debits_posted AS revenue_balance_micros,
       a.credits_pending AS revenue_pending_micros
  FROM merchants m JOIN accounts a ON a.id = m.revenue_account_id
 WHERE m.id = $1;

-- name: get_merchant_charge
-- One charge (or capture) of a merchant; another merchant's charge is not found.
SELECT id, hold_id, amount_micros, refunded_micros, tool, token_jti, account_id, receipt_id,
       metadata, created_at
  FROM charges
 WHERE id = $1 AND merchant_id = $2;

-- name: list_merchant_charges
-- One page of a merchant's charges, newest first, after cursor charge $2 (NULL: from
-- the newest). Charges of one batch share a time, so ties are ordered by id. $3 is
-- one more than the page size, to tell whether another page follows.
SELECT id, hold_id, amount_micros, refunded_micros, tool, token_jti, account_id, receipt_id,
       metadata, created_at
  FROM charges
 WHERE merchant_id = $1
   AND ($2::uuid IS NULL
        OR (created_at, id) < (SELECT created_at, id FROM charges WHERE id = $2 AND merchant_id = $1))
 ORDER BY created_at DESC, id DESC
 LIMIT $3;

-- name: get_merchant_hold
-- One hold of a merchant; another merchant's hold is not found.
SELECT id, status, amount_micros, captured_micros, charge_id, token_jti, account_id, tool,
       metadata, expires_at, created_at, resolved_at
  FROM holds
 WHERE id = $1 AND merchant_id = $2;
