-- Queries of the fault test's final checks (`ledger torture`).

-- name: transfers_by_id
-- The journal's rows for the transfers clients were acknowledged.
SELECT id, amount, code, debit_account_id, credit_account_id
  FROM transfers
 WHERE id = ANY($1::uuid[]);

-- name: money_movements
-- Every posted movement touching the given accounts (pending transfers and
-- voids move no posted money).
SELECT id, code, amount
  FROM transfers
 WHERE kind IN ('single', 'post_pending')
   AND (debit_account_id = ANY($1::uuid[]) OR credit_account_id = ANY($1::uuid[]))
 ORDER BY seq;

-- name: balances
-- Posted balance (credit-normal) and what is still held, per account.
SELECT id, credits_posted - debits_posted AS balance, debits_pending
  FROM accounts
 WHERE id = ANY($1::uuid[]);

-- name: holds_by_status
SELECT status, count(*) AS holds FROM holds GROUP BY status ORDER BY status;
