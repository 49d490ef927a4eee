-- the application transaction with taskq.enqueue()
\set c random(1, 100000)
BEGIN;
INSERT INTO bench.orders (customer, amount) VALUES (:c, 42);
SELECT taskq.enqueue('noop', jsonb_build_object('customer', :c::int));
END;
