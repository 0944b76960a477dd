//! Redis with `requirepass` and an ACL user: ingestd connects with credentials from the
//! environment, a wrong password stops it with a clear error, and the password appears
//! in no log line and in no `ingestd check` output.

mod common;

use std::io::Read;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{PrivateRedis, event_json, eventually, free_port, unique};

const ADMIN_PASSWORD: &str = "admin-Pw-5b7e1";
const APP_PASSWORD: &str = "app-Pw-93c4d";

fn write_config(directory: &Path, redis_port: u16, http_port: u16, channel: &str, output: &Path) {
    std::fs::create_dir_all(directory.join("pipelines")).unwrap();
    std::fs::write(
        directory.join("ingestd.toml"),
        format!("[redis]\nurl = \"redis://127.0.0.1:{redis_port}\"\n[http]\nlisten = \"127.0.0.1:{http_port}\"\n"),
    )
    .unwrap();
    std::fs::write(
        directory.join("pipelines/main.toml"),
        format!(
            "channels = [\"{channel}\"]\n[sinks.out]\nbatch = {{ linger = \"10ms\" }}\nfile = {{ path = {:?} }}\n",
            output.display().to_string()
        ),
    )
    .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acl_credentials_from_the_environment_and_never_in_logs() {
    let directory = std::env::temp_dir().join(unique("security"));
    std::fs::create_dir_all(&directory).unwrap();
    let redis_port = free_port();
    let http_port = free_port();
    let redis_server = PrivateRedis::start(
        redis_port,
        &format!("requirepass {ADMIN_PASSWORD}\nuser app on >{APP_PASSWORD} ~* &* +@all"),
    );
    let channel = unique("secure");
    let output = directory.join("out.jsonl");
    write_config(&directory, redis_port, http_port, &channel, &output);

    // `check` shows where it connects, with the password of a URL redacted.
    let check = Command::new(env!("CARGO_BIN_EXE_ingestd"))
        .current_dir(&directory)
        .env(
            "INGESTD_REDIS__URL",
            format!("redis://app:{APP_PASSWORD}@127.0.0.1:{redis_port}"),
        )
        .arg("check")
        .output()
        .unwrap();
    let check_output = format!(
        "{}{}",
        String::from_utf8_lossy(&check.stdout),
        String::from_utf8_lossy(&check.stderr)
    );
    assert!(check.status.success(), "{check_output}");
    assert!(
        check_output.contains(&format!("redis://app:***@127.0.0.1:{redis_port}")),
        "{check_output}"
    );
    assert!(
        !check_output.contains(APP_PASSWORD),
        "password in check output: {check_output}"
    );

    // The daemon, at debug level, with the ACL user from the environment.
    let mut daemon = Command::new(env!("CARGO_BIN_EXE_ingestd"))
        .current_dir(&directory)
        .env("RUST_LOG", "debug")
        .env("INGESTD_REDIS__USERNAME", "app")
        .env("INGESTD_REDIS__PASSWORD", APP_PASSWORD)
        .arg("run")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let publisher =
        redis::Client::open(format!("redis://:{ADMIN_PASSWORD}@127.0.0.1:{redis_port}")).unwrap();
    let mut connection = publisher.get_multiplexed_async_connection().await.unwrap();
    // Wait until the daemon is subscribed, then publish.
    eventually(Duration::from_secs(20), "the daemon subscribed", || {
        let mut connection = connection.clone();
        let channel = channel.clone();
        async move {
            let counts: Vec<(String, u64)> = redis::cmd("PUBSUB")
                .arg("NUMSUB")
                .arg(&channel)
                .query_async(&mut connection)
                .await
                .unwrap();
            counts
                .first()
                .is_some_and(|(_, subscribers)| *subscribers > 0)
        }
    })
    .await;
    let mut pipeline = redis::pipe();
    for index in 0..100 {
        pipeline
            .publish(
                &channel,
                event_json(&format!("sec-{index}"), "u", "click", 1.0),
            )
            .ignore();
    }
    let () = pipeline.query_async(&mut connection).await.unwrap();
    let lines = || {
        std::fs::read_to_string(&output)
            .unwrap_or_default()
            .lines()
            .count()
    };
    eventually(Duration::from_secs(20), "100 events written", || async {
        lines() == 100
    })
    .await;

    Command::new("kill")
        .args(["-TERM", &daemon.id().to_string()])
        .status()
        .unwrap();
    let status = daemon.wait().unwrap();
    assert!(status.success());
    let mut logs = String::new();
    daemon
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut logs)
        .unwrap();
    daemon
        .stdout
        .take()
        .unwrap()
        .read_to_string(&mut logs)
        .unwrap();
    assert!(
        logs.contains("subscribed"),
        "debug logs were captured: {logs}"
    );
    assert!(
        !logs.contains(APP_PASSWORD),
        "the password leaked into the logs"
    );
    assert!(!logs.contains(ADMIN_PASSWORD));

    // A wrong password is permanent: a clear error and a non-zero exit, not a retry loop.
    let started = Instant::now();
    let refused = Command::new(env!("CARGO_BIN_EXE_ingestd"))
        .current_dir(&directory)
        .env("INGESTD_REDIS__USERNAME", "app")
        .env("INGESTD_REDIS__PASSWORD", "wrong-password-1234")
        .arg("run")
        .output()
        .unwrap();
    let refused_logs = String::from_utf8_lossy(&refused.stderr);
    assert!(!refused.status.success());
    assert!(started.elapsed() < Duration::from_secs(60));
    assert!(
        refused_logs.contains("WRONGPASS") || refused_logs.contains("authentication"),
        "{refused_logs}"
    );
    assert!(!refused_logs.contains("wrong-password-1234"));
    drop(redis_server);
}
