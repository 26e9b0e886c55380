//! Configuration problems are collected, not returned one at a time: an operator fixing a
//! deployment wants every mistake in one run of `gatehouse config check`.

use std::fmt;

/// One thing wrong with the configuration. `key` is the YAML key path (`http.addr`), the
/// environment variable that carried the bad value (`PROXY_TLS`), or the file that could not be read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigProblem {
    pub key: String,
    pub message: String,
}

impl ConfigProblem {
    pub fn new(key: impl Into<String>, message: impl Into<String>) -> Self {
        ConfigProblem {
            key: key.into(),
            message: message.into(),
        }
    }
}

impl fmt::Display for ConfigProblem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.key, self.message)
    }
}

/// Every problem found while loading; start-up must not continue. Not retryable: the same
/// inputs give the same problems.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct ConfigErrors(pub Vec<ConfigProblem>);

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, p) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str("\n")?;
            }
            write!(f, "{p}")?;
        }
        Ok(())
    }
}

impl ConfigErrors {
    pub fn problems(&self) -> &[ConfigProblem] {
        &self.0
    }

    /// Whether some problem is reported for exactly this key.
    pub fn has_key(&self, key: &str) -> bool {
        self.0.iter().any(|p| p.key == key)
    }
}
