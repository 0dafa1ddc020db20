-- Entitlements: test users (an explicit list and email-domain patterns, with
-- expiry, audited) and credit reservations (holds for long operations).

-- A rule making matching subjects test users: full access (the rule's tier, or
-- the plans file's highest tier) and test_user = true in every answer. Rules are
-- never deleted: revoking sets revoked_at/by, so the table is its own audit trail.
CREATE TABLE test_users (
    id           bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    kind         text NOT NULL CHECK (kind IN ('user_id', 'email', 'email_domain')),
    -- user id as given; email and domain lower-cased. A domain matches its
    -- addresses; `*.example.com` matches its subdomains' addresses.
    value        text NOT NULL,
    tier         text,
    granted_by   text NOT NULL,
    reason       text NOT NULL,
    expires_at   timestamptz NOT NULL,
    created_at   timestamptz NOT NULL DEFAULT now(),
    revoked_at   timestamptz,
    revoked_by   text
);
CREATE INDEX test_users_active ON test_users (kind, value) WHERE revoked_at IS NULL;

-- Every entitlements replica reloads its test-user rules when they change.
CREATE FUNCTION test_users_notify() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('tollgate_test_users', '');
    RETURN NULL;
END $$;
CREATE TRIGGER test_users_changed AFTER INSERT OR UPDATE OR DELETE ON test_users
    FOR EACH STATEMENT EXECUTE FUNCTION test_users_notify();

-- A hold on credits. The held amount left the balance when reserved (a
-- 'reserve' ledger row); settling returns what was not spent ('settle'),
-- releasing returns all of it ('release'), each exactly once.
CREATE TABLE credit_reservations (
    id               uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    customer_id      uuid NOT NULL REFERENCES customers (id),
    amount           bigint NOT NULL CHECK (amount > 0),
    status           text NOT NULL CHECK (status IN ('held', 'settled', 'released', 'expired')),
    settled_amount   bigint,
    idempotency_key  text NOT NULL UNIQUE,
    expires_at       timestamptz NOT NULL,
    created_at       timestamptz NOT NULL DEFAULT now(),
    closed_at        timestamptz
);
CREATE INDEX credit_reservations_expiry ON credit_reservations (expires_at) WHERE status = 'held';
CREATE INDEX credit_reservations_customer ON credit_reservations (customer_id);
