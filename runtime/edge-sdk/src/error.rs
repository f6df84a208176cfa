//! SDK errors.

/// Sending a message failed.
#[derive(Debug, thiserror::Error)]
pub enum SendError {
    /// The hub is unreachable and the in-memory buffer (`ClientOptions::max_buffered`
    /// unacknowledged messages) is full: the message was NOT accepted.
    #[error("hub unreachable and {0} messages already buffered; message refused")]
    BufferFull(usize),
    /// The client is shutting down.
    #[error("client is shutting down")]
    Closed,
}

/// A twin request failed.
#[derive(Debug, thiserror::Error)]
pub enum TwinError {
    /// No answer within the request timeout.
    #[error("no twin response within {0:?}")]
    Timeout(std::time::Duration),
    /// The hub answered with an error status.
    #[error("hub answered twin request with status {0}")]
    Status(u16),
    /// The answer was not the JSON expected.
    #[error("twin response is not valid JSON")]
    BadResponse(#[source] serde_json::Error),
    /// The client is shutting down.
    #[error("client is shutting down")]
    Closed,
}

/// Why a module's `run` ended with an error; it decides the exit code.
#[derive(Debug, thiserror::Error)]
pub enum ModuleError {
    /// The module's configuration (twin desired properties) is invalid: exit code 78 (EX_CONFIG).
    #[error("invalid configuration: {0}")]
    Config(String),
    /// Anything else: exit code 1.
    #[error(transparent)]
    Other(#[from] Box<dyn std::error::Error + Send + Sync>),
}

impl ModuleError {
    /// Wraps any error.
    pub fn other(e: impl Into<Box<dyn std::error::Error + Send + Sync>>) -> Self {
        Self::Other(e.into())
    }
}

impl From<SendError> for ModuleError {
    fn from(e: SendError) -> Self {
        Self::other(e)
    }
}

impl From<TwinError> for ModuleError {
    fn from(e: TwinError) -> Self {
        Self::other(e)
    }
}

/// A direct method failed; the caller gets `status` and `{"error": message}`.
#[derive(Debug, Clone, thiserror::Error)]
#[error("method failed with status {status}: {message}")]
pub struct MethodError {
    /// Status returned to the caller (e.g. 400 for bad arguments, 500 for a failure).
    pub status: i32,
    /// Explanation returned to the caller.
    pub message: String,
}

impl MethodError {
    /// A 400 error for bad arguments.
    pub fn bad_request(message: impl Into<String>) -> Self {
        Self {
            status: 400,
            message: message.into(),
        }
    }

    /// A 500 error.
    pub fn internal(message: impl Into<String>) -> Self {
        Self {
            status: 500,
            message: message.into(),
        }
    }
}
