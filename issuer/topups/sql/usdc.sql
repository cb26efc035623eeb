-- name: get_cursor
SELECT next_block, last_block_hash, halted_reason FROM usdc_cursors
 WHERE chain_id = $1 AND contract = $2 AND treasury = $3;

-- name: init_cursor
INSERT INTO usdc_cursors (chain_id, contract, treasury, next_block) VALUES ($1, $2, $3, $4)
ON CONFLICT DO NOTHING;

-- name: lock_cursor
SELECT next_block, last_block_hash, halted_reason FROM usdc_cursors
 WHERE chain_id = $1 AND contract = $2 AND treasury = $3
   FOR UPDATE;

-- name: advance_cursor
UPDATE usdc_cursors SET next_block = $4, last_block_hash = $5, updated_at = now()
 WHERE chain_id = $1 AND contract = $2 AND treasury = $3;

-- name: halt_cursor
UPDATE usdc_cursors SET halted_reason = $4, updated_at = now()
 WHERE chain_id = $1 AND contract = $2 AND treasury = $3;

-- name: resume_cursor
-- Clear a halt and rescan from block $4 (deposits are idempotent, a rescan repeats nothing).
UPDATE usdc_cursors SET halted_reason = NULL, next_block = $4, last_block_hash = NULL, updated_at = now()
 WHERE chain_id = $1 AND contract = $2 AND treasury = $3;

-- name: linked_account
SELECT account_id FROM linked_wallets WHERE address = $1;

-- name: insert_deposit
-- One row per log; no row back when the log was recorded before.
INSERT INTO usdc_deposits (id, chain_id, tx_hash, log_index, block_number, block_hash,
                           from_address, amount_micros, account_id, status, credited_at)
VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, CASE WHEN $10 = 'credited' THEN now() END)
ON CONFLICT ON CONSTRAINT usdc_deposits_log DO NOTHING
RETURNING id;

-- name: lock_deposit
SELECT * FROM usdc_deposits WHERE id = $1 FOR UPDATE;

-- name: assign_deposit
UPDATE usdc_deposits SET account_id = $2, status = 'credited', credited_at = now()
 WHERE id = $1 AND status = 'unattributed'
RETURNING *;

-- name: list_deposits
-- Newest first, optionally only one status, after cursor deposit $2.
SELECT * FROM usdc_deposits
 WHERE ($1::text IS NULL OR status = $1)
   AND ($2::uuid IS NULL
        OR (created_at, id) < (SELECT created_at, id FROM usdc_deposits WHERE id = $2))
 ORDER BY created_at DESC, id DESC
 LIMIT $3;

-- name: recent_deposit_blocks
-- Blocks of deposits in a window below the cursor, to find what a deep reorg touched.
SELECT DISTINCT block_number, block_hash FROM usdc_deposits
 WHERE chain_id = $1 AND block_number BETWEEN $2 AND $3
 ORDER BY block_number
 LIMIT 100;

-- name: deposits_in_block
SELECT id FROM usdc_deposits WHERE chain_id = $1 AND block_number = $2 AND block_hash = $3;

-- name: insert_reorg_alert
INSERT INTO usdc_reorg_alerts (chain_id, block_number, expected_hash, found_hash, affected_deposits)
VALUES ($1, $2, $3, $4, $5)
ON CONFLICT ON CONSTRAINT usdc_reorg_alerts_once DO NOTHING;

-- name: list_reorg_alerts
SELECT id, chain_id, block_number, expected_hash, found_hash, affected_deposits, detected_at
  FROM usdc_reorg_alerts
 WHERE ($1::bigint IS NULL OR id < $1)
 ORDER BY id DESC
 LIMIT $2;

-- name: account_kind
SELECT kind FROM accounts WHERE id = $1;
