-- Where `tollgate reconcile` stopped in Stripe's events list, per stream. Stripe lets a
-- list request filter on at most 20 event types, so the types billing handles are asked
-- for in groups; each group (a stream, named by a hash of its types) has its own cursor:
-- the newest event of that group applied so far. A cursor only moves after the events up
-- to it are applied.
CREATE TABLE reconcile_cursors (
    stream         text PRIMARY KEY,            -- 'events:<hash of the types>'
    event_types    text[] NOT NULL,             -- the group, for people reading the table
    event_id       text NOT NULL,               -- evt_...: the list resumes just after it
    event_created  bigint NOT NULL,             -- Stripe's unix seconds (30-day retention check)
    updated_at     timestamptz NOT NULL DEFAULT now()
);
