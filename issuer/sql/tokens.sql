-- name: insert_token
-- `ancestors` is filled in by the trigger `credit_tokens_set_ancestors`.
INSERT INTO credit_tokens (jti, account_id, parent_jti, depth, kid, audiences, tools,
                           max_per_call_micros, cap_micros, not_before, expires_at, description)
VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12)
RETURNING created_at;

-- name: account_exists
SELECT EXISTS (SELECT 1 FROM accounts WHERE id = $1 AND kind = 'customer_wallet');

-- name: get_token
-- One credit token of an account (NULL account: any; operators only).
SELECT jti, account_id, parent_jti, depth, kid, audiences, tools, max_per_call_micros,
       cap_micros, spent_micros, held_micros, not_before, expires_at, revoked_at,
       description, created_at
  FROM credit_tokens
 WHERE jti = $1 AND ($2::uuid IS NULL OR account_id = $2);

-- name: list_tokens
-- One page of an account's credit tokens, oldest first, after cursor token $2.
SELECT jti, account_id, parent_jti, depth, kid, audiences, tools, max_per_call_micros,
       cap_micros, spent_micros, held_micros, not_before, expires_at, revoked_at,
       description, created_at
  FROM credit_tokens
 WHERE account_id = $1
   AND ($2::uuid IS NULL
        OR (created_at, jti) > (SELECT created_at, jti FROM credit_tokens
                                 WHERE jti = $2 AND account_id = $1))
 ORDER BY created_at, jti
 LIMIT $3;

-- name: lock_token
-- The parent of a delegation, locked so concurrent revocations and delegations
-- of the same token serialise.
SELECT jti FROM credit_tokens WHERE jti = $1 FOR UPDATE;

-- name: token_chain
-- A credit token and all its ancestors, with the account's available balance.
-- Delegation depth is bounded, so this is at most DEPTH_MAX + 1 rows.
SELECT c.jti, c.parent_jti, c.account_id, c.depth, c.cap_micros, c.spent_micros,
       c.held_micros, c.revoked_at, c.expires_at,
       a.credits_posted - a.debits_posted - a.debits_pending AS account_available_micros
  FROM credit_tokens t
  JOIN credit_tokens c ON c.jti = ANY(t.ancestors || t.jti)
  JOIN accounts a ON a.id = c.account_id
 WHERE t.jti = $1
 ORDER BY c.depth;

-- name: revoke_token
-- Revoke one credit token (idempotent: the first revocation time is kept).
UPDATE credit_tokens SET revoked_at = coalesce(revoked_at, now())
 WHERE jti = $1 AND ($2::uuid IS NULL OR account_id = $2)
RETURNING revoked_at;

-- name: revoke_descendants
-- Every descendant of a revoked token is revoked too, so the charge path needs
-- only look at a token's own row (and, belt and braces, its ancestors).
UPDATE credit_tokens SET revoked_at = $2
 WHERE ancestors @> ARRAY[$1::uuid] AND revoked_at IS NULL;
