//! STON keep-alive policy (spec/ston-http.md §1, KA-1..KA-7) as a pure function.

use super::request::Version;

/// The vhost's keep-alive settings: `<ConnectionHeader>`, `<ClientKeepAliveSec>`,
/// `<KeepAliveHeader Max="N">`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Policy {
    /// `<ConnectionHeader>close</ConnectionHeader>` (KA-2).
    pub always_close: bool,
    /// `<KeepAliveHeader>ON</KeepAliveHeader>` (KA-3/KA-4).
    pub keep_alive_header: bool,
    /// `Max` attribute (KA-5); 0 means no limit.
    pub max: u32,
    /// `<ClientKeepAliveSec>` (KA-4, KA-6).
    pub timeout_secs: u32,
}

impl Default for Policy {
    fn default() -> Self {
        Policy {
            always_close: false,
            keep_alive_header: true,
            max: 0,
            timeout_secs: 10,
        }
    }
}

/// What the client sent that matters here.
#[derive(Debug, Clone, Copy)]
pub struct RequestFacts {
    pub version: Version,
    pub client_close: bool,
    pub client_keep_alive: bool,
}

/// The decision for one response.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    /// `Connection: Close`, no `Keep-Alive`; close after the response.
    Close,
    /// `Connection: Keep-Alive` with an optional `Keep-Alive` header.
    KeepAlive {
        timeout: Option<u32>,
        max: Option<u32>,
    },
}

/// Decides the connection headers for the `nth` response on a connection (1-based).
/// `force_close` covers reasons outside the policy (draining, an unread request body).
pub fn decide(policy: &Policy, req: RequestFacts, nth: u32, force_close: bool) -> Decision {
    let http10_close = req.version == Version::Http10 && !req.client_keep_alive; // KA-7
    let over_max = policy.max > 0 && nth > policy.max; // KA-5: request N+1 closes
    if req.client_close || policy.always_close || http10_close || over_max || force_close {
        return Decision::Close; // KA-1, KA-2
    }
    if !policy.keep_alive_header {
        return Decision::KeepAlive {
            timeout: None,
            max: None,
        }; // KA-3
    }
    let max = (policy.max > 0).then(|| policy.max - nth + 1);
    Decision::KeepAlive {
        timeout: Some(policy.timeout_secs),
        max,
    }
}

impl Decision {
    pub fn closes(&self) -> bool {
        matches!(self, Decision::Close)
    }

    /// Appends the header lines for this decision.
    pub fn write_headers(&self, out: &mut impl bytes::BufMut) {
        match *self {
            Decision::Close => out.put_slice(b"Connection: Close\r\n"),
            Decision::KeepAlive { timeout, max } => {
                out.put_slice(b"Connection: Keep-Alive\r\n");
                // Written by hand: this runs for every keep-alive response.
                if let Some(t) = timeout {
                    out.put_slice(b"Keep-Alive: timeout=");
                    super::headers::write_decimal(out, u64::from(t));
                    if let Some(m) = max {
                        out.put_slice(b", max=");
                        super::headers::write_decimal(out, u64::from(m));
                    }
                    out.put_slice(b"\r\n");
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const V11: RequestFacts = RequestFacts {
        version: Version::Http11,
        client_close: false,
        client_keep_alive: false,
    };

    fn headers(d: Decision) -> String {
        let mut v = Vec::new();
        d.write_headers(&mut v);
        String::from_utf8(v).unwrap()
    }

    #[test]
    fn ka_rules() {
        let def = Policy::default();
        let cases: Vec<(&str, Policy, RequestFacts, u32, &str)> = vec![
            (
                "KA-1",
                def,
                RequestFacts {
                    client_close: true,
                    ..V11
                },
                1,
                "Connection: Close\r\n",
            ),
            (
                "KA-2",
                Policy {
                    always_close: true,
                    ..def
                },
                V11,
                1,
                "Connection: Close\r\n",
            ),
            (
                "KA-3",
                Policy {
                    keep_alive_header: false,
                    ..def
                },
                V11,
                1,
                "Connection: Keep-Alive\r\n",
            ),
            (
                "KA-4",
                def,
                V11,
                7,
                "Connection: Keep-Alive\r\nKeep-Alive: timeout=10\r\n",
            ),
            (
                "KA-5 1st",
                Policy { max: 3, ..def },
                V11,
                1,
                "Connection: Keep-Alive\r\nKeep-Alive: timeout=10, max=3\r\n",
            ),
            (
                "KA-5 3rd",
                Policy { max: 3, ..def },
                V11,
                3,
                "Connection: Keep-Alive\r\nKeep-Alive: timeout=10, max=1\r\n",
            ),
            (
                "KA-5 4th",
                Policy { max: 3, ..def },
                V11,
                4,
                "Connection: Close\r\n",
            ),
            (
                "KA-7 1.0",
                def,
                RequestFacts {
                    version: Version::Http10,
                    ..V11
                },
                1,
                "Connection: Close\r\n",
            ),
            (
                "KA-7 1.0 ka",
                def,
                RequestFacts {
                    version: Version::Http10,
                    client_keep_alive: true,
                    ..V11
                },
                1,
                "Connection: Keep-Alive\r\nKeep-Alive: timeout=10\r\n",
            ),
        ];
        for (rule, policy, req, nth, want) in cases {
            assert_eq!(headers(decide(&policy, req, nth, false)), want, "{rule}");
        }
        assert!(decide(&def, V11, 1, true).closes());
    }
}
