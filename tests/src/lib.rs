//! Harness for cross-service tests: starts the real services through their `run`
//! functions on 127.0.0.1 listeners, and stops them when the handle drops.
