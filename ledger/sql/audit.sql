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
