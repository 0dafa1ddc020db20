-- What paid an invoice, so a dispute (which names only the charge and payment
-- intent) can be traced to its customer.
ALTER TABLE invoices
    ADD COLUMN payment_intent text,
    ADD COLUMN charge text;
CREATE INDEX invoices_payment_intent ON invoices (payment_intent) WHERE payment_intent IS NOT NULL;
CREATE INDEX invoices_charge ON invoices (charge) WHERE charge IS NOT NULL;
