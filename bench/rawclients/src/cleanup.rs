//! Removes what a benchmark run created in the shared services (a MongoDB database, a
//! Cassandra keyspace, DynamoDB tables by name prefix): DynamoDB Local keeps everything
//! in memory, and the services are shared with the test suites.

use std::time::Duration;

use scylla::client::session_builder::SessionBuilder;
use scylla::statement::Statement;

use crate::progress;

#[derive(clap::Args)]
pub struct CleanupArgs {
    #[arg(long, default_value = "mongodb://127.0.0.1:27017")]
    mongo_uri: String,
    #[arg(long)]
    mongo_db: Option<String>,
    #[arg(long, default_value = "127.0.0.1:9042")]
    cassandra_node: String,
    #[arg(long)]
    keyspace: Option<String>,
    #[arg(long, default_value = "http://127.0.0.1:8000")]
    dynamo_endpoint: String,
    /// Delete every table whose name starts with this (must be at least 8 characters).
    #[arg(long)]
    dynamo_prefix: Option<String>,
}

pub async fn run(arguments: CleanupArgs) -> anyhow::Result<()> {
    let mut report = serde_json::Map::new();
    if let Some(database) = &arguments.mongo_db {
        let client = mongodb::Client::with_uri_str(&arguments.mongo_uri).await?;
        let dropped = client.database(database).drop().await;
        report.insert("mongodb".into(), dropped.is_ok().into());
    }
    if let Some(keyspace) = &arguments.keyspace {
        let session = SessionBuilder::new()
            .known_node(&arguments.cassandra_node)
            .build()
            .await?;
        let mut statement = Statement::new(format!("DROP KEYSPACE IF EXISTS {keyspace}"));
        statement.set_request_timeout(Some(Duration::from_secs(60)));
        let dropped = session.query_unpaged(statement, ()).await;
        report.insert("cassandra".into(), dropped.is_ok().into());
    }
    if let Some(prefix) = &arguments.dynamo_prefix {
        if prefix.len() < 8 {
            anyhow::bail!("--dynamo-prefix {prefix:?} is too short to be a benchmark run's");
        }
        let client = crate::write::dynamo_client(&arguments.dynamo_endpoint).await;
        let mut deleted = Vec::new();
        let mut start = None;
        loop {
            let page = client
                .list_tables()
                .set_exclusive_start_table_name(start.take())
                .send()
                .await?;
            for table in page.table_names() {
                if table.starts_with(prefix.as_str())
                    && client.delete_table().table_name(table).send().await.is_ok()
                {
                    deleted.push(serde_json::Value::from(table.as_str()));
                }
            }
            match page.last_evaluated_table_name {
                Some(name) => start = Some(name),
                None => break,
            }
        }
        report.insert("dynamodb".into(), deleted.into());
    }
    progress::result(serde_json::Value::Object(report));
    Ok(())
}
