-- name: sum_of_balances
-- Invariant 1: money is only moved, never made. Both sums must be 0.
SELECT coalesce(sum(credits_posted - debits_posted), 0)::bigint AS posted,
       coalesce(sum(credits_pending - debits_pending), 0)::bigint AS pending
  FROM accounts;

-- name: balances_not_matching_journal
-- Invariant 2: every account's four counters equal what its journal says.
WITH unresolved AS (
    SELECT p.* FROM transfers p
     WHERE p.kind = 'pending'
       AND NOT EXISTS (SELECT 1 FROM transfers r WHERE r.pending_id = p.id)
), posted AS (
    SELECT * FROM transfers WHERE kind IN ('single', 'post_pending')
), journal AS (
    SELECT a.id,
           (SELECT coalesce(sum(amount), 0) FROM posted WHERE debit_account_id = a.id) AS debits_posted,
           (SELECT coalesce(sum(amount), 0) FROM posted WHERE credit_account_id = a.id) AS credits_posted,
           (SELECT coalesce(sum(amount), 0) FROM unresolved WHERE debit_account_id = a.id) AS debits_pending,
           (SELECT coalesce(sum(amount), 0) FROM unresolved WHERE credit_account_id = a.id) AS credits_pending
      FROM accounts a
)
SELECT a.id, a.kind,
       a.debits_posted, j.debits_posted AS journal_debits_posted,
       a.credits_posted, j.credits_posted AS journal_credits_posted,
       a.debits_pending, j.debits_pending AS journal_debits_pending,
       a.credits_pending, j.credits_pending AS journal_credits_pending
  FROM accounts a JOIN journal j USING (id)
 WHERE a.debits_posted <> j.debits_posted OR a.credits_posted <> j.credits_posted
    OR a.debits_pending <> j.debits_pending OR a.credits_pending <> j.credits_pending
 ORDER BY a.id;

-- name: wallets_below_zero
-- Invariant 3: no account that must not go negative has.
SELECT id, kind, credits_posted - debits_posted AS balance, debits_pending
  FROM accounts
 WHERE debits_must_not_exceed_credits AND credits_posted - debits_posted < 0
 ORDER BY id;

-- name: pending_not_backed
-- Invariant 4: what is held on an account never exceeds what backs it.
SELECT id, kind, credits_posted - debits_posted AS balance, debits_pending
  FROM accounts
 WHERE debits_must_not_exceed_credits AND debits_pending > credits_posted - debits_posted
 ORDER BY id;

-- name: pending_exceeding_hold
-- A posted amount never exceeds its hold, and a resolution matches its hold's accounts.
SELECT r.id, r.pending_id FROM transfers r JOIN transfers p ON p.id = r.pending_id
 WHERE r.amount > p.amount
    OR r.debit_account_id <> p.debit_account_id OR r.credit_account_id <> p.credit_account_id
    OR (r.kind = 'void_pending' AND r.amount <> p.amount)
 ORDER BY r.id;

-- name: tokens_over_budget
-- Invariant 3 for credit tokens: no remaining budget below zero.
SELECT jti AS id, cap_micros, spent_micros, held_micros
  FROM credit_tokens
 WHERE spent_micros < 0 OR held_micros < 0 OR spent_micros + held_micros > cap_micros
 ORDER BY jti;

-- name: token_counters_not_matching
-- Each credit token's spent/held equal what was charged/held (net of refunds) with
-- it or any of its descendants.
WITH RECURSIVE subtree (root, jti) AS (
    SELECT jti, jti FROM credit_tokens
    UNION ALL
    SELECT s.root, t.jti FROM subtree s JOIN credit_tokens t ON t.parent_jti = s.jti
), expected AS (
    SELECT s.root,
           coalesce(sum((SELECT coalesce(sum(c.amount_micros - c.refunded_micros), 0)
                           FROM charges c WHERE c.token_jti = s.jti)), 0) AS spent,
           coalesce(sum((SELECT coalesce(sum(h.amount_micros), 0)
                           FROM holds h WHERE h.token_jti = s.jti AND h.status = 'pending')), 0) AS held
      FROM subtree s GROUP BY s.root
)
SELECT t.jti AS id, t.spent_micros, e.spent AS expected_spent, t.held_micros, e.held AS expected_held
  FROM credit_tokens t JOIN expected e ON e.root = t.jti
 WHERE t.spent_micros <> e.spent OR t.held_micros <> e.held
 ORDER BY t.jti;

-- name: charges_not_matching_journal
-- Every charge, capture and refund is exactly one journal transfer of its amount,
-- and every journal charge/capture/refund transfer belongs to exactly one of them.
SELECT coalesce(c.id, t.id) AS id, c.amount_micros, t.amount, t.code
  FROM charges c FULL JOIN (SELECT * FROM transfers WHERE code IN ('charge', 'capture')) t
    ON t.id = c.transfer_id
 WHERE c.id IS NULL OR t.id IS NULL OR c.amount_micros <> t.amount
UNION ALL
SELECT coalesce(f.id, t.id), f.amount_micros, t.amount, t.code
  FROM refunds f FULL JOIN (SELECT * FROM transfers WHERE code = 'refund') t ON t.id = f.transfer_id
 WHERE f.id IS NULL OR t.id IS NULL OR f.amount_micros <> t.amount
UNION ALL
SELECT c.id, c.amount_micros, c.refunded_micros, 'refunded_total'
  FROM charges c
 WHERE c.refunded_micros <> (SELECT coalesce(sum(amount_micros), 0) FROM refunds f WHERE f.charge_id = c.id);

-- name: holds_not_matching_journal
-- A pending hold's transfer is unresolved; a resolved hold's transfer is resolved.
SELECT h.id, h.status, r.kind AS resolution
  FROM holds h LEFT JOIN transfers r ON r.pending_id = h.transfer_id
 WHERE (h.status = 'pending') <> (r.id IS NULL)
    OR (h.status = 'captured' AND r.kind <> 'post_pending')
    OR (h.status IN ('voided', 'expired') AND r.kind <> 'void_pending');
