-- name: insert_challenge
INSERT INTO wallet_challenges (nonce, account_id, address, message, expires_at)
VALUES ($1, $2, $3, $4, $5);

-- name: consume_challenge
-- Use a live challenge of this account once; no row back if unknown, used or expired.
UPDATE wallet_challenges SET used_at = now()
 WHERE nonce = $1 AND account_id = $2 AND used_at IS NULL AND expires_at > now()
RETURNING address, message;

-- name: link_wallet
-- No row back when the address is already linked (to this or another account).
INSERT INTO linked_wallets (address, account_id) VALUES ($1, $2)
ON CONFLICT (address) DO NOTHING
RETURNING address, account_id, linked_at;

-- name: get_wallet
SELECT address, account_id, linked_at FROM linked_wallets WHERE address = $1;

-- name: list_wallets
-- Oldest first, after cursor address $2.
SELECT address, account_id, linked_at FROM linked_wallets
 WHERE account_id = $1
   AND ($2::text IS NULL
        OR (linked_at, address) > (SELECT linked_at, address FROM linked_wallets
                                    WHERE address = $2 AND account_id = $1))
 ORDER BY linked_at, address
 LIMIT $3;
