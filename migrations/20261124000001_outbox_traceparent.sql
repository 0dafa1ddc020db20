-- The W3C trace context of the transaction that wrote an outbox row, so the relay's
-- publish (and entitlements' invalidation after it) joins the trace of the webhook
-- that caused the change. NULL when no trace was active (an admin change without
-- tracing, rows written before this migration): the relay then starts a new trace.
ALTER TABLE entitlement_outbox ADD COLUMN traceparent text;
