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
-- Pending holds past their expiry, oldest first.
SELECT id FROM holds WHERE status = 'pending' AND expires_at <= now() ORDER BY expires_at LIMIT $1;

-- name: find_charge_by_key
-- A charge by idempotency key, to replay it when the credit token has since expired.
SELECT id FROM charges WHERE merchant_id = $1 AND idempotency_key = $2;

-- name: insert_merchant
INSERT INTO merchants (id, name, revenue_account_id) VALUES ($1, $2, $3) RETURNING *;

-- name: get_merchant
SELECT * FROM merchants WHERE id = $1;

-- name: get_charge
SELECT * FROM charges WHERE id = $1 AND merchant_id = $2;

-- name: get_hold
SELECT * FROM holds WHERE id = $1 AND merchant_id = $2;

-- name: list_merchant_charges
-- One page of a merchant's charges, newest first, before cursor time $2.
SELECT * FROM charges WHERE merchant_id = $1 AND created_at < $2 ORDER BY created_at DESC, id LIMIT $3;
