-- the application transaction with a plain INSERT of the same outbox row
\set c random(1, 100000)
BEGIN;
INSERT INTO bench.orders (customer, amount) VALUES (:c, 42);
INSERT INTO plain.tasks (priority, max_attempts, owner, run_at, timeout, handler, queue, payload)
VALUES (0, 5, current_user::regrole, now(), '5 min', 'noop', 'default', jsonb_build_object('customer', :c::int));
END;
