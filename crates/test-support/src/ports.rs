//! Ports for servers a test starts as child processes, which bind them themselves.

use std::{
    collections::HashSet,
    sync::{
        Mutex,
        atomic::{AtomicU64, Ordering},
    },
};

/// A port on 127.0.0.1 that nothing listens on now, for a child process to bind.
///
/// It comes from below the kernel's ephemeral range: a port from that range, released
/// so that the child can bind it, can meanwhile become some outgoing connection's source
/// port, or another test's port 0, and the child then cannot bind it (seen in CI as
/// "Address already in use" on a metrics listener). Listeners of in-process servers bind
/// port 0 and stay in the ephemeral range. No port is handed out twice by one process.
pub fn free_port() -> u16 {
    static GIVEN: Mutex<Option<HashSet<u16>>> = Mutex::new(None);
    static CALLS: AtomicU64 = AtomicU64::new(0);
    let low = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|r| r.split_whitespace().next()?.parse::<u16>().ok())
        .unwrap_or(32768);
    let (from, to) = (low.saturating_sub(12_000).max(1024), low);
    // A counter as well as the clock and the pid, so two calls in a row, or two test
    // binaries, never start at one port.
    let seed = CALLS.fetch_add(1, Ordering::Relaxed).wrapping_mul(104_729)
        ^ u64::from(std::process::id())
        ^ std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64);
    let mut given = GIVEN.lock().unwrap_or_else(|p| p.into_inner());
    let given = given.get_or_insert_with(HashSet::new);
    let span = u64::from(to - from);
    for attempt in 0..span {
        let port = from
            + ((seed
                .wrapping_mul(6364136223846793005)
                .wrapping_add(attempt * 7919))
                % span) as u16;
        if !given.contains(&port) && std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            given.insert(port);
            return port;
        }
    }
    panic!("no free port on 127.0.0.1 between {from} and {to}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ports_are_below_the_ephemeral_range_and_never_repeat() {
        let ports: Vec<u16> = (0..200).map(|_| free_port()).collect();
        let distinct: HashSet<u16> = ports.iter().copied().collect();
        assert_eq!(distinct.len(), ports.len());
        let low = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
            .ok()
            .and_then(|r| r.split_whitespace().next()?.parse::<u16>().ok())
            .unwrap_or(32768);
        assert!(ports.iter().all(|&p| p < low), "{ports:?}");
    }
}
