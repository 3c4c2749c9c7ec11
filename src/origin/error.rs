//! Why an origin exchange failed: typed, so the request path can decide the
//! client's status, the result code and whether another attempt is allowed.

use crate::http1::ResponseError;

/// An origin failure. Every variant is the origin's fault (or the path to it).
#[derive(Debug, thiserror::Error)]
pub enum OriginError {
    #[error("connect timed out after {0}s")]
    ConnectTimeout(u64),
    #[error("connect failed: {0}")]
    Connect(std::io::Error),
    #[error("TLS: {0}")]
    Tls(String),
    #[error("sending the request failed: {0}")]
    Send(String),
    #[error("no response within ReceiveTimeout ({0}s)")]
    ResponseTimeout(u64),
    #[error("closed the connection before a complete response head")]
    ClosedBeforeHead,
    #[error("{0}")]
    BadHead(ResponseError),
    #[error("the body broke off: {0}")]
    BodyBroken(String),
}

impl OriginError {
    /// The status a client gets when nothing has been sent to it yet.
    pub fn status(&self) -> u16 {
        match self {
            OriginError::ConnectTimeout(_) | OriginError::ResponseTimeout(_) => 504,
            _ => 502,
        }
    }

    /// May the request go to another address (ORG-4)? Only when the origin cannot
    /// have acted on it: nothing of a response arrived.
    pub fn before_response(&self) -> bool {
        !matches!(self, OriginError::BadHead(_) | OriginError::BodyBroken(_))
    }
}
