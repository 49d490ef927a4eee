-- one row per transaction; t is read in the statement that commits
INSERT INTO plain.tasks (priority, max_attempts, owner, run_at, timeout, handler, queue, payload)
VALUES (0, 5, current_user::regrole, now(), '5 min', 'lat', 'default', jsonb_build_object('t', clock_timestamp()));
