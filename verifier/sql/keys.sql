-- name: public_keys
-- The public halves of every signing key that still verifies (never the seeds).
SELECT kid, purpose, public_key, state
  FROM signing_keys
 WHERE state IN ('active', 'verify_only')
 ORDER BY purpose, created_at;

-- name: receipt_signing_keys
-- Every receipt key: the seed of each that still signs or verifies (so a replay is
-- signed by the key recorded for its receipt), and only the kid of retired ones.
SELECT kid, state, CASE WHEN state <> 'retired' THEN secret_seed END AS secret_seed
  FROM signing_keys
 WHERE purpose = 'receipt';
