-- name: insert_account
-- Create an account; flags follow from its kind.
INSERT INTO accounts (id, kind, name, debits_must_not_exceed_credits)
VALUES ($1, $2, $3, $4)
RETURNING *;

-- name: get_account
SELECT * FROM accounts WHERE id = $1;

-- name: create_transfer
-- One round trip: checks, journal row and both balances (see ledger_create_transfer).
SELECT ledger_create_transfer($1, $2, $3, $4, $5, $6, $7, $8);

-- name: get_transfer
SELECT * FROM transfers WHERE id = $1;

-- name: list_account_transfers
-- One page of an account's journal, oldest first, after cursor `seq` $2.
SELECT * FROM transfers
 WHERE (debit_account_id = $1 OR credit_account_id = $1) AND seq > $2
 ORDER BY seq
 LIMIT $3;
