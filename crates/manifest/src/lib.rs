//! Pipeline manifests. One serde model ([`Manifest`]) read from YAML or JSON files and
//! converted to and from the proto `PipelineManifest`, and one validation path
//! ([`validate`]) that the CLI, `ValidatePipeline` and session init all share. Validation
//! reports every problem at once; it never talks to the network itself.
//!
//! Two kinds of file: a session pipeline (no `kind`, or `kind: Pipeline`) that `flowplane
//! run` streams inputs through, and a standing pipeline (`kind: StandingPipeline`,
//! [`StandingManifest`], format in [`standing`]) that the control plane stores and runs
//! from a source to consumers. Each parser refuses the other kind naming it.

mod model;
pub mod standing;
mod suggest;
mod validate;

pub use model::{
    Edge, Manifest, Node, PIPELINE_KIND, PipelineInput, PipelineOutput, Placement, PortRef,
};
pub use standing::{Connector, Delivery, STANDING_KIND, StandingKind, StandingManifest};
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
    /// A session manifest where a standing pipeline was expected; `found` says what it is.
    #[error(
        "manifest {path} is not a StandingPipeline manifest: it is {found}; a standing pipeline says `kind: StandingPipeline` (a session pipeline runs with `flowplane run`)"
    )]
    NotStanding { path: String, found: String },
    /// A standing pipeline manifest where a session pipeline was expected.
    #[error(
        "manifest {path} is a StandingPipeline manifest, not a session pipeline: apply it with `flowplane pipelines apply`"
    )]
    NotSession { path: String },
    /// A standing pipeline manifest with structural problems, each naming its field.
    #[error("manifest {path} is not a valid standing pipeline ({}): {}", count(.problems), list(.problems))]
    Invalid { path: String, problems: Problems },
}

fn count(problems: &Problems) -> String {
    match problems.0.len() {
        1 => "1 problem".into(),
        n => format!("{n} problems"),
    }
}

fn list(problems: &Problems) -> String {
    problems
        .0
        .iter()
        .map(|p| p.message.as_str())
        .collect::<Vec<_>>()
        .join("; ")
}

/// Result alias for this crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;
