-- name: record_event
-- Remember a verified Stripe event; no row back means it was seen before.
INSERT INTO stripe_events (event_id, type, outcome) VALUES ($1, $2, 'processing')
ON CONFLICT (event_id) DO NOTHING
RETURNING event_id;

-- name: set_event_outcome
UPDATE stripe_events SET outcome = $2 WHERE event_id = $1;

-- name: get_event_outcome
SELECT outcome FROM stripe_events WHERE event_id = $1;

-- name: wallet_kind
SELECT kind FROM accounts WHERE id = $1;

-- name: payment_seen
-- Whether this payment or this session was credited before.
SELECT EXISTS (SELECT 1 FROM card_payments WHERE payment_id = $1 OR session_id = $2);

-- name: insert_payment
-- A paid payment, once; no row back means it is already recorded.
INSERT INTO card_payments (payment_id, session_id, account_id, amount_micros, transfer_id)
VALUES ($1, $2, $3, $4, $5)
ON CONFLICT DO NOTHING
RETURNING payment_id;

-- name: lock_payment
SELECT * FROM card_payments WHERE payment_id = $1 FOR UPDATE;

-- name: lock_accounts
-- The wallet and the clearing account, in id order (as the core locks them).
SELECT id, credits_posted - debits_posted - debits_pending AS available
  FROM accounts WHERE id IN ($1, $2) ORDER BY id FOR UPDATE;

-- name: insert_dispute
INSERT INTO card_disputes (dispute_id, payment_id, amount_micros) VALUES ($1, $2, $3)
ON CONFLICT (dispute_id) DO NOTHING
RETURNING dispute_id;

-- name: set_refunded
-- Refund totals only grow (Stripe reports the cumulative amount refunded).
UPDATE card_payments SET refunded_micros = greatest(refunded_micros, $2) WHERE payment_id = $1;

-- name: add_disputed
UPDATE card_payments SET disputed_micros = disputed_micros + $2 WHERE payment_id = $1;

-- name: settle_reversal
UPDATE card_payments
   SET recovered_micros = recovered_micros + $2, shortfall_micros = shortfall_micros + $3
 WHERE payment_id = $1;

-- name: insert_reversal
INSERT INTO card_reversals (id, payment_id, account_id, event_id, reason,
                            recovered_micros, shortfall_micros, transfer_id)
VALUES ($1, $2, $3, $4, $5, $6, $7, $8);

-- name: list_shortfalls
-- Claw-backs that could not be fully recovered, newest first.
SELECT r.id, r.payment_id, r.account_id, r.event_id, r.reason, r.recovered_micros,
       r.shortfall_micros, r.created_at
  FROM card_reversals r
 WHERE r.shortfall_micros > 0
   AND ($1::uuid IS NULL
        OR (r.created_at, r.id) < (SELECT created_at, id FROM card_reversals WHERE id = $1))
 ORDER BY r.created_at DESC, r.id DESC
 LIMIT $2;
