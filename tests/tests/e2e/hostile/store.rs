//! Hostile input against the store: client clocks, stray receipts, rows the database refuses.
