//! `flowplane pipelines ...`: the standing pipelines the control plane stores. `apply`
//! reads a `kind: StandingPipeline` manifest and checks its structure before sending it;
//! every other command asks the control plane and prints. The rules (who runs, when
//! offsets may move) are the server's: this module never claims, commits or decides.

use std::{collections::BTreeMap, io::Write, path::PathBuf, time::SystemTime};

use flowplane_manifest::{Connector, StandingManifest, standing::format_duration};
use flowplane_proto::{
    common::v1::{ErrorDetail, PageRequest},
    controlplane::v1::{self as pb, StandingPipeline},
};
use serde_json::{Value, json};

use crate::{Cli, Error, Output, Result, render};

/// Largest page asked for; `list` follows page tokens until the end.
const PAGE_SIZE: u32 = 1000;

/// Longest offsets summary in the table before it is shortened (`-o wide` shows all).
const OFFSETS_WIDTH: usize = 40;

/// What the server uses when a spec leaves a delivery bound at zero or unset (the proto's
/// documented defaults), for showing.
const DEFAULT_MAX_ATTEMPTS: u32 = 5;
const DEFAULT_RETRY_BACKOFF: &str = "200ms";
const DEFAULT_MAX_IN_FLIGHT: u32 = 256;

/// `flowplane pipelines ...`
#[derive(Debug, clap::Subcommand)]
pub enum Command {
    /// Create a standing pipeline from a `kind: StandingPipeline` manifest, or replace the
    /// spec of the one of its name (a running pipeline restarts from its offsets).
    Apply(ApplyArgs),
    /// List standing pipelines in name order: state, runner, generation, offsets, lag.
    List(ListArgs),
    /// Show one pipeline: its spec, runner, offsets per partition and counters.
    Get(NameArgs),
    /// Stop a pipeline's runner; its offsets stay.
    Pause(NameArgs),
    /// Let a paused pipeline run again from its committed offsets.
    Resume(NameArgs),
    /// Remove a pipeline and its offsets.
    Delete(NameArgs),
    /// Show a pipeline's next offset per partition, or reset them (`offsets reset`).
    Offsets(OffsetsArgs),
}

/// Arguments of `pipelines apply`.
#[derive(Debug, clap::Args)]
pub struct ApplyArgs {
    /// Standing pipeline manifest, YAML or JSON, with `kind: StandingPipeline`.
    pub manifest: PathBuf,
    /// Output format.
    #[arg(long, short, value_enum, default_value_t)]
    pub output: Output,
}

/// Arguments of `pipelines list`.
#[derive(Debug, clap::Args)]
pub struct ListArgs {
    /// Output format (`wide` does not shorten the offsets column).
    #[arg(long, short, value_enum, default_value_t)]
    pub output: Output,
}

/// Arguments of the commands that name one pipeline.
#[derive(Debug, clap::Args)]
pub struct NameArgs {
    /// Pipeline name.
    pub name: String,
    /// Output format.
    #[arg(long, short, value_enum, default_value_t)]
    pub output: Output,
}

/// Arguments of `pipelines offsets`.
#[derive(Debug, clap::Args)]
#[command(args_conflicts_with_subcommands = true, subcommand_negates_reqs = true)]
pub struct OffsetsArgs {
    /// `reset`: set where a paused pipeline resumes.
    #[command(subcommand)]
    pub command: Option<OffsetsCommand>,
    /// Pipeline name.
    #[arg(required = true)]
    pub name: Option<String>,
    /// Output format.
    #[arg(long, short, value_enum, default_value_t)]
    pub output: Output,
}

/// `pipelines offsets reset`.
#[derive(Debug, clap::Subcommand)]
pub enum OffsetsCommand {
    /// Set a paused pipeline's next offset per partition; the control plane refuses
    /// unless the pipeline is paused.
    Reset(ResetArgs),
}

/// Arguments of `pipelines offsets reset`.
#[derive(Debug, clap::Args)]
pub struct ResetArgs {
    /// Pipeline name.
    pub name: String,
    /// Start every partition over from 0.
    #[arg(long, conflicts_with = "to", required_unless_present = "to")]
    pub earliest: bool,
    /// The next offset to read in one partition, PARTITION=OFFSET; repeat for several. A
    /// partition not named keeps its offset.
    #[arg(long, value_name = "PARTITION=OFFSET", value_parser = parse_offset)]
    pub to: Vec<(u32, u64)>,
    /// Output format.
    #[arg(long, short, value_enum, default_value_t)]
    pub output: Output,
}

fn parse_offset(raw: &str) -> std::result::Result<(u32, u64), String> {
    let bad = || format!("{raw:?} is not PARTITION=OFFSET (two whole numbers)");
    let (partition, offset) = raw.split_once('=').ok_or_else(bad)?;
    Ok((
        partition.trim().parse().map_err(|_| bad())?,
        offset.trim().parse().map_err(|_| bad())?,
    ))
}

/// The request `reset` sends; a partition named twice is a usage error naming `--to`.
pub fn reset_request(args: &ResetArgs) -> Result<pb::ResetPipelineOffsetsRequest> {
    let mut offsets = std::collections::HashMap::new();
    for (partition, offset) in &args.to {
        if offsets.insert(*partition, *offset).is_some() {
            return Err(Error::Usage(format!(
                "--to: partition {partition} is given more than once"
            )));
        }
    }
    Ok(pb::ResetPipelineOffsetsRequest {
        name: args.name.clone(),
        offsets,
        earliest: args.earliest,
    })
}

/// Runs a `pipelines` subcommand.
pub async fn run(cli: &Cli, command: &Command, out: &mut (dyn Write + Send)) -> Result<()> {
    let now = SystemTime::now;
    match command {
        Command::Apply(args) => {
            // Checked before any connection: a broken file never reaches the server.
            let spec = StandingManifest::spec_from_file(&args.manifest)?;
            let control_plane = crate::control_plane(cli)?;
            // The generation before, from the same replica: the same spec applied again
            // changes nothing, and that is worth saying.
            let (before, response) = control_plane
                .call_standing("ApplyPipeline", |mut client| {
                    let get = pb::GetPipelineRequest {
                        name: spec.name.clone(),
                    };
                    let request = pb::ApplyPipelineRequest {
                        spec: Some(spec.clone()),
                    };
                    async move {
                        let before = match client.get_pipeline(get).await {
                            Ok(found) => found.into_inner().pipeline.map(|p| p.generation),
                            Err(status) if status.code() == tonic::Code::NotFound => None,
                            Err(status) => return Err(status),
                        };
                        Ok((before, client.apply_pipeline(request).await?.into_inner()))
                    }
                })
                .await?;
            let pipeline = response.pipeline.unwrap_or_default();
            let action = applied(response.created, before, pipeline.generation);
            match args.output {
                Output::Table | Output::Wide => write!(out, "{}", applied_text(&pipeline, action))?,
                Output::Json | Output::Yaml => {
                    let value = json!({
                        "name": name(&pipeline),
                        "action": action,
                        "created": response.created,
                        "generation": pipeline.generation,
                        "pipeline": pipeline_json(&pipeline, now()),
                    });
                    crate::write_value(out, args.output, &value, false)?
                }
            }
        }
        Command::List(args) => {
            let control_plane = crate::control_plane(cli)?;
            let pipelines = list_all(&control_plane).await?;
            match args.output {
                Output::Table => write!(out, "{}", table(&pipelines, now(), OFFSETS_WIDTH))?,
                Output::Wide => write!(out, "{}", table(&pipelines, now(), usize::MAX))?,
                Output::Json | Output::Yaml => {
                    let values = pipelines.iter().map(|p| pipeline_json(p, now())).collect();
                    crate::write_value(out, args.output, &Value::Array(values), false)?
                }
            }
        }
        Command::Get(args) => {
            let control_plane = crate::control_plane(cli)?;
            let pipeline = control_plane
                .call_standing("GetPipeline", |mut client| {
                    let request = pb::GetPipelineRequest {
                        name: args.name.clone(),
                    };
                    async move { client.get_pipeline(request).await }
                })
                .await?
                .into_inner()
                .pipeline
                .unwrap_or_default();
            show(out, args.output, &pipeline, details(&pipeline, now()))?;
        }
        Command::Pause(args) => {
            let control_plane = crate::control_plane(cli)?;
            let pipeline = control_plane
                .call_standing("PausePipeline", |mut client| {
                    let request = pb::PausePipelineRequest {
                        name: args.name.clone(),
                    };
                    async move { client.pause_pipeline(request).await }
                })
                .await?
                .into_inner()
                .pipeline
                .unwrap_or_default();
            let text = format!(
                "pipeline {} paused; its offsets stay at {}\n",
                name(&pipeline),
                offsets_summary(&pipeline, usize::MAX)
            );
            show(out, args.output, &pipeline, text)?;
        }
        Command::Resume(args) => {
            let control_plane = crate::control_plane(cli)?;
            let pipeline = control_plane
                .call_standing("ResumePipeline", |mut client| {
                    let request = pb::ResumePipelineRequest {
                        name: args.name.clone(),
                    };
                    async move { client.resume_pipeline(request).await }
                })
                .await?
                .into_inner()
                .pipeline
                .unwrap_or_default();
            let text = format!(
                "pipeline {} resumed; it runs from offsets {}\n",
                name(&pipeline),
                offsets_summary(&pipeline, usize::MAX)
            );
            show(out, args.output, &pipeline, text)?;
        }
        Command::Delete(args) => {
            let control_plane = crate::control_plane(cli)?;
            control_plane
                .call_standing("DeletePipeline", |mut client| {
                    let request = pb::DeletePipelineRequest {
                        name: args.name.clone(),
                    };
                    async move { client.delete_pipeline(request).await }
                })
                .await?;
            match args.output {
                Output::Table | Output::Wide => writeln!(out, "pipeline {} deleted", args.name)?,
                Output::Json | Output::Yaml => crate::write_value(
                    out,
                    args.output,
                    &json!({"name": args.name, "deleted": true}),
                    false,
                )?,
            }
        }
        Command::Offsets(args) => match &args.command {
            Some(OffsetsCommand::Reset(reset)) => {
                let request = reset_request(reset)?;
                let control_plane = crate::control_plane(cli)?;
                let pipeline = control_plane
                    .call_standing("ResetPipelineOffsets", |mut client| {
                        let request = request.clone();
                        async move { client.reset_pipeline_offsets(request).await }
                    })
                    .await?
                    .into_inner()
                    .pipeline
                    .unwrap_or_default();
                let text = format!(
                    "pipeline {} offsets reset; it resumes from:\n{}",
                    name(&pipeline),
                    offsets_table(&pipeline)
                );
                write_offsets(out, reset.output, &pipeline, text)?;
            }
            None => {
                let name = args.name.clone().unwrap_or_default();
                let control_plane = crate::control_plane(cli)?;
                let pipeline = control_plane
                    .call_standing("GetPipeline", |mut client| {
                        let request = pb::GetPipelineRequest { name: name.clone() };
                        async move { client.get_pipeline(request).await }
                    })
                    .await?
                    .into_inner()
                    .pipeline
                    .unwrap_or_default();
                let text = offsets_table(&pipeline);
                write_offsets(out, args.output, &pipeline, text)?;
            }
        },
    }
    Ok(())
}

/// Prints `text` for people, or the whole pipeline as JSON or YAML.
fn show(
    out: &mut (dyn Write + Send),
    output: Output,
    pipeline: &StandingPipeline,
    text: String,
) -> Result<()> {
    match output {
        Output::Table | Output::Wide => write!(out, "{text}")?,
        Output::Json | Output::Yaml => crate::write_value(
            out,
            output,
            &pipeline_json(pipeline, SystemTime::now()),
            false,
        )?,
    }
    Ok(())
}

fn write_offsets(
    out: &mut (dyn Write + Send),
    output: Output,
    pipeline: &StandingPipeline,
    text: String,
) -> Result<()> {
    match output {
        Output::Table | Output::Wide => write!(out, "{text}")?,
        Output::Json | Output::Yaml => crate::write_value(
            out,
            output,
            &json!({"name": name(pipeline), "offsets": offsets_json(pipeline)}),
            false,
        )?,
    }
    Ok(())
}

/// Every stored pipeline, following page tokens to the end (all pages from one replica:
/// a token means something only to the replica that handed it out).
pub async fn list_all(control_plane: &crate::ControlPlane) -> Result<Vec<StandingPipeline>> {
    control_plane
        .call_standing("ListPipelines", |mut client| async move {
            let mut request = pb::ListPipelinesRequest {
                page: Some(PageRequest {
                    page_size: PAGE_SIZE,
                    page_token: String::new(),
                }),
            };
            let mut pipelines = Vec::new();
            loop {
                let page = client.list_pipelines(request.clone()).await?.into_inner();
                pipelines.extend(page.pipelines);
                let token = page.page.unwrap_or_default().next_page_token;
                if token.is_empty() {
                    return Ok(pipelines);
                }
                request.page.get_or_insert_default().page_token = token;
            }
        })
        .await
}

fn name(p: &StandingPipeline) -> &str {
    p.spec.as_ref().map_or("", |s| s.name.as_str())
}

/// The runner holding `p` with a claim that has not lapsed at `now`, if any.
fn live_runner(p: &StandingPipeline, now: SystemTime) -> Option<&pb::RunnerClaim> {
    p.runner.as_ref().filter(|r| {
        !r.runner_id.is_empty()
            && r.expires_at
                .and_then(|t| SystemTime::try_from(t).ok())
                .is_some_and(|t| t > now)
    })
}

/// `paused`, `running` (a runner holds a live claim) or `idle` (waiting for a runner).
pub fn state(p: &StandingPipeline, now: SystemTime) -> &'static str {
    if p.paused {
        "paused"
    } else if live_runner(p, now).is_some() {
        "running"
    } else {
        "idle"
    }
}

fn sorted_offsets(p: &StandingPipeline) -> BTreeMap<u32, u64> {
    p.offsets.iter().map(|(k, v)| (*k, *v)).collect()
}

/// `0=600,1=598` in partition order (the `--to` syntax), shortened to `width`; `-` when
/// nothing is committed yet.
pub fn offsets_summary(p: &StandingPipeline, width: usize) -> String {
    let offsets = sorted_offsets(p);
    if offsets.is_empty() {
        return "-".into();
    }
    let text = offsets
        .iter()
        .map(|(partition, offset)| format!("{partition}={offset}"))
        .collect::<Vec<_>>()
        .join(",");
    render::shorten(text, width)
}

/// The runner column: its id, `(expired)` after it when the claim lapsed, `-` for none.
fn runner_text(p: &StandingPipeline, now: SystemTime) -> String {
    match &p.runner {
        Some(r) if !r.runner_id.is_empty() => {
            if live_runner(p, now).is_some() {
                r.runner_id.clone()
            } else {
                format!("{} (expired)", r.runner_id)
            }
        }
        _ => "-".into(),
    }
}

/// The column headings of the pipeline table.
pub const TABLE_HEADINGS: [&str; 6] = ["NAME", "STATE", "RUNNER", "GENERATION", "OFFSETS", "LAG"];

/// An aligned table of pipelines with headings; offsets shortened to `width`.
pub fn table(pipelines: &[StandingPipeline], now: SystemTime, width: usize) -> String {
    if pipelines.is_empty() {
        return "no standing pipelines\n".into();
    }
    let mut rows = vec![TABLE_HEADINGS.iter().map(|h| h.to_string()).collect()];
    rows.extend(pipelines.iter().map(|p| {
        vec![
            name(p).to_string(),
            state(p, now).to_string(),
            runner_text(p, now),
            p.generation.to_string(),
            offsets_summary(p, width),
            p.stats.as_ref().map_or(0, |s| s.consumer_lag).to_string(),
        ]
    }));
    render::align(&rows)
}

/// What an apply did: `created`, `updated` (a new generation) or `unchanged` (the same
/// spec again: the server keeps the generation). `before` is the generation read first.
pub fn applied(created: bool, before: Option<u64>, generation: u64) -> &'static str {
    if created {
        "created"
    } else if before == Some(generation) {
        "unchanged"
    } else {
        "updated"
    }
}

/// What `apply` prints: what it did, and the generation now stored.
pub fn applied_text(p: &StandingPipeline, action: &str) -> String {
    format!(
        "pipeline {} {action} (generation {})\n",
        name(p),
        p.generation
    )
}

fn params_text(params: &serde_json::Map<String, Value>) -> String {
    if params.is_empty() {
        String::new()
    } else {
        format!(" {}", whole_numbers(Value::Object(params.clone())))
    }
}

/// Struct numbers are doubles on the wire: `2.0` is shown as the `2` a manifest says.
fn whole_numbers(value: Value) -> Value {
    match value {
        Value::Number(n) => match n.as_f64() {
            Some(f) if f.fract() == 0.0 && f.abs() < 9e15 && n.is_f64() => json!(f as i64),
            _ => Value::Number(n),
        },
        Value::Array(items) => Value::Array(items.into_iter().map(whole_numbers).collect()),
        Value::Object(map) => Value::Object(
            map.into_iter()
                .map(|(k, v)| (k, whole_numbers(v)))
                .collect(),
        ),
        other => other,
    }
}

fn connector_text(c: &Connector) -> String {
    format!("{}{}", c.selector(), params_text(&c.params))
}

fn port(node: &str, port: &str) -> String {
    if port.is_empty() {
        node.to_string()
    } else {
        format!("{node}.{port}")
    }
}

fn error_text(e: &ErrorDetail) -> String {
    let mut text = e.message.clone();
    if !e.reason.is_empty() {
        text = format!("{}: {text}", e.reason);
    }
    if !e.field.is_empty() {
        text.push_str(&format!(" (field {})", e.field));
    }
    if !e.node_id.is_empty() {
        text.push_str(&format!(" (node {})", e.node_id));
    }
    text
}

/// Rows of `label: value` lines; a list's later lines leave the label empty.
fn labelled(rows: &mut Vec<Vec<String>>, label: &str, values: Vec<String>) {
    if values.is_empty() {
        rows.push(vec![format!("{label}:"), "-".into()]);
    }
    for (i, value) in values.into_iter().enumerate() {
        rows.push(vec![
            if i == 0 {
                format!("{label}:")
            } else {
                String::new()
            },
            value,
        ]);
    }
}

/// Every detail of one pipeline, as `label: value` lines: the spec in brief, the runner,
/// offsets per partition and the counters.
pub fn details(p: &StandingPipeline, now: SystemTime) -> String {
    let spec = StandingManifest::from_spec(&p.spec.clone().unwrap_or_default());
    let stats = p.stats.clone().unwrap_or_default();
    let mut rows: Vec<Vec<String>> = vec![
        vec!["name:".into(), spec.name.clone()],
        vec!["state:".into(), state(p, now).into()],
        vec!["paused:".into(), if p.paused { "yes" } else { "no" }.into()],
        vec!["generation:".into(), p.generation.to_string()],
        vec!["source:".into(), connector_text(&spec.source)],
        vec![
            "source input:".into(),
            if spec.source_input.is_empty() {
                "(the only input)".into()
            } else {
                spec.source_input.clone()
            },
        ],
    ];
    labelled(
        &mut rows,
        "nodes",
        spec.nodes
            .iter()
            .map(|n| format!("{} ({}){}", n.id, n.processor, params_text(&n.params)))
            .collect(),
    );
    if !spec.edges.is_empty() {
        labelled(
            &mut rows,
            "edges",
            spec.edges
                .iter()
                .map(|e| {
                    format!(
                        "{} -> {}",
                        port(&e.from_node, &e.from_output),
                        port(&e.to_node, &e.to_input)
                    )
                })
                .collect(),
        );
    }
    labelled(
        &mut rows,
        "consumers",
        spec.outputs
            .iter()
            .map(|o| {
                let consumer = spec
                    .consumers
                    .get(&o.name)
                    .map_or_else(|| "-".into(), connector_text);
                format!("{} -> {consumer}", o.name)
            })
            .collect(),
    );
    rows.push(vec![
        "dead letter:".into(),
        spec.dead_letter
            .as_ref()
            .map_or_else(|| "logged (default)".into(), connector_text),
    ]);
    let delivery = spec.delivery.clone().unwrap_or_default();
    let or_default = |value: u32, default: u32| {
        if value == 0 {
            format!("{default} (default)")
        } else {
            value.to_string()
        }
    };
    rows.push(vec![
        "delivery:".into(),
        format!(
            "max attempts {}, retry backoff {}, max in flight {}",
            or_default(delivery.max_attempts, DEFAULT_MAX_ATTEMPTS),
            delivery.retry_backoff.map_or_else(
                || format!("{DEFAULT_RETRY_BACKOFF} (default)"),
                format_duration
            ),
            or_default(delivery.max_in_flight, DEFAULT_MAX_IN_FLIGHT),
        ),
    ]);
    let runner = match &p.runner {
        Some(r) if !r.runner_id.is_empty() => {
            let expires = r
                .expires_at
                .and_then(|t| SystemTime::try_from(t).ok())
                .map(|t| match t.duration_since(now) {
                    Ok(left) => format!("expires in {}", render::age(left)),
                    Err(_) => format!(
                        "expired {} ago",
                        render::age(now.duration_since(t).unwrap_or_default())
                    ),
                })
                .unwrap_or_else(|| "no expiry".into());
            format!("{} (epoch {}, {expires})", r.runner_id, r.epoch)
        }
        _ => "-".into(),
    };
    rows.push(vec!["runner:".into(), runner]);
    labelled(
        &mut rows,
        "offsets",
        sorted_offsets(p)
            .iter()
            .map(|(partition, offset)| format!("partition {partition}: next {offset}"))
            .collect(),
    );
    for (label, value) in [
        ("records read", stats.records_read),
        ("results delivered", stats.results_delivered),
        ("retries", stats.retries),
        ("dead-lettered", stats.dead_lettered),
        ("committed", stats.records_committed),
        ("consumer lag", stats.consumer_lag),
    ] {
        rows.push(vec![format!("{label}:"), value.to_string()]);
    }
    rows.push(vec![
        "last error:".into(),
        stats
            .last_error
            .as_ref()
            .map_or_else(|| "-".into(), error_text),
    ]);
    rows.push(vec![
        "created:".into(),
        render::since(p.created_at.as_ref(), now),
    ]);
    rows.push(vec![
        "updated:".into(),
        render::since(p.updated_at.as_ref(), now),
    ]);
    render::align(&rows)
}

/// `PARTITION  NEXT OFFSET` lines, or a line saying nothing is committed yet.
pub fn offsets_table(p: &StandingPipeline) -> String {
    let offsets = sorted_offsets(p);
    if offsets.is_empty() {
        return "no committed offsets (every partition starts at 0)\n".into();
    }
    let mut rows = vec![vec!["PARTITION".to_string(), "NEXT OFFSET".to_string()]];
    rows.extend(
        offsets
            .iter()
            .map(|(partition, offset)| vec![partition.to_string(), offset.to_string()]),
    );
    render::align(&rows)
}

fn offsets_json(p: &StandingPipeline) -> Value {
    Value::Object(
        sorted_offsets(p)
            .into_iter()
            .map(|(partition, offset)| (partition.to_string(), json!(offset)))
            .collect(),
    )
}

/// A pipeline as a JSON object: state and counters beside the spec in manifest form (so
/// `.spec` of `get -o yaml` can be applied again), RFC 3339 times.
pub fn pipeline_json(p: &StandingPipeline, now: SystemTime) -> Value {
    let spec = StandingManifest::from_spec(&p.spec.clone().unwrap_or_default());
    let stats = p.stats.clone().unwrap_or_default();
    json!({
        "name": spec.name,
        "state": state(p, now),
        "paused": p.paused,
        "generation": p.generation,
        "runner": p.runner.as_ref().filter(|r| !r.runner_id.is_empty()).map(|r| json!({
            "id": r.runner_id,
            "epoch": r.epoch,
            "expires_at": render::rfc3339(r.expires_at.as_ref()),
        })),
        "offsets": offsets_json(p),
        "stats": {
            "records_read": stats.records_read,
            "results_delivered": stats.results_delivered,
            "retries": stats.retries,
            "dead_lettered": stats.dead_lettered,
            "records_committed": stats.records_committed,
            "consumer_lag": stats.consumer_lag,
            "last_error": stats.last_error.as_ref().map(|e| json!({
                "reason": e.reason,
                "message": e.message,
                "field": e.field,
                "node_id": e.node_id,
            })),
        },
        "created_at": render::rfc3339(p.created_at.as_ref()),
        "updated_at": render::rfc3339(p.updated_at.as_ref()),
        "spec": serde_json::to_value(&spec).unwrap_or(Value::Null),
    })
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use clap::Parser;

    use super::*;

    const NOW_SECS: u64 = 1_700_000_000;

    fn now() -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(NOW_SECS)
    }

    fn at(secs_from_now: i64) -> Option<prost_types::Timestamp> {
        Some(prost_types::Timestamp {
            seconds: NOW_SECS as i64 + secs_from_now,
            nanos: 0,
        })
    }

    const MANIFEST: &str = r#"
kind: StandingPipeline
name: orders
source: {capability: generator, params: {count: 10, rate: 2.5}}
nodes: [{id: calc, processor: json.calculator}]
inputs: [{name: records, targets: [{node: calc}]}]
outputs: [{name: result, source: {node: calc}}]
consumers: {result: {id: file-1, params: {path: /tmp/x}}}
delivery: {retry_backoff: 1s}
"#;

    fn pipeline() -> StandingPipeline {
        StandingPipeline {
            spec: Some(
                StandingManifest::from_text(MANIFEST)
                    .unwrap()
                    .to_spec()
                    .unwrap(),
            ),
            generation: 3,
            paused: false,
            offsets: [(1, 598), (0, 600)].into(),
            runner: Some(pb::RunnerClaim {
                runner_id: "runner-a".into(),
                epoch: 7,
                expires_at: at(4),
            }),
            stats: Some(pb::PipelineStats {
                records_read: 1200,
                results_delivered: 1190,
                retries: 4,
                dead_lettered: 2,
                consumer_lag: 800,
                records_committed: 1198,
                last_error: Some(ErrorDetail {
                    reason: "DIVISION_BY_ZERO".into(),
                    message: "division by zero".into(),
                    node_id: "calc".into(),
                    ..Default::default()
                }),
            }),
            created_at: at(-125),
            updated_at: at(-3),
        }
    }

    fn parse(args: &[&str]) -> std::result::Result<Command, clap::Error> {
        let cli = Cli::try_parse_from(
            ["flowplane", "pipelines"]
                .into_iter()
                .chain(args.iter().copied()),
        )?;
        match cli.command {
            crate::Command::Pipelines(command) => Ok(command),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn state_follows_pause_and_the_runner_claim() {
        let mut p = pipeline();
        assert_eq!(state(&p, now()), "running");
        p.runner.as_mut().unwrap().expires_at = at(-1);
        assert_eq!(state(&p, now()), "idle");
        assert_eq!(runner_text(&p, now()), "runner-a (expired)");
        p.runner = None;
        assert_eq!(state(&p, now()), "idle");
        assert_eq!(runner_text(&p, now()), "-");
        p.paused = true;
        assert_eq!(state(&p, now()), "paused");
    }

    #[test]
    fn the_table_lines_up_and_shortens_offsets() {
        let mut idle = pipeline();
        idle.spec.as_mut().unwrap().name = "a-much-longer-pipeline-name".into();
        idle.runner = None;
        idle.offsets = (0..40).map(|p| (p, 1_000_000)).collect();
        let text = table(&[pipeline(), idle.clone()], now(), OFFSETS_WIDTH);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 3, "{text}");
        for heading in &TABLE_HEADINGS[1..] {
            let column = lines[0].find(heading).unwrap();
            for line in &lines[1..] {
                let chars: Vec<char> = line.chars().collect();
                assert_eq!(chars[column - 2..column], [' ', ' '], "{heading}: {line:?}");
                assert_ne!(chars[column], ' ', "{heading}: {line:?}");
            }
        }
        assert!(
            lines[1].starts_with("orders ")
                && lines[1].contains("running")
                && lines[1].contains("runner-a")
                && lines[1].contains("0=600,1=598")
                && lines[1].ends_with("800"),
            "{text}"
        );
        assert!(
            lines[2].contains("idle") && lines[2].contains('…'),
            "{text}"
        );
        let wide = table(&[idle], now(), usize::MAX);
        assert!(!wide.contains('…') && wide.contains("39=1000000"), "{wide}");
        assert_eq!(table(&[], now(), OFFSETS_WIDTH), "no standing pipelines\n");
    }

    #[test]
    fn details_show_spec_runner_offsets_and_counters() {
        let text = details(&pipeline(), now());
        // Values start two spaces after the longest label, "results delivered:".
        for (label, value) in [
            ("name:", "orders"),
            ("state:", "running"),
            ("paused:", "no"),
            ("generation:", "3"),
            (
                "source:",
                "capability generator {\"count\":10,\"rate\":2.5}",
            ),
            ("source input:", "(the only input)"),
            ("nodes:", "calc (json.calculator)"),
            ("consumers:", "result -> id file-1 {\"path\":\"/tmp/x\"}"),
            ("dead letter:", "logged (default)"),
            (
                "delivery:",
                "max attempts 5 (default), retry backoff 1s, max in flight 256 (default)",
            ),
            ("runner:", "runner-a (epoch 7, expires in 4s)"),
            ("offsets:", "partition 0: next 600"),
            ("", "partition 1: next 598"),
            ("records read:", "1200"),
            ("results delivered:", "1190"),
            ("retries:", "4"),
            ("dead-lettered:", "2"),
            ("committed:", "1198"),
            ("consumer lag:", "800"),
            (
                "last error:",
                "DIVISION_BY_ZERO: division by zero (node calc)",
            ),
            ("created:", "2m05s ago"),
            ("updated:", "3s ago"),
        ] {
            let expected = format!("{label:<20}{value}\n");
            assert!(
                text.contains(&expected),
                "{expected:?} missing from:\n{text}"
            );
        }
        let mut fresh = pipeline();
        fresh.offsets.clear();
        fresh.runner = None;
        fresh.stats = None;
        let text = details(&fresh, now());
        for label in ["offsets:", "runner:", "last error:"] {
            assert!(text.contains(&format!("{label:<20}-\n")), "{text}");
        }
        assert_eq!(
            offsets_table(&fresh),
            "no committed offsets (every partition starts at 0)\n"
        );
    }

    #[test]
    fn json_carries_state_counters_and_a_spec_that_applies_again() {
        let value = pipeline_json(&pipeline(), now());
        assert_eq!(value["name"], "orders");
        assert_eq!(value["state"], "running");
        assert_eq!(value["generation"], 3);
        assert_eq!(value["runner"]["id"], "runner-a");
        assert_eq!(value["runner"]["epoch"], 7);
        assert_eq!(value["runner"]["expires_at"], "2023-11-14T22:13:24Z");
        assert_eq!(value["offsets"]["0"], 600);
        assert_eq!(value["offsets"]["1"], 598);
        assert_eq!(value["stats"]["results_delivered"], 1190);
        assert_eq!(value["stats"]["last_error"]["reason"], "DIVISION_BY_ZERO");
        assert_eq!(value["spec"]["kind"], "StandingPipeline");
        assert_eq!(value["spec"]["delivery"]["retry_backoff"], "1s");
        let again = StandingManifest::from_text(&value["spec"].to_string()).unwrap();
        assert_eq!(
            again.to_spec().unwrap(),
            pipeline().spec.unwrap(),
            "the printed spec is the stored one"
        );
        let mut idle = pipeline();
        idle.runner = None;
        assert!(pipeline_json(&idle, now())["runner"].is_null());
    }

    #[test]
    fn apply_says_created_updated_or_unchanged_with_the_generation() {
        assert_eq!(applied(true, None, 1), "created");
        // Deleted and created again between the read and the apply.
        assert_eq!(applied(true, Some(4), 1), "created");
        assert_eq!(applied(false, Some(2), 3), "updated");
        assert_eq!(applied(false, Some(3), 3), "unchanged");
        assert_eq!(applied(false, None, 1), "updated");
        let p = pipeline();
        assert_eq!(
            applied_text(&p, "updated"),
            "pipeline orders updated (generation 3)\n"
        );
    }

    #[test]
    fn offsets_and_reset_parse() {
        let Command::Offsets(args) = parse(&["offsets", "orders", "-o", "json"]).unwrap() else {
            panic!()
        };
        assert!(args.command.is_none());
        assert_eq!(args.name.as_deref(), Some("orders"));
        assert_eq!(args.output, Output::Json);

        let Command::Offsets(OffsetsArgs {
            command: Some(OffsetsCommand::Reset(reset)),
            ..
        }) = parse(&["offsets", "reset", "orders", "--to", "0=5", "--to", "3=0"]).unwrap()
        else {
            panic!()
        };
        let request = reset_request(&reset).unwrap();
        assert_eq!(request.name, "orders");
        assert!(!request.earliest);
        assert_eq!(request.offsets, [(0, 5), (3, 0)].into());

        let Command::Offsets(OffsetsArgs {
            command: Some(OffsetsCommand::Reset(reset)),
            ..
        }) = parse(&["offsets", "reset", "orders", "--earliest"]).unwrap()
        else {
            panic!()
        };
        let request = reset_request(&reset).unwrap();
        assert!(request.earliest && request.offsets.is_empty());

        let Command::Offsets(OffsetsArgs {
            command: Some(OffsetsCommand::Reset(twice)),
            ..
        }) = parse(&["offsets", "reset", "orders", "--to", "1=5", "--to", "1=6"]).unwrap()
        else {
            panic!()
        };
        let err = reset_request(&twice).unwrap_err();
        assert_eq!(err.exit_code(), 2);
        assert_eq!(err.to_string(), "--to: partition 1 is given more than once");
    }

    #[test]
    fn bad_pipeline_flags_are_refused_naming_them() {
        for (args, needle) in [
            (vec!["offsets", "reset", "orders"], "--earliest"),
            (
                vec!["offsets", "reset", "orders", "--earliest", "--to", "0=1"],
                "--to",
            ),
            (
                vec!["offsets", "reset", "orders", "--to", "0"],
                "PARTITION=OFFSET",
            ),
            (
                vec!["offsets", "reset", "orders", "--to", "a=1"],
                "PARTITION=OFFSET",
            ),
            (
                vec!["offsets", "reset", "orders", "--to", "0=-1"],
                "PARTITION=OFFSET",
            ),
            (vec!["offsets"], "<NAME>"),
            (vec!["get"], "<NAME>"),
            (vec!["apply"], "<MANIFEST>"),
            (vec!["list", "-o", "xml"], "--output"),
        ] {
            let err = parse(&args).unwrap_err();
            assert!(err.to_string().contains(needle), "{args:?}: {err}");
        }
        for (args, expected) in [
            (vec!["list"], Output::Table),
            (vec!["list", "-o", "wide"], Output::Wide),
            (vec!["get", "x", "-o", "yaml"], Output::Yaml),
            (vec!["pause", "x", "--output", "json"], Output::Json),
        ] {
            let output = match parse(&args).unwrap() {
                Command::List(a) => a.output,
                Command::Get(a) | Command::Pause(a) => a.output,
                other => panic!("{other:?}"),
            };
            assert_eq!(output, expected, "{args:?}");
        }
    }
}
