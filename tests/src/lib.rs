//! Cross-service tests that start the real services.
