//! The output protocol: `progress <count> <unix seconds>` every interval while the count
//! moves, then one `result <json>`. stdout is flushed per line so the harness sees it live.

use std::io::Write;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

pub fn now_secs() -> f64 {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    now.as_secs_f64()
}

pub fn line(text: &str) {
    let mut stdout = std::io::stdout().lock();
    let _ = writeln!(stdout, "{text}");
    let _ = stdout.flush();
}

pub fn result(value: serde_json::Value) {
    line(&format!("result {value}"));
}

/// Prints `progress` lines for `counter` every `interval` until the returned handle is
/// aborted (a last line is printed by [`finish`]).
pub fn spawn_reporter(counter: Arc<AtomicU64>, interval: Duration) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut last = u64::MAX;
        let mut ticker = tokio::time::interval(interval);
        loop {
            ticker.tick().await;
            let count = counter.load(Ordering::Relaxed);
            if count != last {
                line(&format!("progress {count} {:.6}", now_secs()));
                last = count;
            }
        }
    })
}

pub fn finish(reporter: tokio::task::JoinHandle<()>, counter: &AtomicU64) {
    reporter.abort();
    line(&format!(
        "progress {} {:.6}",
        counter.load(Ordering::Relaxed),
        now_secs()
    ));
}
