//! Placeholder: this benchmark is not written yet.
fn main() {}
