//! STON rule-file policies, as pure functions (spec §0, §3, §4).
//!
//! Everything here is sans-IO: rule files come in as text, requests and
//! responses are described by borrowed facts ([`MatchCtx`], [`ExpiresFacts`]),
//! and the current time is passed in as unix seconds. The shard runtime loads
//! the files, calls these functions on the hot path and writes the result.
//!
//! Loading policy, shared by every rule file:
//! * a malformed line is an **error**; parsing goes on to report every bad line,
//!   and the file is rejected (`Err` with all of them), so `cairn check` fails
//!   and a reload keeps the previous configuration;
//! * a well-formed rule that cairn refuses by the spec (MOD-1 `Host`, MOD-2
//!   `Content-Length`) is a **warning**: the rule is skipped, the rest loads.
//!
//! Diagnostics carry the 1-based line number; the caller adds the file name.

pub mod bypass;
pub mod compression;
pub mod cond;
pub mod drm;
pub mod expires;
pub mod modify;
pub mod pattern;
pub mod querystring;
pub(crate) mod rulefile;
pub mod timespec;
pub mod ttl;

pub use cond::{
    Cond, CondError, Condition, GeoInfo, GeoLookup, HeaderIter, HeaderLookup, HeaderTest, IpCond,
    MatchCtx, NoHeaders, Term,
};
pub use expires::{
    cache_control_max_age, with_max_age, Base, ExpiresError, ExpiresFacts, ExpiresOutcome,
    ExpiresRule, ExpiresTime, MAX_EXPIRES,
};
pub use modify::{
    apply, Action, HeaderList, HeaderRule, ModifyError, NoVars, Phase, RulePhase, SessionInfo,
    SessionVar, StatusCond, Template, Vars,
};
pub use pattern::{Case, Pattern};
pub use rulefile::Unclosed;
pub use timespec::{parse_seconds, TimeError};

/// One problem found on one line of a rule file.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("line {line}: {reason}")]
pub struct RuleDiag {
    /// 1-based line number in the file.
    pub line: u32,
    pub reason: String,
}

impl RuleDiag {
    pub(crate) fn new(line: u32, reason: impl ToString) -> Self {
        RuleDiag {
            line,
            reason: reason.to_string(),
        }
    }
}

/// A rule file that loaded: its rules in file order, and the rules it skipped.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Parsed<T> {
    pub rules: Vec<T>,
    /// Rules refused by the spec (skipped) and other non-fatal remarks.
    pub warnings: Vec<RuleDiag>,
}

impl<T> Default for Parsed<T> {
    fn default() -> Self {
        Parsed {
            rules: Vec::new(),
            warnings: Vec::new(),
        }
    }
}
