-- Payment methods (never a card number: brand, last4 and expiry only), the
-- customer snapshot gate, Stripe entitlement features, disputes, and credits.

ALTER TABLE customers
    ADD COLUMN default_payment_method   text,
    ADD COLUMN stripe_features          text[] NOT NULL DEFAULT '{}',
    ADD COLUMN features_snapshot_created bigint,
    ADD COLUMN features_snapshot_event_id text COLLATE "C",
    ADD COLUMN snapshot_created         bigint,
    ADD COLUMN snapshot_rank            integer,
    ADD COLUMN snapshot_event_id        text COLLATE "C",
    ADD COLUMN disputed_at              timestamptz,
    ADD COLUMN dispute_id               text;

CREATE TABLE payment_methods (
    stripe_payment_method_id  text PRIMARY KEY,
    stripe_customer_id        text REFERENCES customers (stripe_customer_id),  -- NULL once detached
    type                      text NOT NULL,
    brand                     text,
    last4                     char(4),
    exp_month                 smallint,
    exp_year                  smallint,
    attached                  boolean NOT NULL,
    snapshot_created          bigint NOT NULL,
    snapshot_rank             integer NOT NULL,
    snapshot_event_id         text COLLATE "C" NOT NULL,
    created_at                timestamptz NOT NULL DEFAULT now(),
    updated_at                timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX payment_methods_customer ON payment_methods (stripe_customer_id) WHERE attached;

-- Append-only: every change of a balance is a row with a unique idempotency key.
CREATE TABLE credit_ledger (
    id                bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    customer_id       uuid NOT NULL REFERENCES customers (id),
    delta             bigint NOT NULL,
    reason            text NOT NULL
        CHECK (reason IN ('topup', 'refund_clawback', 'consume', 'reserve', 'release', 'settle', 'admin_adjustment')),
    idempotency_key   text NOT NULL UNIQUE,
    stripe_object_id  text,             -- checkout session for a top-up; charge for a clawback
    payment_intent    text,             -- what a refund of the charge refers to
    stripe_event_id   text,
    created_at        timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX credit_ledger_customer ON credit_ledger (customer_id, id);
CREATE INDEX credit_ledger_payment_intent ON credit_ledger (payment_intent) WHERE payment_intent IS NOT NULL;

-- The sum of the ledger per customer, kept in the same transaction as each entry.
-- May go negative when credits bought by a refunded charge were already used.
CREATE TABLE credit_balances (
    customer_id  uuid PRIMARY KEY REFERENCES customers (id),
    balance      bigint NOT NULL DEFAULT 0,
    updated_at   timestamptz NOT NULL DEFAULT now()
);
