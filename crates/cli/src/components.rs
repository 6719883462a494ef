//! `flowplane components list|get|watch`: read-only views of the control plane's
//! registry. Filtering happens on the server; this module only asks and prints. It never
//! registers, heartbeats or deregisters anything.

use std::{collections::HashMap, io::Write, time::SystemTime};

use flowplane_proto::{
    common::v1::{ComponentKind, HealthStatus, PageRequest},
    controlplane::v1::{self as pb, Component},
};
use tokio_stream::StreamExt;

use crate::{Cli, Error, Output, Result, render};

/// Largest page asked for; `list` follows page tokens until the end.
const PAGE_SIZE: u32 = 1000;

/// `flowplane components ...`
#[derive(Debug, clap::Subcommand)]
pub enum Command {
    /// List components, in id order.
    List(ListArgs),
    /// Show every detail of one component.
    Get(GetArgs),
    /// Print the matching components, then every change as it happens.
    Watch(WatchArgs),
}

/// Kind filter values.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Kind {
    Processor,
    Source,
    Consumer,
}

impl From<Kind> for ComponentKind {
    fn from(kind: Kind) -> Self {
        match kind {
            Kind::Processor => ComponentKind::Processor,
            Kind::Source => ComponentKind::Source,
            Kind::Consumer => ComponentKind::Consumer,
        }
    }
}

/// Status filter values (the effective status).
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Status {
    Starting,
    Healthy,
    Degraded,
    Unhealthy,
    Stopping,
}

impl From<Status> for HealthStatus {
    fn from(status: Status) -> Self {
        match status {
            Status::Starting => HealthStatus::Starting,
            Status::Healthy => HealthStatus::Healthy,
            Status::Degraded => HealthStatus::Degraded,
            Status::Unhealthy => HealthStatus::Unhealthy,
            Status::Stopping => HealthStatus::Stopping,
        }
    }
}

/// Arguments of `components list`.
#[derive(Debug, clap::Args)]
pub struct ListArgs {
    /// Only this kind.
    #[arg(long, value_enum)]
    pub kind: Option<Kind>,
    /// Only this effective status.
    #[arg(long, value_enum)]
    pub status: Option<Status>,
    /// Only hosts serving this processor. Without --status this is a discovery query:
    /// only healthy and degraded hosts are shown.
    #[arg(long, value_name = "PROCESSOR")]
    pub capability: Option<String>,
    /// Only components with this metadata label; repeat to require several.
    #[arg(long = "label", value_name = "KEY=VALUE", value_parser = parse_label)]
    pub labels: Vec<(String, String)>,
    /// Output format.
    #[arg(long, short, value_enum, default_value_t)]
    pub output: Output,
}

/// Arguments of `components get`.
#[derive(Debug, clap::Args)]
pub struct GetArgs {
    /// Component id.
    pub id: String,
    /// Output format.
    #[arg(long, short, value_enum, default_value_t)]
    pub output: Output,
}

/// Arguments of `components watch`.
#[derive(Debug, clap::Args)]
pub struct WatchArgs {
    /// Only this kind.
    #[arg(long, value_enum)]
    pub kind: Option<Kind>,
    /// Only hosts serving this processor (every status is shown).
    #[arg(long, value_name = "PROCESSOR")]
    pub capability: Option<String>,
    /// Output format (json prints one object per line).
    #[arg(long, short, value_enum, default_value_t)]
    pub output: Output,
}

fn parse_label(raw: &str) -> std::result::Result<(String, String), String> {
    match raw.split_once('=') {
        Some((key, value)) if !key.is_empty() => Ok((key.to_string(), value.to_string())),
        _ => Err(format!("{raw:?} is not KEY=VALUE")),
    }
}

fn rpc(rpc: &'static str) -> impl FnOnce(tonic::Status) -> Error {
    move |status| Error::Rpc { rpc, status }
}

/// Runs a `components` subcommand.
pub async fn run(cli: &Cli, command: &Command, out: &mut (dyn Write + Send)) -> Result<()> {
    match command {
        Command::List(args) => list(cli, args, out).await,
        Command::Get(args) => get(cli, args, out).await,
        Command::Watch(args) => watch(cli, args, out).await,
    }
}

/// The list request for `args`, first page.
pub fn list_request(args: &ListArgs) -> pb::ListComponentsRequest {
    pb::ListComponentsRequest {
        kind: args.kind.map_or(ComponentKind::Unspecified, Into::into) as i32,
        status: args.status.map_or(HealthStatus::Unspecified, Into::into) as i32,
        capability: args.capability.clone().unwrap_or_default(),
        labels: args.labels.iter().cloned().collect::<HashMap<_, _>>(),
        page: Some(PageRequest {
            page_size: PAGE_SIZE,
            page_token: String::new(),
        }),
    }
}

/// Every component `request` matches, following page tokens to the end.
pub async fn list_all(
    control_plane: &crate::ControlPlane,
    request: pb::ListComponentsRequest,
) -> Result<Vec<Component>> {
    // All pages from one replica: a page token means something only to the replica that
    // handed it out, so a replica failing mid-way starts the listing again on the next.
    control_plane
        .call("ListComponents", |mut client| {
            let mut request = request.clone();
            request.page.get_or_insert(PageRequest {
                page_size: PAGE_SIZE,
                page_token: String::new(),
            });
            async move {
                let mut components: Vec<Component> = Vec::new();
                loop {
                    let page = client.list_components(request.clone()).await?.into_inner();
                    components.extend(page.components);
                    let token = page.page.unwrap_or_default().next_page_token;
                    if token.is_empty() {
                        return Ok(components);
                    }
                    request.page.get_or_insert_default().page_token = token;
                }
            }
        })
        .await
}

async fn list(cli: &Cli, args: &ListArgs, out: &mut (dyn Write + Send)) -> Result<()> {
    let control_plane = crate::control_plane(cli)?;
    let components = list_all(&control_plane, list_request(args)).await?;
    match args.output {
        Output::Table => write!(out, "{}", render::table(&components, SystemTime::now()))?,
        Output::Wide => write!(
            out,
            "{}",
            render::wide_table(&components, SystemTime::now())
        )?,
        Output::Json | Output::Yaml => {
            let values: Vec<_> = components.iter().map(render::json).collect();
            crate::write_value(out, args.output, &serde_json::Value::Array(values), false)?;
        }
    }
    Ok(())
}

async fn get(cli: &Cli, args: &GetArgs, out: &mut (dyn Write + Send)) -> Result<()> {
    let control_plane = crate::control_plane(cli)?;
    let component = control_plane
        .call("GetComponent", |mut client| {
            let request = pb::GetComponentRequest {
                component_id: args.id.clone(),
            };
            async move { client.get_component(request).await }
        })
        .await?
        .into_inner()
        .component
        .unwrap_or_default();
    match args.output {
        Output::Table | Output::Wide => {
            write!(out, "{}", render::details(&component, SystemTime::now()))?
        }
        Output::Json | Output::Yaml => {
            crate::write_value(out, args.output, &render::json(&component), false)?
        }
    }
    Ok(())
}

async fn watch(cli: &Cli, args: &WatchArgs, out: &mut (dyn Write + Send)) -> Result<()> {
    let control_plane = crate::control_plane(cli)?;
    // Opening moves over replicas that are down; a stream that breaks later ends the
    // command with the error, as a person watching expects to see it.
    let mut stream = control_plane
        .call("WatchComponents", |mut client| {
            let request = pb::WatchComponentsRequest {
                kind: args.kind.map_or(ComponentKind::Unspecified, Into::into) as i32,
                capability: args.capability.clone().unwrap_or_default(),
            };
            async move { client.watch_components(request).await }
        })
        .await?
        .into_inner();
    if matches!(args.output, Output::Table | Output::Wide) {
        write!(out, "{}", render::event_heading())?;
    }
    while let Some(message) = stream.next().await {
        let message = message.map_err(rpc("WatchComponents"))?;
        match args.output {
            Output::Table => write!(out, "{}", render::event_line(&message, true))?,
            Output::Wide => write!(out, "{}", render::event_line(&message, false))?,
            Output::Json | Output::Yaml => {
                crate::write_value(out, args.output, &render::event_json(&message), true)?
            }
        }
        out.flush()?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;

    #[test]
    fn list_flags_become_a_server_side_filter() {
        let cli = Cli::try_parse_from([
            "flowplane",
            "components",
            "list",
            "--kind",
            "processor",
            "--status",
            "degraded",
            "--capability",
            "echo",
            "--label",
            "zone=a",
            "--label",
            "gpu=yes",
            "-o",
            "json",
        ])
        .unwrap();
        let Command::List(args) = (match cli.command {
            crate::Command::Components(c) => c,
            other => panic!("{other:?}"),
        }) else {
            panic!("not list")
        };
        assert_eq!(args.output, Output::Json);
        let request = list_request(&args);
        assert_eq!(request.kind(), ComponentKind::Processor);
        assert_eq!(request.status(), HealthStatus::Degraded);
        assert_eq!(request.capability, "echo");
        assert_eq!(request.labels.len(), 2);
        assert_eq!(request.labels["gpu"], "yes");
    }

    #[test]
    fn bad_flags_are_rejected_naming_them() {
        for (args, flag) in [
            (vec!["components", "list", "--label", "nokey"], "--label"),
            (vec!["components", "list", "--status", "sleepy"], "--status"),
            (vec!["components", "list", "--output", "xml"], "--output"),
            (vec!["health", "127.0.0.1:1", "--timeout", "0"], "--timeout"),
        ] {
            let err =
                Cli::try_parse_from(std::iter::once("flowplane").chain(args.clone())).unwrap_err();
            assert!(err.to_string().contains(flag), "{args:?}: {err}");
        }
    }
}
