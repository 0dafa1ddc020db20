-- Transactional outbox of entitlement changes. A row is written in the same
-- transaction as the change it announces (so a rolled-back change announces
-- nothing), and a relay publishes unpublished rows in id order (so a crash
-- between commit and publish delays the announcement, never loses it).
--
-- `id` is the global version entitlements resumes from; `customer_version`
-- increases per customer under the customer's row lock, so it follows commit
-- order exactly.

ALTER TABLE customers ADD COLUMN access_version bigint NOT NULL DEFAULT 0;

CREATE TABLE entitlement_outbox (
    id                  bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    customer_id         uuid NOT NULL REFERENCES customers (id),
    customer_version    bigint NOT NULL,
    reason              text NOT NULL,
    payload             jsonb NOT NULL,
    created_at          timestamptz NOT NULL DEFAULT now(),
    published_at        timestamptz
);
CREATE INDEX entitlement_outbox_unpublished ON entitlement_outbox (id) WHERE published_at IS NULL;
CREATE INDEX entitlement_outbox_customer ON entitlement_outbox (customer_id, customer_version);
