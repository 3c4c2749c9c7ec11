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
    Tls(TlsFailure),
    #[error("sending the request failed: {0}")]
    Send(String),
    #[error("no response within ReceiveTimeout ({0}s)")]
    ResponseTimeout(u64),
    #[error("closed the connection before any response byte")]
    ClosedBeforeHead,
    /// After part of a head (or an interim response): it may have acted.
    #[error("closed the connection before a complete response head")]
    ClosedMidHead,
    /// Part of a head (or an interim response) came, the rest did not.
    #[error("no complete response head within ReceiveTimeout ({0}s)")]
    HeadTimeout(u64),
    #[error("the shard is stopping")]
    Stopped,
    /// Reset (or another socket error) before any response byte: the
    /// request may go to another address.
    #[error("the connection failed before any response byte: {0}")]
    ResetBeforeHead(std::io::ErrorKind),
    #[error("{0}")]
    BadHead(ResponseError),
    #[error("the body broke off: {0}")]
    BodyBroken(String),
}

/// Why TLS to an HTTPS origin failed.
#[derive(Debug, thiserror::Error)]
pub enum TlsFailure {
    /// A loader bug: an HTTPS address without the vhost's client configuration.
    #[error("no TLS client configuration")]
    NoClientConfig,
    /// The handshake failed after the TCP connect: untrusted or wrong-name
    /// certificate, an alert, or the origin closing mid-handshake.
    #[error("handshake failed: {0}")]
    Handshake(std::io::Error),
}

impl OriginError {
    /// The status a client gets when nothing has been sent to it yet.
    pub fn status(&self) -> u16 {
        match self {
            OriginError::ConnectTimeout(_)
            | OriginError::ResponseTimeout(_)
            | OriginError::HeadTimeout(_) => 504,
            _ => 502,
        }
    }

    /// May the request go to another address (ORG-4)? Only when the origin cannot
    /// have acted on it: nothing of a response arrived.
    pub fn before_response(&self) -> bool {
        !matches!(
            self,
            OriginError::BadHead(_)
                | OriginError::BodyBroken(_)
                | OriginError::ClosedMidHead
                | OriginError::HeadTimeout(_)
                | OriginError::Stopped
        )
    }
}
