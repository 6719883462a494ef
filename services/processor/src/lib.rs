//! The processor host binary serving the built-in processors.
