//! Builds Redis clients from [`RedisConfig`]: URL (`redis://` or `rediss://` for TLS)
//! plus credentials from `username`/`password`/`password_file`, which win over the URL's.

use redis::IntoConnectionInfo;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};

use crate::config::RedisConfig;

pub fn client(config: &RedisConfig) -> anyhow::Result<redis::Client> {
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
    let info = info.set_redis_settings(settings);
    redis::Client::open(info).map_err(|error| anyhow::anyhow!("redis.url {}: {error}", config.url))
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
