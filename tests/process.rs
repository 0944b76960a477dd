//! The `ingestd` binary as an operator runs it: `check` diagnostics, graceful SIGTERM,
//! a second signal, and recovery from a Redis restart.

mod common;

use std::collections::HashSet;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{
    PrivateRedis, event_json, eventually, free_port, http_get, metric_value, publish_all, unique,
};

fn ingestd() -> Command {
    Command::new(env!("CARGO_BIN_EXE_ingestd"))
}

fn write(path: &Path, text: &str) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(path, text).unwrap();
}

fn temp_dir(name: &str) -> std::path::PathBuf {
    let directory = std::env::temp_dir().join(unique(name));
    std::fs::create_dir_all(&directory).unwrap();
    directory
}

#[test]
fn check_names_the_file_and_key_of_each_problem() {
    let directory = temp_dir("check");
    let good_pipeline = "channels = [\"events\"]\n[sinks.out]\nblackhole = {}\n";
    write(&directory.join("pipelines/main.toml"), good_pipeline);

    write(
        &directory.join("ingestd.toml"),
        "[shutdown]\ndeadline = \"5 parsecs\"\n",
    );
    let (code, stderr) = common::ingestd_check(&directory);
    assert_eq!(code, 2, "{stderr}");
    assert!(
        stderr.contains("ingestd.toml: shutdown.deadline: "),
        "{stderr}"
    );
    assert!(stderr.contains("e.g. \"50ms\""), "{stderr}");

    write(
        &directory.join("ingestd.toml"),
        "[redis]\nurll = \"redis://x\"\n",
    );
    let (code, stderr) = common::ingestd_check(&directory);
    assert_eq!(code, 2);
    assert!(
        stderr.contains("ingestd.toml: redis.urll: unknown field"),
        "{stderr}"
    );

    write(&directory.join("ingestd.toml"), "");
    write(
        &directory.join("pipelines/main.toml"),
        "channels = [\"events\"]\n[sinks.out]\nblackhole = {}\nbatch = { max_events = \"ten\" }\n",
    );
    let (code, stderr) = common::ingestd_check(&directory);
    assert_eq!(code, 2);
    assert!(
        stderr.contains(
            "pipelines/main.toml: pipelines.main.sinks.out.batch.max_events: invalid type"
        ),
        "{stderr}"
    );

    write(
        &directory.join("pipelines/main.toml"),
        "channels = [\"events\"]\n[sinks.out]\nbatch = { max_events = 0 }\n",
    );
    let (code, stderr) = common::ingestd_check(&directory);
    assert_eq!(code, 2);
    assert!(
        stderr.contains(
            "pipelines/main.toml: pipelines.main.sinks.out.-: a sink needs exactly one kind table"
        ),
        "{stderr}"
    );
    assert!(
        stderr.contains(
            "pipelines/main.toml: pipelines.main.sinks.out.batch.max_events: must be at least 1"
        ),
        "{stderr}"
    );

    write(&directory.join("pipelines/main.toml"), good_pipeline);
    let (code, stderr) = common::ingestd_check(&directory);
    assert_eq!(code, 0, "{stderr}");
    let refused = ingestd()
        .current_dir(&directory)
        .env("INGESTD_HTTP__LISTEN", "nowhere")
        .args(["--config", "ingestd.toml", "run"])
        .output()
        .unwrap();
    assert_eq!(
        refused.status.code(),
        Some(2),
        "run refuses an invalid config"
    );
    assert!(
        String::from_utf8_lossy(&refused.stderr)
            .contains("environment INGESTD_HTTP__LISTEN: http.listen")
    );
}

struct Daemon {
    child: std::process::Child,
    http: std::net::SocketAddr,
}

fn spawn_daemon(directory: &Path, channel: &str, sink_table: &str) -> Daemon {
    let port = free_port();
    write(
        &directory.join("ingestd.toml"),
        &format!(
            "[redis]\nurl = \"{}\"\n[http]\nlisten = \"127.0.0.1:{port}\"\n[shutdown]\ndeadline = \"30s\"\n[dead_letter]\nstream = \"{}\"\n",
            common::redis_url(),
            unique("proc-dead-letter")
        ),
    );
    write(
        &directory.join("pipelines/main.toml"),
        &format!("channels = [\"{channel}\"]\n[sinks.out]\n{sink_table}\n"),
    );
    let child = ingestd()
        .current_dir(directory)
        .args([
            "--config",
            "ingestd.toml",
            "--pipelines",
            "pipelines",
            "run",
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    Daemon {
        child,
        http: format!("127.0.0.1:{port}").parse().unwrap(),
    }
}

fn signal(daemon: &Daemon, name: &str) {
    let status = Command::new("kill")
        .args([&format!("-{name}"), &daemon.child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
}

fn wait_exit(daemon: &mut Daemon, timeout: Duration) -> i32 {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(status) = daemon.child.try_wait().unwrap() {
            use std::os::unix::process::ExitStatusExt;
            return status
                .code()
                .unwrap_or_else(|| 128 + status.signal().unwrap_or(0));
        }
        if Instant::now() > deadline {
            let _ = daemon.child.kill();
            panic!("ingestd did not exit within {timeout:?}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

async fn wait_received(daemon: &Daemon, channel: &str, count: f64) {
    let address = daemon.http;
    let label = format!("channel=\"{channel}\"");
    eventually(
        Duration::from_secs(30),
        "events received by the daemon",
        || {
            let label = label.clone();
            async move {
                let Ok(Ok(stream)) = tokio::time::timeout(
                    Duration::from_secs(1),
                    tokio::net::TcpStream::connect(address),
                )
                .await
                else {
                    return false;
                };
                drop(stream);
                let (_, metrics) = http_get(address, "/metrics").await;
                metric_value(&metrics, "ingestd_source_events_received_total", &[&label])
                    == Some(count)
            }
        },
    )
    .await;
}

async fn wait_ready(daemon: &Daemon) {
    let address = daemon.http;
    eventually(Duration::from_secs(30), "daemon ready", || async move {
        if tokio::net::TcpStream::connect(address).await.is_err() {
            return false;
        }
        http_get(address, "/readyz").await.0 == 200
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_flushes_every_event_in_flight_then_exits_zero() {
    let directory = temp_dir("sigterm");
    let channel = unique("proc-sigterm");
    let output = directory.join("out.jsonl");
    // A long linger keeps the events queued in ingestd when SIGTERM arrives.
    let mut daemon = spawn_daemon(
        &directory,
        &channel,
        &format!(
            "file = {{ path = {:?} }}\nbatch = {{ max_events = 100000, linger = \"60s\" }}",
            output.display().to_string()
        ),
    );
    wait_ready(&daemon).await;
    let ids: Vec<String> = (0..2_000)
        .map(|index| format!("{channel}-{index}"))
        .collect();
    let payloads: Vec<Vec<u8>> = ids
        .iter()
        .map(|id| event_json(id, "u", "click", 1.0))
        .collect();
    publish_all(&channel, &payloads).await;
    wait_received(&daemon, &channel, 2_000.0).await;
    let written_before = std::fs::read_to_string(&output)
        .unwrap_or_default()
        .lines()
        .count();
    assert_eq!(written_before, 0, "events are still in flight (linger 60s)");

    signal(&daemon, "TERM");
    let code = wait_exit(&mut daemon, Duration::from_secs(30));
    assert_eq!(code, 0);
    let written = common::file_sink_event_ids(&output);
    assert_eq!(written.len(), 2_000);
    let stored: HashSet<String> = written.into_iter().collect();
    assert_eq!(stored, ids.into_iter().collect::<HashSet<_>>());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_signal_exits_at_once() {
    let directory = temp_dir("sigterm-twice");
    let channel = unique("proc-twice");
    // Each batch takes 20 s to "write": a graceful stop would take long.
    let mut daemon = spawn_daemon(
        &directory,
        &channel,
        "blackhole = { delay = \"20s\" }\nbatch = { max_events = 1, linger = \"1ms\" }",
    );
    wait_ready(&daemon).await;
    publish_all(
        &channel,
        &[
            event_json("a", "u", "click", 1.0),
            event_json("b", "u", "click", 1.0),
        ],
    )
    .await;
    wait_received(&daemon, &channel, 2.0).await;
    signal(&daemon, "TERM");
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        daemon.child.try_wait().unwrap().is_none(),
        "still draining after the first signal"
    );
    signal(&daemon, "INT");
    let started = Instant::now();
    let code = wait_exit(&mut daemon, Duration::from_secs(5));
    assert_eq!(code, 130);
    assert!(started.elapsed() < Duration::from_secs(5));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_worker_resubscribes_after_redis_restarts() {
    let port = free_port();
    let redis_server = PrivateRedis::start(port, "");
    let directory = temp_dir("restart");
    let output = directory.join("out.jsonl");
    let channel = unique("proc-restart");
    let mut config = common::base_config();
    config.redis.url = ingestd::config::Secret::new(format!("redis://127.0.0.1:{port}"));
    config.source.reconnect_initial = Duration::from_millis(50);
    config.source.reconnect_max = Duration::from_millis(500);
    config.pipelines.insert(
        "main".to_string(),
        common::pipeline(
            &[&channel],
            vec![(
                "out",
                common::sink(&format!(
                    "file = {{ path = {:?} }}\nbatch = {{ linger = \"10ms\" }}",
                    output.display().to_string()
                )),
            )],
        ),
    );
    let app = common::start(ingestd::app::App::new(config)).await;
    let publish = |ids: std::ops::Range<usize>| {
        let channel = channel.clone();
        async move {
            let client = redis::Client::open(format!("redis://127.0.0.1:{port}")).unwrap();
            let mut connection = client.get_multiplexed_async_connection().await.unwrap();
            for index in ids {
                let () = redis::cmd("PUBLISH")
                    .arg(&channel)
                    .arg(event_json(&format!("r-{index}"), "u", "click", 1.0))
                    .query_async(&mut connection)
                    .await
                    .unwrap();
            }
        }
    };
    let lines = || {
        std::fs::read_to_string(&output)
            .unwrap_or_default()
            .lines()
            .count()
    };
    publish(0..100).await;
    eventually(
        Duration::from_secs(10),
        "100 events before the restart",
        || async { lines() == 100 },
    )
    .await;
    let (_, metrics) = http_get(app.http(), "/metrics").await;
    let disconnects_before =
        metric_value(&metrics, "ingestd_source_disconnects_total", &[]).unwrap_or(0.0);

    drop(redis_server);
    tokio::time::sleep(Duration::from_millis(500)).await;
    let redis_server = PrivateRedis::start(port, "");
    // Resubscribed once readiness comes back.
    common::wait_ready(app.http()).await;
    publish(100..200).await;
    eventually(
        Duration::from_secs(10),
        "events published after the restart",
        || async { lines() == 200 },
    )
    .await;
    let (_, metrics) = http_get(app.http(), "/metrics").await;
    let disconnects_after =
        metric_value(&metrics, "ingestd_source_disconnects_total", &[]).unwrap_or(0.0);
    assert!(
        disconnects_after >= disconnects_before + 1.0,
        "disconnect counted: {disconnects_before} -> {disconnects_after}"
    );
    app.stop().await;
    drop(redis_server);
}
