-- the application transaction alone
\set c random(1, 100000)
BEGIN;
INSERT INTO bench.orders (customer, amount) VALUES (:c, 42);
END;
