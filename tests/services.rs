//! First contact with each backing service, through the same crate the product uses: if
//! one of these fails, `deploy/local/services up` did not bring that service up.

mod common;

use aws_sdk_dynamodb::config::{BehaviorVersion, Region};
use aws_sdk_dynamodb::types::{
    AttributeDefinition, AttributeValue, BillingMode, KeySchemaElement, KeyType,
    ScalarAttributeType,
};
use mongodb::bson::{Document, doc};
use redis::AsyncCommands;
use scylla::client::session_builder::SessionBuilder;

use common::unique;

#[tokio::test]
async fn redis_set_and_get() {
    let mut connection = common::redis_connection().await;
    let key = unique("services-redis");
    let () = connection.set_ex(&key, "hello", 60).await.unwrap();
    let value: String = connection.get(&key).await.unwrap();
    assert_eq!(value, "hello");
}

#[tokio::test]
async fn mongodb_insert_and_find() {
    let client = mongodb::Client::with_uri_str("mongodb://127.0.0.1:27017")
        .await
        .unwrap();
    let database = unique("services").replace('-', "_");
    let collection = client.database(&database).collection::<Document>("probe");
    collection
        .insert_one(doc! {"_id": "a", "value": 42})
        .await
        .unwrap();
    let found = collection
        .find_one(doc! {"_id": "a"})
        .await
        .unwrap()
        .unwrap();
    assert_eq!(found.get_i32("value").unwrap(), 42);
    client.database(&database).drop().await.unwrap();
}

#[tokio::test]
async fn cassandra_insert_and_select() {
    let session = SessionBuilder::new()
        .known_node("127.0.0.1:9042")
        .build()
        .await
        .unwrap();
    let keyspace = unique("services").replace('-', "_");
    session
        .query_unpaged(
            format!("CREATE KEYSPACE {keyspace} WITH replication = {{'class': 'SimpleStrategy', 'replication_factor': 1}}"),
            (),
        )
        .await
        .unwrap();
    session
        .query_unpaged(
            format!("CREATE TABLE {keyspace}.probe (id text PRIMARY KEY, value int)"),
            (),
        )
        .await
        .unwrap();
    session
        .query_unpaged(
            format!("INSERT INTO {keyspace}.probe (id, value) VALUES (?, ?)"),
            ("a", 42),
        )
        .await
        .unwrap();
    let rows = session
        .query_unpaged(
            format!("SELECT value FROM {keyspace}.probe WHERE id = ?"),
            ("a",),
        )
        .await
        .unwrap()
        .into_rows_result()
        .unwrap();
    let (value,): (i32,) = rows.single_row().unwrap();
    assert_eq!(value, 42);
    session
        .query_unpaged(format!("DROP KEYSPACE {keyspace}"), ())
        .await
        .unwrap();
}

#[tokio::test]
async fn dynamodb_put_and_get() {
    // DynamoDB Local accepts any credentials; the SDK needs some.
    let credentials = aws_sdk_dynamodb::config::Credentials::new(
        "ingestdlocal",
        "ingestdlocal",
        None,
        None,
        "test",
    );
    let config = aws_sdk_dynamodb::Config::builder()
        .behavior_version(BehaviorVersion::latest())
        .region(Region::new("us-east-1"))
        .endpoint_url("http://127.0.0.1:8000")
        .credentials_provider(credentials)
        .build();
    let client = aws_sdk_dynamodb::Client::from_conf(config);
    let table = unique("services");
    client
        .create_table()
        .table_name(&table)
        .billing_mode(BillingMode::PayPerRequest)
        .attribute_definitions(
            AttributeDefinition::builder()
                .attribute_name("PK")
                .attribute_type(ScalarAttributeType::S)
                .build()
                .unwrap(),
        )
        .key_schema(
            KeySchemaElement::builder()
                .attribute_name("PK")
                .key_type(KeyType::Hash)
                .build()
                .unwrap(),
        )
        .send()
        .await
        .unwrap();
    client
        .put_item()
        .table_name(&table)
        .item("PK", AttributeValue::S("a".to_string()))
        .item("value", AttributeValue::N("42".to_string()))
        .send()
        .await
        .unwrap();
    let item = client
        .get_item()
        .table_name(&table)
        .key("PK", AttributeValue::S("a".to_string()))
        .send()
        .await
        .unwrap()
        .item
        .unwrap();
    assert_eq!(item["value"], AttributeValue::N("42".to_string()));
    client
        .delete_table()
        .table_name(&table)
        .send()
        .await
        .unwrap();
}
