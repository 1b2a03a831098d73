-- Intents live about a second (the settle journal deletes them in bulk), so the table is small and
-- busy: without the index by age (the weekly expiry scans the few rows), each intent costs one
-- index write less.
DROP INDEX IF EXISTS inboxd_intents_by_age;
