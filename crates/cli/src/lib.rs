//! The flowplane command-line client.
