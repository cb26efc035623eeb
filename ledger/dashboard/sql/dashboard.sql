-- name: insert_session
INSERT INTO dashboard_sessions (id_hash, api_key_id, csrf_token, expires_at)
VALUES ($1, $2, $3, now() + make_interval(secs => $4));

-- name: find_session
-- A live session and the API key it came from (still not revoked).
SELECT s.csrf_token, s.expires_at, k.id AS key_id, k.role, k.subject_id
  FROM dashboard_sessions s JOIN api_keys k ON k.id = s.api_key_id
 WHERE s.id_hash = $1 AND s.expires_at > now() AND k.revoked_at IS NULL;

-- name: delete_session
DELETE FROM dashboard_sessions WHERE id_hash = $1;

-- name: prune_sessions
DELETE FROM dashboard_sessions WHERE expires_at <= now();

-- name: account_name
SELECT name FROM accounts WHERE id = $1;

-- name: merchant_name
SELECT name FROM merchants WHERE id = $1;
