-- From API 2025-03-31 ("basil") on, an invoice no longer names the payment that
-- paid it; `invoice_payment` objects (event `invoice_payment.paid`) link the two.
-- A dispute names only the payment, so this is how it finds its customer.
CREATE TABLE invoice_payments (
    stripe_invoice_payment_id text PRIMARY KEY,
    stripe_invoice_id         text NOT NULL,
    payment_intent            text,
    charge                    text,
    status                    text NOT NULL,
    stripe_event_id           text,
    created_at                timestamptz NOT NULL DEFAULT now(),
    updated_at                timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX invoice_payments_payment_intent ON invoice_payments (payment_intent) WHERE payment_intent IS NOT NULL;
CREATE INDEX invoice_payments_charge ON invoice_payments (charge) WHERE charge IS NOT NULL;
