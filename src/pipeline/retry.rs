//! Exponential backoff with full jitter (backon), bounded by attempts and elapsed time.
//! Only errors a sink marks retryable are retried; the runner decides, this module times.

use std::time::{Duration, Instant};

use backon::{BackoffBuilder, ExponentialBuilder};

use crate::config::RetryConfig;

/// Delays between attempts of one batch.
pub struct RetrySchedule {
    delays: backon::ExponentialBackoff,
    started: Instant,
    max_elapsed: Duration,
}

impl RetrySchedule {
    pub fn new(config: &RetryConfig) -> RetrySchedule {
        let delays = ExponentialBuilder::default()
            .with_min_delay(config.initial_delay)
            .with_max_delay(config.max_delay)
            .with_factor(2.0)
            .with_jitter()
            // backon counts retries, the config counts attempts (first one included).
            .with_max_times(config.max_attempts.saturating_sub(1))
            .build();
        RetrySchedule {
            delays,
            started: Instant::now(),
            max_elapsed: config.max_elapsed,
        }
    }

    /// The delay before the next attempt, or `None` when out of attempts or time.
    pub fn next_delay(&mut self) -> Option<Duration> {
        let delay = self.delays.next()?;
        if self.started.elapsed() + delay > self.max_elapsed {
            return None;
        }
        Some(delay)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn attempts_are_bounded() {
        let config = RetryConfig {
            max_attempts: 4,
            initial_delay: Duration::from_millis(10),
            max_delay: Duration::from_millis(40),
            max_elapsed: Duration::from_secs(60),
        };
        let mut schedule = RetrySchedule::new(&config);
        let delays: Vec<Duration> = std::iter::from_fn(|| schedule.next_delay()).collect();
        assert_eq!(delays.len(), 3);
        assert!(
            delays
                .iter()
                .all(|delay| *delay <= Duration::from_millis(80))
        );
    }

    #[test]
    fn elapsed_time_is_bounded() {
        let config = RetryConfig {
            max_attempts: 100,
            initial_delay: Duration::from_secs(5),
            max_delay: Duration::from_secs(5),
            max_elapsed: Duration::from_secs(1),
        };
        assert_eq!(RetrySchedule::new(&config).next_delay(), None);
    }
}
