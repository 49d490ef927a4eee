-- taskq.executors: the worker pools (DESIGN §7).  ALTER SYSTEM runs the
-- setting's check, so each bad value shows its exact refusal here; no
-- value is written unless it is accepted, and the test resets what it
-- wrote.  (Reloads, and the dispatchers they start and stop, are
-- test/t/009_executors.pl's.)

-- the value of DESIGN §7 is accepted
ALTER SYSTEM SET taskq.executors = 'mail: queues=mail,newsletters workers=4; reports: queues=reports workers=1 batch_size=1';
-- blanks around the separators, empty parts and a final ";" are accepted
ALTER SYSTEM SET taskq.executors = '  mail :queues=mail   workers=2 ;; reports: queues=reports;';
-- workers defaults to 1, and 0 is allowed (the executor's queues then wait)
ALTER SYSTEM SET taskq.executors = 'mail: queues=mail; idle: queues=later workers=0';
-- an empty value: the default executor alone serves every queue
ALTER SYSTEM SET taskq.executors = '';

-- syntax: no ":" after the name
ALTER SYSTEM SET taskq.executors = 'mail queues=mail';
-- syntax: a key without "="
ALTER SYSTEM SET taskq.executors = 'mail: queues';
-- syntax: no name before ":"
ALTER SYSTEM SET taskq.executors = ': queues=mail';
-- syntax: an empty queue in the list
ALTER SYSTEM SET taskq.executors = 'mail: queues=mail,,news';
-- an unknown key
ALTER SYSTEM SET taskq.executors = 'mail: queues=mail threads=4';
-- a missing queues
ALTER SYSTEM SET taskq.executors = 'mail: workers=4';
-- queues twice in one executor
ALTER SYSTEM SET taskq.executors = 'mail: queues=mail queues=news';
-- a queue in two executors
ALTER SYSTEM SET taskq.executors = 'mail: queues=mail,news; bulk: queues=bulk,news';
-- a duplicate executor name
ALTER SYSTEM SET taskq.executors = 'mail: queues=mail; mail: queues=news';
-- the executor "default" named explicitly
ALTER SYSTEM SET taskq.executors = 'default: queues=mail workers=3';
-- workers out of range
ALTER SYSTEM SET taskq.executors = 'mail: queues=mail workers=65';
ALTER SYSTEM SET taskq.executors = 'mail: queues=mail workers=-1';
ALTER SYSTEM SET taskq.executors = 'mail: queues=mail workers=four';
-- batch_size out of range
ALTER SYSTEM SET taskq.executors = 'mail: queues=mail batch_size=0';
ALTER SYSTEM SET taskq.executors = 'mail: queues=mail batch_size=65';
-- an invalid name: longer than 63 bytes
ALTER SYSTEM SET taskq.executors = 'mail: queues=q234567890123456789012345678901234567890123456789012345678901234';
-- an invalid name: a control character
ALTER SYSTEM SET taskq.executors = E'ma\x01il: queues=mail';

-- none of the refused values was written: the setting is as before
SELECT name, setting FROM pg_file_settings WHERE name = 'taskq.executors';
ALTER SYSTEM RESET taskq.executors;
SELECT count(*) FROM pg_file_settings WHERE name = 'taskq.executors';

-- taskq.workers has the columns executor and wakeups, last; the
-- launcher's are NULL
SELECT attname FROM pg_attribute
 WHERE attrelid = 'taskq.workers'::regclass AND attnum > 0 ORDER BY attnum DESC LIMIT 2;
SELECT type, executor, wakeups FROM taskq.workers WHERE type = 'launcher';
