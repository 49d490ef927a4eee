-- one task per transaction; t is read in the statement that commits
SELECT taskq.enqueue('lat', jsonb_build_object('t', clock_timestamp()));
