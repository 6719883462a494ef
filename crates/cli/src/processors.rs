//! `flowplane processors [NAME]`: the catalog of processors across the live hosts, as the
//! control plane lists them: each processor's ports with their types, its params (type,
//! required, default, allowed values, description) and the hosts serving it. Read-only.

use std::io::Write;

use flowplane_proto::common::v1::{ComponentKind, HealthStatus};

use crate::{Cli, Error, Output, Result, components, render};

/// Arguments of `flowplane processors`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Only this processor; a name no host serves is an error suggesting the closest.
    #[arg(value_name = "NAME")]
    pub name: Option<String>,
    /// Count every registered host, not only the healthy and degraded ones a pipeline uses.
    #[arg(long)]
    pub all: bool,
    /// Output format: table shortens long descriptions, wide does not; json/yaml give
    /// each processor's declaration with a `hosts` list.
    #[arg(short, long, value_enum, default_value_t)]
    pub output: Output,
}

/// Whether a pipeline would use this host now (what the pipeline service picks from).
fn live(status: HealthStatus) -> bool {
    matches!(status, HealthStatus::Healthy | HealthStatus::Degraded)
}

/// Lists the catalog.
pub async fn run(cli: &Cli, args: &Args, out: &mut (dyn Write + Send)) -> Result<()> {
    let control_plane = crate::control_plane(cli)?;
    let request = flowplane_proto::controlplane::v1::ListComponentsRequest {
        kind: ComponentKind::Processor as i32,
        ..Default::default()
    };
    let hosts = components::list_all(&control_plane, request).await?;
    let hosts: Vec<_> = hosts
        .into_iter()
        .filter(|c| args.all || live(c.status()))
        .collect();
    let mut entries = render::catalog(&hosts);
    if let Some(name) = &args.name {
        let names: Vec<String> = entries.iter().map(|e| e.capability.name.clone()).collect();
        entries.retain(|e| &e.capability.name == name);
        if entries.is_empty() {
            let hint = flowplane_manifest::closest(name, names.iter().map(String::as_str))
                .map_or_else(String::new, |n| format!("; did you mean {n:?}?"));
            let which = if args.all { "no host" } else { "no live host" };
            return Err(Error::NotFound(format!(
                "{which} serves processor {name:?}{hint}"
            )));
        }
    }
    match args.output {
        Output::Table => write!(out, "{}", render::catalog_text(&entries, true))?,
        Output::Wide => write!(out, "{}", render::catalog_text(&entries, false))?,
        Output::Json | Output::Yaml => {
            crate::write_value(out, args.output, &render::catalog_json(&entries), false)?
        }
    }
    Ok(())
}
