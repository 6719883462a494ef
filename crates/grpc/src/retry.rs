//! Retrying calls to another flowplane service: a capped, jittered [`Backoff`] and one
//! [`classify`] table saying which gRPC codes are worth retrying soon. Every client loop
//! (registration, watches) uses these, so hosts never retry in lockstep and never hammer
//! a server that has said the request itself is wrong. It never sleeps by itself.

use std::time::Duration;

use rand::Rng;
use tonic::{Code, Status};

/// Shortest delay a [`Backoff`] hands out, so a zero `initial` cannot make a busy loop.
const MIN_DELAY: Duration = Duration::from_millis(1);

/// Capped exponential backoff with decorrelated jitter: each delay is drawn uniformly
/// from `[initial, 3 x previous]` and capped at `max`, so it grows about threefold per
/// failure on average while two clients that failed together spread apart at once.
#[derive(Clone, Debug)]
pub struct Backoff {
    initial: Duration,
    max: Duration,
    previous: Duration,
}

impl Backoff {
    /// Delays from `initial` up to `max` (a `max` below `initial` is raised to it).
    pub fn new(initial: Duration, max: Duration) -> Self {
        let initial = initial.max(MIN_DELAY);
        let max = max.max(initial);
        Self {
            initial,
            max,
            previous: initial,
        }
    }

    /// The delay before the next attempt; always within `[initial, max]`.
    pub fn next_delay(&mut self) -> Duration {
        let low = self.initial.as_micros() as u64;
        let high = (self.previous.as_micros() as u64)
            .saturating_mul(3)
            .max(low);
        let drawn = Duration::from_micros(rand::rng().random_range(low..=high));
        let delay = drawn.min(self.max);
        self.previous = delay;
        delay
    }

    /// Starts again from `initial`, after a success.
    pub fn reset(&mut self) {
        self.previous = self.initial;
    }

    /// The first delay's lower bound.
    pub fn initial(&self) -> Duration {
        self.initial
    }

    /// The longest delay handed out.
    pub fn max(&self) -> Duration {
        self.max
    }
}

/// Whether a failed call is worth retrying soon.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Retry {
    /// The server or the network may recover by itself: back off and try again.
    Transient,
    /// The server refused the request as such (credentials, a taken id, a malformed
    /// request, a missing method): the same request fails again until someone changes
    /// configuration. Report it loudly; retry rarely if at all.
    Fatal,
}

/// The one table from a status to [`Retry`]. Codes meaning "this request is wrong" are
/// fatal; everything else (UNAVAILABLE, DEADLINE_EXCEEDED, RESOURCE_EXHAUSTED, INTERNAL,
/// UNKNOWN, ...) is transient. NOT_FOUND is transient here: a caller for which it means
/// something specific (a forgotten lease) handles it before asking.
pub fn classify(status: &Status) -> Retry {
    match status.code() {
        Code::Unauthenticated
        | Code::PermissionDenied
        | Code::AlreadyExists
        | Code::InvalidArgument
        | Code::FailedPrecondition
        | Code::Unimplemented => Retry::Fatal,
        _ => Retry::Transient,
    }
}

/// Whether a failed call says its replica is gone (down, unreachable, refusing while cut
/// off from its store, or silent past the caller's deadline), so the same call should go
/// to another replica of the service now. Every other answer is about the request, and
/// another replica over the same registry would give it too: NOT_FOUND for a lease that
/// is gone sends a host to register again, not elsewhere.
/// A call written into a connection the peer has just dropped fails on this side with
/// UNKNOWN ("transport error", a broken pipe): that too is the replica gone, told apart
/// from a server's own UNKNOWN by the transport error this client attached as source.
pub fn moves_replica(status: &Status) -> bool {
    match status.code() {
        Code::Unavailable | Code::DeadlineExceeded => true,
        Code::Unknown => failed_in_transport(status),
        _ => false,
    }
}

fn failed_in_transport(status: &Status) -> bool {
    let mut source = std::error::Error::source(status);
    while let Some(error) = source {
        if error.is::<tonic::transport::Error>() || error.is::<std::io::Error>() {
            return true;
        }
        source = error.source();
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    #[test]
    fn delays_stay_within_initial_and_max_and_grow() {
        for _ in 0..200 {
            let mut backoff = Backoff::new(100 * MS, 5000 * MS);
            let mut previous = backoff.initial();
            for _ in 0..30 {
                let delay = backoff.next_delay();
                assert!(delay >= 100 * MS, "{delay:?} under initial");
                assert!(delay <= 5000 * MS, "{delay:?} over max");
                assert!(delay <= previous * 3, "{delay:?} more than 3x {previous:?}");
                previous = delay;
            }
        }
        // After many failures the delays sit near the cap on average.
        let mut backoff = Backoff::new(100 * MS, 5000 * MS);
        let late: Vec<Duration> = (0..200).map(|_| backoff.next_delay()).skip(100).collect();
        let mean = late.iter().sum::<Duration>() / late.len() as u32;
        assert!(mean > 2000 * MS, "mean late delay {mean:?}");
    }

    #[test]
    fn delays_are_jittered() {
        let mut backoff = Backoff::new(100 * MS, 5000 * MS);
        let delays: Vec<Duration> = (0..20).map(|_| backoff.next_delay()).collect();
        assert!(
            delays.windows(2).any(|w| w[0] != w[1]),
            "no jitter: {delays:?}"
        );
    }

    #[test]
    fn reset_starts_again_from_initial() {
        let mut backoff = Backoff::new(10 * MS, 10_000 * MS);
        for _ in 0..50 {
            backoff.next_delay();
        }
        backoff.reset();
        let first = backoff.next_delay();
        assert!(first <= 30 * MS, "{first:?} after reset");
    }

    #[test]
    fn degenerate_settings_are_made_safe() {
        let mut zero = Backoff::new(Duration::ZERO, Duration::ZERO);
        assert_eq!(zero.next_delay(), MIN_DELAY);
        let mut inverted = Backoff::new(200 * MS, 50 * MS);
        assert_eq!(inverted.max(), 200 * MS);
        assert_eq!(inverted.next_delay(), 200 * MS);
    }

    #[test]
    fn request_errors_are_fatal_and_the_rest_transient() {
        for code in [
            Code::Unauthenticated,
            Code::PermissionDenied,
            Code::AlreadyExists,
            Code::InvalidArgument,
            Code::FailedPrecondition,
            Code::Unimplemented,
        ] {
            assert_eq!(classify(&Status::new(code, "x")), Retry::Fatal, "{code:?}");
        }
        for code in [
            Code::Unavailable,
            Code::DeadlineExceeded,
            Code::ResourceExhausted,
            Code::Internal,
            Code::Unknown,
            Code::Aborted,
            Code::Cancelled,
            Code::NotFound,
        ] {
            assert_eq!(
                classify(&Status::new(code, "x")),
                Retry::Transient,
                "{code:?}"
            );
        }
    }

    #[test]
    fn only_a_gone_or_silent_replica_moves_the_call() {
        for code in [Code::Unavailable, Code::DeadlineExceeded] {
            assert!(moves_replica(&Status::new(code, "x")), "{code:?}");
        }
        for code in [
            Code::NotFound,
            Code::PermissionDenied,
            Code::Unauthenticated,
            Code::InvalidArgument,
            Code::AlreadyExists,
            Code::ResourceExhausted,
            Code::Internal,
            Code::Unknown,
            Code::Cancelled,
        ] {
            assert!(!moves_replica(&Status::new(code, "x")), "{code:?}");
        }
        // UNKNOWN raised by this side's transport (a write into a dropped connection).
        let broken = std::io::Error::new(std::io::ErrorKind::BrokenPipe, "broken pipe");
        let mut status = Status::unknown("transport error");
        status.set_source(std::sync::Arc::new(broken));
        assert!(moves_replica(&status));
    }
}
