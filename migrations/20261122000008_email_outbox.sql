-- Payment emails. A row is written in the same transaction as the event that
-- causes it (a rolled-back event queues nothing) and sent over SMTP after
-- commit, at most once (docs/billing-state.md, "Emails"):
--
--   pending ──claim (committed before any SMTP)──▶ sending ──▶ sent
--      ▲                                             │
--      └── refused before the data, attempts left ───┤──▶ failed   (refused for good, or out of attempts)
--                                                    └──▶ unknown  (no answer after the data, or the
--                                                                   sender died: maybe delivered;
--                                                                   never resent automatically)
--   pending ──▶ superseded (no longer true before it went out: invoice paid, customer deleted, ...)

CREATE TABLE email_outbox (
    id                bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    event_id          text NOT NULL,                  -- the Stripe event that queued it
    kind              text NOT NULL
        CHECK (kind IN ('payment_failed', 'trial_ending', 'receipt', 'cancellation', 'cancellation_scheduled')),
    -- One email per fact, whichever events report it: receipt:<invoice>,
    -- payment_failed:<invoice>:<attempt>, trial_ending:<subscription>:<trial end>,
    -- cancellation:<subscription>, cancellation_scheduled:<subscription>:<period end>.
    dedupe_key        text NOT NULL UNIQUE,
    customer_id       uuid NOT NULL REFERENCES customers (id),
    stripe_object_id  text NOT NULL,                  -- the invoice or subscription it is about
    recipient         text NOT NULL,                  -- personal data: never logged
    data              jsonb NOT NULL,                 -- template data: amounts in minor units + currency, URLs, times
    status            text NOT NULL DEFAULT 'pending'
        CHECK (status IN ('pending', 'sending', 'sent', 'failed', 'unknown', 'superseded')),
    attempts          integer NOT NULL DEFAULT 0,     -- SMTP attempts started
    next_attempt_at   timestamptz NOT NULL DEFAULT now(),
    claimed_at        timestamptz,                    -- when the current or last attempt started
    message_id        text,                           -- Message-ID header, fixed at the first attempt
    smtp_reply        text,                           -- the server's answer to the message (its queue id)
    last_error        text,
    sent_at           timestamptz,
    created_at        timestamptz NOT NULL DEFAULT now(),
    updated_at        timestamptz NOT NULL DEFAULT now(),
    -- A redelivered event cannot queue its email twice.
    UNIQUE (event_id, kind)
);
-- The sender's pick: due pending rows, oldest first.
CREATE INDEX email_outbox_due ON email_outbox (next_attempt_at, id) WHERE status = 'pending';
-- Expired leases.
CREATE INDEX email_outbox_sending ON email_outbox (claimed_at) WHERE status = 'sending';
-- What an operator looks at.
CREATE INDEX email_outbox_attention ON email_outbox (created_at) WHERE status IN ('failed', 'unknown');
CREATE INDEX email_outbox_customer ON email_outbox (customer_id, created_at);
