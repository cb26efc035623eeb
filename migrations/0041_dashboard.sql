-- Dashboard sign-in sessions, and the recent refusals an owner's dashboard shows.

-- A session is what an API key was exchanged for at sign-in: the browser holds a
-- random session id in an HttpOnly cookie; only its SHA-256 is stored, and never the
-- API key. It lasts LEDGER_DASHBOARD_SESSION_S, and ends with its API key.
CREATE TABLE dashboard_sessions (
    id_hash bytea PRIMARY KEY,
    api_key_id uuid NOT NULL REFERENCES api_keys (id),
    csrf_token text NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now(),
    expires_at timestamptz NOT NULL
);
CREATE INDEX dashboard_sessions_expiry ON dashboard_sessions (expires_at);

-- Refused money requests that name an account (402 budget exhausted, 403 scope, 401
-- revoked or expired credit token, 429 …), written in batches off the request path
-- and kept for a week.
CREATE TABLE recent_refusals (
    id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    account_id uuid NOT NULL,
    merchant_id uuid,
    token_jti uuid,
    kind text NOT NULL,
    tool text,
    amount_micros bigint,
    code text NOT NULL,
    refusal_limit text,
    status integer NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX recent_refusals_account ON recent_refusals (account_id, created_at);
CREATE INDEX recent_refusals_created ON recent_refusals (created_at);
