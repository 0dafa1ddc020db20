-- Checkout sessions a user asked for, for the per-user limit (5 a minute by default).
-- A sliding window: a request is allowed while fewer than the limit were allowed in the
-- window before it. Rows older than the window are deleted as the user's next request is
-- checked, and hourly by billing's retention task for users who did not come back.
CREATE TABLE checkout_attempts (
    user_id       text NOT NULL,
    attempted_at  timestamptz NOT NULL
);
CREATE INDEX checkout_attempts_user ON checkout_attempts (user_id, attempted_at);
CREATE INDEX checkout_attempts_at ON checkout_attempts (attempted_at);
