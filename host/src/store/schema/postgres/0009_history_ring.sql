-- The history ring is SQLite's, as its log was (version 8).
SELECT 1;
