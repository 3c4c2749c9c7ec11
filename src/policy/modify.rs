//! `headers.txt`: request and response header rewriting (spec §4, MOD-1..MOD-8).
//!
//! ```text
//! # {match}, $REQ[name[: value]], {set|put|append|unset}
//! $IP[192.168.2.1-255], $REQ[accept-encoding: gzip], set
//! # {match}, $RES[name[: value]], {action}[, {status}]
//! $IP[192.168.3.0/24], $RES[cache-control: no-cache, private], append, 3xx
//! ```
//!
//! Values are parsed into a [`Template`] at load time, so applying a rule only
//! copies bytes. Conditions see [`MatchCtx`]: for request rules give it the
//! request as the client sent it and apply the rules to a copy of its headers,
//! so every rule is judged against the same, unmodified request.

use std::borrow::Cow;
use std::net::IpAddr;

use super::cond::{is_token, trim, CondError, Condition, MatchCtx};
use super::rulefile::{self, matching_close, snippet, Unclosed};
use super::{Parsed, RuleDiag};

/// A header list being edited: (name, value) in order, duplicates allowed.
/// Header lines being edited. Borrowed until a rule changes them, so a response
/// whose headers the rules leave alone costs no copies.
pub type HeaderList<'a> = Vec<(Cow<'a, [u8]>, Cow<'a, [u8]>)>;

/// Which message a rule edits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RulePhase {
    /// `$REQ[...]`: applied when the request is first parsed (MOD-1).
    Request,
    /// `$RES[...]`: applied just before the response is sent (MOD-2).
    Response,
}

/// The phase [`apply`] runs in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    Request,
    /// With the status of the response being sent (MOD-5).
    Response {
        status: u16,
    },
}

/// MOD-5 status condition.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StatusCond {
    /// `404`
    Exact(u16),
    /// `2xx`: the hundreds digit.
    Class(u8),
}

impl StatusCond {
    pub fn parse(s: &str) -> Option<StatusCond> {
        let b = s.trim().as_bytes();
        match b {
            [c @ b'1'..=b'5', x, y]
                if x.eq_ignore_ascii_case(&b'x') && y.eq_ignore_ascii_case(&b'x') =>
            {
                Some(StatusCond::Class(c - b'0'))
            }
            [a @ b'1'..=b'5', b @ b'0'..=b'9', c @ b'0'..=b'9'] => Some(StatusCond::Exact(
                u16::from(a - b'0') * 100 + u16::from(b - b'0') * 10 + u16::from(c - b'0'),
            )),
            _ => None,
        }
    }

    pub fn matches(self, status: u16) -> bool {
        match self {
            StatusCond::Exact(s) => s == status,
            StatusCond::Class(c) => status / 100 == u16::from(c),
        }
    }
}

/// The variables the session supplies (MOD-7). `#CLIENTIP` and `#URI` come from
/// [`MatchCtx`], `$REQ.Name` from its request headers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SessionVar {
    /// `#PROTOCOL`: `http` or `https`.
    Protocol,
    /// `#PORT`: the local port the client connected to.
    Port,
    /// `#CACHEHIT`: `TCP_HIT`, `TCP_MISS`, ... (empty before the cache has answered).
    CacheHit,
    /// `#HOSTNAME`: this server's host name.
    Hostname,
    /// `#SESSIONID`: the client session's id.
    SessionId,
}

/// Supplies [`SessionVar`] values while a template is rendered.
pub trait Vars {
    /// Appends the variable's value to `out`.
    fn write(&self, var: SessionVar, out: &mut Vec<u8>);
}

/// Every variable renders as the empty string.
pub struct NoVars;

impl Vars for NoVars {
    fn write(&self, _: SessionVar, _: &mut Vec<u8>) {}
}

/// The session facts most callers have at hand.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SessionInfo<'a> {
    pub https: bool,
    pub port: u16,
    pub cache_hit: &'a str,
    pub hostname: &'a str,
    pub session_id: u64,
}

impl Vars for SessionInfo<'_> {
    fn write(&self, var: SessionVar, out: &mut Vec<u8>) {
        use std::io::Write;
        let _ = match var {
            SessionVar::Protocol => out.write_all(if self.https { b"https" } else { b"http" }),
            SessionVar::Port => write!(out, "{}", self.port),
            SessionVar::CacheHit => out.write_all(self.cache_hit.as_bytes()),
            SessionVar::Hostname => out.write_all(self.hostname.as_bytes()),
            SessionVar::SessionId => write!(out, "{}", self.session_id),
        };
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Piece {
    Lit(Box<[u8]>),
    Session(SessionVar),
    ClientIp,
    Uri,
    /// `$REQ.Name` (one name) or `$REQ.[A, B]`: the values of those request
    /// headers, in order, joined with `, `.
    Req(Names),
}

/// A header value with its variables, parsed once at load.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Template {
    pieces: Box<[Piece]>,
}

const KEYWORDS: &[(&str, Option<SessionVar>, bool)] = &[
    // (keyword, session variable, is #URI)
    ("#PROTOCOL", Some(SessionVar::Protocol), false),
    ("#PORT", Some(SessionVar::Port), false),
    ("#CACHEHIT", Some(SessionVar::CacheHit), false),
    ("#CLIENTIP", None, false),
    ("#HOSTNAME", Some(SessionVar::Hostname), false),
    ("#SESSIONID", Some(SessionVar::SessionId), false),
    ("#URI", None, true),
];

impl Template {
    /// Parses a value. `#WORD` that is not a known keyword (or runs on into
    /// more letters, like `#PORTAL`) is literal text.
    pub fn parse(s: &str) -> Result<Template, ModifyError> {
        if let Some(c) = s.chars().find(|&c| c.is_control() && c != '\t') {
            return Err(ModifyError::ControlChar(c));
        }
        let b = s.as_bytes();
        let mut pieces = Vec::new();
        let mut lit = Vec::new();
        let mut i = 0;
        while i < b.len() {
            if b[i] == b'#' {
                if let Some((kw, piece)) = keyword_at(b, i) {
                    flush(&mut lit, &mut pieces);
                    pieces.push(piece);
                    i += kw;
                    continue;
                }
            }
            if b[i] == b'$' && b.len() - i >= 5 && b[i..i + 5].eq_ignore_ascii_case(b"$REQ.") {
                flush(&mut lit, &mut pieces);
                let (len, names) = req_var(s, i + 5)?;
                pieces.push(Piece::Req(names));
                i += 5 + len;
                continue;
            }
            lit.push(b[i]);
            i += 1;
        }
        flush(&mut lit, &mut pieces);
        Ok(Template {
            pieces: pieces.into_boxed_slice(),
        })
    }

    /// True when the value has no variables.
    pub fn is_literal(&self) -> bool {
        self.pieces.iter().all(|p| matches!(p, Piece::Lit(_)))
    }

    /// Appends the value to `out`. Bytes that could split a header line (CR, LF,
    /// NUL) coming from variables are replaced by spaces.
    pub fn render(&self, ctx: &MatchCtx<'_>, vars: &dyn Vars, out: &mut Vec<u8>) {
        for p in self.pieces.iter() {
            let start = out.len();
            match p {
                Piece::Lit(l) => {
                    out.extend_from_slice(l);
                    continue;
                }
                Piece::Session(v) => vars.write(*v, out),
                Piece::ClientIp => {
                    use std::io::Write;
                    let ip: IpAddr = ctx.client_ip.to_canonical();
                    let _ = write!(out, "{ip}");
                }
                Piece::Uri => out.extend_from_slice(ctx.url),
                Piece::Req(names) => {
                    let mut first = true;
                    for n in names.iter() {
                        ctx.headers.any_value(n.as_bytes(), &mut |v| {
                            if !first {
                                out.extend_from_slice(b", ");
                            }
                            first = false;
                            out.extend_from_slice(trim(v));
                            false
                        });
                    }
                }
            }
            for b in &mut out[start..] {
                if matches!(*b, b'\r' | b'\n' | 0) {
                    *b = b' ';
                }
            }
        }
    }
}

fn flush(lit: &mut Vec<u8>, pieces: &mut Vec<Piece>) {
    if !lit.is_empty() {
        pieces.push(Piece::Lit(std::mem::take(lit).into_boxed_slice()));
    }
}

fn keyword_at(b: &[u8], i: usize) -> Option<(usize, Piece)> {
    KEYWORDS.iter().find_map(|&(kw, var, uri)| {
        let end = i + kw.len();
        let hit = b.get(i..end) == Some(kw.as_bytes())
            && !b
                .get(end)
                .is_some_and(|c| c.is_ascii_alphanumeric() || *c == b'_');
        hit.then(|| {
            let piece = match (var, uri) {
                (Some(v), _) => Piece::Session(v),
                (None, true) => Piece::Uri,
                (None, false) => Piece::ClientIp,
            };
            (kw.len(), piece)
        })
    })
}

/// Header names of a `$REQ` variable.
type Names = Box<[Box<str>]>;

/// The header names after `$REQ.` at `at`: `Name` (letters, digits, `-`, `_`)
/// or `[A, B]`. Returns the length consumed.
fn req_var(s: &str, at: usize) -> Result<(usize, Names), ModifyError> {
    let b = s.as_bytes();
    if b.get(at) == Some(&b'[') {
        let close =
            matching_close(b, at).ok_or_else(|| ModifyError::BadReqVar(snippet(&s[at..])))?;
        let names = s[at + 1..close]
            .split(',')
            .map(|n| {
                let n = n.trim();
                is_token(n)
                    .then(|| Box::<str>::from(n))
                    .ok_or_else(|| ModifyError::BadReqVar(snippet(&s[at..=close])))
            })
            .collect::<Result<Vec<_>, _>>()?;
        return Ok((close + 1 - at, names.into_boxed_slice()));
    }
    let len = b[at..]
        .iter()
        .take_while(|c| c.is_ascii_alphanumeric() || matches!(c, b'-' | b'_'))
        .count();
    if len == 0 {
        return Err(ModifyError::BadReqVar(snippet(&s[at.saturating_sub(5)..])));
    }
    Ok((len, Box::new([Box::from(&s[at..at + len])])))
}

/// What a rule does to the header it names (MOD-4).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Replace every header of that name with this one.
    Set(Template),
    /// Add another line.
    Put(Template),
    /// Join to the existing value with `, `; add when absent.
    Append(Template),
    /// Remove every header of that name.
    Unset,
}

/// One line of headers.txt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HeaderRule {
    pub line: u32,
    pub cond: Condition,
    pub phase: RulePhase,
    /// The header name as written.
    pub name: Box<str>,
    pub action: Action,
    /// MOD-5 (response rules only); `None` matches any status.
    pub status: Option<StatusCond>,
}

impl HeaderRule {
    /// Whether the rule applies in `phase` (its status condition included) and
    /// its condition holds.
    pub fn matches(&self, phase: Phase, ctx: &MatchCtx<'_>) -> bool {
        let phase_ok = match phase {
            Phase::Request => self.phase == RulePhase::Request,
            Phase::Response { status } => {
                self.phase == RulePhase::Response && self.status.is_none_or(|s| s.matches(status))
            }
        };
        phase_ok && self.cond.matches(ctx)
    }
}

/// Why a headers.txt line is malformed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ModifyError {
    #[error("expected '{{match}}, $REQ[...], {{action}}' or '{{match}}, $RES[...], {{action}}[, {{status}}]', found {0} field(s)")]
    FieldCount(usize),
    #[error(transparent)]
    Unclosed(#[from] Unclosed),
    #[error("match: {0}")]
    Cond(#[from] CondError),
    #[error("second field {0:?} must be $REQ[name[: value]] or $RES[name[: value]]")]
    BadTarget(String),
    #[error("bad header name {0:?}")]
    BadName(String),
    #[error("unknown action {0:?} (set, put, append or unset)")]
    BadAction(String),
    #[error("bad status condition {0:?} (a code like 404 or a class like 2xx)")]
    BadStatus(String),
    #[error("a status condition applies only to $RES rules")]
    StatusOnRequest,
    #[error("control character {0:?} in a header value")]
    ControlChar(char),
    #[error("bad $REQ variable {0:?} ($REQ.Name or $REQ.[A, B])")]
    BadReqVar(String),
}

/// Parses headers.txt. Malformed lines are errors (all reported, the file
/// fails); rules the spec forbids (MOD-1 Host or the request URI, MOD-2
/// Content-Length) are warnings and skipped.
pub fn parse(text: &str) -> Result<Parsed<HeaderRule>, Vec<RuleDiag>> {
    let mut out = Parsed::default();
    let mut errors = Vec::new();
    for line in rulefile::lines(text) {
        match parse_rule(line.no, line.text) {
            Ok(LineOutcome::Rule(r, warning)) => {
                if let Some(w) = warning {
                    out.warnings.push(RuleDiag::new(line.no, w));
                }
                out.rules.push(r);
            }
            Ok(LineOutcome::Refused(why)) => out.warnings.push(RuleDiag::new(line.no, why)),
            Err(e) => errors.push(RuleDiag::new(line.no, e)),
        }
    }
    if errors.is_empty() {
        Ok(out)
    } else {
        Err(errors)
    }
}

/// What one well-formed line amounts to.
enum LineOutcome {
    /// A rule, with a remark that does not stop it loading.
    Rule(HeaderRule, Option<String>),
    /// Well-formed but refused by the spec.
    Refused(String),
}

fn parse_rule(no: u32, text: &str) -> Result<LineOutcome, ModifyError> {
    let f = rulefile::fields(text)?;
    if !(3..=4).contains(&f.len()) {
        return Err(ModifyError::FieldCount(f.len()));
    }
    let cond = Condition::parse(f[0])?;
    let (phase, inner) = target(f[1])?;
    let action_word = f[2];
    let status = match f.get(3) {
        None | Some(&"") => None,
        Some(_) if phase == RulePhase::Request => return Err(ModifyError::StatusOnRequest),
        Some(s) => Some(StatusCond::parse(s).ok_or_else(|| ModifyError::BadStatus(snippet(s)))?),
    };
    let (name, value) = match inner.split_once(':') {
        Some((n, v)) => (n.trim(), Some(v.trim())),
        None => (inner.trim(), None),
    };
    let side = match phase {
        RulePhase::Request => "request",
        RulePhase::Response => "response",
    };
    let pseudo = inner.trim_start().strip_prefix(':');
    if pseudo.is_some_and(|p| p.starts_with(|c: char| c.is_ascii_alphabetic())) {
        // `$REQ[:path: /x]`: HTTP/2 pseudo-headers carry the URI, method, status.
        return Ok(LineOutcome::Refused(format!(
            "{side} rules cannot modify pseudo-headers or the request URI ({}); rule skipped",
            snippet(inner.trim())
        )));
    }
    if !is_token(name) {
        return Err(ModifyError::BadName(snippet(name)));
    }
    let action = if action_word.eq_ignore_ascii_case("set") {
        Action::Set(Template::parse(value.unwrap_or(""))?)
    } else if action_word.eq_ignore_ascii_case("put") {
        Action::Put(Template::parse(value.unwrap_or(""))?)
    } else if action_word.eq_ignore_ascii_case("append") {
        Action::Append(Template::parse(value.unwrap_or(""))?)
    } else if action_word.eq_ignore_ascii_case("unset") {
        Action::Unset
    } else {
        return Err(ModifyError::BadAction(snippet(action_word)));
    };
    if let Some(why) = forbidden(phase, name) {
        return Ok(LineOutcome::Refused(why));
    }
    let warning = match (&action, value) {
        (Action::Unset, Some(v)) if !v.is_empty() => Some(format!(
            "unset takes only a header name; the value {:?} is ignored",
            snippet(v)
        )),
        _ => None,
    };
    Ok(LineOutcome::Rule(
        HeaderRule {
            line: no,
            cond,
            phase,
            name: name.into(),
            action,
            status,
        },
        warning,
    ))
}

/// `$REQ[...]` / `$RES[...]` -> (phase, inside of the brackets).
fn target(f: &str) -> Result<(RulePhase, &str), ModifyError> {
    let bad = || ModifyError::BadTarget(snippet(f));
    let b = f.as_bytes();
    if b.len() < 5 || b[4] != b'[' {
        return Err(bad());
    }
    let phase = if b[..4].eq_ignore_ascii_case(b"$REQ") {
        RulePhase::Request
    } else if b[..4].eq_ignore_ascii_case(b"$RES") {
        RulePhase::Response
    } else {
        return Err(bad());
    };
    match matching_close(b, 4) {
        Some(c) if c == b.len() - 1 => Ok((phase, &f[5..c])),
        _ => Err(bad()),
    }
}

/// MOD-1 / MOD-2: the headers a rule may not touch.
fn forbidden(phase: RulePhase, name: &str) -> Option<String> {
    match phase {
        RulePhase::Request if name.eq_ignore_ascii_case("host") => {
            Some("request rules cannot modify Host (MOD-1); rule skipped".into())
        }
        RulePhase::Response if name.eq_ignore_ascii_case("content-length") => {
            Some("response rules cannot modify Content-Length (MOD-2); rule skipped".into())
        }
        // Message framing and connection management are cairn's, not the rules'.
        RulePhase::Response
            if ["transfer-encoding", "connection", "keep-alive"]
                .iter()
                .any(|p| name.eq_ignore_ascii_case(p)) =>
        {
            Some(format!("response rules cannot modify {name}: cairn manages framing and connections; rule skipped"))
        }
        _ => None,
    }
}

/// Applies the rules of `phase` to `headers`, in file order (MOD-3); with
/// `first_only`, only the first rule that matches. Returns how many rules
/// applied. With no rules (or none matching) nothing is allocated or moved.
pub fn apply(
    rules: &[HeaderRule],
    first_only: bool,
    phase: Phase,
    ctx: &MatchCtx<'_>,
    vars: &dyn Vars,
    headers: &mut HeaderList<'_>,
) -> usize {
    let mut applied = 0;
    for rule in rules {
        if !rule.matches(phase, ctx) {
            continue;
        }
        // Rules built by hand skip the load-time check; hold the line here too.
        if forbidden(rule.phase, &rule.name).is_some() {
            continue;
        }
        edit(rule, ctx, vars, headers);
        applied += 1;
        if first_only {
            break;
        }
    }
    applied
}

/// Applies rules already known to match (their indices, in file order), for a
/// caller that evaluated the conditions once to decide whether to edit at all.
/// The conditions read only the request, so matching first is equivalent.
pub fn apply_matched(
    rules: &[HeaderRule],
    matched: &[usize],
    ctx: &MatchCtx<'_>,
    vars: &dyn Vars,
    headers: &mut HeaderList<'_>,
) -> usize {
    let mut applied = 0;
    for rule in matched.iter().filter_map(|&i| rules.get(i)) {
        if forbidden(rule.phase, &rule.name).is_none() {
            edit(rule, ctx, vars, headers);
            applied += 1;
        }
    }
    applied
}

fn edit(rule: &HeaderRule, ctx: &MatchCtx<'_>, vars: &dyn Vars, headers: &mut HeaderList<'_>) {
    let name = rule.name.as_bytes();
    let is = |n: &[u8]| n.eq_ignore_ascii_case(name);
    match &rule.action {
        Action::Set(t) => match headers.iter().position(|(n, _)| is(n)) {
            Some(first) => {
                headers[first] = (
                    Cow::Owned(name.to_vec()),
                    Cow::Owned(rendered(t, ctx, vars)),
                );
                let mut i = 0;
                headers.retain(|(n, _)| {
                    let keep = i <= first || !is(n);
                    i += 1;
                    keep
                });
            }
            None => headers.push((
                Cow::Owned(name.to_vec()),
                Cow::Owned(rendered(t, ctx, vars)),
            )),
        },
        Action::Put(t) => headers.push((
            Cow::Owned(name.to_vec()),
            Cow::Owned(rendered(t, ctx, vars)),
        )),
        // Appending to the last line keeps the list order of a repeated header.
        Action::Append(t) => match headers.iter().rposition(|(n, _)| is(n)) {
            Some(last) => {
                let v = headers[last].1.to_mut();
                if trim(v).is_empty() {
                    v.clear();
                    t.render(ctx, vars, v);
                } else {
                    let mark = v.len();
                    v.extend_from_slice(b", ");
                    t.render(ctx, vars, v);
                    if v.len() == mark + 2 {
                        v.truncate(mark); // appending nothing leaves the value alone
                    }
                }
            }
            None => headers.push((
                Cow::Owned(name.to_vec()),
                Cow::Owned(rendered(t, ctx, vars)),
            )),
        },
        Action::Unset => headers.retain(|(n, _)| !is(n)),
    }
}

fn rendered(t: &Template, ctx: &MatchCtx<'_>, vars: &dyn Vars) -> Vec<u8> {
    let mut v = Vec::new();
    t.render(ctx, vars, &mut v);
    v
}

#[cfg(test)]
mod tests {
    use super::super::cond::tests::{Req, TestGeo};
    use super::*;

    /// The headers.txt examples of seed 002, verbatim, plus its `#PROTOCOL` note.
    const SEED_002: &str = "# /svc/www.example.com/headers.txt
# 구분자는 콤마(,)이다.

# 요청변경
# {Match}, {$REQ}, {Action(set|put|append|unset)} 순서로 표기한다.
$IP[192.168.1.1], $REQ[SOAPAction], unset
$IP[192.168.2.1-255], $REQ[accept-encoding: gzip], set
$IP[192.168.3.0/24], $REQ[cache-control: no-cache], append
$IP[192.168.4.0/255.255.255.0], $REQ[x-custom-header], unset
$IP[AP], $REQ[X-Forwarded-For], unset
$HEADER[user-agent: *IE6*], $REQ[accept-encoding], unset
$HEADER[via], $REQ[via], unset
$URL[/source/*.zip], $REQ[accept-encoding: deflate], set
$METHOD[POST], $REQ[host: sub.example.com], set

# 응답변경
# {Match}, {$RES}, {Action(set|put|append|unset)}, {condition} 순서로 표기한다.
# {condition}은 특정 응답코드에 한하여 헤더를 변경할 수 있지만 필수는 아니다.
$IP[192.168.1.1], $RES[via: STON for CDN], set
$IP[192.168.2.1-255], $RES[X-Cache], unset, 200
$IP[192.168.3.0/24], $RES[cache-control: no-cache, private], append, 3xx
$IP[192.168.4.0/255.255.255.0], $RES[x-custom-header], unset
$HEADER[user-agent: *IE6*], $RES[vary], unset
$HEADER[x-custom-header], $RES[cache-control: no-cache, private], append, 5xx
$URL[/source/*], $RES[cache-control: no-cache], set, 404
/secure/*.dat, $RES[x-custom], unset, 200
/*.mp4, $RES[Access-Control-Allow-Origin: example1.com], set
/*.mp4, $RES[Access-Control-Allow-Origin: example2.com], put

$URL[*], $REQ[X-Forwarded-Proto: #PROTOCOL], set
";

    fn lit(s: &str) -> Template {
        Template::parse(s).unwrap()
    }

    #[test]
    fn seed_002_examples_parse() {
        let p = parse(SEED_002).expect("seed 002 headers.txt");
        // MOD-1: the Host rule (line 14) is refused with a warning naming its line.
        assert_eq!(p.warnings.len(), 1, "{:?}", p.warnings);
        assert_eq!(p.warnings[0].line, 14);
        assert!(p.warnings[0].reason.contains("Host"), "{}", p.warnings[0]);
        assert!(p.warnings[0].to_string().starts_with("line 14: "));
        let got: Vec<(u32, RulePhase, &str, Action, Option<StatusCond>)> = p
            .rules
            .iter()
            .map(|r| (r.line, r.phase, &*r.name, r.action.clone(), r.status))
            .collect();
        use Action::*;
        use RulePhase::*;
        use StatusCond::*;
        assert_eq!(
            got,
            vec![
                (6, Request, "SOAPAction", Unset, None),
                (7, Request, "accept-encoding", Set(lit("gzip")), None),
                (8, Request, "cache-control", Append(lit("no-cache")), None),
                (9, Request, "x-custom-header", Unset, None),
                (10, Request, "X-Forwarded-For", Unset, None),
                (11, Request, "accept-encoding", Unset, None),
                (12, Request, "via", Unset, None),
                (13, Request, "accept-encoding", Set(lit("deflate")), None),
                (19, Response, "via", Set(lit("STON for CDN")), None),
                (20, Response, "X-Cache", Unset, Some(Exact(200))),
                (
                    21,
                    Response,
                    "cache-control",
                    Append(lit("no-cache, private")),
                    Some(Class(3))
                ),
                (22, Response, "x-custom-header", Unset, None),
                (23, Response, "vary", Unset, None),
                (
                    24,
                    Response,
                    "cache-control",
                    Append(lit("no-cache, private")),
                    Some(Class(5))
                ),
                (
                    25,
                    Response,
                    "cache-control",
                    Set(lit("no-cache")),
                    Some(Exact(404))
                ),
                (26, Response, "x-custom", Unset, Some(Exact(200))),
                (
                    27,
                    Response,
                    "Access-Control-Allow-Origin",
                    Set(lit("example1.com")),
                    None
                ),
                (
                    28,
                    Response,
                    "Access-Control-Allow-Origin",
                    Put(lit("example2.com")),
                    None
                ),
                (
                    30,
                    Request,
                    "X-Forwarded-Proto",
                    Set(lit("#PROTOCOL")),
                    None
                ),
            ]
        );
        assert!(!p
            .rules
            .last()
            .map(|r| matches!(&r.action, Set(t) if t.is_literal()))
            .unwrap());
        assert!(p.rules[4].cond.uses_geo());
    }

    #[test]
    fn refused_rules_are_warnings() {
        let text = "*, $REQ[Host: x], set\n*, $REQ[HOST], unset\n*, $RES[Content-Length: 5], set\n*, $RES[content-length], unset\n*, $REQ[:path: /x], set\n*, $RES[Host: ok], set\n*, $REQ[Content-Length: 0], set\n";
        let p = parse(text).unwrap();
        let lines: Vec<u32> = p.warnings.iter().map(|w| w.line).collect();
        assert_eq!(lines, vec![1, 2, 3, 4, 5]);
        assert!(p.warnings[2].reason.contains("MOD-2"));
        assert!(p.warnings[4].reason.contains("URI"));
        // Host on a response and Content-Length on a request are not forbidden.
        assert_eq!(
            p.rules.iter().map(|r| r.line).collect::<Vec<_>>(),
            vec![6, 7]
        );
    }

    #[test]
    fn malformed_lines_are_all_reported() {
        let text = "\
*, $REQ[x], unset
*, $REQ[x]
*, $REQ[x], unset, 200
*, $RES[x], remove
*, $RES[x], set, 600
*, $RES[x], set, 2x
*, $XYZ[x], set
*, REQ[x], set
*, $RES[x: y]z, set
*, $RES[bad name], unset
, $RES[x], unset
$IP[1.2.3], $RES[x], unset
*, $RES[x: a\u{1}b], set
*, $RES[x: $REQ.], set
*, $RES[x: $REQ.[a, ]], set
*, $RES[x: y, set
*, $RES[x], unset, 200, extra
*, $RES[x], unset, 2XX
";
        let errs = parse(text).unwrap_err();
        let lines: Vec<u32> = errs.iter().map(|d| d.line).collect();
        assert_eq!(lines, (2..=17).collect::<Vec<_>>(), "{errs:#?}");
        assert!(errs[1].reason.contains("only to $RES"), "{}", errs[1]);
    }

    #[test]
    fn status_conditions() {
        let cases: &[(&str, Option<StatusCond>)] = &[
            ("404", Some(StatusCond::Exact(404))),
            ("200", Some(StatusCond::Exact(200))),
            ("2xx", Some(StatusCond::Class(2))),
            ("5XX", Some(StatusCond::Class(5))),
            ("6xx", None),
            ("099", None),
            ("2x", None),
            ("2000", None),
            ("", None),
            ("٢٠٠", None),
        ];
        for (s, want) in cases {
            assert_eq!(StatusCond::parse(s), *want, "{s:?}");
        }
        assert!(StatusCond::Class(3).matches(304));
        assert!(!StatusCond::Class(3).matches(404));
    }

    fn hl(v: &[(&str, &str)]) -> HeaderList<'static> {
        v.iter()
            .map(|(n, v)| {
                (
                    Cow::Owned(n.as_bytes().to_vec()),
                    Cow::Owned(v.as_bytes().to_vec()),
                )
            })
            .collect()
    }

    fn show(h: &HeaderList<'_>) -> Vec<(String, String)> {
        h.iter()
            .map(|(n, v)| {
                (
                    String::from_utf8_lossy(n).into_owned(),
                    String::from_utf8_lossy(v).into_owned(),
                )
            })
            .collect()
    }

    struct Case<'a> {
        id: &'a str,
        rules: &'a str,
        first_only: bool,
        phase: Phase,
        before: &'a [(&'a str, &'a str)],
        after: &'a [(&'a str, &'a str)],
    }

    /// MOD-3..MOD-5 with the seed's rule shapes.
    #[test]
    fn apply_table() {
        let res = |status| Phase::Response { status };
        #[rustfmt::skip]
        let cases = [
            // MOD-4 set: replaces every header of that name, at the first one's place.
            Case { id: "MOD-4 set", rules: "*, $RES[X-A: new], set", first_only: false, phase: res(200),
                before: &[("x-a", "1"), ("B", "2"), ("X-A", "3")], after: &[("X-A", "new"), ("B", "2")] },
            Case { id: "MOD-4 set absent", rules: "*, $RES[X-A: new], set", first_only: false, phase: res(200),
                before: &[("B", "2")], after: &[("B", "2"), ("X-A", "new")] },
            Case { id: "MOD-4 set empty", rules: "*, $RES[X-A], set", first_only: false, phase: res(200),
                before: &[("X-A", "1")], after: &[("X-A", "")] },
            // MOD-4 put: another line.
            Case { id: "MOD-4 put", rules: "*, $RES[Access-Control-Allow-Origin: example1.com], set\n*, $RES[Access-Control-Allow-Origin: example2.com], put", first_only: false, phase: res(200),
                before: &[], after: &[("Access-Control-Allow-Origin", "example1.com"), ("Access-Control-Allow-Origin", "example2.com")] },
            Case { id: "MOD-4 put empty", rules: "*, $RES[X:], put", first_only: false, phase: res(200),
                before: &[("X", "1")], after: &[("X", "1"), ("X", "")] },
            // MOD-4 append: join with ", " to the last line; add when absent.
            Case { id: "MOD-4 append", rules: "*, $RES[cache-control: no-cache, private], append", first_only: false, phase: res(301),
                before: &[("Cache-Control", "max-age=60")], after: &[("Cache-Control", "max-age=60, no-cache, private")] },
            Case { id: "MOD-4 append last", rules: "*, $RES[X: c], append", first_only: false, phase: res(200),
                before: &[("X", "a"), ("X", "b")], after: &[("X", "a"), ("X", "b, c")] },
            Case { id: "MOD-4 append absent", rules: "*, $RES[X: c], append", first_only: false, phase: res(200),
                before: &[], after: &[("X", "c")] },
            Case { id: "MOD-4 append to empty", rules: "*, $RES[X: c], append", first_only: false, phase: res(200),
                before: &[("X", " ")], after: &[("X", "c")] },
            Case { id: "MOD-4 append nothing", rules: "*, $RES[X], append", first_only: false, phase: res(200),
                before: &[("X", "a")], after: &[("X", "a")] },
            // MOD-4 unset: all of that name, any case.
            Case { id: "MOD-4 unset", rules: "*, $RES[vary], unset", first_only: false, phase: res(200),
                before: &[("Vary", "a"), ("B", "1"), ("VARY", "b")], after: &[("B", "1")] },
            // MOD-4 action names are case-insensitive.
            Case { id: "MOD-4 case", rules: "*, $RES[X: 1], SET\n*, $RES[Y], UnSet", first_only: false, phase: res(200),
                before: &[("y", "0")], after: &[("X", "1")] },
            // MOD-3: all matching rules in file order; set is last-wins.
            Case { id: "MOD-3 order", rules: "*, $RES[X: 1], set\n/nomatch, $RES[X: 2], set\n*, $RES[X: 3], append\n*, $RES[X: 4], set", first_only: false, phase: res(200),
                before: &[], after: &[("X", "4")] },
            Case { id: "MOD-3 order 2", rules: "*, $RES[X: 1], set\n*, $RES[X: 3], append", first_only: false, phase: res(200),
                before: &[], after: &[("X", "1, 3")] },
            // MOD-3 FirstOnly: only the first matching rule.
            Case { id: "MOD-3 first", rules: "/nomatch, $RES[X: 0], set\n*, $RES[X: 1], set\n*, $RES[Y: 2], set", first_only: true, phase: res(200),
                before: &[], after: &[("X", "1")] },
            // A status mismatch is no match, also for FirstOnly.
            Case { id: "MOD-3 first status", rules: "*, $RES[X: 0], set, 404\n*, $RES[Y: 1], set", first_only: true, phase: res(200),
                before: &[], after: &[("Y", "1")] },
            // MOD-5: exact status and class; none means any.
            Case { id: "MOD-5 exact", rules: "*, $RES[X-Cache], unset, 200", first_only: false, phase: res(200),
                before: &[("X-Cache", "HIT")], after: &[] },
            Case { id: "MOD-5 exact miss", rules: "*, $RES[X-Cache], unset, 200", first_only: false, phase: res(206),
                before: &[("X-Cache", "HIT")], after: &[("X-Cache", "HIT")] },
            Case { id: "MOD-5 class", rules: "*, $RES[X: y], set, 5xx", first_only: false, phase: res(503),
                before: &[], after: &[("X", "y")] },
            Case { id: "MOD-5 class miss", rules: "*, $RES[X: y], set, 5xx", first_only: false, phase: res(404),
                before: &[], after: &[] },
            // Phases: request rules never run on responses and vice versa.
            Case { id: "MOD-1 phase", rules: "*, $REQ[accept-encoding: gzip], set\n*, $RES[X: 1], set", first_only: false, phase: Phase::Request,
                before: &[("Accept-Encoding", "br")], after: &[("accept-encoding", "gzip")] },
            Case { id: "MOD-2 phase", rules: "*, $REQ[accept-encoding: gzip], set", first_only: false, phase: res(200),
                before: &[("Accept-Encoding", "br")], after: &[("Accept-Encoding", "br")] },
            Case { id: "MOD-3 first per phase", rules: "*, $REQ[A: 1], set\n*, $RES[B: 1], set\n*, $RES[C: 1], set", first_only: true, phase: res(200),
                before: &[], after: &[("B", "1")] },
        ];
        let req = Req::new("192.168.3.4", "/a.mp4");
        for c in cases {
            let p = parse(c.rules).unwrap_or_else(|e| panic!("{}: {e:?}", c.id));
            let mut h = hl(c.before);
            apply(
                &p.rules,
                c.first_only,
                c.phase,
                &req.ctx(None),
                &NoVars,
                &mut h,
            );
            assert_eq!(show(&h), show(&hl(c.after)), "{}", c.id);
        }
    }

    /// MOD-6 match kinds drive whether a seed rule applies.
    #[test]
    fn seed_rules_match_their_clients() {
        let p = parse(SEED_002).unwrap();
        let geo = TestGeo;
        let run = |req: &Req<'_>, phase: Phase, before: &[(&str, &str)]| {
            let mut h = hl(before);
            apply(
                &p.rules,
                false,
                phase,
                &req.ctx(Some(&geo)),
                &NoVars,
                &mut h,
            );
            show(&h)
        };
        let base = [
            ("SOAPAction", "x"),
            ("Accept-Encoding", "br"),
            ("X-Forwarded-For", "9.9.9.9"),
        ];
        // 192.168.1.1: SOAPAction removed (line 6) and nothing else.
        let r = run(&Req::new("192.168.1.1", "/"), Phase::Request, &base);
        assert_eq!(
            r,
            show(&hl(&[
                ("Accept-Encoding", "br"),
                ("X-Forwarded-For", "9.9.9.9"),
                ("X-Forwarded-Proto", "")
            ]))
        );
        // 192.168.2.7: accept-encoding set to gzip (line 7).
        let r = run(&Req::new("192.168.2.7", "/"), Phase::Request, &base);
        assert_eq!(r[1], ("accept-encoding".into(), "gzip".into()));
        // A Korean client (GeoIP continent AP): X-Forwarded-For removed (line 10).
        let r = run(&Req::new("1.1.1.1", "/"), Phase::Request, &base);
        assert!(!r.iter().any(|(n, _)| n == "X-Forwarded-For"));
        // POST from anywhere: the Host rule was refused, so Host is untouched.
        let mut post = Req::new("8.8.8.8", "/");
        post.method = "POST";
        let r = run(&post, Phase::Request, &[("Host", "www.example.com")]);
        assert_eq!(r[0], ("Host".into(), "www.example.com".into()));
        // Responses: /source/x for a 404 gets no-cache (line 25), for a 200 not.
        let src = Req::new("8.8.8.8", "/source/x");
        let r = run(&src, Phase::Response { status: 404 }, &[]);
        assert_eq!(r, show(&hl(&[("cache-control", "no-cache")])));
        let r = run(&src, Phase::Response { status: 200 }, &[]);
        assert!(r.is_empty());
        // 192.168.3.x, 302: append to Cache-Control (line 21).
        let r = run(
            &Req::new("192.168.3.9", "/"),
            Phase::Response { status: 302 },
            &[("Cache-Control", "max-age=1")],
        );
        assert_eq!(
            r,
            show(&hl(&[("Cache-Control", "max-age=1, no-cache, private")]))
        );
    }

    struct TestVars;
    impl Vars for TestVars {
        fn write(&self, var: SessionVar, out: &mut Vec<u8>) {
            let s: &[u8] = match var {
                SessionVar::Protocol => b"https",
                SessionVar::Port => b"8443",
                SessionVar::CacheHit => b"TCP_HIT",
                SessionVar::Hostname => b"edge-1",
                SessionVar::SessionId => b"42\r\nX-Evil: 1",
            };
            out.extend_from_slice(s);
        }
    }

    /// MOD-7: variables, parsed at load and rendered at apply.
    #[test]
    fn variables() {
        let mut req = Req::new("::ffff:10.9.8.7", "/v/a.mp4?t=1");
        req.headers = vec![
            ("User-Agent", "UA/1"),
            ("Accept", "a"),
            ("accept", "b"),
            ("X-Bad", "x\ry"),
        ];
        let cases: &[(&str, &str)] = &[
            ("#PROTOCOL", "https"),
            ("#PORT", "8443"),
            ("#CACHEHIT", "TCP_HIT"),
            ("#CLIENTIP", "10.9.8.7"),
            ("#HOSTNAME", "edge-1"),
            ("#URI", "/v/a.mp4?t=1"),
            ("#SESSIONID", "42  X-Evil: 1"), // CR/LF from a variable cannot split the line
            ("$REQ.User-Agent", "UA/1"),
            ("$req.user-agent!", "UA/1!"),
            ("$REQ.Accept", "a, b"),
            ("$REQ.[User-Agent, Accept]", "UA/1, a, b"),
            ("$REQ.[X-None, User-Agent]x", "UA/1x"),
            ("$REQ.X-None", ""),
            ("$REQ.X-Bad", "x y"),
            (
                "#PROTOCOL://#HOSTNAME:#PORT#URI",
                "https://edge-1:8443/v/a.mp4?t=1",
            ),
            ("#PORTAL #protocol #", "#PORTAL #protocol #"),
            ("#CLIENTIP_x", "#CLIENTIP_x"),
            ("a#URI", "a/v/a.mp4?t=1"),
            ("cost $5", "cost $5"),
            ("한글 #CACHEHIT", "한글 TCP_HIT"),
        ];
        for (value, want) in cases {
            let t = Template::parse(value).unwrap_or_else(|e| panic!("{value}: {e}"));
            let mut out = Vec::new();
            t.render(&req.ctx(None), &TestVars, &mut out);
            assert_eq!(String::from_utf8(out).unwrap(), *want, "{value:?}");
        }
        let info = SessionInfo {
            https: false,
            port: 80,
            cache_hit: "TCP_MISS",
            hostname: "h",
            session_id: 7,
        };
        let t = Template::parse("#PROTOCOL #PORT #CACHEHIT #HOSTNAME #SESSIONID").unwrap();
        let mut out = Vec::new();
        t.render(&req.ctx(None), &info, &mut out);
        assert_eq!(out, b"http 80 TCP_MISS h 7");
        // In a rule: `$REQ.[A, B]` keeps its comma inside the brackets.
        let p = parse("*, $RES[X-UA: $REQ.[User-Agent, Accept]], set").unwrap();
        let mut h = HeaderList::new();
        apply(
            &p.rules,
            false,
            Phase::Response { status: 200 },
            &req.ctx(None),
            &TestVars,
            &mut h,
        );
        assert_eq!(show(&h), show(&hl(&[("X-UA", "UA/1, a, b")])));
    }

    /// Zero rules: the list is not touched (no reallocation, no move).
    #[test]
    fn zero_rules_touch_nothing() {
        let req = Req::new("1.2.3.4", "/");
        let mut h = hl(&[("A", "1")]);
        let (ptr, cap) = (h.as_ptr(), h.capacity());
        let n = apply(
            &[],
            false,
            Phase::Response { status: 200 },
            &req.ctx(None),
            &NoVars,
            &mut h,
        );
        assert_eq!((n, h.as_ptr(), h.capacity()), (0, ptr, cap));
        let p = parse("/nomatch, $RES[A], unset").unwrap();
        let n = apply(
            &p.rules,
            false,
            Phase::Response { status: 200 },
            &req.ctx(None),
            &NoVars,
            &mut h,
        );
        assert_eq!((n, h.as_ptr(), h.len()), (0, ptr, 1));
    }

    /// Hand-built rules for forbidden headers are refused at apply time too.
    #[test]
    fn apply_refuses_forbidden_headers() {
        let mut p = parse("*, $REQ[X: 1], set").unwrap();
        p.rules[0].name = "Host".into();
        let req = Req::new("1.2.3.4", "/");
        let mut h = hl(&[("Host", "a")]);
        assert_eq!(
            apply(
                &p.rules,
                false,
                Phase::Request,
                &req.ctx(None),
                &NoVars,
                &mut h
            ),
            0
        );
        assert_eq!(show(&h), show(&hl(&[("Host", "a")])));
    }

    #[test]
    fn unset_with_value_warns_but_loads() {
        let p = parse("*, $RES[X: y], unset").unwrap();
        assert_eq!(p.rules.len(), 1);
        assert_eq!(p.warnings.len(), 1);
        assert!(p.warnings[0].reason.contains("ignored"));
    }

    /// Huge and deeply nested lines are reported or loaded, never a panic or a hang.
    #[test]
    fn pathological_lines() {
        let deep = format!("*, $RES[X: {}], set", "[".repeat(200_000));
        assert!(parse(&deep).is_err());
        let nested = format!(
            "*, $RES[X: {}{}], set",
            "[".repeat(50_000),
            "]".repeat(50_000)
        );
        assert_eq!(parse(&nested).unwrap().rules.len(), 1);
        let long_value = format!("*, $RES[X: {}], set", "v".repeat(1_000_000));
        assert_eq!(parse(&long_value).unwrap().rules.len(), 1);
        let many_terms = format!("{}/a, $RES[X], unset", "$METHOD[GET] & ".repeat(10_000));
        let p = parse(&many_terms).unwrap();
        assert_eq!(p.rules[0].cond.terms().len(), 10_001);
        let dollars = format!("{}, $RES[X], unset", "$".repeat(100_000));
        assert!(parse(&dollars).is_err());
        let vars = format!("*, $RES[X: {}], set", "#PORT$REQ.a".repeat(50_000));
        assert_eq!(parse(&vars).unwrap().rules.len(), 1);
        let many_lines = "*, $RES[X: 1], put\n".repeat(20_000);
        assert_eq!(parse(&many_lines).unwrap().rules.len(), 20_000);
        let mut h = HeaderList::new();
        let req = Req::new("1.2.3.4", "/");
        let p = parse(&many_lines).unwrap();
        let n = apply(
            &p.rules,
            false,
            Phase::Response { status: 200 },
            &req.ctx(None),
            &NoVars,
            &mut h,
        );
        assert_eq!((n, h.len()), (20_000, 20_000));
    }

    #[test]
    fn garbage_never_panics() {
        let alphabet: Vec<char> =
            "$!REQSIPHEADURL[]:,&/* 0123456789.-x#PROTOCOLURI setputappendunset2xx\r\t한\u{7f}"
                .chars()
                .collect();
        let geo = TestGeo;
        let mut req = Req::new("192.168.1.1", "/a");
        req.headers = vec![("A", "1"), ("x", "")];
        let mut garbage = crate::fuzz::Garbage::new(0x0dd_ba11_cafe_f00d);
        for _ in 0..30_000 {
            let s = garbage.string(&alphabet, 64);
            let seed = garbage.number();
            // Also try the garbage in a well-formed frame, to reach deeper.
            for text in [
                s.clone(),
                format!("*, $RES[{s}], set, 2xx"),
                format!("{s}, $REQ[X: {s}], append"),
            ] {
                if let Ok(p) = parse(&text) {
                    let mut h = hl(&[("X", "1"), ("a", "2")]);
                    for phase in [
                        Phase::Request,
                        Phase::Response {
                            status: (seed % 700) as u16,
                        },
                    ] {
                        apply(
                            &p.rules,
                            seed.is_multiple_of(2),
                            phase,
                            &req.ctx(Some(&geo)),
                            &TestVars,
                            &mut h,
                        );
                    }
                }
            }
        }
    }
}
