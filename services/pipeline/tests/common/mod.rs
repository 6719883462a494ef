//! What the sequencer tests that need no processor share.

use std::{collections::HashMap, sync::Arc};

use flowplane_manifest::{Manifest, Plan, validate};
use flowplane_proto::{
    data::v1::DataTypeHint,
    processor::v1::{PortSpec, ProcessorCapability},
};

/// The plan of `manifest` over one stateless processor, `pass`, with an `in` input and an
/// `out` output that take any payload.
pub fn plan_over_pass(manifest: &str) -> Arc<Plan> {
    let any = |name: &str| PortSpec {
        name: name.into(),
        types: vec![DataTypeHint::Any as i32],
        description: String::new(),
    };
    let catalog: HashMap<String, ProcessorCapability> = [(
        "pass".to_string(),
        ProcessorCapability {
            name: "pass".into(),
            inputs: vec![any("in")],
            outputs: vec![any("out")],
            stateless: true,
            ..Default::default()
        },
    )]
    .into();
    let manifest = Manifest::from_text(manifest).unwrap();
    Arc::new(validate(&manifest, &catalog).unwrap())
}
