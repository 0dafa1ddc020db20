-- A stored subscription or invoice snapshot may be Stripe's own copy of the object,
-- retrieved when two snapshots of the same second and the same lifecycle rank disagreed
-- (docs/billing-state.md, "Ambiguous ties"). snapshot_refetched_at is when that request
-- was sent; NULL for a snapshot that came with an event. A refetched snapshot keeps the
-- ordering key of the tie it settled and wins every later tie of that key.
ALTER TABLE subscriptions ADD COLUMN snapshot_refetched_at timestamptz;
ALTER TABLE invoices ADD COLUMN snapshot_refetched_at timestamptz;
