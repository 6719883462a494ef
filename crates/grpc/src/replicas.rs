//! Clients of a replicated service (the control plane): a comma-separated list of URLs,
//! a DNS name counting as one endpoint per address it resolves to (resolved when a round
//! over the list starts), and one replica in use at a time. A call that fails because
//! its replica is gone or silent ([`crate::retry::moves_replica`]) goes to the next one at
//! once; after one failed round over all of them the error goes back to the caller, who
//! backs off with its [`crate::retry::Backoff`]. It never retries an answer, never sleeps.
//!
//! Why explicit failover and not `Channel::balance_list`: a balanced channel spreads calls
//! over every ready endpoint (power of two choices) and has no replica "in use". A call
//! routed to an endpoint that has just died fails without being tried elsewhere, and
//! where the replicas keep separate registries, heartbeats spread that way land on
//! registries that never saw the registration. Sticking to one replica until it fails
//! makes what a client does after a fault one deterministic step: the next in the list.

use std::{future::Future, net::SocketAddr, sync::Arc};

use tokio::sync::Mutex;
use tonic::{
    Status,
    transport::{Channel, ClientTlsConfig, Endpoint, Uri},
};

use crate::{
    Error, Result,
    client::{CONNECT_TIMEOUT, plain_endpoint},
    config::ClientArgs,
    retry::moves_replica,
};

/// One checked entry of the list.
#[derive(Clone, Debug)]
struct Target {
    /// As given, for messages and logs.
    given: String,
    tls: bool,
    /// Without the brackets of an IPv6 literal.
    host: String,
    port: u16,
}

impl Target {
    fn parse(entry: &str) -> std::result::Result<Self, String> {
        if entry.is_empty() {
            return Err("empty entry: two commas in a row, or one at either end".into());
        }
        let text = if entry.contains("://") {
            entry.to_string()
        } else {
            format!("http://{entry}")
        };
        let uri: Uri = text
            .parse()
            .map_err(|e| format!("not a url or HOST:PORT: {e}"))?;
        let tls = match uri.scheme_str() {
            Some("http") => false,
            Some("https") => true,
            other => {
                return Err(format!(
                    "scheme {:?} is not supported: use http:// or https://",
                    other.unwrap_or_default()
                ));
            }
        };
        let authority = uri.authority().ok_or("no host")?;
        if authority.as_str().contains('@') {
            return Err("user information is not allowed in the url".into());
        }
        let host = authority
            .host()
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_string();
        if host.is_empty() {
            return Err("no host".into());
        }
        if !matches!(uri.path(), "" | "/") || uri.query().is_some() {
            return Err("a path or query is not allowed: give scheme, host and port".into());
        }
        // By hand: `Authority::port` reads an out-of-range port as no port at all.
        let port_text = match authority.as_str().rsplit_once(':') {
            Some((_, port)) if !port.contains(']') => Some(port),
            _ => None,
        };
        let port = match port_text {
            Some("") => return Err("empty port".into()),
            Some(port) => port
                .parse::<u16>()
                .ok()
                .filter(|p| *p != 0)
                .ok_or_else(|| format!("port {port:?} is not from 1 to 65535"))?,
            None if tls => 443,
            None => 80,
        };
        Ok(Self {
            given: entry.to_string(),
            tls,
            host,
            port,
        })
    }

    fn scheme(&self) -> &'static str {
        if self.tls { "https" } else { "http" }
    }

    /// The host as it goes into a URL (IPv6 literals bracketed).
    fn url_host(&self) -> String {
        if self.host.contains(':') {
            format!("[{}]", self.host)
        } else {
            self.host.clone()
        }
    }
}

/// The replica a call went to: the channel, and which entry (and address) it is. Hand it
/// back to [`Replicas::failed`] when a call through it, or a stream it opened, breaks.
#[derive(Clone, Debug)]
pub struct Pick {
    channel: std::result::Result<Channel, Status>,
    /// The entry as given, with the address a DNS name resolved to.
    pub replica: String,
    generation: u64,
    round: usize,
}

impl Pick {
    /// The channel to this replica, or UNAVAILABLE when its name did not resolve.
    pub fn channel(&self) -> std::result::Result<Channel, Status> {
        self.channel.clone()
    }
}

/// One endpoint of the current round.
struct Replica {
    label: String,
    endpoint: std::result::Result<Endpoint, String>,
}

struct State {
    /// The endpoints of this round; empty until the first pick and after a full round.
    round: Vec<Replica>,
    index: usize,
    channel: Option<Channel>,
    /// Bumped on every move, so that two callers failing on the same replica move once.
    generation: u64,
}

/// The replicas of one service a client may use, and the one it uses now. Cheap to
/// clone; clones share the replica in use.
#[derive(Clone)]
pub struct Replicas {
    inner: Arc<Inner>,
}

struct Inner {
    flag: &'static str,
    targets: Vec<Target>,
    tls: Option<ClientTlsConfig>,
    state: Mutex<State>,
}

impl std::fmt::Debug for Replicas {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Replicas")
            .field("flag", &self.inner.flag)
            .field("targets", &self.inner.targets)
            .finish_non_exhaustive()
    }
}

impl Replicas {
    /// Parses `list` (comma-separated URLs or `HOST:PORT`s; `https://` means TLS) given
    /// as `flag`. Fails naming the flag and the bad entry, or the TLS flag whose file
    /// cannot be read when an entry is `https://`. Resolves and connects nothing yet.
    pub fn new(list: &str, flag: &'static str, args: &ClientArgs) -> Result<Self> {
        let targets = parse(list, flag)?;
        let tls = if targets.iter().any(|t| t.tls) {
            Some(args.tls()?)
        } else {
            None
        };
        Ok(Self {
            inner: Arc::new(Inner {
                flag,
                targets,
                tls,
                state: Mutex::new(State {
                    round: Vec::new(),
                    index: 0,
                    channel: None,
                    generation: 0,
                }),
            }),
        })
    }

    /// How many entries the list has (a DNS name may stand for several replicas).
    pub fn len(&self) -> usize {
        self.inner.targets.len()
    }

    /// Never true: [`Replicas::new`] refuses an empty list.
    pub fn is_empty(&self) -> bool {
        self.inner.targets.is_empty()
    }

    /// The replica in use, resolving the list first when a round starts.
    pub async fn pick(&self) -> Pick {
        let mut state = self.inner.state.lock().await;
        if state.round.is_empty() {
            state.round = self.resolve().await;
            state.index = 0;
            state.channel = None;
        }
        let index = state.index;
        let label = state.round[index].label.clone();
        let channel = match (&state.channel, &state.round[index].endpoint) {
            (Some(channel), _) => Ok(channel.clone()),
            (None, Ok(endpoint)) => {
                let channel = endpoint.connect_lazy();
                state.channel = Some(channel.clone());
                Ok(channel)
            }
            (None, Err(reason)) => Err(Status::unavailable(format!("{label}: {reason}"))),
        };
        Pick {
            channel,
            replica: label,
            generation: state.generation,
            round: state.round.len(),
        }
    }

    /// Reports that a call through `pick` failed with `status`: when the status says the
    /// replica is gone ([`moves_replica`]) the next call goes to the next replica. Several
    /// callers reporting the same pick move once. Returns whether it moved.
    pub async fn failed(&self, pick: &Pick, status: &Status) -> bool {
        if !moves_replica(status) {
            return false;
        }
        let mut state = self.inner.state.lock().await;
        if state.generation != pick.generation {
            return true;
        }
        state.generation += 1;
        state.channel = None;
        state.index += 1;
        if state.index >= state.round.len() {
            // A full round: resolve the names again when the next one starts.
            state.round.clear();
            state.index = 0;
        }
        let next = state.round.get(state.index).map(|r| r.label.as_str());
        tracing::warn!(
            flag = self.inner.flag,
            replica = %pick.replica,
            next = next.unwrap_or("the first, resolved again"),
            code = ?status.code(),
            message = status.message(),
            "replica failed; moving to the next"
        );
        true
    }

    /// Runs `attempt` on the replica in use and, while it fails with a status that says
    /// the replica is gone, on the next ones: at most one round over the list. Returns
    /// the first answer, or the last failure.
    pub async fn call<T, F, Fut>(&self, attempt: F) -> std::result::Result<T, Status>
    where
        F: FnMut(Channel) -> Fut,
        Fut: Future<Output = std::result::Result<T, Status>>,
    {
        self.open(attempt).await.map(|(value, _)| value)
    }

    /// [`Replicas::call`] that also returns the replica that answered: for a stream, to
    /// report to [`Replicas::failed`] if it breaks later.
    pub async fn open<T, F, Fut>(&self, mut attempt: F) -> std::result::Result<(T, Pick), Status>
    where
        F: FnMut(Channel) -> Fut,
        Fut: Future<Output = std::result::Result<T, Status>>,
    {
        let mut pick = self.pick().await;
        let round = pick.round;
        let mut tried = 0;
        loop {
            let outcome = match pick.channel() {
                Ok(channel) => attempt(channel).await,
                Err(status) => Err(status),
            };
            let status = match outcome {
                Ok(value) => return Ok((value, pick)),
                Err(status) => status,
            };
            if !self.failed(&pick, &status).await {
                return Err(status);
            }
            tried += 1;
            if tried >= round {
                return Err(if round == 1 {
                    status
                } else {
                    Status::new(
                        status.code(),
                        format!(
                            "no replica of {} answered ({tried} tried); last, {}: {}",
                            self.inner.flag,
                            pick.replica,
                            status.message()
                        ),
                    )
                });
            }
            pick = self.pick().await;
        }
    }

    /// The endpoints of a new round: each entry in order, a name as one endpoint per
    /// address it resolves to now. A name that does not resolve stays in the round as
    /// an endpoint that fails, so the round still moves past it.
    async fn resolve(&self) -> Vec<Replica> {
        let mut round = Vec::new();
        for target in &self.inner.targets {
            let literal = target.host.parse::<std::net::IpAddr>().is_ok();
            if literal {
                let url = format!(
                    "{}://{}:{}",
                    target.scheme(),
                    target.url_host(),
                    target.port
                );
                round.push(Replica {
                    label: target.given.clone(),
                    endpoint: self.endpoint(&url, target, None),
                });
                continue;
            }
            let lookup = tokio::net::lookup_host((target.host.as_str(), target.port));
            let addresses: std::result::Result<Vec<SocketAddr>, String> =
                match tokio::time::timeout(CONNECT_TIMEOUT, lookup).await {
                    Ok(Ok(addresses)) => {
                        let mut unique: Vec<SocketAddr> = Vec::new();
                        for address in addresses {
                            if !unique.contains(&address) {
                                unique.push(address);
                            }
                        }
                        Ok(unique)
                    }
                    Ok(Err(e)) => Err(format!("cannot resolve {}: {e}", target.host)),
                    Err(_) => Err(format!(
                        "cannot resolve {} within {CONNECT_TIMEOUT:?}",
                        target.host
                    )),
                };
            match addresses {
                Ok(addresses) if !addresses.is_empty() => {
                    for address in addresses {
                        let url = format!("{}://{address}", target.scheme());
                        round.push(Replica {
                            label: format!("{} ({address})", target.given),
                            endpoint: self.endpoint(&url, target, Some(&target.host)),
                        });
                    }
                }
                Ok(_) => round.push(Replica {
                    label: target.given.clone(),
                    endpoint: Err(format!("{} resolves to no address", target.host)),
                }),
                Err(reason) => round.push(Replica {
                    label: target.given.clone(),
                    endpoint: Err(reason),
                }),
            }
        }
        round
    }

    /// An endpoint dialling `url`; for an address a name resolved to, the name stays the
    /// request authority and the name TLS verifies.
    fn endpoint(
        &self,
        url: &str,
        target: &Target,
        name: Option<&str>,
    ) -> std::result::Result<Endpoint, String> {
        let build = || -> Result<Endpoint> {
            let mut endpoint = plain_endpoint(url.to_string(), &target.given)?;
            if let Some(name) = name {
                let origin = format!(
                    "{}://{}:{}",
                    target.scheme(),
                    target.url_host(),
                    target.port
                );
                let origin: Uri =
                    origin
                        .parse()
                        .map_err(|e: http::uri::InvalidUri| Error::InvalidEndpoint {
                            endpoint: target.given.clone(),
                            reason: e.to_string(),
                        })?;
                endpoint = endpoint.origin(origin);
                if let Some(tls) = &self.inner.tls {
                    endpoint = endpoint.tls_config(tls.clone().domain_name(name))?;
                }
            } else if let Some(tls) = &self.inner.tls
                && target.tls
            {
                endpoint = endpoint.tls_config(tls.clone())?;
            }
            Ok(endpoint)
        };
        build().map_err(|e| e.to_string())
    }
}

/// Splits and checks a comma-separated list; surrounding spaces of an entry are ignored.
fn parse(list: &str, flag: &'static str) -> Result<Vec<Target>> {
    let invalid = |entry: &str, reason: String| Error::InvalidReplica {
        flag,
        entry: entry.to_string(),
        reason,
    };
    if list.trim().is_empty() {
        return Err(invalid(list, "no url given".into()));
    }
    list.split(',')
        .map(str::trim)
        .map(|entry| Target::parse(entry).map_err(|reason| invalid(entry, reason)))
        .collect()
}

/// Checks `list` as [`Replicas::new`] would, for settings validated before binding.
pub fn check(list: &str, flag: &'static str, args: &ClientArgs) -> Result<()> {
    Replicas::new(list, flag, args).map(drop)
}

#[cfg(test)]
mod tests {
    use super::*;

    const FLAG: &str = "--control-plane";

    #[test]
    fn a_list_keeps_its_order_schemes_and_default_ports() {
        let targets = parse(
            "http://127.0.0.1:50051, 127.0.0.1:50052,https://cp.example:7443,http://[::1]:9,localhost",
            FLAG,
        )
        .unwrap();
        let seen: Vec<(bool, &str, u16)> = targets
            .iter()
            .map(|t| (t.tls, t.host.as_str(), t.port))
            .collect();
        assert_eq!(
            seen,
            [
                (false, "127.0.0.1", 50051),
                (false, "127.0.0.1", 50052),
                (true, "cp.example", 7443),
                (false, "::1", 9),
                (false, "localhost", 80),
            ]
        );
        assert_eq!(targets[3].url_host(), "[::1]");
    }

    #[test]
    fn bad_entries_are_refused_naming_the_flag_and_the_entry() {
        for (list, entry, why) in [
            ("", "", "no url"),
            ("  ", "  ", "no url"),
            ("http://127.0.0.1:1,,http://127.0.0.1:2", "", "empty entry"),
            ("http://127.0.0.1:1,", "", "empty entry"),
            ("ftp://127.0.0.1:1", "ftp://127.0.0.1:1", "scheme"),
            ("http://127.0.0.1:1,not a url", "not a url", "not a url"),
            ("http://127.0.0.1:1/path", "http://127.0.0.1:1/path", "path"),
            ("http://user@127.0.0.1:1", "http://user@127.0.0.1:1", "user"),
            ("http://127.0.0.1:99999", "http://127.0.0.1:99999", "port"),
            ("127.0.0.1:0", "127.0.0.1:0", "port"),
            ("http://127.0.0.1:", "http://127.0.0.1:", "port"),
        ] {
            let err = parse(list, FLAG).unwrap_err();
            let message = err.to_string();
            assert!(
                message.starts_with("--control-plane: "),
                "{list:?}: {message}"
            );
            assert!(
                message.contains(&format!("{entry:?}")),
                "{list:?}: {message}"
            );
            assert!(message.contains(why), "{list:?}: {message}");
            let status = tonic::Status::from(err);
            assert_eq!(status.code(), tonic::Code::InvalidArgument, "{list:?}");
        }
    }

    #[test]
    fn an_https_entry_reads_the_tls_files_and_names_the_flag() {
        let args = ClientArgs {
            tls_ca: Some("/nonexistent/ca.pem".into()),
            ..ClientArgs::default()
        };
        check("http://127.0.0.1:1", FLAG, &args).unwrap();
        let err = check("http://127.0.0.1:1,https://127.0.0.1:2", FLAG, &args).unwrap_err();
        assert!(err.to_string().contains("--tls-ca"), "{err}");
    }

    #[tokio::test]
    async fn a_name_is_one_replica_per_address_in_list_order() {
        let replicas = Replicas::new(
            "http://127.0.0.1:2,http://localhost:1",
            FLAG,
            &ClientArgs::default(),
        )
        .unwrap();
        let round = replicas.resolve().await;
        let labels: Vec<&str> = round.iter().map(|r| r.label.as_str()).collect();
        assert_eq!(labels[0], "http://127.0.0.1:2", "{labels:?}");
        // localhost resolves through the hosts file; each of its addresses is a replica.
        assert!(labels.len() >= 2, "{labels:?}");
        assert!(
            labels[1..]
                .iter()
                .all(|l| l.starts_with("http://localhost:1 (")),
            "{labels:?}"
        );
        assert!(
            labels.contains(&"http://localhost:1 (127.0.0.1:1)"),
            "{labels:?}"
        );
        // The request authority stays the name.
        let named = round[1].endpoint.as_ref().unwrap();
        assert_eq!(named.uri().host(), Some("127.0.0.1"));
    }
}
