-- name: bench_tokens
-- The generated ledger's credit tokens, by index: each on one merchant.
CREATE UNLOGGED TABLE IF NOT EXISTS bench_tokens (
    idx integer PRIMARY KEY, jti uuid NOT NULL, account_id uuid NOT NULL,
    merchant_id uuid NOT NULL, revenue_id uuid NOT NULL
);

-- name: insert_charges
-- Charges $1..$2 (one journal transfer and one charges row each), spread over the
-- $3 days before $5, round-robin over the $4 credit tokens, 3 tools per token; every
-- $6-th charge is refunded in half a day later.
WITH g AS MATERIALIZED (
    SELECT i, bt.jti, bt.account_id, bt.merchant_id, bt.revenue_id,
           'tool-' || ((i / 7) % 3 + bt.idx % 5) AS tool,
           1000 + (i * 7919) % 50000 AS amount,
           $5::timestamptz - make_interval(secs => ((i::bigint * 104729) % ($3 * 86400))) AS at,
           md5('bench-charge-' || i)::uuid AS id
      FROM generate_series($1::bigint, $2::bigint) i JOIN bench_tokens bt ON bt.idx = i % $4
), t AS (
    INSERT INTO transfers (id, debit_account_id, credit_account_id, amount, code, kind, created_at)
    SELECT id, account_id, revenue_id, amount, 'charge', 'single', at FROM g
), c AS (
    INSERT INTO charges (id, merchant_id, idempotency_key, request_hash, token_jti, account_id,
                         tool, amount_micros, refunded_micros, transfer_id, receipt_id, receipt_kid,
                         token_remaining_micros, account_balance_micros, created_at)
    SELECT id, merchant_id, 'bench-' || i, '\x00'::bytea, jti, account_id, tool, amount,
           CASE WHEN i % $6 = 0 THEN amount / 2 ELSE 0 END, id,
           md5('bench-receipt-' || i)::uuid, 'bench', 0, 0, at
      FROM g
), rt AS (
    INSERT INTO transfers (id, debit_account_id, credit_account_id, amount, code, kind, created_at)
    SELECT md5('bench-refund-' || i)::uuid, revenue_id, account_id, amount / 2, 'refund', 'single',
           at + interval '12 hours'
      FROM g WHERE i % $6 = 0
)
INSERT INTO refunds (id, charge_id, merchant_id, idempotency_key, request_hash, amount_micros,
                     transfer_id, receipt_id, receipt_kid, token_remaining_micros,
                     account_balance_micros, created_at)
SELECT md5('bench-refund-' || i)::uuid, id, merchant_id, 'bench-refund-' || i, '\x00'::bytea,
       amount / 2, md5('bench-refund-' || i)::uuid, md5('bench-refund-receipt-' || i)::uuid,
       'bench', 0, 0, at + interval '12 hours'
  FROM g WHERE i % $6 = 0;

-- name: settle_counters
-- Make the generated ledger balance: fund each wallet from the adjustment clearing
-- account with a journal entry, then set every counter from the journal.
WITH spend AS (
    SELECT debit_account_id AS id, sum(amount) AS spent FROM transfers
     WHERE code = 'charge' GROUP BY 1
)
INSERT INTO transfers (id, debit_account_id, credit_account_id, amount, code, kind, created_at)
SELECT md5('bench-fund-' || id)::uuid, '00000000-0000-0000-0000-00000000c003', id,
       spent + 1000000000, 'adjustment', 'single', now() - interval '400 days'
  FROM spend;

-- name: settle_accounts
UPDATE accounts a
   SET debits_posted = coalesce((SELECT sum(amount) FROM transfers WHERE debit_account_id = a.id), 0),
       credits_posted = coalesce((SELECT sum(amount) FROM transfers WHERE credit_account_id = a.id), 0);

-- name: settle_tokens
UPDATE credit_tokens t
   SET spent_micros = s.spent
  FROM (SELECT token_jti, sum(amount_micros - refunded_micros) AS spent FROM charges GROUP BY 1) s
 WHERE s.token_jti = t.jti;

-- name: naive_top_accounts
-- The same question as a merchant's top accounts, answered from the charges rows.
SELECT account_id, sum(amount_micros - refunded_micros) AS net
  FROM charges WHERE merchant_id = $1 GROUP BY 1 ORDER BY 2 DESC LIMIT 10;
