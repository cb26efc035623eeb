-- name: insert_active_key_if_missing
-- First start: an active key for a purpose unless one exists. The partial unique
-- index `signing_keys_one_active` makes concurrent starts agree on one key.
INSERT INTO signing_keys (kid, purpose, public_key, secret_seed, state)
VALUES ($1, $2, $3, $4, 'active')
ON CONFLICT (purpose) WHERE state = 'active' DO NOTHING
RETURNING kid;

-- name: active_key
-- The signing key that signs new credit tokens or receipts of a purpose.
SELECT kid, purpose, public_key, secret_seed
  FROM signing_keys
 WHERE purpose = $1 AND state = 'active';

-- name: lock_signing_keys
-- Serialises rotations (and retirements) across processes.
SELECT pg_advisory_xact_lock(1926002);

-- name: demote_active_key
-- The old active key keeps verifying what it signed.
UPDATE signing_keys SET state = 'verify_only' WHERE purpose = $1 AND state = 'active'
RETURNING kid;

-- name: insert_active_key
INSERT INTO signing_keys (kid, purpose, public_key, secret_seed, state)
VALUES ($1, $2, $3, $4, 'active');

-- name: retire_key
-- A retired key verifies nothing any more; the active key cannot be retired.
UPDATE signing_keys SET state = 'retired', retired_at = now()
 WHERE kid = $1 AND state = 'verify_only'
RETURNING kid;

-- name: key_state
SELECT state FROM signing_keys WHERE kid = $1;

-- name: list_keys
-- Listing for operators: never the secret seed.
SELECT kid, purpose, state, created_at, retired_at
  FROM signing_keys
 ORDER BY purpose, created_at, kid;
