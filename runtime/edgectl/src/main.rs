//! edgectl: the operator CLI for edged.
fn main() {}
