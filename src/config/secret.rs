//! A string that never shows up in logs: `Debug` and `Display` redact it.

use std::fmt;

use serde::{Deserialize, Serialize};

/// A secret value (password, credentialed URL). Only [`Secret::expose`] reveals it.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(transparent)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: impl Into<String>) -> Secret {
        Secret(value.into())
    }

    /// The real value, for handing to a client library. Never log it.
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// For URLs: the URL with any password replaced by `***`; other secrets: `***`.
    pub fn redacted(&self) -> String {
        redact_url(&self.0).unwrap_or_else(|| "***".to_string())
    }
}

/// `scheme://user:pass@host/..` -> `scheme://user:***@host/..`; `None` if not a URL.
pub fn redact_url(text: &str) -> Option<String> {
    let (scheme, rest) = text.split_once("://")?;
    let authority_end = rest.find('/').unwrap_or(rest.len());
    let authority = &rest[..authority_end];
    let Some((credentials, host)) = authority.rsplit_once('@') else {
        return Some(text.to_string());
    };
    let user = credentials.split(':').next().unwrap_or("");
    let redacted_credentials = if credentials.contains(':') {
        format!("{user}:***")
    } else {
        "***".to_string()
    };
    Some(format!(
        "{scheme}://{redacted_credentials}@{host}{}",
        &rest[authority_end..]
    ))
}

impl fmt::Debug for Secret {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(formatter, "{:?}", self.redacted())
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter.write_str(&self.redacted())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_lose_their_password() {
        let secret = Secret::new("redis://app:hunter2@127.0.0.1:6379/0");
        assert_eq!(format!("{secret}"), "redis://app:***@127.0.0.1:6379/0");
        assert!(!format!("{secret:?}").contains("hunter2"));
        assert_eq!(Secret::new("hunter2").to_string(), "***");
        assert_eq!(
            Secret::new("mongodb://127.0.0.1:27017").to_string(),
            "mongodb://127.0.0.1:27017"
        );
        assert_eq!(
            Secret::new("mongodb://u:p@a,b/db?x=1").to_string(),
            "mongodb://u:***@a,b/db?x=1"
        );
    }
}
