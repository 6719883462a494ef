//! Pipeline manifests: one serde model for YAML, JSON and proto, one validation path.
