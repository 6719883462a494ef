//! The flowplane v1 API as Rust types: one module per proto package, generated at
//! build time from `proto/`. Nothing here is hand-written but re-exports and small
//! wire helpers; validation and domain types live in the crates that use them.

pub mod codec;
mod convert;
pub use convert::{
    any_accepts, json_to_struct, json_to_value, json_type_name, param_type_matches,
    param_value_allowed, struct_to_json, type_set_name, value_to_json,
};

/// The encoded `FileDescriptorSet` of every flowplane package, for gRPC reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] = tonic::include_file_descriptor_set!("flowplane_descriptor");

/// `flowplane.common.v1`: health, kinds, metrics, paging, error details.
pub mod common {
    #[allow(clippy::all, missing_docs)]
    pub mod v1 {
        tonic::include_proto!("flowplane.common.v1");
    }
}

/// `flowplane.data.v1`: the typed payload model.
pub mod data {
    #[allow(clippy::all, missing_docs)]
    pub mod v1 {
        tonic::include_proto!("flowplane.data.v1");
    }
}

/// `flowplane.processor.v1`: the processor host service.
pub mod processor {
    #[allow(clippy::all, missing_docs)]
    pub mod v1 {
        tonic::include_proto!("flowplane.processor.v1");
    }
}

/// `flowplane.controlplane.v1`: the registry service.
pub mod controlplane {
    #[allow(clippy::all, missing_docs)]
    pub mod v1 {
        tonic::include_proto!("flowplane.controlplane.v1");
    }
}

/// `flowplane.connect.v1`: the source and consumer services standing pipelines use.
pub mod connect {
    #[allow(clippy::all, missing_docs)]
    pub mod v1 {
        tonic::include_proto!("flowplane.connect.v1");
    }
}

/// `flowplane.streaming.v1`: the streaming pipeline service.
pub mod streaming {
    #[allow(clippy::all, missing_docs)]
    pub mod v1 {
        tonic::include_proto!("flowplane.streaming.v1");
    }
}
