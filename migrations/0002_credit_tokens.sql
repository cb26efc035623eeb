-- Signing keys and credit tokens.
--
-- A credit token's scope is proven by its PASETO signature; the money side
-- (cap, spent, held) lives here. Each token row carries its own counters, and a
-- delegated token's spending is also added to every ancestor's row, so each row's
-- CHECK bounds the whole subtree under it.

CREATE TABLE signing_keys (
    kid text PRIMARY KEY,                 -- PASERK k4.pid of the public key
    purpose text NOT NULL CONSTRAINT signing_keys_purpose CHECK (purpose IN ('credit_token', 'receipt')),
    public_key bytea NOT NULL CONSTRAINT signing_keys_public_key_length CHECK (length(public_key) = 32),
    -- The Ed25519 seed. Never leaves the service, never logged.
    secret_seed bytea NOT NULL CONSTRAINT signing_keys_secret_seed_length CHECK (length(secret_seed) = 32),
    state text NOT NULL CONSTRAINT signing_keys_state CHECK (state IN ('active', 'verify_only', 'retired')),
    created_at timestamptz NOT NULL DEFAULT now(),
    retired_at timestamptz
);
-- Exactly one active signing key per purpose at a time.
CREATE UNIQUE INDEX signing_keys_one_active ON signing_keys (purpose) WHERE state = 'active';

CREATE TABLE credit_tokens (
    jti uuid PRIMARY KEY,
    account_id uuid NOT NULL REFERENCES accounts (id),
    parent_jti uuid REFERENCES credit_tokens (jti),
    depth smallint NOT NULL DEFAULT 0 CONSTRAINT credit_tokens_depth CHECK (depth BETWEEN 0 AND 8),
    -- Every ancestor's jti, root first (empty for a root token), so the charge path
    -- reads and debits a whole chain with `jti = ANY(ancestors || jti)`, no recursion.
    -- Set from the parent's row by the trigger below, whatever the INSERT says.
    ancestors uuid[] NOT NULL DEFAULT '{}',
    kid text NOT NULL REFERENCES signing_keys (kid),
    audiences text[] NOT NULL,             -- merchant ids, or '*' for any
    tools text[] NOT NULL,                 -- exact names, or prefixes ending in '*'
    max_per_call_micros bigint NOT NULL CONSTRAINT credit_tokens_max_per_call_range
        CHECK (max_per_call_micros BETWEEN 1 AND 1000000000000),
    cap_micros bigint NOT NULL CONSTRAINT credit_tokens_cap_range
        CHECK (cap_micros BETWEEN 1 AND 1000000000000),
    spent_micros bigint NOT NULL DEFAULT 0 CONSTRAINT credit_tokens_spent_nonneg CHECK (spent_micros >= 0),
    held_micros bigint NOT NULL DEFAULT 0 CONSTRAINT credit_tokens_held_nonneg CHECK (held_micros >= 0),
    not_before timestamptz NOT NULL,
    expires_at timestamptz NOT NULL,
    revoked_at timestamptz,
    description text CONSTRAINT credit_tokens_description_length CHECK (length(description) <= 200),
    created_at timestamptz NOT NULL DEFAULT now(),
    -- Invariant 3 for tokens: remaining budget (cap - spent - held) is never below 0.
    CONSTRAINT credit_tokens_within_cap CHECK (spent_micros + held_micros <= cap_micros),
    CONSTRAINT credit_tokens_window CHECK (not_before < expires_at),
    CONSTRAINT credit_tokens_root_depth CHECK ((parent_jti IS NULL) = (depth = 0)),
    CONSTRAINT credit_tokens_ancestors CHECK (
        cardinality(ancestors) = depth
        AND (parent_jti IS NULL OR ancestors[cardinality(ancestors)] = parent_jti))
);
CREATE INDEX credit_tokens_account ON credit_tokens (account_id, created_at);
CREATE INDEX credit_tokens_parent ON credit_tokens (parent_jti);
-- Revocation finds every descendant of a token with `ancestors @> ARRAY[$1]`.
CREATE INDEX credit_tokens_ancestors ON credit_tokens USING gin (ancestors);

CREATE FUNCTION credit_tokens_set_ancestors() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF NEW.parent_jti IS NULL THEN
        NEW.ancestors := '{}';
    ELSE
        SELECT p.ancestors || p.jti INTO NEW.ancestors
          FROM credit_tokens p WHERE p.jti = NEW.parent_jti;
        -- A missing parent leaves NULL here; the foreign key then names the problem.
        NEW.ancestors := coalesce(NEW.ancestors, ARRAY[NEW.parent_jti]);
    END IF;
    RETURN NEW;
END $$;

CREATE TRIGGER credit_tokens_set_ancestors BEFORE INSERT ON credit_tokens
    FOR EACH ROW EXECUTE FUNCTION credit_tokens_set_ancestors();
