//! Placeholder: this example is not written yet.
fn main() {}
