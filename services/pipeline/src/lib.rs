//! The streaming pipeline service.
