//! Placeholder.
//! Replaced below.
fn main() {}
