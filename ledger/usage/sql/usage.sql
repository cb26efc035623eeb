-- Usage answers. Every filter is optional (NULL = any); the caller's role fixes the
-- account (owner) or the merchant (merchant). Groups are chosen by flags, so one
-- statement serves every breakdown; run with plan_cache_mode = force_custom_plan so
-- that the NULL filters fold away and the index on the fixed column is used.
-- $1 from, $2 to (bucket range, [from, to)), $3 account, $4 merchant, $5 credit token,
-- $6 tool, $7 bucket unit ('hour' | 'day' | 'month') or NULL (no time grouping),
-- $8..$11 group by credit token / tool / merchant / account, $12 order by net spend,
-- $13 limit (NULL: all), $14 offset.

-- name: groups_hourly
SELECT CASE WHEN $7::text IS NOT NULL THEN date_trunc($7::text, bucket, 'UTC') END AS bucket,
       CASE WHEN $11::boolean THEN account_id END AS account_id,
       CASE WHEN $10::boolean THEN merchant_id END AS merchant_id,
       CASE WHEN $8::boolean THEN token_jti END AS token_id,
       CASE WHEN $9::boolean THEN tool END AS tool,
       sum(charges)::bigint AS charges, sum(charged_micros)::bigint AS charged_micros,
       sum(refunds)::bigint AS refunds, sum(refunded_micros)::bigint AS refunded_micros
  FROM usage_hourly
 WHERE ($1::timestamptz IS NULL OR bucket >= $1) AND ($2::timestamptz IS NULL OR bucket < $2)
   AND ($3::uuid IS NULL OR account_id = $3) AND ($4::uuid IS NULL OR merchant_id = $4)
   AND ($5::uuid IS NULL OR token_jti = $5) AND ($6::text IS NULL OR tool = $6)
 GROUP BY 1, 2, 3, 4, 5
 ORDER BY CASE WHEN $12::boolean THEN sum(charged_micros) - sum(refunded_micros) END DESC NULLS LAST,
          1, 2, 3, 4, 5
 LIMIT $13 OFFSET $14;

-- name: groups_daily
SELECT CASE WHEN $7::text IS NOT NULL THEN date_trunc($7::text, bucket, 'UTC') END AS bucket,
       CASE WHEN $11::boolean THEN account_id END AS account_id,
       CASE WHEN $10::boolean THEN merchant_id END AS merchant_id,
       CASE WHEN $8::boolean THEN token_jti END AS token_id,
       CASE WHEN $9::boolean THEN tool END AS tool,
       sum(charges)::bigint AS charges, sum(charged_micros)::bigint AS charged_micros,
       sum(refunds)::bigint AS refunds, sum(refunded_micros)::bigint AS refunded_micros
  FROM usage_daily
 WHERE ($1::timestamptz IS NULL OR bucket >= $1) AND ($2::timestamptz IS NULL OR bucket < $2)
   AND ($3::uuid IS NULL OR account_id = $3) AND ($4::uuid IS NULL OR merchant_id = $4)
   AND ($5::uuid IS NULL OR token_jti = $5) AND ($6::text IS NULL OR tool = $6)
 GROUP BY 1, 2, 3, 4, 5
 ORDER BY CASE WHEN $12::boolean THEN sum(charged_micros) - sum(refunded_micros) END DESC NULLS LAST,
          1, 2, 3, 4, 5
 LIMIT $13 OFFSET $14;

-- name: list_charges
-- Charges (and captures), newest first, after the keyset cursor ($7 time, $8 id).
-- $1 from, $2 to, $3 account, $4 merchant, $5 credit token, $6 tool, $9 limit (NULL: all).
SELECT id, hold_id, account_id, merchant_id, token_jti, tool, amount_micros, refunded_micros,
       receipt_id, metadata, created_at
  FROM charges
 WHERE ($1::timestamptz IS NULL OR created_at >= $1) AND ($2::timestamptz IS NULL OR created_at < $2)
   AND ($3::uuid IS NULL OR account_id = $3) AND ($4::uuid IS NULL OR merchant_id = $4)
   AND ($5::uuid IS NULL OR token_jti = $5) AND ($6::text IS NULL OR tool = $6)
   AND ($7::timestamptz IS NULL OR (created_at, id) < ($7, $8::uuid))
 ORDER BY created_at DESC, id DESC
 LIMIT $9;

-- name: list_holds
-- Holds with what was captured, newest first; $10 status (NULL: any).
SELECT id, status, account_id, merchant_id, token_jti, tool, amount_micros, captured_micros,
       charge_id, expires_at, created_at, resolved_at
  FROM holds
 WHERE ($1::timestamptz IS NULL OR created_at >= $1) AND ($2::timestamptz IS NULL OR created_at < $2)
   AND ($3::uuid IS NULL OR account_id = $3) AND ($4::uuid IS NULL OR merchant_id = $4)
   AND ($5::uuid IS NULL OR token_jti = $5) AND ($6::text IS NULL OR tool = $6)
   AND ($7::timestamptz IS NULL OR (created_at, id) < ($7, $8::uuid))
   AND ($10::text IS NULL OR status = $10)
 ORDER BY created_at DESC, id DESC
 LIMIT $9;

-- name: list_refunds
-- Refunds with their charge's account, credit token and tool, newest first.
SELECT f.id, f.charge_id, c.account_id, f.merchant_id, c.token_jti, c.tool, f.amount_micros,
       f.reason, f.created_at
  FROM refunds f JOIN charges c ON c.id = f.charge_id
 WHERE ($1::timestamptz IS NULL OR f.created_at >= $1) AND ($2::timestamptz IS NULL OR f.created_at < $2)
   AND ($3::uuid IS NULL OR c.account_id = $3) AND ($4::uuid IS NULL OR f.merchant_id = $4)
   AND ($5::uuid IS NULL OR c.token_jti = $5) AND ($6::text IS NULL OR c.tool = $6)
   AND ($7::timestamptz IS NULL OR (f.created_at, f.id) < ($7, $8::uuid))
 ORDER BY f.created_at DESC, f.id DESC
 LIMIT $9;

-- name: list_accounts
-- Accounts with balances, by name then id, after the cursor ($3 name, $4 id); $1 a
-- case-insensitive substring of the name (NULL: any), $2 kind (NULL: any), $5 limit.
SELECT id, kind, name, credits_posted - debits_posted AS balance_micros,
       credits_posted - debits_posted - debits_pending AS available_micros,
       debits_pending AS pending_debits_micros, created_at
  FROM accounts
 WHERE ($1::text IS NULL OR strpos(lower(name), lower($1)) > 0)
   AND ($2::text IS NULL OR kind = $2)
   AND ($3::text IS NULL OR (lower(name), id) > ($3, $4::uuid))
 ORDER BY lower(name), id
 LIMIT $5;

-- name: list_merchants
-- Merchants with their revenue balances, by name then id, after the cursor.
SELECT m.id, m.name, m.revenue_account_id, m.created_at,
       a.credits_posted - a.debits_posted AS revenue_balance_micros,
       a.credits_pending AS revenue_pending_micros
  FROM merchants m JOIN accounts a ON a.id = m.revenue_account_id
 WHERE ($1::text IS NULL OR strpos(lower(m.name), lower($1)) > 0)
   AND ($3::text IS NULL OR (lower(m.name), m.id) > ($3, $4::uuid))
   AND $2::text IS NULL
 ORDER BY lower(m.name), m.id
 LIMIT $5;

-- name: list_refusals
-- Recent refused money requests (kept a week), newest first.
SELECT id, account_id, merchant_id, token_jti, kind, tool, amount_micros, code,
       refusal_limit AS "limit", status, created_at
  FROM recent_refusals
 WHERE ($1::timestamptz IS NULL OR created_at >= $1) AND ($2::timestamptz IS NULL OR created_at < $2)
   AND ($3::uuid IS NULL OR account_id = $3) AND ($4::uuid IS NULL OR merchant_id = $4)
   AND ($5::uuid IS NULL OR token_jti = $5) AND ($6::text IS NULL OR tool = $6)
   AND ($7::timestamptz IS NULL OR (created_at, id) < ($7, $8::bigint))
 ORDER BY created_at DESC, id DESC
 LIMIT $9;

-- name: insert_refusals
INSERT INTO recent_refusals (account_id, merchant_id, token_jti, kind, tool, amount_micros,
                             code, refusal_limit, status)
SELECT * FROM unnest($1::uuid[], $2::uuid[], $3::uuid[], $4::text[], $5::text[], $6::bigint[],
                     $7::text[], $8::text[], $9::integer[]);

-- name: prune_refusals
DELETE FROM recent_refusals WHERE created_at < now() - interval '7 days';
