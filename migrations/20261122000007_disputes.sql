-- Disputes get a table of their own, so a dispute's state (and the customer's
-- "disputed" flag derived from it) is the same whatever order its created and
-- closed events arrive in.
CREATE TABLE disputes (
    stripe_dispute_id   text PRIMARY KEY,
    customer_id         uuid NOT NULL REFERENCES customers (id),
    charge              text NOT NULL,
    status              text NOT NULL,
    snapshot_created    bigint NOT NULL,
    snapshot_rank       integer NOT NULL,
    snapshot_event_id   text COLLATE "C" NOT NULL,
    created_at          timestamptz NOT NULL DEFAULT now(),
    updated_at          timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX disputes_customer ON disputes (customer_id);

ALTER TABLE customers DROP COLUMN disputed_at, DROP COLUMN dispute_id;
