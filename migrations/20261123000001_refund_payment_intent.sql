-- A refund can arrive before the top-up it refunds (Stripe does not order
-- deliveries). Keeping the refunded charge's payment intent and amount on the
-- refund row lets the top-up, when it lands, claw back what was already refunded.
ALTER TABLE transactions
    ADD COLUMN payment_intent text,
    ADD COLUMN charge_amount  bigint;
CREATE INDEX transactions_refund_payment_intent ON transactions (payment_intent) WHERE kind = 'refund';
