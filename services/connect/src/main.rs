//! `flowplane-connect`: the built-in sources and consumers behind the SDK's connector
//! entry point (to be written).

fn main() {}
