//! Turning components into what a person reads (aligned tables, detail views, event
//! lines) or what a script reads (JSON). Pure functions of their input and `now`, so
//! they are tested without a server; nothing here does I/O.

use std::time::{Duration, SystemTime};

use flowplane_proto::{
    common::v1::{ComponentKind, HealthStatus},
    controlplane::v1::{
        Component, RemovalReason, WatchComponentsResponse, watch_components_response::Event,
    },
    data::v1::DataTypeHint,
    processor::v1::{ParamSpec, PortSpec, ProcessorCapability},
};
use serde_json::{Value, json};

/// Longest text shown in the table's CAPABILITIES column before it is shortened.
const CAPABILITIES_WIDTH: usize = 48;

/// Longest description shown in a processor's detail lines before it is shortened.
const DESCRIPTION_WIDTH: usize = 60;

/// Lowercase name of a kind.
pub fn kind(kind: ComponentKind) -> &'static str {
    kind.label()
}

/// Lowercase name of a status.
pub fn status(status: HealthStatus) -> &'static str {
    status.label()
}

fn data_type(hint: i32) -> String {
    match DataTypeHint::try_from(hint) {
        Ok(DataTypeHint::Unspecified) | Err(_) => format!("type-{hint}"),
        Ok(known) => known.short_name().to_string(),
    }
}

fn reason(reason: RemovalReason) -> &'static str {
    match reason {
        RemovalReason::Unspecified => "no longer matches",
        RemovalReason::Deregistered => "deregistered",
        RemovalReason::Expired => "expired",
    }
}

/// The status a person should see: the effective one, saying so when it differs from
/// what the component reported (its heartbeats are late).
pub fn shown_status(c: &Component) -> String {
    let effective = c.status();
    let reported = c.reported_status();
    if effective == HealthStatus::Unhealthy && reported != HealthStatus::Unhealthy {
        format!("{} (late)", status(effective))
    } else {
        status(effective).to_string()
    }
}

/// What a component offers: processor names for hosts, payload types otherwise.
pub fn offers(c: &Component) -> String {
    if c.kind() == ComponentKind::Processor {
        c.capabilities
            .iter()
            .map(|p| p.name.as_str())
            .collect::<Vec<_>>()
            .join(",")
    } else {
        c.data_types
            .iter()
            .map(|t| data_type(*t))
            .collect::<Vec<_>>()
            .join(",")
    }
}

/// `text` cut to `width` characters, ending in `…` when cut.
pub fn shorten(text: String, width: usize) -> String {
    if text.chars().count() <= width {
        return text;
    }
    let kept: String = text.chars().take(width.saturating_sub(1)).collect();
    format!("{kept}…")
}

/// A short age like `4s`, `2m05s`, `3h10m` or `2d4h`.
pub fn age(elapsed: Duration) -> String {
    let s = elapsed.as_secs();
    match s {
        0..60 => format!("{s}s"),
        60..3600 => format!("{}m{:02}s", s / 60, s % 60),
        3600..86400 => format!("{}h{:02}m", s / 3600, (s % 3600) / 60),
        _ => format!("{}d{}h", s / 86400, (s % 86400) / 3600),
    }
}

/// `4s ago` for a past time, `-` when there is none.
pub fn since(timestamp: Option<&prost_types::Timestamp>, now: SystemTime) -> String {
    timestamp
        .and_then(|t| SystemTime::try_from(*t).ok())
        .map(|t| format!("{} ago", age(now.duration_since(t).unwrap_or_default())))
        .unwrap_or_else(|| "-".into())
}

/// A time as an RFC 3339 string, `null` when there is none.
pub fn rfc3339(timestamp: Option<&prost_types::Timestamp>) -> Value {
    timestamp.map_or(Value::Null, |t| Value::String(t.to_string()))
}

/// Lays rows out in columns separated by two spaces, the last column unpadded.
pub fn align(rows: &[Vec<String>]) -> String {
    let columns = rows.iter().map(Vec::len).max().unwrap_or(0);
    let widths: Vec<usize> = (0..columns)
        .map(|i| {
            rows.iter()
                .filter_map(|r| r.get(i))
                .map(|c| c.chars().count())
                .max()
                .unwrap_or(0)
        })
        .collect();
    let mut out = String::new();
    for row in rows {
        let last = row.len().saturating_sub(1);
        for (i, cell) in row.iter().enumerate() {
            out.push_str(cell);
            if i < last {
                let pad = widths[i] - cell.chars().count() + 2;
                out.extend(std::iter::repeat_n(' ', pad));
            }
        }
        out.push('\n');
    }
    out
}

/// The column headings of the component table.
pub const TABLE_HEADINGS: [&str; 6] = [
    "ID",
    "KIND",
    "STATUS",
    "ENDPOINT",
    "CAPABILITIES",
    "LAST HEARTBEAT",
];

fn table_row(c: &Component, now: SystemTime, width: usize) -> Vec<String> {
    vec![
        c.id.clone(),
        kind(c.kind()).to_string(),
        shown_status(c),
        c.endpoint.clone(),
        shorten(offers(c), width),
        since(c.last_heartbeat.as_ref(), now),
    ]
}

/// An aligned table of components, one per line, with headings.
pub fn table(components: &[Component], now: SystemTime) -> String {
    table_of_width(components, now, CAPABILITIES_WIDTH)
}

/// [`table`] with every capability listed, however long.
pub fn wide_table(components: &[Component], now: SystemTime) -> String {
    table_of_width(components, now, usize::MAX)
}

fn table_of_width(components: &[Component], now: SystemTime, width: usize) -> String {
    if components.is_empty() {
        return "no components\n".into();
    }
    let mut rows = vec![TABLE_HEADINGS.iter().map(|h| h.to_string()).collect()];
    rows.extend(components.iter().map(|c| table_row(c, now, width)));
    align(&rows)
}

/// Every detail of one component, as `label: value` lines.
pub fn details(c: &Component, now: SystemTime) -> String {
    let mut rows: Vec<Vec<String>> = vec![
        vec!["id:".into(), c.id.clone()],
        vec!["kind:".into(), kind(c.kind()).into()],
        vec!["status:".into(), shown_status(c)],
        vec![
            "reported status:".into(),
            status(c.reported_status()).into(),
        ],
        vec!["endpoint:".into(), c.endpoint.clone()],
    ];
    if !c.version.is_empty() {
        rows.push(vec!["version:".into(), c.version.clone()]);
    }
    rows.push(vec![
        "registered:".into(),
        since(c.registered_at.as_ref(), now),
    ]);
    rows.push(vec![
        "last heartbeat:".into(),
        since(c.last_heartbeat.as_ref(), now),
    ]);
    let expires = c
        .lease_expires_at
        .and_then(|t| SystemTime::try_from(t).ok())
        .map(|t| match t.duration_since(now) {
            Ok(left) => format!("in {}", age(left)),
            Err(_) => "now".into(),
        })
        .unwrap_or_else(|| "-".into());
    rows.push(vec!["lease expires:".into(), expires]);
    let mut metadata: Vec<_> = c.metadata.iter().collect();
    metadata.sort();
    for (i, (k, v)) in metadata.into_iter().enumerate() {
        rows.push(vec![
            if i == 0 {
                "metadata:".into()
            } else {
                String::new()
            },
            format!("{k}={v}"),
        ]);
    }
    if !c.data_types.is_empty() {
        rows.push(vec!["data types:".into(), offers(c)]);
    }
    for (i, p) in c.capabilities.iter().enumerate() {
        rows.push(vec![
            if i == 0 {
                "capabilities:".into()
            } else {
                String::new()
            },
            capability_heading(p),
        ]);
        for row in capability_rows(p, usize::MAX) {
            rows.push(vec![String::new(), row]);
        }
    }
    let mut metrics: Vec<_> = c.metrics.iter().flat_map(|m| m.values.iter()).collect();
    metrics.sort_by(|a, b| a.0.cmp(b.0));
    for (i, (k, v)) in metrics.into_iter().enumerate() {
        rows.push(vec![
            if i == 0 {
                "metrics:".into()
            } else {
                String::new()
            },
            format!("{k}={v}"),
        ]);
    }
    align(&rows)
}

/// A component as a JSON object with lowercase enum names and RFC 3339 times.
pub fn json(c: &Component) -> Value {
    let mut metrics: Vec<_> = c.metrics.iter().flat_map(|m| m.values.iter()).collect();
    metrics.sort_by(|a, b| a.0.cmp(b.0));
    json!({
        "id": c.id,
        "kind": kind(c.kind()),
        "status": status(c.status()),
        "reported_status": status(c.reported_status()),
        "endpoint": c.endpoint,
        "version": c.version,
        "capabilities": c.capabilities.iter().map(capability_json).collect::<Vec<_>>(),
        "data_types": c.data_types.iter().map(|t| data_type(*t)).collect::<Vec<_>>(),
        "metadata": c.metadata.iter().collect::<std::collections::BTreeMap<_, _>>(),
        "metrics": metrics.into_iter().map(|(k, v)| (k.clone(), json!(v))).collect::<serde_json::Map<_, _>>(),
        "registered_at": rfc3339(c.registered_at.as_ref()),
        "last_heartbeat": rfc3339(c.last_heartbeat.as_ref()),
        "lease_expires_at": rfc3339(c.lease_expires_at.as_ref()),
    })
}

fn port_json(p: &PortSpec) -> Value {
    json!({
        "name": p.name,
        "types": p.types.iter().map(|t| data_type(*t)).collect::<Vec<_>>(),
        "description": p.description,
    })
}

fn param_json(p: &ParamSpec) -> Value {
    json!({
        "name": p.name,
        "type": p.r#type,
        "required": p.required,
        "default": p.default_value.as_ref().map_or(Value::Null, flowplane_proto::value_to_json),
        "allowed_values": p.allowed_values.iter().map(flowplane_proto::value_to_json).collect::<Vec<_>>(),
        "description": p.description,
    })
}

/// What a processor declares (ports with their types, params with type, required,
/// default and allowed values) as a JSON object.
pub fn capability_json(p: &ProcessorCapability) -> Value {
    json!({
        "name": p.name,
        "version": p.version,
        "description": p.description,
        "stateless": p.stateless,
        "inputs": p.inputs.iter().map(port_json).collect::<Vec<_>>(),
        "outputs": p.outputs.iter().map(port_json).collect::<Vec<_>>(),
        "params": p.params.iter().map(param_json).collect::<Vec<_>>(),
    })
}

/// A processor declaration back from [`capability_json`] (what `flowplane processors -o
/// json` prints), for offline validation against a saved catalog.
pub fn capability_from_json(value: &Value) -> Result<ProcessorCapability, String> {
    let text = |v: &Value, key: &str| v[key].as_str().unwrap_or_default().to_string();
    let name = value["name"]
        .as_str()
        .filter(|n| !n.is_empty())
        .ok_or("a processor without a name")?;
    let ports = |key: &str| -> Result<Vec<PortSpec>, String> {
        let mut ports = Vec::new();
        for port in value[key].as_array().into_iter().flatten() {
            let mut types = Vec::new();
            for t in port["types"].as_array().into_iter().flatten() {
                let t = t.as_str().unwrap_or_default();
                let hint = DataTypeHint::from_str_name(&format!(
                    "DATA_TYPE_HINT_{}",
                    t.to_ascii_uppercase()
                ))
                .ok_or_else(|| format!("processor {name:?}: unknown type {t:?} in {key}"))?;
                types.push(hint as i32);
            }
            ports.push(PortSpec {
                name: text(port, "name"),
                types,
                description: text(port, "description"),
            });
        }
        Ok(ports)
    };
    let params = value["params"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|p| ParamSpec {
            name: text(p, "name"),
            description: text(p, "description"),
            r#type: text(p, "type"),
            required: p["required"].as_bool().unwrap_or(false),
            default_value: (!p["default"].is_null())
                .then(|| flowplane_proto::json_to_value(&p["default"])),
            allowed_values: p["allowed_values"]
                .as_array()
                .into_iter()
                .flatten()
                .map(flowplane_proto::json_to_value)
                .collect(),
        })
        .collect();
    Ok(ProcessorCapability {
        name: name.to_string(),
        description: text(value, "description"),
        version: text(value, "version"),
        inputs: ports("inputs")?,
        outputs: ports("outputs")?,
        stateless: value["stateless"].as_bool().unwrap_or(false),
        params,
    })
}

/// `NAME VERSION - DESCRIPTION`, the first line of a processor's detail.
pub fn capability_heading(p: &ProcessorCapability) -> String {
    let mut text = p.name.clone();
    if !p.version.is_empty() {
        text.push_str(&format!(" {}", p.version));
    }
    if !p.description.is_empty() {
        text.push_str(&format!(" - {}", p.description));
    }
    text
}

/// One line per port and param of a processor, each in aligned columns: `input NAME TYPES
/// DESCRIPTION`, `param NAME TYPE, required|default V[, one of A|B] DESCRIPTION`, then
/// whether it is stateless. Descriptions are shortened to `width`.
pub fn capability_rows(p: &ProcessorCapability, width: usize) -> Vec<String> {
    let types = |t: &[i32]| {
        t.iter()
            .map(|t| data_type(*t))
            .collect::<Vec<_>>()
            .join("|")
    };
    let mut rows: Vec<Vec<String>> = Vec::new();
    for (direction, ports) in [("input", &p.inputs), ("output", &p.outputs)] {
        for port in ports {
            rows.push(vec![
                direction.into(),
                port.name.clone(),
                types(&port.types),
                shorten(port.description.clone(), width),
            ]);
        }
    }
    for param in &p.params {
        let mut what = vec![param.r#type.clone()];
        if param.required {
            what.push("required".into());
        } else if let Some(default) = &param.default_value {
            what.push(format!(
                "default {}",
                flowplane_proto::value_to_json(default)
            ));
        } else {
            what.push("optional".into());
        }
        if !param.allowed_values.is_empty() {
            let allowed: Vec<String> = param
                .allowed_values
                .iter()
                .map(|v| flowplane_proto::value_to_json(v).to_string())
                .collect();
            what.push(format!("one of {}", allowed.join("|")));
        }
        rows.push(vec![
            "param".into(),
            param.name.clone(),
            what.join(", "),
            shorten(param.description.clone(), width),
        ]);
    }
    let mut lines: Vec<String> = align(&rows)
        .lines()
        .map(|l| l.trim_end().to_string())
        .collect();
    lines.push(format!(
        "stateless: {}",
        if p.stateless {
            "yes (a failed instance's chunks are replayed on another)"
        } else {
            "no"
        }
    ));
    lines
}

/// One processor of the catalog and the hosts that serve it.
#[derive(Clone, Debug, PartialEq)]
pub struct CatalogEntry {
    /// What the processor declares (as the first host in id order declares it).
    pub capability: ProcessorCapability,
    /// The hosts serving it, in id order: id, effective status, endpoint, version declared.
    pub hosts: Vec<(String, String, String, String)>,
}

/// The catalog from processor hosts: one entry per processor name, in name order.
pub fn catalog(hosts: &[Component]) -> Vec<CatalogEntry> {
    let mut sorted: Vec<&Component> = hosts
        .iter()
        .filter(|c| c.kind() == ComponentKind::Processor)
        .collect();
    sorted.sort_by(|a, b| a.id.cmp(&b.id));
    let mut entries: std::collections::BTreeMap<String, CatalogEntry> = Default::default();
    for host in sorted {
        for p in &host.capabilities {
            entries
                .entry(p.name.clone())
                .or_insert_with(|| CatalogEntry {
                    capability: p.clone(),
                    hosts: Vec::new(),
                })
                .hosts
                .push((
                    host.id.clone(),
                    shown_status(host),
                    host.endpoint.clone(),
                    p.version.clone(),
                ));
        }
    }
    entries.into_values().collect()
}

/// Every processor of the catalog as a block: heading, the hosts serving it, its ports
/// and params; `short` shortens long descriptions.
pub fn catalog_text(entries: &[CatalogEntry], short: bool) -> String {
    if entries.is_empty() {
        return "no processors\n".into();
    }
    let width = if short { DESCRIPTION_WIDTH } else { usize::MAX };
    let mut out = String::new();
    for (i, entry) in entries.iter().enumerate() {
        if i > 0 {
            out.push('\n');
        }
        out.push_str(&capability_heading(&entry.capability));
        out.push('\n');
        let hosts: Vec<String> = entry
            .hosts
            .iter()
            .map(|(id, status, endpoint, version)| {
                let mut host = format!("{id} ({status}, {endpoint}");
                if version != &entry.capability.version {
                    host.push_str(&format!(", version {version}"));
                }
                host.push(')');
                host
            })
            .collect();
        out.push_str(&format!("  hosts: {}\n", hosts.join(", ")));
        for row in capability_rows(&entry.capability, width) {
            out.push_str(&format!("  {row}\n"));
        }
    }
    out
}

/// The catalog as JSON: each processor's declaration with a `hosts` list.
pub fn catalog_json(entries: &[CatalogEntry]) -> Value {
    Value::Array(
        entries
            .iter()
            .map(|entry| {
                let mut value = capability_json(&entry.capability);
                value["hosts"] = entry
                    .hosts
                    .iter()
                    .map(|(id, status, endpoint, version)| {
                        json!({"id": id, "status": status, "endpoint": endpoint, "version": version})
                    })
                    .collect();
                value
            })
            .collect(),
    )
}

/// Heading line of the watch event table; widths match [`event_line`].
pub fn event_heading() -> String {
    format!(
        "{:<9} {:<28} {:<10} {:<16} {:<24} {}\n",
        "EVENT", "ID", "KIND", "STATUS", "ENDPOINT", "CAPABILITIES"
    )
}

fn event_row(event: &str, c: &Component, width: usize) -> String {
    format!(
        "{:<9} {:<28} {:<10} {:<16} {:<24} {}\n",
        event,
        c.id,
        kind(c.kind()),
        shown_status(c),
        c.endpoint,
        shorten(offers(c), width)
    )
}

/// One watch message as text: a snapshot prints a summary and its components, a change
/// prints one line; `short` shortens long capability lists as the table does.
pub fn event_line(message: &WatchComponentsResponse, short: bool) -> String {
    let width = if short {
        CAPABILITIES_WIDTH
    } else {
        usize::MAX
    };
    match &message.event {
        Some(Event::Snapshot(s)) => {
            let mut out = format!(
                "# {} of {} {} at revision {}\n",
                if s.resync {
                    "resync snapshot"
                } else {
                    "snapshot"
                },
                s.components.len(),
                if s.components.len() == 1 {
                    "component"
                } else {
                    "components"
                },
                message.revision
            );
            for c in &s.components {
                out.push_str(&event_row("EXISTS", c, width));
            }
            out
        }
        Some(Event::Added(c)) => event_row("ADDED", c, width),
        Some(Event::Updated(c)) => event_row("UPDATED", c, width),
        Some(Event::Removed(r)) => match &r.component {
            Some(c) => {
                let mut line = event_row("REMOVED", c, width);
                line.pop();
                format!("{line}  ({})\n", reason(r.reason()))
            }
            None => format!("REMOVED   (unknown component, {})\n", reason(r.reason())),
        },
        None => String::new(),
    }
}

/// One watch message as a JSON object (one line of NDJSON).
pub fn event_json(message: &WatchComponentsResponse) -> Value {
    let revision = message.revision;
    match &message.event {
        Some(Event::Snapshot(s)) => json!({
            "event": "snapshot",
            "revision": revision,
            "resync": s.resync,
            "components": s.components.iter().map(json).collect::<Vec<_>>(),
        }),
        Some(Event::Added(c)) => {
            json!({"event": "added", "revision": revision, "component": json(c)})
        }
        Some(Event::Updated(c)) => {
            json!({"event": "updated", "revision": revision, "component": json(c)})
        }
        Some(Event::Removed(r)) => json!({
            "event": "removed",
            "revision": revision,
            "reason": match r.reason() {
                RemovalReason::Unspecified => "unspecified",
                RemovalReason::Deregistered => "deregistered",
                RemovalReason::Expired => "expired",
            },
            "component": r.component.as_ref().map(json),
        }),
        None => json!({"event": "unknown", "revision": revision}),
    }
}

#[cfg(test)]
mod tests {
    use flowplane_proto::{
        common::v1::Metrics, controlplane::v1::ComponentRemoved, processor::v1::ProcessorCapability,
    };

    use super::*;

    const NOW_SECS: u64 = 1_700_000_000;

    fn at(secs_ago: u64) -> Option<prost_types::Timestamp> {
        Some((SystemTime::UNIX_EPOCH + Duration::from_secs(NOW_SECS - secs_ago)).into())
    }

    fn now() -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(NOW_SECS)
    }

    fn host(id: &str, status: HealthStatus, reported: HealthStatus, caps: &[&str]) -> Component {
        Component {
            id: id.into(),
            kind: ComponentKind::Processor as i32,
            endpoint: "127.0.0.1:7000".into(),
            capabilities: caps
                .iter()
                .map(|c| ProcessorCapability {
                    name: c.to_string(),
                    version: "1.0".into(),
                    ..Default::default()
                })
                .collect(),
            status: status as i32,
            reported_status: reported as i32,
            last_heartbeat: at(3),
            registered_at: at(125),
            lease_expires_at: at(0).map(|mut t| {
                t.seconds += 12;
                t
            }),
            metadata: [("zone".to_string(), "a".to_string())].into(),
            metrics: Some(Metrics {
                values: [("chunks_in_total".to_string(), 7.0)].into(),
            }),
            version: "0.1.0".into(),
            ..Default::default()
        }
    }

    #[test]
    fn table_columns_line_up() {
        let components = vec![
            host(
                "p-1",
                HealthStatus::Healthy,
                HealthStatus::Healthy,
                &["echo", "json.calculator"],
            ),
            host(
                "a-much-longer-processor-id",
                HealthStatus::Unhealthy,
                HealthStatus::Healthy,
                &["upper"],
            ),
            Component {
                id: "mic".into(),
                kind: ComponentKind::Source as i32,
                endpoint: "localhost:9000".into(),
                data_types: vec![DataTypeHint::Audio as i32],
                status: HealthStatus::Starting as i32,
                reported_status: HealthStatus::Starting as i32,
                ..Default::default()
            },
        ];
        let text = table(&components, now());
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 4, "{text}");
        assert!(lines[0].starts_with("ID  "), "{text}");
        // Every column starts at the same offset on every line.
        for heading in [
            "KIND",
            "STATUS",
            "ENDPOINT",
            "CAPABILITIES",
            "LAST HEARTBEAT",
        ] {
            let column = lines[0].find(heading).unwrap();
            for line in &lines[1..] {
                assert_eq!(
                    &line[column - 2..column],
                    "  ",
                    "{heading} misaligned in {line:?}"
                );
            }
        }
        assert!(
            lines[1].contains("healthy")
                && lines[1].contains("echo,json.calculator")
                && lines[1].ends_with("3s ago")
        );
        assert!(lines[2].contains("unhealthy (late)"), "{}", lines[2]);
        assert!(
            lines[3].contains("audio") && lines[3].ends_with("-"),
            "{}",
            lines[3]
        );
        assert_eq!(table(&[], now()), "no components\n");
    }

    #[test]
    fn long_capability_lists_are_shortened() {
        let many: Vec<String> = (0..30).map(|i| format!("processor-{i}")).collect();
        let refs: Vec<&str> = many.iter().map(String::as_str).collect();
        let text = table(
            &[host(
                "p",
                HealthStatus::Healthy,
                HealthStatus::Healthy,
                &refs,
            )],
            now(),
        );
        assert!(text.contains('…'), "{text}");
        assert!(text.lines().all(|l| l.chars().count() < 140), "{text}");
        let wide = wide_table(
            &[host(
                "p",
                HealthStatus::Healthy,
                HealthStatus::Healthy,
                &refs,
            )],
            now(),
        );
        assert!(
            !wide.contains('…') && wide.contains("processor-29"),
            "{wide}"
        );
    }

    #[test]
    fn ages_are_short_and_readable() {
        assert_eq!(age(Duration::from_secs(0)), "0s");
        assert_eq!(age(Duration::from_secs(59)), "59s");
        assert_eq!(age(Duration::from_secs(125)), "2m05s");
        assert_eq!(age(Duration::from_secs(3 * 3600 + 600)), "3h10m");
        assert_eq!(age(Duration::from_secs(2 * 86400 + 4 * 3600)), "2d4h");
    }

    #[test]
    fn details_show_everything() {
        let text = details(
            &host(
                "p-1",
                HealthStatus::Degraded,
                HealthStatus::Degraded,
                &["echo"],
            ),
            now(),
        );
        for expected in [
            "id:",
            "p-1",
            "degraded",
            "127.0.0.1:7000",
            "0.1.0",
            "2m05s ago",
            "3s ago",
            "in 12s",
            "zone=a",
            "echo 1.0",
            "chunks_in_total=7",
        ] {
            assert!(text.contains(expected), "{expected} missing from:\n{text}");
        }
    }

    #[test]
    fn json_uses_lowercase_names_and_rfc3339_times() {
        let value = json(&host(
            "p-1",
            HealthStatus::Unhealthy,
            HealthStatus::Healthy,
            &["echo"],
        ));
        assert_eq!(value["id"], "p-1");
        assert_eq!(value["kind"], "processor");
        assert_eq!(value["status"], "unhealthy");
        assert_eq!(value["reported_status"], "healthy");
        assert_eq!(value["capabilities"][0]["name"], "echo");
        assert_eq!(value["metadata"]["zone"], "a");
        assert_eq!(value["metrics"]["chunks_in_total"], 7.0);
        assert_eq!(value["last_heartbeat"], "2023-11-14T22:13:17Z");
    }

    fn text_transform() -> ProcessorCapability {
        ProcessorCapability {
            name: "text.transform".into(),
            version: "0.1.0".into(),
            description: "changes text".into(),
            stateless: true,
            inputs: vec![PortSpec {
                name: "text".into(),
                types: vec![DataTypeHint::Text as i32],
                description: "text to transform".into(),
            }],
            outputs: vec![PortSpec {
                name: "out".into(),
                types: vec![DataTypeHint::Text as i32, DataTypeHint::Json as i32],
                description: String::new(),
            }],
            params: vec![
                ParamSpec {
                    name: "mode".into(),
                    description: "what to do".into(),
                    r#type: "string".into(),
                    required: true,
                    default_value: None,
                    allowed_values: ["upper", "lower"]
                        .map(|v| flowplane_proto::json_to_value(&v.into()))
                        .to_vec(),
                },
                ParamSpec {
                    name: "times".into(),
                    description: "how often".into(),
                    r#type: "number".into(),
                    required: false,
                    default_value: Some(flowplane_proto::json_to_value(&json!(1.0))),
                    allowed_values: Vec::new(),
                },
            ],
        }
    }

    #[test]
    fn the_catalog_lists_each_processor_once_with_ports_params_and_hosts() {
        let mut b = host("b", HealthStatus::Healthy, HealthStatus::Healthy, &[]);
        b.capabilities = vec![text_transform()];
        let mut a = host(
            "a",
            HealthStatus::Degraded,
            HealthStatus::Degraded,
            &["echo"],
        );
        a.capabilities.push(text_transform());
        let entries = catalog(&[b, a]);
        let names: Vec<&str> = entries.iter().map(|e| e.capability.name.as_str()).collect();
        assert_eq!(names, ["echo", "text.transform"]);
        let hosts: Vec<&str> = entries[1].hosts.iter().map(|h| h.0.as_str()).collect();
        assert_eq!(hosts, ["a", "b"]);
        let text = catalog_text(&entries, true);
        for needle in [
            "text.transform 0.1.0 - changes text\n",
            "  hosts: a (degraded, 127.0.0.1:7000), b (healthy, 127.0.0.1:7000)\n",
            "  input   text   text ",
            " text to transform\n",
            "  output  out    text|json\n",
            "  param   mode   string, required, one of \"upper\"|\"lower\"  what to do\n",
            "  param   times  number, default 1.0 ",
        ] {
            assert!(text.contains(needle), "{needle:?} not in\n{text}");
        }
        let value = catalog_json(&entries);
        let t = &value[1];
        assert_eq!(t["inputs"][0]["types"][0], "text");
        assert_eq!(t["params"][0]["required"], true);
        assert_eq!(t["params"][0]["allowed_values"][1], "lower");
        assert_eq!(t["params"][1]["default"], 1.0);
        assert_eq!(t["params"][1]["description"], "how often");
        assert_eq!(t["hosts"][1]["id"], "b");
        assert_eq!(catalog_text(&[], true), "no processors\n");
        // What -o json prints reads back to the same declaration.
        assert_eq!(capability_from_json(t), Ok(text_transform()));
        let bad = json!({"name": "x", "inputs": [{"name": "in", "types": ["sound"]}]});
        assert!(
            capability_from_json(&bad)
                .unwrap_err()
                .contains("\"sound\"")
        );
    }

    #[test]
    fn component_details_show_what_each_processor_declares() {
        let mut c = host("p", HealthStatus::Healthy, HealthStatus::Healthy, &[]);
        c.capabilities = vec![text_transform()];
        let text = details(&c, now());
        assert!(
            text.contains("text.transform 0.1.0 - changes text"),
            "{text}"
        );
        assert!(text.contains("param   mode   string, required"), "{text}");
        let value = json(&c);
        assert_eq!(value["capabilities"][0]["params"][0]["name"], "mode");
        assert_eq!(value["capabilities"][0]["outputs"][0]["types"][1], "json");
    }

    #[test]
    fn watch_events_render_as_lines_and_json() {
        let c = host(
            "p-1",
            HealthStatus::Healthy,
            HealthStatus::Healthy,
            &["echo"],
        );
        let removed = WatchComponentsResponse {
            event: Some(Event::Removed(ComponentRemoved {
                component: Some(c.clone()),
                reason: RemovalReason::Expired as i32,
            })),
            revision: 9,
        };
        let line = event_line(&removed, true);
        assert!(
            line.starts_with("REMOVED")
                && line.contains("p-1")
                && line.trim_end().ends_with("(expired)"),
            "{line}"
        );
        let value = event_json(&removed);
        assert_eq!(value["event"], "removed");
        assert_eq!(value["reason"], "expired");
        assert_eq!(value["revision"], 9);
        let added = WatchComponentsResponse {
            event: Some(Event::Added(c)),
            revision: 10,
        };
        assert!(event_line(&added, true).starts_with("ADDED"));
        assert_eq!(
            event_line(&added, true).find("p-1"),
            event_heading().find("ID")
        );
    }
}
