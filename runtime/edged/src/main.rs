//! edged: the edge daemon (agent + hub in one process).
fn main() {}
