-- The history log is SQLite's (its commits rewrite whole pages); PostgreSQL writes in place.
SELECT 1;
