-- The idempotency ledger and audit trail of every Stripe event billing receives.
-- An event's row and all its effects commit in one transaction: a row with
-- status 'processed' or 'ignored' means "applied exactly once".
CREATE TABLE stripe_events (
    id            text PRIMARY KEY,                 -- evt_...
    type          text        NOT NULL,
    created       bigint      NOT NULL,             -- Stripe's unix seconds
    livemode      boolean     NOT NULL,
    api_version   text,
    account       text,
    payload       jsonb,                            -- raw event; NULL once past retention
    received_at   timestamptz NOT NULL DEFAULT now(),
    processed_at  timestamptz,
    status        text        NOT NULL
        CHECK (status IN ('processed', 'ignored', 'failed', 'dead_lettered')),
    attempts      integer     NOT NULL DEFAULT 1,
    last_error    text
);
CREATE INDEX stripe_events_type_created ON stripe_events (type, created);
CREATE INDEX stripe_events_failed ON stripe_events (status) WHERE status IN ('failed', 'dead_lettered');
CREATE INDEX stripe_events_received_at ON stripe_events (received_at);

-- Messages billing gave up on, for an operator to inspect and replay.
CREATE TABLE dead_letters (
    id               bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    event_id         text,                          -- NULL when the body was not an event at all
    event_type       text,
    routing_key      text        NOT NULL,
    payload          bytea       NOT NULL,          -- exactly the bytes received
    error            text        NOT NULL,
    attempts         integer     NOT NULL,
    resolution       text        NOT NULL DEFAULT 'open'
        CHECK (resolution IN ('open', 'replayed', 'discarded')),
    created_at       timestamptz NOT NULL DEFAULT now(),
    resolved_at      timestamptz,
    resolved_by      text
);
CREATE INDEX dead_letters_open ON dead_letters (created_at) WHERE resolution = 'open';
CREATE INDEX dead_letters_event_id ON dead_letters (event_id);
