//! Placeholder; filled in with the four queries.
fn main() {}
