-- name: public_keys
-- The public halves of every signing key that still verifies (never the seeds).
SELECT kid, purpose, public_key, state
  FROM signing_keys
 WHERE state IN ('active', 'verify_only')
 ORDER BY purpose, created_at;
