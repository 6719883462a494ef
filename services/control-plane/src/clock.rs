//! The server's clock. Lease math runs on `tokio::time::Instant`, so tests drive it with
//! tokio's paused clock; wall-clock timestamps for the API are derived from the same
//! instants, so they stay consistent with it. Client timestamps never enter here.

use std::time::SystemTime;

use tokio::time::Instant;

/// Maps tokio instants onto wall-clock time, anchored when the clock is made.
#[derive(Clone, Copy, Debug)]
pub struct WallClock {
    anchor: Instant,
    wall: SystemTime,
}

impl WallClock {
    /// A clock anchored now.
    pub fn new() -> Self {
        Self {
            anchor: Instant::now(),
            wall: SystemTime::now(),
        }
    }

    /// The current instant (tokio's clock, so a paused test clock applies).
    pub fn now(&self) -> Instant {
        Instant::now()
    }

    /// The wall-clock time of `at`.
    pub fn wall(&self, at: Instant) -> SystemTime {
        if at >= self.anchor {
            self.wall + (at - self.anchor)
        } else {
            self.wall - (self.anchor - at)
        }
    }
}

impl Default for WallClock {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[tokio::test(start_paused = true)]
    async fn wall_time_follows_the_paused_clock() {
        let clock = WallClock::new();
        let start = clock.wall(clock.now());
        tokio::time::advance(Duration::from_secs(90)).await;
        let later = clock.wall(clock.now());
        assert_eq!(
            later.duration_since(start).unwrap(),
            Duration::from_secs(90)
        );
    }
}
