-- Customers, subscriptions and the audit log of access changes.
--
-- Every Stripe snapshot row carries its ordering key (snapshot_created,
-- snapshot_rank, snapshot_event_id): a snapshot replaces the stored one only when
-- its key is greater, so the stored state is the same whatever order events
-- arrive in (docs/billing-state.md).

CREATE TABLE customers (
    id                   uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    user_id              text UNIQUE,                    -- ours: checkout client_reference_id or metadata
    email                text,
    stripe_customer_id   text UNIQUE,
    -- Derived from the customer's subscriptions (and invoices) in the same transaction.
    access_status        text NOT NULL DEFAULT 'none',
    tier                 text,
    test_user            boolean NOT NULL DEFAULT false,
    test_user_by         text,
    test_user_reason     text,
    test_user_until      timestamptz,
    deleted_at           timestamptz,
    created_at           timestamptz NOT NULL DEFAULT now(),
    updated_at           timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX customers_email ON customers (lower(email));

CREATE TABLE subscriptions (
    stripe_subscription_id  text PRIMARY KEY,
    stripe_customer_id      text NOT NULL REFERENCES customers (stripe_customer_id),
    status                  text NOT NULL,
    price_id                text,
    product_id              text,
    tier                    text NOT NULL,
    plan                    text,
    billing_interval        text,
    current_period_start    timestamptz,
    current_period_end      timestamptz,
    cancel_at_period_end    boolean NOT NULL DEFAULT false,
    canceled_at             timestamptz,
    ended_at                timestamptz,
    trial_end               timestamptz,
    snapshot_created        bigint NOT NULL,
    snapshot_rank           integer NOT NULL,
    snapshot_event_id       text COLLATE "C" NOT NULL,
    created_at              timestamptz NOT NULL DEFAULT now(),
    updated_at              timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX subscriptions_customer ON subscriptions (stripe_customer_id);

CREATE TABLE access_audit (
    id               bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    customer_id      uuid NOT NULL REFERENCES customers (id),
    previous_status  text NOT NULL,
    new_status       text NOT NULL,
    previous_tier    text,
    new_tier         text,
    trigger_source   text NOT NULL
        CHECK (trigger_source IN ('stripe_webhook', 'admin_action', 'test_user_setup', 'reconciliation')),
    stripe_event_id  text,
    admin_id         text,
    notes            text,
    created_at       timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX access_audit_customer ON access_audit (customer_id, created_at);
