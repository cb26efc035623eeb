-- name: insert_api_key
INSERT INTO api_keys (id, role, subject_id, key_hash, key_prefix) VALUES ($1, $2, $3, $4, $5);

-- name: find_api_key
-- The live key with this hash, if any.
SELECT id, role, subject_id FROM api_keys WHERE key_hash = $1 AND revoked_at IS NULL;

-- name: count_operator_keys
SELECT count(*) FROM api_keys WHERE role = 'operator' AND revoked_at IS NULL;

-- name: revoke_operator_keys
UPDATE api_keys SET revoked_at = now() WHERE role = 'operator' AND revoked_at IS NULL;

-- name: lock_operator_keys
-- Serialises first-start operator-key creation across processes.
SELECT pg_advisory_xact_lock(1926001);
