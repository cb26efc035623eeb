-- Idempotency-Key header: the response to a creating request, kept so that a retry
-- with the same key gets it back instead of creating a second resource.
--
-- A row exists only for a request that succeeded: it is written in the same
-- transaction as what the request created, so a crash leaves neither. The response
-- is sealed (XSalsa20-Poly1305) with a key derived from the caller's credential and
-- the idempotency key, neither of which is stored: a response that carries a secret
-- shown once (an owner API key, a credit token) is not readable from this table.
CREATE TABLE idempotency_keys (
    -- Whose key: `<role>:<subject id>` for an API key, `credit_token:<sha256>` for a
    -- credit token. Keys of different principals never meet.
    principal text NOT NULL,
    -- SHA-256 of the Idempotency-Key header value.
    key_hash bytea NOT NULL,
    -- SHA-256 of method, path, query and canonical body: "the same request".
    request_hash bytea NOT NULL,
    -- nonce || ciphertext of (status, headers, body) as the client first got it.
    response bytea NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now(),
    expires_at timestamptz NOT NULL,
    PRIMARY KEY (principal, key_hash),
    CONSTRAINT idempotency_keys_hashes CHECK (length(key_hash) = 32 AND length(request_hash) = 32),
    CONSTRAINT idempotency_keys_window CHECK (expires_at > created_at)
);

CREATE INDEX idempotency_keys_expires_at ON idempotency_keys (expires_at);
