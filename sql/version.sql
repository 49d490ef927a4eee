--
-- version: the API refuses SQL objects of another version than the
-- library's, and a version that was never committed is not remembered.
--
-- Runs in a database of its own, so that installing 0.1 there leaves the
-- other tests' database alone.
--
SELECT current_database() AS regress_db \gset
CREATE DATABASE taskq_version;
\c taskq_version
CREATE EXTENSION taskq VERSION '0.1';

-- at 0.1, the API says so, with the way out
SELECT taskq.cancel(1);

-- updated inside a transaction, the API works there ...
BEGIN;
ALTER EXTENSION taskq UPDATE;
SELECT taskq.cancel(1);
ROLLBACK;

-- ... and after the rollback the objects are at 0.1 again, and refused
SELECT extversion FROM pg_extension WHERE extname = 'taskq';
SELECT taskq.cancel(1);

-- the same with the update rolled back to a savepoint
BEGIN;
SAVEPOINT before_update;
ALTER EXTENSION taskq UPDATE;
SELECT taskq.cancel(1);
ROLLBACK TO SAVEPOINT before_update;
SELECT taskq.cancel(1);
ROLLBACK;

-- a committed update is taken up
ALTER EXTENSION taskq UPDATE;
SELECT taskq.cancel(1);

\c :regress_db
DROP DATABASE taskq_version;
