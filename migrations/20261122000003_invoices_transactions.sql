-- Invoices (money in integer minor units with its currency) and the typed
-- transaction history shown to customers. Invoice snapshots carry the same
-- ordering key as subscriptions.

CREATE TABLE invoices (
    stripe_invoice_id       text PRIMARY KEY,
    stripe_customer_id      text NOT NULL REFERENCES customers (stripe_customer_id),
    stripe_subscription_id  text,
    status                  text NOT NULL,          -- draft, open, paid, void, uncollectible
    number                  text,
    billing_reason          text,
    currency                char(3) NOT NULL,
    amount_due              bigint NOT NULL,
    amount_paid             bigint NOT NULL,
    amount_remaining        bigint NOT NULL,
    attempted               boolean NOT NULL DEFAULT false,
    attempt_count           integer NOT NULL DEFAULT 0,
    hosted_invoice_url      text,
    invoice_pdf             text,
    invoice_created         bigint NOT NULL,        -- the invoice's own creation time (orders invoices)
    period_start            timestamptz,
    period_end              timestamptz,
    paid_at                 timestamptz,
    snapshot_created        bigint NOT NULL,
    snapshot_rank           integer NOT NULL,
    snapshot_event_id       text COLLATE "C" NOT NULL,
    created_at              timestamptz NOT NULL DEFAULT now(),
    updated_at              timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX invoices_customer ON invoices (stripe_customer_id, invoice_created DESC);
CREATE INDEX invoices_subscription ON invoices (stripe_subscription_id, invoice_created DESC);

CREATE TABLE transactions (
    id                  uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    customer_id         uuid NOT NULL REFERENCES customers (id),
    kind                text NOT NULL
        CHECK (kind IN ('subscription_payment', 'upgrade', 'downgrade', 'cancel', 'credit_topup', 'refund')),
    status              text NOT NULL
        CHECK (status IN ('pending', 'succeeded', 'failed', 'canceled')),
    currency            char(3),
    amount              bigint,                     -- minor units; NULL for non-monetary (cancel)
    stripe_object_id    text NOT NULL,              -- invoice, checkout session, refund, or event id
    description         text,
    occurred_at         timestamptz NOT NULL,
    created_at          timestamptz NOT NULL DEFAULT now(),
    updated_at          timestamptz NOT NULL DEFAULT now(),
    UNIQUE (kind, stripe_object_id)
);
CREATE INDEX transactions_customer ON transactions (customer_id, occurred_at DESC);
