//! The `#[cluster::main]` attribute (see issue 4).
