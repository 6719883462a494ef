//! Pipeline manifests. One serde model ([`Manifest`]) read from YAML or JSON files and
//! converted to and from the proto `PipelineManifest`, and one validation path
//! ([`validate`]) that the CLI, `ValidatePipeline` and session init all share. Validation
//! reports every problem at once; it never talks to the network itself.

mod model;
mod suggest;
mod validate;

pub use model::{Edge, Manifest, Node, PipelineInput, PipelineOutput, Placement, PortRef};
pub use suggest::closest;
pub use validate::{
    Capabilities, Destination, Offline, Plan, PlanNode, Problem, ProblemKind, Problems, validate,
};

/// Errors reading a manifest file.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot read manifest {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("manifest {path} is not valid yaml or json: {message}")]
    Parse { path: String, message: String },
}

/// Result alias for this crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;
