//! Hostile input against held messages: forged entries, signatures, listings.
