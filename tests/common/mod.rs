//! Shared helpers for the integration tests: every test talks to the real services on
//! 127.0.0.1 (started by `deploy/local/services up`) and uses unique names so tests can
//! run in parallel and repeatedly.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use figment::Figment;
use figment::providers::{Format, Toml};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_util::sync::CancellationToken;

use ingestd::app::{App, Running};
use ingestd::config::{Config, PipelineConfig, Secret};
use ingestd::sinks::SinkConfig;

pub fn redis_url() -> String {
    std::env::var("INGESTD_TEST_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".to_string())
}

/// A name no other test (or earlier run) uses.
pub fn unique(prefix: &str) -> String {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    format!(
        "{prefix}-{}-{nanos}-{}",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed)
    )
}

/// Defaults pointed at the local Redis, an ephemeral HTTP port and a private dead-letter stream.
pub fn base_config() -> Config {
    let mut config = Config::default();
    config.redis.url = Secret::new(redis_url());
    config.http.listen = "127.0.0.1:0".to_string();
    config.dead_letter.stream = unique("test-dead-letter");
    config.shutdown.deadline = Duration::from_secs(30);
    // A private spool: tests never replay each other's leftovers.
    config.spool.dir = std::env::temp_dir().join(unique("ingestd-test-spool"));
    config
}

/// A sink from its TOML table, e.g. `sink("blackhole = {}\nbatch = { max_events = 10 }")`.
pub fn sink(toml: &str) -> SinkConfig {
    Figment::from(Toml::string(toml))
        .extract()
        .unwrap_or_else(|error| panic!("bad sink toml: {error}\n{toml}"))
}

/// A pipeline reading `channels`, with `sinks` by name.
pub fn pipeline(channels: &[&str], sinks: Vec<(&str, SinkConfig)>) -> PipelineConfig {
    PipelineConfig {
        channels: channels.iter().map(|channel| channel.to_string()).collect(),
        patterns: Vec::new(),
        streams: Vec::new(),
        on_limit: Default::default(),
        sinks: sinks
            .into_iter()
            .map(|(name, config)| (name.to_string(), config))
            .collect(),
    }
}

pub struct Started {
    pub running: Running,
    pub shutdown: CancellationToken,
}

impl Started {
    pub fn http(&self) -> SocketAddr {
        self.running.http_addr
    }

    /// Stops and waits; panics if the run failed.
    pub async fn stop(self) -> ingestd::app::RunOutcome {
        self.shutdown.cancel();
        tokio::time::timeout(Duration::from_secs(60), self.running.task)
            .await
            .expect("stops within 60s")
            .expect("task joins")
            .expect("run succeeds")
    }
}

/// Starts the app and waits until `/readyz` says ready (source subscribed, sinks reachable).
pub async fn start(app: App) -> Started {
    let shutdown = CancellationToken::new();
    let running = app.start(shutdown.clone()).await.expect("app starts");
    let started = Started { running, shutdown };
    wait_ready(started.http()).await;
    started
}

pub async fn wait_ready(address: SocketAddr) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (status, body) = http_get(address, "/readyz").await;
        if status == 200 {
            return;
        }
        assert!(Instant::now() < deadline, "not ready after 30s: {body}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A minimal HTTP/1.1 GET: `(status, body)`.
pub async fn http_get(address: SocketAddr, path: &str) -> (u16, String) {
    let mut stream = tokio::net::TcpStream::connect(address)
        .await
        .expect("connect http");
    let request = format!("GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut response = Vec::new();
    stream.read_to_end(&mut response).await.unwrap();
    let text = String::from_utf8_lossy(&response).into_owned();
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|code| code.parse().ok())
        .unwrap_or(0);
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, body)| body.to_string())
        .unwrap_or_default();
    // Dechunk a chunked body (axum chunks large responses).
    let body = if text
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        dechunk(&body)
    } else {
        body
    };
    (status, body)
}

fn dechunk(body: &str) -> String {
    let mut out = String::new();
    let mut rest = body;
    while let Some((size_line, after)) = rest.split_once("\r\n") {
        let size = usize::from_str_radix(size_line.trim(), 16).unwrap_or(0);
        if size == 0 || after.len() < size {
            break;
        }
        out.push_str(&after[..size]);
        rest = after[size..].trim_start_matches("\r\n");
    }
    out
}

/// The value of one metric line `name{labels..}` whose labels contain every `label_part`.
pub fn metric_value(metrics: &str, name: &str, label_parts: &[&str]) -> Option<f64> {
    metrics
        .lines()
        .filter(|line| !line.starts_with('#'))
        .filter(|line| {
            line.split(['{', ' ']).next() == Some(name)
                && label_parts.iter().all(|part| line.contains(part))
        })
        .filter_map(|line| line.rsplit(' ').next()?.parse::<f64>().ok())
        .reduce(|total, value| total + value)
}

pub async fn redis_connection() -> redis::aio::MultiplexedConnection {
    redis::Client::open(redis_url())
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .expect("redis is up (deploy/local/services up)")
}

/// PUBLISHes every payload, pipelined.
pub async fn publish_all(channel: &str, payloads: &[Vec<u8>]) {
    let mut connection = redis_connection().await;
    for chunk in payloads.chunks(500) {
        let mut pipeline = redis::pipe();
        for payload in chunk {
            pipeline.publish(channel, payload).ignore();
        }
        let () = pipeline.query_async(&mut connection).await.unwrap();
    }
}

/// A valid event as JSON bytes.
pub fn event_json(event_id: &str, user_id: &str, event_type: &str, amount: f64) -> Vec<u8> {
    serde_json::json!({
        "event_id": event_id,
        "user_id": user_id,
        "event_type": event_type,
        "timestamp": ingestd::event::format_timestamp(&chrono::Utc::now()),
        "amount": amount,
        "data": {"source": "test"},
    })
    .to_string()
    .into_bytes()
}

/// Polls `check` until it returns true or `timeout` passes.
pub async fn eventually<F, Fut>(timeout: Duration, what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if check().await {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {timeout:?} waiting for: {what}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A port nobody listens on right now.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// DynamoDB Local accepts any credentials but the SDK insists on having some (the access
/// key id must be letters and digits only). Real runs take them from the environment.
pub fn ensure_aws_credentials() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        if std::env::var_os("AWS_ACCESS_KEY_ID").is_none() {
            // SAFETY: set once, before any AWS client of this process reads the environment.
            unsafe {
                std::env::set_var("AWS_ACCESS_KEY_ID", "ingestdlocal");
                std::env::set_var("AWS_SECRET_ACCESS_KEY", "ingestdlocal");
            }
        }
    });
}

/// A redis-server of the test's own, so stopping or securing it disturbs no other test.
/// Killed when dropped.
pub struct PrivateRedis {
    child: std::process::Child,
    pub port: u16,
}

impl PrivateRedis {
    /// Starts `redis-server` on `port` with `extra_config` lines (redis.conf syntax) and
    /// waits until it accepts connections.
    pub fn start(port: u16, extra_config: &str) -> PrivateRedis {
        let directory = std::env::temp_dir().join(unique("private-redis"));
        std::fs::create_dir_all(&directory).unwrap();
        let config = directory.join("redis.conf");
        std::fs::write(
            &config,
            format!(
                "port {port}\nbind 127.0.0.1\nsave \"\"\nappendonly no\ndir {}\n{extra_config}\n",
                directory.display()
            ),
        )
        .unwrap();
        let child = std::process::Command::new("redis-server")
            .arg(&config)
            .stdout(std::process::Stdio::null())
            .spawn()
            .expect("redis-server is installed (deploy/local/services up installs it)");
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                Instant::now() < deadline,
                "private redis-server did not start"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        PrivateRedis { child, port }
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }
}

impl Drop for PrivateRedis {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Waits until the stream (e.g. the dead-letter stream) holds at least `length` entries.
pub async fn wait_stream_len(stream: &str, length: usize, timeout: Duration) {
    let connection = redis_connection().await;
    eventually(timeout, &format!("{length} entries in {stream}"), || {
        let mut connection = connection.clone();
        async move {
            let current: usize = redis::AsyncCommands::xlen(&mut connection, stream)
                .await
                .unwrap();
            current >= length
        }
    })
    .await;
}

/// The `event_id` of every line a `file` sink wrote, in file order (duplicates kept).
pub fn file_sink_event_ids(path: &std::path::Path) -> Vec<String> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(|line| {
            let value: serde_json::Value = serde_json::from_str(line).expect("a JSON line");
            value["event_id"].as_str().expect("event_id").to_string()
        })
        .collect()
}

/// The test certificates made by `deploy/local/services up` (`$INGESTD_SERVICES_DIR/tls`,
/// default `~/.cache/ingestd-services/tls`): `ca.pem`, `server.pem` (chain), `server.key`,
/// `wrong-ca.pem`. Panics when they are missing: TLS tests must never pass by skipping.
pub fn tls_dir() -> std::path::PathBuf {
    let services = std::env::var_os("INGESTD_SERVICES_DIR")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| {
            let home = std::env::var_os("HOME").expect("HOME is set");
            std::path::Path::new(&home).join(".cache/ingestd-services")
        });
    let directory = services.join("tls");
    for file in ["ca.pem", "server.pem", "server.key", "wrong-ca.pem"] {
        assert!(
            directory.join(file).is_file(),
            "{} is missing: run `deploy/local/services up` (it makes the test certificates and starts the servers with TLS)",
            directory.join(file).display()
        );
    }
    directory
}

/// Runs `ingestd check` in `directory` (its `ingestd.toml` and `pipelines/`) and returns
/// (exit code, stderr).
pub fn ingestd_check(directory: &std::path::Path) -> (i32, String) {
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_ingestd"))
        .current_dir(directory)
        .args([
            "--config",
            "ingestd.toml",
            "--pipelines",
            "pipelines",
            "check",
        ])
        .output()
        .unwrap();
    (
        output.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}
