//! The crate's error types.
//!
//! `Error` is what library calls return; `ConfigError` says exactly where a
//! configuration went wrong (file, key path, line and column) so that
//! `goworker check` can print one line an operator can act on.

use std::fmt;
use std::path::PathBuf;

/// Everything that can go wrong in goworker's library calls.
#[derive(Debug)]
#[non_exhaustive]
pub enum Error {
    /// The configuration is invalid; nothing was started.
    Config(ConfigError),
    /// An I/O operation failed; the string says what was being done.
    Io {
        /// What was being done, e.g. "spawn /bin/echo".
        context: String,
        /// The underlying error.
        source: std::io::Error,
    },
    /// A provider's source (redis, disk, a socket) failed.
    Provider {
        /// The provider's configured name.
        provider: String,
        /// What went wrong.
        message: String,
    },
    /// A provider's source could not be reached at all (connection
    /// refused, nothing listening): unlike [`Error::Provider`], nothing
    /// there has said no, so another way in may be tried.
    Unreachable {
        /// The provider's configured name.
        provider: String,
        /// What went wrong.
        message: String,
    },
    /// A job could not be handed on because the pipeline is shut down.
    ShuttingDown,
    /// Anything else, with a message.
    Other(String),
}

impl Error {
    /// Wraps an I/O error with what was being done.
    pub fn io(context: impl Into<String>, source: std::io::Error) -> Error {
        Error::Io {
            context: context.into(),
            source,
        }
    }

    /// A provider failure.
    pub fn provider(provider: impl Into<String>, message: impl Into<String>) -> Error {
        Error::Provider {
            provider: provider.into(),
            message: message.into(),
        }
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Config(e) => e.fmt(f),
            Error::Io { context, source } => write!(f, "{context}: {source}"),
            Error::Provider { provider, message } | Error::Unreachable { provider, message } => {
                write!(f, "provider {provider}: {message}")
            }
            Error::ShuttingDown => f.write_str("shutting down"),
            Error::Other(m) => f.write_str(m),
        }
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Error::Config(e) => Some(e),
            Error::Io { source, .. } => Some(source),
            _ => None,
        }
    }
}

impl From<ConfigError> for Error {
    fn from(e: ConfigError) -> Error {
        Error::Config(e)
    }
}

/// Why a plugin type refused its options: returned by
/// [`crate::ProviderType::build`], [`crate::WorkerType::from_options`] and
/// [`crate::FailureHandlerType::build`]. The config loader adds the file,
/// the entry's key path and the line and column.
///
/// ```
/// use goworker::PluginError;
/// let e = PluginError::at("suffix", "at most 16 characters");
/// assert_eq!(e.to_string(), "suffix: at most 16 characters");
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PluginError {
    path: String,
    message: String,
}

impl PluginError {
    /// An error about the options as a whole (or whose message names the
    /// option itself).
    pub fn new(message: impl Into<String>) -> PluginError {
        PluginError::at("", message)
    }

    /// An error about the option at `path` (e.g. `allow[2]`, `retry.base`),
    /// relative to the plugin's entry.
    pub fn at(path: impl Into<String>, message: impl Into<String>) -> PluginError {
        PluginError {
            path: path.into(),
            message: message.into(),
        }
    }

    /// The option's key path inside the entry; empty for the whole entry.
    pub fn path(&self) -> &str {
        &self.path
    }

    /// What is wrong.
    pub fn message(&self) -> &str {
        &self.message
    }
}

impl From<String> for PluginError {
    fn from(message: String) -> PluginError {
        PluginError::new(message)
    }
}

impl From<&str> for PluginError {
    fn from(message: &str) -> PluginError {
        PluginError::new(message)
    }
}

impl fmt::Display for PluginError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.path.is_empty() {
            f.write_str(&self.message)
        } else {
            write!(f, "{}: {}", self.path, self.message)
        }
    }
}

impl std::error::Error for PluginError {}

/// A configuration error: where it is and what is wrong.
///
/// Displayed as `FILE:LINE:COLUMN: KEY.PATH: message`, leaving out what is
/// not known.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    /// The file, when the config came from one.
    pub file: Option<PathBuf>,
    /// The key path, e.g. `workers[1].count`; empty for the whole document.
    pub path: String,
    /// 1-based line and column, where known.
    pub location: Option<(usize, usize)>,
    /// What is wrong.
    pub message: String,
}

impl ConfigError {
    /// An error at a key path with no known location.
    pub fn at(path: impl Into<String>, message: impl Into<String>) -> ConfigError {
        ConfigError {
            file: None,
            path: path.into(),
            location: None,
            message: message.into(),
        }
    }
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.file {
            Some(file) => write!(f, "{}", file.display())?,
            None => f.write_str("config")?,
        }
        if let Some((line, col)) = self.location {
            write!(f, ":{line}:{col}")?;
        }
        if !self.path.is_empty() {
            write!(f, ": {}", self.path)?;
        }
        write!(f, ": {}", self.message)
    }
}

impl std::error::Error for ConfigError {}
