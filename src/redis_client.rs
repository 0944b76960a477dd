//! Builds Redis clients from [`RedisConfig`]: URL (`redis://` or `rediss://` for TLS)
//! plus credentials from `username`/`password`/`password_file`, which win over the URL's.

use std::sync::Arc;

use redis::IntoConnectionInfo;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};

use crate::config::RedisConfig;
use crate::tls;

/// The URL parsed by redis-rs, with the configured credentials applied.
pub fn connection_info(config: &RedisConfig) -> anyhow::Result<redis::ConnectionInfo> {
    let info = config
        .url
        .expose()
        .into_connection_info()
        .map_err(|error| anyhow::anyhow!("redis.url {}: {error}", config.url))?;
    let mut settings = info.redis_settings().clone();
    if let Some(username) = &config.username {
        settings = settings.set_username(username);
    }
    if let Some(password) = &config.password {
        settings = settings.set_password(password.expose());
    }
    if let Some(path) = &config.password_file {
        let password = std::fs::read_to_string(path).map_err(|error| {
            anyhow::anyhow!(
                "redis.password_file {}: cannot read: {error}",
                path.display()
            )
        })?;
        settings = settings.set_password(password.trim_end_matches(['\r', '\n']));
    }
    Ok(info.set_redis_settings(settings))
}

pub fn client(config: &RedisConfig) -> anyhow::Result<redis::Client> {
    let info = connection_info(config)?;
    let client = match &config.tls_ca_file {
        Some(path) => {
            let (pem, _) = tls::read_ca_file(path)
                .map_err(|reason| anyhow::anyhow!("redis.tls_ca_file: {reason}"))?;
            let certificates = redis::TlsCertificates {
                client_tls: None,
                root_cert: Some(pem),
            };
            redis::Client::build_with_tls(info, certificates)
        }
        None => redis::Client::open(info),
    };
    client.map_err(|error| anyhow::anyhow!("redis.url {}: {error}", config.url))
}

/// TLS settings for `rediss://` connections made outside redis-rs (the pub/sub reader),
/// trusting what redis-rs trusts: `redis.tls_ca_file`, else the system's roots.
pub fn tls_config(config: &RedisConfig) -> anyhow::Result<Arc<rustls::ClientConfig>> {
    tls::client_config(config.tls_ca_file.as_deref(), true)
        .map_err(|reason| anyhow::anyhow!("redis.tls_ca_file: {reason}"))
}

/// A multiplexed connection that reconnects by itself, for commands (not pub/sub).
pub async fn connection_manager(config: &RedisConfig) -> anyhow::Result<ConnectionManager> {
    let client = client(config)?;
    let manager_config = ConnectionManagerConfig::new()
        .set_connection_timeout(Some(std::time::Duration::from_secs(5)))
        .set_response_timeout(Some(std::time::Duration::from_secs(10)));
    ConnectionManager::new_with_config(client, manager_config)
        .await
        .map_err(|error| anyhow::anyhow!("redis {}: cannot connect: {error}", config.url))
}

/// True for errors that retrying cannot fix (wrong password, missing ACL permission).
pub fn is_auth_error(error: &redis::RedisError) -> bool {
    if error.kind() == redis::ErrorKind::AuthenticationFailed {
        return true;
    }
    matches!(error.code(), Some("WRONGPASS" | "NOAUTH" | "NOPERM"))
}
