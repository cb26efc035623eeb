-- name: lock_key
-- Serialises requests with one key: a concurrent duplicate waits here until the
-- first commits (then replays its response) or rolls back (then runs itself).
-- Two int4 halves: the first names this use of advisory locks.
SELECT pg_advisory_xact_lock(1926012, $1::int4);

-- name: find_response
-- The remembered response, unless it is past its retention.
SELECT request_hash, response FROM idempotency_keys
 WHERE principal = $1 AND key_hash = $2 AND expires_at > now();

-- name: remember_response
-- An expired row that the sweeper has not deleted yet is replaced.
INSERT INTO idempotency_keys (principal, key_hash, request_hash, response, expires_at)
VALUES ($1, $2, $3, $4, now() + make_interval(secs => $5))
ON CONFLICT (principal, key_hash) DO UPDATE
   SET request_hash = EXCLUDED.request_hash, response = EXCLUDED.response,
       created_at = now(), expires_at = EXCLUDED.expires_at
 WHERE idempotency_keys.expires_at <= now();

-- name: purge_expired
-- Bounded, so one sweep is short.
DELETE FROM idempotency_keys
 WHERE ctid = ANY (ARRAY(SELECT ctid FROM idempotency_keys WHERE expires_at <= now() LIMIT $1));
