//! TLS to the stores, against the real local servers: Cassandra's native port accepts TLS
//! (optional, 127.0.0.1:9042), FerretDB listens with TLS on 127.0.0.1:27018, and DynamoDB
//! Local (no TLS of its own) sits behind a TLS-terminating proxy started by the test. The
//! certificates come from `deploy/local/services up` (see `common::tls_dir`).

mod common;

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use aws_sdk_dynamodb::Client as DynamoClient;
use aws_sdk_dynamodb::config::{BehaviorVersion, Region};
use futures::TryStreamExt;
use mongodb::bson::Document;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use scylla::client::session::Session;
use scylla::client::session_builder::SessionBuilder;
use tokio::net::{TcpListener, TcpStream};

use common::{base_config, event_json, eventually, pipeline, publish_all, sink, start, unique};
use ingestd::app::App;

const CASSANDRA: &str = "127.0.0.1:9042";
const MONGO_TLS: &str = "127.0.0.1:27018";
const DYNAMODB: &str = "127.0.0.1:8000";

fn path_of(directory: &Path, file: &str) -> String {
    directory.join(file).display().to_string()
}

/// `count` events of a fresh id prefix, published on `channel`; returns their ids.
async fn publish_events(channel: &str, count: usize) -> BTreeSet<String> {
    let ids: BTreeSet<String> = (0..count)
        .map(|index| format!("{channel}-{index}"))
        .collect();
    let payloads: Vec<Vec<u8>> = ids
        .iter()
        .map(|id| event_json(id, "user-tls", "purchase", 1.5))
        .collect();
    publish_all(channel, &payloads).await;
    ids
}

/// Starting must fail; returns the error chain.
async fn start_error(config: ingestd::config::Config) -> String {
    let shutdown = tokio_util::sync::CancellationToken::new();
    match App::new(config).start(shutdown.clone()).await {
        Ok(_) => {
            shutdown.cancel();
            panic!("started although the server's certificate must be refused");
        }
        Err(error) => format!("{error:#}"),
    }
}

/// Forwards every TCP connection accepted on `listener` to `target`, bytes unchanged.
fn forward(listener: TcpListener, target: &'static str) {
    tokio::spawn(async move {
        while let Ok((mut inbound, _)) = listener.accept().await {
            tokio::spawn(async move {
                if let Ok(mut outbound) = TcpStream::connect(target).await {
                    let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                }
            });
        }
    });
}

/// A plain TCP forwarder to Cassandra on 127.0.0.2:PORT and 127.0.0.1:PORT (same port):
/// the driver dials the contact point 127.0.0.2 first, then the node at its reported
/// `rpc_address` 127.0.0.1 with the contact point's port. Returns the 127.0.0.2 address.
async fn cassandra_forwarder() -> SocketAddr {
    for _ in 0..20 {
        let other = TcpListener::bind("127.0.0.2:0").await.unwrap();
        let address = other.local_addr().unwrap();
        let Ok(loopback) = TcpListener::bind(("127.0.0.1", address.port())).await else {
            continue; // that port is taken on 127.0.0.1: try another
        };
        forward(other, CASSANDRA);
        forward(loopback, CASSANDRA);
        return address;
    }
    panic!("no port free on both 127.0.0.1 and 127.0.0.2");
}

// ------------------------------------------------------------------ cassandra

fn unique_keyspace() -> String {
    unique("tls").replace('-', "_")
}

fn cassandra_sink(nodes: &str, keyspace: &str, tls: &str) -> ingestd::sinks::SinkConfig {
    sink(&format!(
        r#"
        batch = {{ max_events = 100, linger = "20ms" }}
        [cassandra]
        nodes = ["{nodes}"]
        keyspace = "{keyspace}"
        consistency = "ONE"
        connect_timeout = "3s"
        {tls}
        "#
    ))
}

/// A session of the test's own over TLS, verifying the server against the test CA.
async fn cassandra_tls_session(tls: &Path) -> Session {
    let context = ingestd::tls::client_config(Some(&tls.join("ca.pem")), true).unwrap();
    SessionBuilder::new()
        .known_node(CASSANDRA)
        .tls_context(Some(context))
        .build()
        .await
        .expect("cassandra answers TLS on 127.0.0.1:9042 (deploy/local/services up)")
}

async fn cassandra_event_ids(session: &Session, keyspace: &str) -> BTreeSet<String> {
    let Ok(result) = session
        .query_unpaged(format!("SELECT event_id FROM {keyspace}.events_by_day"), ())
        .await
    else {
        return BTreeSet::new();
    };
    result
        .into_rows_result()
        .unwrap()
        .rows::<(String,)>()
        .unwrap()
        .map(|row| row.unwrap().0)
        .collect()
}

async fn drop_keyspace(session: &Session, keyspace: &str) {
    let mut statement =
        scylla::statement::Statement::new(format!("DROP KEYSPACE IF EXISTS {keyspace}"));
    statement.set_request_timeout(Some(Duration::from_secs(60)));
    if let Err(error) = session.query_unpaged(statement, ()).await {
        eprintln!("could not drop keyspace {keyspace}: {error}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cassandra_sink_writes_over_tls_with_the_ca_file() {
    let tls = common::tls_dir();
    let keyspace = unique_keyspace();
    let channel = unique("tls-cassandra");
    let mut config = base_config();
    config.pipelines.insert(
        "tls_cassandra".to_string(),
        pipeline(
            &[&channel],
            vec![(
                "cassandra",
                cassandra_sink(
                    CASSANDRA,
                    &keyspace,
                    &format!("tls = true\ntls_ca_file = \"{}\"", path_of(&tls, "ca.pem")),
                ),
            )],
        ),
    );
    let started = start(App::new(config)).await;
    let expected = publish_events(&channel, 50).await;

    let session = cassandra_tls_session(&tls).await;
    eventually(Duration::from_secs(30), "50 rows in cassandra", || async {
        cassandra_event_ids(&session, &keyspace).await.len() >= 50
    })
    .await;
    assert_eq!(cassandra_event_ids(&session, &keyspace).await, expected);
    started.stop().await;
    drop_keyspace(&session, &keyspace).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cassandra_sink_refuses_a_server_its_ca_did_not_sign() {
    let tls = common::tls_dir();
    let mut config = base_config();
    config.pipelines.insert(
        "tls_cassandra_wrong_ca".to_string(),
        pipeline(
            &[&unique("tls-cassandra-wrong-ca")],
            vec![(
                "cassandra",
                cassandra_sink(
                    CASSANDRA,
                    &unique_keyspace(),
                    &format!(
                        "tls = true\ntls_ca_file = \"{}\"",
                        path_of(&tls, "wrong-ca.pem")
                    ),
                ),
            )],
        ),
    );
    let error = start_error(config).await;
    eprintln!("{error}");
    assert!(
        error.contains("pipelines.tls_cassandra_wrong_ca.sinks.cassandra"),
        "{error}"
    );
    assert!(error.contains("cannot connect to cassandra"), "{error}");
    // rustls' own words for a chain that does not lead to a trusted root.
    assert!(error.contains("UnknownIssuer"), "{error}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cassandra_tls_verify_hostname_checks_the_dialled_ip() {
    let tls = common::tls_dir();
    // The server certificate names 127.0.0.1 only; the contact point is 127.0.0.2 (a plain
    // TCP forwarder to the same Cassandra), as when a cluster is reached by an address its
    // certificates do not list: only the name check can fail.
    let forwarder = cassandra_forwarder().await;
    let ca = path_of(&tls, "ca.pem");

    let mut config = base_config();
    config.pipelines.insert(
        "tls_cassandra_name".to_string(),
        pipeline(
            &[&unique("tls-cassandra-name")],
            vec![(
                "cassandra",
                cassandra_sink(
                    &forwarder.to_string(),
                    &unique_keyspace(),
                    &format!("tls = true\ntls_ca_file = \"{ca}\""),
                ),
            )],
        ),
    );
    let error = start_error(config).await;
    eprintln!("{error}");
    assert!(
        error.contains("certificate not valid for name \"127.0.0.2\""),
        "{error}"
    );

    let keyspace = unique_keyspace();
    let channel = unique("tls-cassandra-noname");
    let mut config = base_config();
    config.pipelines.insert(
        "tls_cassandra_noname".to_string(),
        pipeline(
            &[&channel],
            vec![(
                "cassandra",
                cassandra_sink(
                    &forwarder.to_string(),
                    &keyspace,
                    &format!("tls = true\ntls_ca_file = \"{ca}\"\ntls_verify_hostname = false"),
                ),
            )],
        ),
    );
    let started = start(App::new(config)).await;
    let expected = publish_events(&channel, 20).await;
    let session = cassandra_tls_session(&tls).await;
    eventually(Duration::from_secs(30), "20 rows in cassandra", || async {
        cassandra_event_ids(&session, &keyspace).await.len() >= 20
    })
    .await;
    assert_eq!(cassandra_event_ids(&session, &keyspace).await, expected);
    started.stop().await;
    drop_keyspace(&session, &keyspace).await;
}

/// `ingestd check` reads the CA files, so a wrong path is reported before any start.
#[test]
fn check_reports_unusable_ca_files_with_the_key_and_the_fix() {
    let tls = common::tls_dir();
    let directory = std::env::temp_dir().join(unique("tls-check"));
    std::fs::create_dir_all(directory.join("pipelines")).unwrap();
    std::fs::write(directory.join("ingestd.toml"), "").unwrap();
    let missing = directory.join("no-such-ca.pem");
    std::fs::write(
        directory.join("pipelines/main.toml"),
        format!(
            "channels = [\"events\"]\n\
             [sinks.cass.cassandra]\ntls = true\ntls_ca_file = \"{}\"\n\
             [sinks.cass_off.cassandra]\ntls_ca_file = \"{ca}\"\n\
             [sinks.dynamo.dynamodb]\nendpoint_url = \"https://localhost:8443\"\ntls_ca_file = \"{key}\"\n",
            missing.display(),
            ca = path_of(&tls, "ca.pem"),
            key = path_of(&tls, "server.key"),
        ),
    )
    .unwrap();
    let (code, stderr) = common::ingestd_check(&directory);
    assert_eq!(code, 2, "{stderr}");
    assert!(
        stderr.contains("pipelines.main.sinks.cass.cassandra.tls_ca_file: cannot read CA file")
            && stderr.contains(&missing.display().to_string()),
        "{stderr}"
    );
    assert!(
        stderr.contains(
            "pipelines.main.sinks.cass_off.cassandra.tls_ca_file: is set but tls = false"
        ),
        "{stderr}"
    );
    // A PEM file without a certificate (here a private key).
    assert!(
        stderr.contains("pipelines.main.sinks.dynamo.dynamodb.tls_ca_file: CA file")
            && stderr.contains("holds no certificate"),
        "{stderr}"
    );
    std::fs::remove_dir_all(&directory).unwrap();
}

// ------------------------------------------------------------------ mongodb

fn mongo_tls_uri(ca_file: &str) -> String {
    format!("mongodb://{MONGO_TLS}/?tls=true&tlsCAFile={ca_file}")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mongodb_sink_writes_over_tls_with_the_uri_options() {
    let tls = common::tls_dir();
    let uri = mongo_tls_uri(&path_of(&tls, "ca.pem"));
    let database = unique("tls_mongo").replace('-', "_");
    let channel = unique("tls-mongo");
    let mut config = base_config();
    config.pipelines.insert(
        "tls_mongo".to_string(),
        pipeline(
            &[&channel],
            vec![(
                "mongodb",
                sink(&format!(
                    "batch = {{ max_events = 100, linger = \"20ms\" }}\n[mongodb]\nuri = \"{uri}\"\ndatabase = \"{database}\"\ncollection = \"events\""
                )),
            )],
        ),
    );
    let started = start(App::new(config)).await;
    let expected = publish_events(&channel, 50).await;

    // Read back through the TLS port too.
    let client = mongodb::Client::with_uri_str(&uri).await.unwrap();
    let events = client.database(&database).collection::<Document>("events");
    let stored_ids = || async {
        events
            .find(Document::new())
            .await
            .unwrap()
            .try_collect::<Vec<Document>>()
            .await
            .unwrap()
            .iter()
            .map(|document| document.get_str("_id").unwrap().to_string())
            .collect::<BTreeSet<String>>()
    };
    eventually(
        Duration::from_secs(30),
        "50 documents in mongodb",
        || async { stored_ids().await.len() >= 50 },
    )
    .await;
    assert_eq!(stored_ids().await, expected);
    started.stop().await;
    client.database(&database).drop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mongodb_sink_refuses_a_server_its_ca_did_not_sign() {
    let tls = common::tls_dir();
    let uri = mongo_tls_uri(&path_of(&tls, "wrong-ca.pem"));
    let mut config = base_config();
    config.pipelines.insert(
        "tls_mongo_wrong_ca".to_string(),
        pipeline(
            &[&unique("tls-mongo-wrong-ca")],
            vec![(
                "mongodb",
                sink(&format!(
                    "[mongodb]\nuri = \"{uri}\"\nserver_selection_timeout = \"1s\"\nconnect_timeout = \"1s\""
                )),
            )],
        ),
    );
    let error = start_error(config).await;
    eprintln!("{error}");
    assert!(
        error.contains("pipelines.tls_mongo_wrong_ca.sinks.mongodb"),
        "{error}"
    );
    assert!(error.contains("does not answer"), "{error}");
    assert!(error.contains("UnknownIssuer"), "{error}");
}

/// The driver reads `tlsCAFile` when the client is built: the start fails naming the file.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mongodb_sink_names_a_missing_tls_ca_file() {
    let missing = std::env::temp_dir()
        .join(unique("no-such-ca"))
        .join("ca.pem");
    let uri = mongo_tls_uri(&missing.display().to_string());
    let mut config = base_config();
    config.pipelines.insert(
        "tls_mongo_missing_ca".to_string(),
        pipeline(
            &[&unique("tls-mongo-missing-ca")],
            vec![(
                "mongodb",
                sink(&format!(
                    "[mongodb]\nuri = \"{uri}\"\nserver_selection_timeout = \"1s\""
                )),
            )],
        ),
    );
    let error = start_error(config).await;
    assert!(
        error.contains("pipelines.tls_mongo_missing_ca.sinks.mongodb"),
        "{error}"
    );
    assert!(
        error.contains(&format!(
            "Unable to parse PEM-encoded root certificate from {}",
            missing.display()
        )) && error.contains("No such file"),
        "{error}"
    );
}

// ------------------------------------------------------------------ dynamodb

/// DynamoDB Local cannot speak TLS, so this proxy terminates TLS (server certificate of
/// the test CA, for `localhost`) and forwards the plaintext to 127.0.0.1:8000; the count
/// is of completed TLS handshakes, to show the sink's traffic went through it.
async fn tls_proxy_to_dynamodb(tls: &Path) -> (SocketAddr, Arc<AtomicUsize>) {
    let certificates: Vec<CertificateDer<'static>> =
        CertificateDer::pem_file_iter(tls.join("server.pem"))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
    let key = PrivateKeyDer::from_pem_file(tls.join("server.key")).unwrap();
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let server = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(certificates, key)
        .unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(server));
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    let handshakes = Arc::new(AtomicUsize::new(0));
    let counter = handshakes.clone();
    tokio::spawn(async move {
        while let Ok((inbound, _)) = listener.accept().await {
            let acceptor = acceptor.clone();
            let counter = counter.clone();
            tokio::spawn(async move {
                let Ok(mut decrypted) = acceptor.accept(inbound).await else {
                    return;
                };
                counter.fetch_add(1, Ordering::Relaxed);
                if let Ok(mut outbound) = TcpStream::connect(DYNAMODB).await {
                    let _ = tokio::io::copy_bidirectional(&mut decrypted, &mut outbound).await;
                }
            });
        }
    });
    (address, handshakes)
}

fn dynamo_sink(table: &str, endpoint: &str, ca_file: &str) -> ingestd::sinks::SinkConfig {
    sink(&format!(
        r#"
        batch = {{ max_events = 25, linger = "20ms" }}
        [dynamodb]
        table = "{table}"
        endpoint_url = "{endpoint}"
        region = "us-east-1"
        tls_ca_file = "{ca_file}"
        connect_timeout = "2s"
        request_timeout = "5s"
        "#
    ))
}

/// Reads DynamoDB Local directly, without the proxy.
async fn dynamo_direct() -> DynamoClient {
    common::ensure_aws_credentials();
    let config = aws_config::defaults(BehaviorVersion::latest())
        .region(Region::new("us-east-1"))
        .endpoint_url(format!("http://{DYNAMODB}"))
        .load()
        .await;
    DynamoClient::new(&config)
}

async fn dynamo_event_ids(client: &DynamoClient, table: &str) -> BTreeSet<String> {
    let Ok(page) = client.scan().table_name(table).send().await else {
        return BTreeSet::new();
    };
    page.items()
        .iter()
        .filter_map(|item| item.get("event_id")?.as_s().ok().cloned())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dynamodb_sink_writes_over_https_trusting_the_ca_file() {
    common::ensure_aws_credentials();
    let tls = common::tls_dir();
    let (proxy, handshakes) = tls_proxy_to_dynamodb(&tls).await;
    let table = unique("tls-dynamo");
    let channel = unique("tls-dynamo");
    let endpoint = format!("https://localhost:{}", proxy.port());
    let mut config = base_config();
    config.pipelines.insert(
        "tls_dynamo".to_string(),
        pipeline(
            &[&channel],
            vec![(
                "dynamodb",
                dynamo_sink(&table, &endpoint, &path_of(&tls, "ca.pem")),
            )],
        ),
    );
    let started = start(App::new(config)).await;
    let expected = publish_events(&channel, 50).await;

    let client = dynamo_direct().await;
    eventually(Duration::from_secs(30), "50 items in dynamodb", || async {
        dynamo_event_ids(&client, &table).await.len() >= 50
    })
    .await;
    assert_eq!(dynamo_event_ids(&client, &table).await, expected);
    assert!(handshakes.load(Ordering::Relaxed) >= 1);
    started.stop().await;
    client
        .delete_table()
        .table_name(&table)
        .send()
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dynamodb_sink_refuses_a_server_its_ca_did_not_sign() {
    common::ensure_aws_credentials();
    let tls = common::tls_dir();
    let (proxy, handshakes) = tls_proxy_to_dynamodb(&tls).await;
    let mut config = base_config();
    config.pipelines.insert(
        "tls_dynamo_wrong_ca".to_string(),
        pipeline(
            &[&unique("tls-dynamo-wrong-ca")],
            vec![(
                "dynamodb",
                dynamo_sink(
                    &unique("tls-dynamo-wrong-ca"),
                    &format!("https://localhost:{}", proxy.port()),
                    &path_of(&tls, "wrong-ca.pem"),
                ),
            )],
        ),
    );
    let error = start_error(config).await;
    eprintln!("{error}");
    assert!(
        error.contains("pipelines.tls_dynamo_wrong_ca.sinks.dynamodb"),
        "{error}"
    );
    assert_eq!(
        handshakes.load(Ordering::Relaxed),
        0,
        "no handshake may complete"
    );
}

const REDIS_APP_PASSWORD: &str = "tls-app-Pw-41c2";

/// A private Redis that answers TLS on its second port (the first, plain one is for the
/// test's own publishing and checks), with an ACL user `app`.
fn tls_redis(tls: &Path) -> (common::PrivateRedis, u16) {
    let plain_port = common::free_port();
    let tls_port = common::free_port();
    let server = common::PrivateRedis::start(
        plain_port,
        &format!(
            "tls-port {tls_port}\ntls-cert-file {}\ntls-key-file {}\ntls-ca-cert-file {}\ntls-auth-clients no\nuser app on >{REDIS_APP_PASSWORD} ~* &* +@all",
            path_of(tls, "server.pem"),
            path_of(tls, "server.key"),
            path_of(tls, "ca.pem"),
        ),
    );
    (server, tls_port)
}

/// Reads and writes through the TLS port only, with the ACL user.
fn rediss_config(tls_port: u16, ca_file: &str) -> ingestd::config::Config {
    let mut config = base_config();
    config.redis.url = ingestd::config::Secret::new(format!("rediss://127.0.0.1:{tls_port}"));
    config.redis.username = Some("app".to_string());
    config.redis.password = Some(ingestd::config::Secret::new(REDIS_APP_PASSWORD));
    config.redis.tls_ca_file = Some(ca_file.into());
    config
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pubsub_and_dead_letters_over_rediss_with_an_acl_user() {
    let tls = common::tls_dir();
    let (server, tls_port) = tls_redis(&tls);
    let channel = unique("tls-redis");
    let output = std::env::temp_dir().join(unique("tls-redis-out"));
    let mut config = rediss_config(tls_port, &path_of(&tls, "ca.pem"));
    let dead_letters = config.dead_letter.stream.clone();
    config.pipelines.insert(
        "tls_redis".to_string(),
        pipeline(
            &[&channel],
            vec![(
                "out",
                sink(&format!(
                    "file = {{ path = {:?} }}\nbatch = {{ linger = \"10ms\" }}",
                    output.display().to_string()
                )),
            )],
        ),
    );
    let started = start(App::new(config)).await;

    // Published in plain text on the same server: only ingestd's side is TLS.
    let publisher = redis::Client::open(format!(
        "redis://app:{REDIS_APP_PASSWORD}@127.0.0.1:{}",
        server.port
    ))
    .unwrap();
    let mut publisher = publisher.get_multiplexed_async_connection().await.unwrap();
    let expected: BTreeSet<String> = (0..50).map(|index| format!("{channel}-{index}")).collect();
    for id in &expected {
        let _: i64 = redis::AsyncCommands::publish(
            &mut publisher,
            &channel,
            event_json(id, "user-tls", "purchase", 1.5),
        )
        .await
        .unwrap();
    }
    let _: i64 = redis::AsyncCommands::publish(&mut publisher, &channel, "not json")
        .await
        .unwrap();

    eventually(
        Duration::from_secs(20),
        "50 events in the file sink",
        || {
            let output = output.clone();
            async move { common::file_sink_event_ids(&output).len() >= 50 }
        },
    )
    .await;
    let stored: BTreeSet<String> = common::file_sink_event_ids(&output).into_iter().collect();
    assert_eq!(stored, expected);
    // The dead letter was written over TLS too (the only address ingestd was given).
    eventually(Duration::from_secs(10), "one dead letter", || {
        let mut publisher = publisher.clone();
        let dead_letters = dead_letters.clone();
        async move {
            let length: usize = redis::AsyncCommands::xlen(&mut publisher, &dead_letters)
                .await
                .unwrap();
            length == 1
        }
    })
    .await;
    started.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rediss_refuses_a_server_its_ca_did_not_sign_and_names_a_bad_ca_file() {
    let tls = common::tls_dir();
    let (_server, tls_port) = tls_redis(&tls);
    let mut config = rediss_config(tls_port, &path_of(&tls, "wrong-ca.pem"));
    config.pipelines.insert(
        "tls_redis_wrong_ca".to_string(),
        pipeline(
            &[&unique("tls-redis-wrong-ca")],
            vec![("out", sink("blackhole = {}"))],
        ),
    );
    let error = start_error(config.clone()).await;
    assert!(error.contains("UnknownIssuer"), "{error}");

    config.redis.tls_ca_file = Some(tls.join("no-such-ca.pem"));
    let error = start_error(config).await;
    assert!(error.contains("redis.tls_ca_file"), "{error}");
    assert!(error.contains("no-such-ca.pem"), "{error}");
}
