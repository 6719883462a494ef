//! The control plane: registration, leases, heartbeats, discovery and watch.
