//! Hostile input against the plugin chain: deadlines under load, hold keeps modified bodies.
