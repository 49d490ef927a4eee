-- the application transaction with taskq.enqueue() to a logical handler
-- (a logical-decoding message in the transaction, no outbox row)
\set c random(1, 100000)
BEGIN;
INSERT INTO bench.orders (customer, amount) VALUES (:c, 42);
SELECT taskq.enqueue('kafka', jsonb_build_object('customer', :c::int));
END;
