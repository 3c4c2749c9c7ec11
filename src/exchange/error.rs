//! Why an exchange failed, in one place: who is at fault, whether another attempt
//! is allowed, the client's status and the STON result code.

use crate::cache::CacheResult;
use crate::http1::RequestError;
use crate::origin::OriginError;

/// Who caused a failure.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// The client sent something we refuse, or went away.
    Client,
    /// The origin (or the network to it) failed.
    Origin,
    /// cairn itself.
    Internal,
}

#[derive(Debug, thiserror::Error)]
pub enum ExchangeError {
    #[error("{0}")]
    Request(#[from] RequestError),
    #[error("request body: {0}")]
    RequestBody(&'static str),
    #[error("request body larger than the limit")]
    RequestBodyTooLarge,
    #[error("the client took too long to send the request")]
    ClientTimeout,
    #[error("the client went away")]
    ClientGone,
    #[error(
        "the client read the response too slowly (past HitSendTimeoutSec + size / MinSendRate)"
    )]
    ClientTooSlow,
    #[error("no vhost serves this Host")]
    UnknownVhost,
    /// The Host (or `:authority`) names a site the connection's certificate does
    /// not cover (SNI chose another): the client should open a new connection.
    #[error("the connection's certificate does not cover this Host")]
    Misdirected,
    #[error("origin: {0}")]
    Origin(#[from] OriginError),
    #[error("the request this one followed failed at the origin")]
    FillFailed,
    #[error("the request this one followed did not answer in time")]
    FillTimeout,
    /// `Cache-Control: only-if-cached` and nothing usable stored (RFC 9111 §5.2.1.7).
    #[error("only-if-cached and no usable stored response")]
    NotCached,
    /// TTL-7: a stale object while every origin is excluded, answered with
    /// `<UnvalidatableObjectResCode>`.
    #[error("every origin is excluded; answered with UnvalidatableObjectResCode {0}")]
    Unvalidatable(u16),
    /// `<BypassPostRequest>OFF` / `<BypassPutRequest>OFF` (ORG-6).
    #[error("this method is not passed to the origin here")]
    MethodRefused,
    #[error("internal: {0}")]
    Internal(&'static str),
    #[error("{0}")]
    Spool(#[from] crate::spool::SpoolError),
}

impl ExchangeError {
    pub fn fault(&self) -> Fault {
        match self {
            ExchangeError::Request(_)
            | ExchangeError::RequestBody(_)
            | ExchangeError::RequestBodyTooLarge
            | ExchangeError::ClientTimeout
            | ExchangeError::ClientGone
            | ExchangeError::ClientTooSlow
            | ExchangeError::UnknownVhost
            | ExchangeError::NotCached
            | ExchangeError::MethodRefused
            | ExchangeError::Misdirected => Fault::Client,
            ExchangeError::Origin(_)
            | ExchangeError::FillFailed
            | ExchangeError::FillTimeout
            | ExchangeError::Unvalidatable(_) => Fault::Origin,
            ExchangeError::Internal(_) | ExchangeError::Spool(_) => Fault::Internal,
        }
    }

    /// May the same request be tried again? Only an origin failure before any
    /// response byte (the origin cannot have acted on it); never a client's fault.
    /// (`proxy::upstream::send` asks the origin error itself, with the method.)
    pub fn retry_allowed(&self) -> bool {
        match self {
            ExchangeError::Origin(e) => e.before_response(),
            _ => false,
        }
    }

    /// The status the client gets when nothing has been sent to it yet.
    pub fn status(&self) -> u16 {
        match self {
            ExchangeError::Request(e) => e.status(),
            ExchangeError::RequestBodyTooLarge => 413,
            ExchangeError::RequestBody(_) => 400,
            ExchangeError::ClientTimeout => 408,
            // Nothing is sent to a client that went away; STON logs its status as 0.
            ExchangeError::ClientGone | ExchangeError::ClientTooSlow => 0,
            ExchangeError::UnknownVhost => 404,
            ExchangeError::Misdirected => 421,
            ExchangeError::MethodRefused => 501,
            ExchangeError::Unvalidatable(n) => *n,
            ExchangeError::Origin(e) => e.status(),
            ExchangeError::FillFailed => 502,
            ExchangeError::FillTimeout | ExchangeError::NotCached => 504,
            ExchangeError::Internal(_) => 500,
            // Busy: the same request may succeed later.
            ExchangeError::Spool(crate::spool::SpoolError::Budget) => 503,
            ExchangeError::Spool(_) => 500,
        }
    }

    /// `sc-cachehit` for an exchange that ended in this error.
    pub fn result(&self) -> CacheResult {
        CacheResult::Error
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_table_for_fault_retry_and_status() {
        use std::io;
        let table: Vec<(ExchangeError, Fault, bool, u16)> = vec![
            (RequestError::UriTooLong.into(), Fault::Client, false, 414),
            (
                RequestError::BadSyntax("x").into(),
                Fault::Client,
                false,
                400,
            ),
            (
                ExchangeError::RequestBodyTooLarge,
                Fault::Client,
                false,
                413,
            ),
            (ExchangeError::ClientGone, Fault::Client, false, 0),
            (ExchangeError::Misdirected, Fault::Client, false, 421),
            (ExchangeError::ClientTooSlow, Fault::Client, false, 0),
            (
                ExchangeError::RequestBody("bad chunk"),
                Fault::Client,
                false,
                400,
            ),
            (ExchangeError::ClientTimeout, Fault::Client, false, 408),
            (ExchangeError::UnknownVhost, Fault::Client, false, 404),
            (ExchangeError::NotCached, Fault::Client, false, 504),
            (
                OriginError::ConnectTimeout(3).into(),
                Fault::Origin,
                true,
                504,
            ),
            (
                OriginError::Connect(io::ErrorKind::ConnectionRefused.into()).into(),
                Fault::Origin,
                true,
                502,
            ),
            (
                OriginError::ResponseTimeout(10).into(),
                Fault::Origin,
                true,
                504,
            ),
            (
                OriginError::ClosedBeforeHead.into(),
                Fault::Origin,
                true,
                502,
            ),
            (
                OriginError::BadHead(crate::http1::ResponseError::Malformed).into(),
                Fault::Origin,
                false,
                502,
            ),
            (
                OriginError::BodyBroken("x".into()).into(),
                Fault::Origin,
                false,
                502,
            ),
            (ExchangeError::FillFailed, Fault::Origin, false, 502),
            (ExchangeError::FillTimeout, Fault::Origin, false, 504),
            (ExchangeError::Internal("x"), Fault::Internal, false, 500),
            (
                crate::spool::SpoolError::Budget.into(),
                Fault::Internal,
                false,
                503,
            ),
            (
                crate::spool::SpoolError::Io(io::ErrorKind::StorageFull.into()).into(),
                Fault::Internal,
                false,
                500,
            ),
        ];
        for (e, fault, retry, status) in table {
            assert_eq!(
                (e.fault(), e.retry_allowed(), e.status()),
                (fault, retry, status),
                "{e}"
            );
            assert_eq!(e.result().code(), "TCP_ERROR");
        }
    }
}
