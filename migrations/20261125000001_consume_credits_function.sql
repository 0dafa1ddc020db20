-- ConsumeCredits for a whole batch of calls in one round trip.
--
-- Entitlements group-commits concurrent ConsumeCredits calls. Issued as separate
-- statements, a batch held the hot balance row's lock across four client round trips
-- (lock, read keys, write, COMMIT), and the lock hold time bounded the spending rate.
-- Called in autocommit, this function holds it only while PostgreSQL itself works and
-- flushes the commit.
--
-- Arguments are parallel arrays, one element per call, in arrival order; keys are
-- already namespaced by the caller ('consume:<customer>:<key>'). Returns one row per
-- call, in the same order: outcome is 'ok', 'replayed' (the key was already spent with
-- the same amount: nothing spent now), 'insufficient' or 'key_reused' (the key was
-- spent with another amount), and the customer's balance after the batch's calls
-- up to and including this one.
CREATE FUNCTION consume_credits(customers uuid[], amounts bigint[], keys text[])
RETURNS TABLE (outcome text, remaining bigint)
LANGUAGE plpgsql
-- Plan each call's statements afresh. A plan cached by a session while the ledger
-- was small (a fresh database) scans the whole ledger for the keys ever after; it
-- made a batch four times slower as the ledger grew.
SET plan_cache_mode = force_custom_plan
AS $$
DECLARE
    balances jsonb;
    spent jsonb;    -- idempotency key -> delta: those already in the ledger, then ours
    balance bigint;
    written_customers uuid[] := '{}';
    written_deltas bigint[] := '{}';
    written_keys text[] := '{}';
    inserted bigint;
BEGIN
    -- Balance rows are locked in customer order, as every writer of them does, so
    -- concurrent batches (of this or another replica) queue rather than deadlock.
    SELECT coalesce(jsonb_object_agg(locked.customer_id::text, locked.balance), '{}')
      INTO balances
      FROM (SELECT b.customer_id, b.balance FROM credit_balances b
             WHERE b.customer_id = ANY(customers)
             ORDER BY b.customer_id FOR UPDATE) AS locked;
    -- A separate statement takes a fresh snapshot, so it sees every key committed by
    -- whoever held the lock before us. (Read in the locking statement, it would not.)
    SELECT coalesce(jsonb_object_agg(l.idempotency_key, l.delta), '{}')
      INTO spent
      FROM credit_ledger l WHERE l.idempotency_key = ANY(keys);

    FOR i IN 1 .. coalesce(array_length(customers, 1), 0) LOOP
        balance := coalesce((balances ->> customers[i]::text)::bigint, 0);
        IF spent ? keys[i] THEN
            outcome := CASE WHEN (spent ->> keys[i])::bigint = -amounts[i]
                            THEN 'replayed' ELSE 'key_reused' END;
        ELSIF balance < amounts[i] THEN
            outcome := 'insufficient';
        ELSE
            balance := balance - amounts[i];
            balances := jsonb_set(balances, ARRAY[customers[i]::text], to_jsonb(balance));
            spent := spent || jsonb_build_object(keys[i], -amounts[i]);
            written_customers := written_customers || customers[i];
            written_deltas := written_deltas || -amounts[i];
            written_keys := written_keys || keys[i];
            outcome := 'ok';
        END IF;
        remaining := balance;
        RETURN NEXT;
    END LOOP;

    IF array_length(written_keys, 1) > 0 THEN
        INSERT INTO credit_ledger (customer_id, delta, reason, idempotency_key)
        SELECT w.customer_id, w.delta, 'consume', w.key
          FROM unnest(written_customers, written_deltas, written_keys) AS w(customer_id, delta, key)
        ON CONFLICT (idempotency_key) DO NOTHING;
        GET DIAGNOSTICS inserted = ROW_COUNT;
        IF inserted <> array_length(written_keys, 1) THEN
            -- Someone wrote one of these keys without the balance lock: apply nothing.
            RAISE EXCEPTION 'credit ledger key written concurrently; batch rolled back'
                USING ERRCODE = '40001';
        END IF;
        UPDATE credit_balances b
           SET balance = (balances ->> b.customer_id::text)::bigint, updated_at = now()
         WHERE b.customer_id = ANY(written_customers);
    END IF;
END
$$;
