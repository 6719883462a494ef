//! Tracing, OTLP export, trace propagation across gRPC and Prometheus metrics for every flowplane binary.
