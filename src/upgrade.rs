//! Replacing the binary without closing the listening sockets (SIGUSR2, as
//! nginx does): the running process starts the binary at its own path with the
//! same arguments, and the new process inherits the listening sockets (their
//! numbers in `CAIRN_UPGRADE`). The new process loads and checks its
//! configuration, says so over a socket pair, then waits for the old process
//! to be gone before it opens the cache: two processes must never write the
//! same segments, and a hit's bytes are leased only within the process serving
//! it. Meanwhile the old one drains, and new connections wait in the shared
//! listen queues (shards accept on readiness, so the old takes none it will
//! not serve); the sockets never close, so none is refused while the queue has
//! room.
//!
//! Everything in the new process that can fail on its configuration or its
//! host (addresses, the management port, the cache directory, GeoIP, the
//! rings) is checked before it takes over: after that, the old process is
//! draining and cannot come back, so what is left must not fail (a cache that
//! cannot be opened then is replaced by one in memory, loudly).
//!
//! The take-over is a two-way handshake: the new process says "R" and acts
//! (its `MAINPID=`) only once the old one answers "G", which it does only
//! within its deadline; a new process killed for being late has said nothing
//! to the service manager. The socket pair stays open while the old process
//! drains: its end of stream then means that the new process died.
#![allow(unsafe_code)]

use std::io::{self, Read, Write};
use std::net::TcpListener;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::net::UnixStream;
use std::time::{Duration, Instant};

const VAR: &str = "CAIRN_UPGRADE";

/// What the old process handed down.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Spec {
    /// The new process's end of the socket pair.
    pub chan: RawFd,
    pub parent: u32,
    /// The old process's drain deadline: how long the new one waits for it.
    pub drain_ms: Option<u64>,
    /// The management port's listening socket.
    pub manager: Option<RawFd>,
    /// Listening sockets per listen group, in shard order.
    pub groups: Vec<Vec<RawFd>>,
}

/// When the old process names no deadline (a build before it did): far
/// longer than the default drain (10 s).
const DEFAULT_DRAIN: Duration = Duration::from_secs(30);
/// The longest deadline taken from the variable.
const MAX_DRAIN_MS: u64 = 3_600_000;
/// Past the old process's own deadline (its drain plus 2 s of shutdown): it
/// is stuck, and the new one kills it rather than never serving.
const EXIT_SLACK: Duration = Duration::from_secs(10);
/// How long the new process waits for the old one's "G".
const CONFIRM: Duration = Duration::from_secs(10);

#[derive(Debug, thiserror::Error)]
pub enum UpgradeError {
    #[error("{VAR} is malformed ({0}): the old process and this binary disagree; not started")]
    Malformed(&'static str),
    #[error("{VAR} names process {named} as the one that started this, but that is {actual}: a stray variable; not started")]
    WrongParent { named: u32, actual: u32 },
    #[error("{VAR} names descriptor {fd}, which is not {what}; not started")]
    BadDescriptor { fd: RawFd, what: &'static str },
    #[error("the old process did not confirm the take-over ({0}); not started, it keeps serving")]
    NotConfirmed(String),
    #[error("the new binary could not be started: {0}")]
    Spawn(io::Error),
    #[error("process 1 cannot hand over: its exit would end the new process too (run under a service manager)")]
    Pid1,
    #[error("the new binary exited before taking over ({0}); still serving")]
    Exited(String),
    #[error("the new binary did not take over within {0:?}; it was killed, still serving")]
    Timeout(Duration),
    #[error("waiting for the new binary failed ({0}); it was killed, still serving")]
    Wait(io::Error),
    #[error("the old process {0} did not exit even when killed; not serving beside it")]
    OldStuck(u32),
}

/// `chan=5;parent=123;drain=10000;manager=6;groups=7,8|9,10`.
pub fn render(s: &Spec) -> String {
    let groups: Vec<String> = s
        .groups
        .iter()
        .map(|g| {
            g.iter()
                .map(|f| f.to_string())
                .collect::<Vec<_>>()
                .join(",")
        })
        .collect();
    let mut out = format!("chan={};parent={}", s.chan, s.parent);
    if let Some(d) = s.drain_ms {
        out += &format!(";drain={d}");
    }
    if let Some(m) = s.manager {
        out += &format!(";manager={m}");
    }
    out + &format!(";groups={}", groups.join("|"))
}

pub fn parse(v: &str) -> Result<Spec, UpgradeError> {
    let bad = UpgradeError::Malformed;
    let mut chan = None;
    let mut parent = None;
    let mut groups = None;
    let mut drain_ms = None;
    let mut manager = None;
    let fd = |t: &str| -> Result<RawFd, UpgradeError> {
        t.parse::<RawFd>()
            .ok()
            .filter(|&f| f > 2)
            .ok_or(bad("a file descriptor"))
    };
    fn once<T>(slot: &mut Option<T>, v: T) -> Result<(), UpgradeError> {
        match slot.replace(v) {
            None => Ok(()),
            Some(_) => Err(UpgradeError::Malformed("a field named twice")),
        }
    }
    for part in v.split(';') {
        let (k, val) = part.split_once('=').ok_or(bad("a field"))?;
        match k {
            "chan" => once(&mut chan, fd(val)?)?,
            "parent" => once(
                &mut parent,
                val.parse::<u32>().map_err(|_| bad("the parent"))?,
            )?,
            "drain" => once(
                &mut drain_ms,
                val.parse::<u64>()
                    .ok()
                    .filter(|&d| d <= MAX_DRAIN_MS)
                    .ok_or(bad("the drain"))?,
            )?,
            "manager" => once(&mut manager, fd(val)?)?,
            "groups" => {
                let mut out = Vec::new();
                for g in val.split('|') {
                    let fds = g.split(',').map(fd).collect::<Result<Vec<_>, _>>()?;
                    out.push(fds);
                }
                once(&mut groups, out)?;
            }
            _ => return Err(bad("an unknown field")),
        }
    }
    Ok(Spec {
        chan: chan.ok_or(bad("no chan"))?,
        parent: parent.ok_or(bad("no parent"))?,
        drain_ms,
        manager,
        groups: groups.ok_or(bad("no groups"))?,
    })
}

/// What this process inherited, when it was started by an upgrade.
pub struct Inherited {
    pub handover: Handover,
    pub manager: Option<TcpListener>,
    pub groups: Vec<Vec<TcpListener>>,
}

/// The new process's side of the handover, once its sockets are taken.
pub struct Handover {
    chan: UnixStream,
    parent: u32,
    /// The parent, as a pidfd taken while it was the parent (no pid reuse).
    pidfd: Option<OwnedFd>,
    drain: Duration,
}

fn getppid() -> u32 {
    // SAFETY: getppid has no preconditions and cannot fail.
    unsafe { libc::getppid() as u32 }
}

/// Takes what the old process handed down: the variable is removed, the
/// descriptors it names are owned and closed on exec again.
///
/// # Safety
/// Called first in `main`: before any other thread exists (it changes the
/// environment) and before any descriptor is opened or closed, so that the
/// numbers the variable names are the ones open at exec, owned by nobody.
pub unsafe fn inherited() -> Result<Option<Inherited>, UpgradeError> {
    let Some(v) = std::env::var_os(VAR) else {
        return Ok(None);
    };
    // No other thread exists (the contract), so this races with nothing.
    std::env::remove_var(VAR);
    let spec = parse(&v.to_string_lossy())?;
    // Only the process that set it may have: a stray variable (exported in a
    // shell) must not make this process adopt arbitrary descriptors.
    if getppid() != spec.parent {
        return Err(UpgradeError::WrongParent {
            named: spec.parent,
            actual: getppid(),
        });
    }
    // SAFETY: the contract: the named numbers are owned by nobody here.
    let mut inh = unsafe { adopt(&spec) }?;
    // A pidfd of the parent, confirmed as the parent after it was taken.
    // SAFETY: pidfd_open takes a pid and flags and returns a new descriptor.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, spec.parent as libc::pid_t, 0) };
    if fd >= 0 {
        // SAFETY: a fresh descriptor the call returned, owned by nobody else.
        let fd = unsafe { OwnedFd::from_raw_fd(fd as RawFd) };
        if getppid() == spec.parent {
            inh.handover.pidfd = Some(fd);
        }
    }
    Ok(Some(inh))
}

/// Owns the descriptors `spec` names, once each, closed on exec again, each
/// checked for what it must be.
///
/// # Safety
/// Nothing else in this process may own or use the numbers `spec` names.
unsafe fn adopt(spec: &Spec) -> Result<Inherited, UpgradeError> {
    let mut seen = std::collections::HashSet::new();
    let all = spec
        .groups
        .iter()
        .flatten()
        .chain([&spec.chan])
        .chain(spec.manager.as_ref());
    if !all.into_iter().all(|f| seen.insert(*f)) {
        return Err(UpgradeError::Malformed("a descriptor named twice"));
    }
    // Close-on-exec again (the old process cleared it to hand them down): a
    // later upgrade or any child must inherit only what it is handed. This
    // also proves each is open before it is owned.
    for &f in &seen {
        // SAFETY: fcntl on a number is harmless; an unopened one fails (EBADF).
        if unsafe { libc::fcntl(f, libc::F_SETFD, libc::FD_CLOEXEC) } != 0 {
            return Err(UpgradeError::BadDescriptor {
                fd: f,
                what: "open",
            });
        }
    }
    // SAFETY: the caller's contract; each is open and named once (checked),
    // so each is owned once.
    let own = |f: RawFd| unsafe { OwnedFd::from_raw_fd(f) };
    let listener = |f: RawFd| -> Result<TcpListener, UpgradeError> {
        let l = TcpListener::from(own(f));
        let s = socket2::SockRef::from(&l);
        match s.is_listener() {
            Ok(true) if s.r#type().ok() == Some(socket2::Type::STREAM) => Ok(l),
            _ => Err(UpgradeError::BadDescriptor {
                fd: f,
                what: "a listening TCP socket",
            }),
        }
    };
    // Owned before any check can fail, so every one is closed on an error.
    let chan = UnixStream::from(own(spec.chan));
    let manager = spec.manager.map(listener).transpose();
    let groups = spec
        .groups
        .iter()
        .map(|g| g.iter().map(|&f| listener(f)).collect())
        .collect::<Result<Vec<Vec<_>>, _>>();
    let (manager, groups) = (manager?, groups?);
    let s = socket2::SockRef::from(&chan);
    if s.domain().ok() != Some(socket2::Domain::UNIX)
        || s.r#type().ok() != Some(socket2::Type::STREAM)
    {
        return Err(UpgradeError::BadDescriptor {
            fd: spec.chan,
            what: "a Unix stream socket",
        });
    }
    Ok(Inherited {
        handover: Handover {
            chan,
            parent: spec.parent,
            pidfd: None,
            drain: spec
                .drain_ms
                .map(Duration::from_millis)
                .unwrap_or(DEFAULT_DRAIN),
        },
        manager,
        groups,
    })
}

impl Handover {
    pub fn parent(&self) -> u32 {
        self.parent
    }

    /// Tells the old process to drain and waits for its "G": only then has
    /// this one taken over. Nothing after this may fail on the configuration.
    pub fn take_over(mut self) -> Result<TakenOver, UpgradeError> {
        let refused = |e: String| UpgradeError::NotConfirmed(e);
        self.chan
            .write_all(b"R")
            .map_err(|e| refused(e.to_string()))?;
        self.chan
            .set_read_timeout(Some(CONFIRM))
            .map_err(|e| refused(e.to_string()))?;
        let mut b = [0u8; 1];
        match self.chan.read(&mut b) {
            Ok(1) if b[0] == b'G' => Ok(TakenOver { h: self }),
            Ok(_) => Err(refused("it answered something else, or closed".into())),
            Err(e) => Err(refused(e.to_string())),
        }
    }
}

/// The old process is draining.
pub struct TakenOver {
    h: Handover,
}

impl TakenOver {
    /// Waits until the old process is gone, logging every 10 s while it
    /// drains. One stuck past its own deadline is killed: waiting for ever
    /// would serve nobody.
    pub fn wait_for_exit(self) -> Result<(), UpgradeError> {
        let h = &self.h;
        let parent = h.parent;
        let started = Instant::now();
        let bound = h.drain + EXIT_SLACK;
        let mut next_log = Duration::from_secs(10);
        let mut killed = false;
        while !gone(h) {
            let waited = started.elapsed();
            if waited >= next_log {
                log::warn!("upgrade: the old process {parent} is still draining ({waited:?})");
                next_log += Duration::from_secs(10);
            }
            if waited >= bound && !killed {
                log::error!(
                    "upgrade: the old process {parent} did not exit within its drain deadline and {EXIT_SLACK:?}; killing it"
                );
                kill(h);
                killed = true;
            }
            if killed && waited >= bound + Duration::from_secs(5) {
                return Err(UpgradeError::OldStuck(parent));
            }
        }
        Ok(())
    }
}

/// Whether the old process has exited, after waiting up to 50 ms for it.
fn gone(h: &Handover) -> bool {
    match &h.pidfd {
        Some(fd) => {
            let mut pfd = libc::pollfd {
                fd: fd.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            };
            // SAFETY: one valid pollfd for the call; a pidfd is readable once
            // its process has exited.
            let n = unsafe { libc::poll(&mut pfd, 1, 50) };
            n == 1
        }
        None => {
            std::thread::sleep(Duration::from_millis(10));
            // Re-parented at its exit.
            getppid() != h.parent
        }
    }
}

fn kill(h: &Handover) {
    match &h.pidfd {
        // SAFETY: a signal through a pidfd reaches exactly the process it
        // was opened for, or nothing once that one is gone.
        Some(fd) => unsafe {
            libc::syscall(
                libc::SYS_pidfd_send_signal,
                fd.as_raw_fd(),
                libc::SIGKILL,
                std::ptr::null::<libc::siginfo_t>(),
                0,
            );
        },
        None => {
            // No pidfd (a kernel before 5.3): still the parent, so the pid is
            // not reused yet (a parent's exit re-parents before its pid is
            // freed); a window of one syscall remains.
            if getppid() == h.parent {
                // SAFETY: kill has no memory preconditions.
                unsafe { libc::kill(h.parent as libc::pid_t, libc::SIGKILL) };
            }
        }
    }
}

/// The old side: the new process started, not yet taken over.
pub struct Pending {
    child: std::process::Child,
    chan: UnixStream,
}

/// The old side after the handover: the new process drives.
pub struct Handed {
    pub pid: u32,
    chan: UnixStream,
}

impl Handed {
    /// Whether the new process has died (its end of the pair closed) while
    /// this one drains: then nothing will serve after this process.
    pub fn successor_died(&self) -> bool {
        let mut pfd = libc::pollfd {
            fd: self.chan.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one valid pollfd for the call; no wait.
        let n = unsafe { libc::poll(&mut pfd, 1, 0) };
        n == 1 && pfd.revents & (libc::POLLIN | libc::POLLHUP | libc::POLLERR) != 0
    }
}

/// What the old process hands down.
pub struct Handing<'a> {
    pub groups: &'a [Vec<TcpListener>],
    pub manager: Option<&'a TcpListener>,
    pub drain: Duration,
}

/// The path `/proc/self/exe` names, less the " (deleted)" of a replaced
/// file: the new binary now has that path.
fn exe_path(link: std::path::PathBuf) -> std::path::PathBuf {
    use std::os::unix::ffi::OsStrExt;
    let b = link.as_os_str().as_bytes();
    match b.strip_suffix(b" (deleted)") {
        Some(p) => std::ffi::OsStr::from_bytes(p).into(),
        None => link,
    }
}

/// Starts the binary at this process's path (a replaced file is the new
/// binary) with the same arguments, handing down the sockets.
pub fn spawn(h: &Handing) -> Result<Pending, UpgradeError> {
    use std::os::unix::process::CommandExt;
    if std::process::id() == 1 {
        return Err(UpgradeError::Pid1);
    }
    let exe = exe_path(std::fs::read_link("/proc/self/exe").map_err(UpgradeError::Spawn)?);
    // Close-on-exec on both ends (std sets SOCK_CLOEXEC); cleared below on
    // the child's only.
    let (ours, theirs) = UnixStream::pair().map_err(UpgradeError::Spawn)?;
    let spec = Spec {
        chan: theirs.as_raw_fd(),
        parent: std::process::id(),
        drain_ms: Some(h.drain.as_millis().min(u128::from(MAX_DRAIN_MS)) as u64),
        manager: h.manager.map(AsRawFd::as_raw_fd),
        groups: h
            .groups
            .iter()
            .map(|g| g.iter().map(AsRawFd::as_raw_fd).collect())
            .collect(),
    };
    let mut keep: Vec<RawFd> = spec.groups.iter().flatten().copied().collect();
    keep.push(spec.chan);
    keep.extend(spec.manager);
    let mut cmd = std::process::Command::new(&exe);
    cmd.args(std::env::args_os().skip(1))
        .env(VAR, render(&spec));
    // SAFETY: the closure runs in the forked child before exec and makes
    // only raw syscalls (close_range, fcntl), which are async-signal-safe,
    // on descriptors this process owns (the listeners in `groups` and the
    // manager's, alive for the call, and the pair's end).
    unsafe {
        cmd.pre_exec(move || {
            // Every descriptor closed on exec (one opened without the flag
            // must not leak into the new process), then the handed ones
            // kept. Kernels before 5.11 lack it: what std opens has the flag.
            libc::syscall(
                libc::SYS_close_range,
                3u32,
                u32::MAX,
                libc::CLOSE_RANGE_CLOEXEC,
            );
            for &f in &keep {
                if libc::fcntl(f, libc::F_SETFD, 0) != 0 {
                    return Err(io::Error::last_os_error());
                }
            }
            Ok(())
        });
    }
    let child = cmd.spawn().map_err(UpgradeError::Spawn)?;
    drop(theirs); // the child's copy is the only one left: end of stream if it dies
    log::info!(
        "upgrade: started {} as pid {}; it takes over once its configuration loads",
        exe.display(),
        child.id()
    );
    Ok(Pending { child, chan: ours })
}

impl Pending {
    /// The new process, once it has taken over (confirmed with "G"), or why
    /// it did not (then it is gone, and this process goes on serving).
    pub fn wait(mut self, within: Duration) -> Result<Handed, UpgradeError> {
        let mut pfd = libc::pollfd {
            fd: self.chan.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        let deadline = Instant::now() + within;
        let n = loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let ms = left.as_millis().min(i32::MAX as u128) as i32;
            // SAFETY: one valid pollfd for the call's duration.
            let n = unsafe { libc::poll(&mut pfd, 1, ms) };
            if n >= 0 || io::Error::last_os_error().kind() != io::ErrorKind::Interrupted {
                break n;
            }
        };
        let poll_error = (n < 0).then(io::Error::last_os_error);
        let mut b = [0u8; 1];
        if n == 1
            && matches!(self.chan.read(&mut b), Ok(1))
            && b[0] == b'R'
            && self.chan.write_all(b"G").is_ok()
        {
            return Ok(Handed {
                pid: self.child.id(),
                chan: self.chan,
            });
        }
        // Anything but "taken over": the child must not live on beside us.
        // Unconfirmed, it has told the service manager nothing. One that
        // closed its end is exiting (saying why on stderr): a moment for it.
        if n == 1 {
            let until = Instant::now() + Duration::from_secs(2);
            while matches!(self.child.try_wait(), Ok(None)) && Instant::now() < until {
                std::thread::sleep(Duration::from_millis(10));
            }
        }
        let _ = self.child.kill();
        let status = self
            .child
            .wait()
            .map(|s| s.to_string())
            .unwrap_or_else(|e| e.to_string());
        match (n, poll_error) {
            (_, Some(e)) => Err(UpgradeError::Wait(e)),
            (0, _) => Err(UpgradeError::Timeout(within)),
            _ => Err(UpgradeError::Exited(status)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_handed_down_spec_round_trips_and_refuses_garbage() {
        let s = Spec {
            chan: 5,
            parent: 77,
            drain_ms: Some(1500),
            manager: Some(6),
            groups: vec![vec![7, 8], vec![9]],
        };
        assert_eq!(
            render(&s),
            "chan=5;parent=77;drain=1500;manager=6;groups=7,8|9"
        );
        assert_eq!(parse(&render(&s)).unwrap(), s);
        // Both optional: no management port, the default deadline.
        let bare = Spec {
            drain_ms: None,
            manager: None,
            ..s
        };
        assert_eq!(render(&bare), "chan=5;parent=77;groups=7,8|9");
        assert_eq!(parse(&render(&bare)).unwrap(), bare);
        for bad in [
            "",
            "chan=5",
            "chan=5;parent=1",
            "chan=1;parent=1;groups=7",
            "chan=5;parent=x;groups=7",
            "chan=5;parent=1;groups=7,,8",
            "chan=5;parent=1;groups=-3",
            "chan=5;parent=1;groups=7;extra=1",
            "chan=5;parent=1;drain=-1;groups=7",
            "chan=5;parent=1;drain=3600001;groups=7",
            "chan=5;parent=1;manager=2;groups=7",
            "chan=5;parent=1;parent=2;groups=7",
            "chan=5;chan=6;parent=1;groups=7",
            "chan=5;parent=1;groups=7;groups=8",
        ] {
            assert!(parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn a_replaced_binary_is_found_at_its_path() {
        use std::path::PathBuf;
        assert_eq!(
            exe_path(PathBuf::from("/usr/local/bin/cairn (deleted)")),
            PathBuf::from("/usr/local/bin/cairn")
        );
        assert_eq!(exe_path(PathBuf::from("/opt/c")), PathBuf::from("/opt/c"));
        // Not UTF-8: still stripped.
        use std::os::unix::ffi::OsStrExt;
        let odd = std::ffi::OsStr::from_bytes(b"/opt/\xff (deleted)");
        assert_eq!(
            exe_path(PathBuf::from(odd)).as_os_str().as_bytes(),
            b"/opt/\xff"
        );
    }

    #[test]
    fn adopted_descriptors_are_owned_once_checked_and_closed_on_exec_again() {
        use std::os::fd::IntoRawFd;
        let cloexec = |f: RawFd| {
            // SAFETY: F_GETFD on a number has no memory effects.
            let flags = unsafe { libc::fcntl(f, libc::F_GETFD) };
            assert!(flags >= 0, "{f} is open");
            flags & libc::FD_CLOEXEC != 0
        };
        let handed = |f: OwnedFd| {
            let f = f.into_raw_fd();
            // SAFETY: `f` was just released by its owner; clearing the flag
            // is what the old process does before exec.
            unsafe { libc::fcntl(f, libc::F_SETFD, 0) };
            assert!(!cloexec(f));
            f
        };
        let listener = || OwnedFd::from(TcpListener::bind("127.0.0.1:0").unwrap());
        let a = handed(listener());
        let m = handed(listener());
        let (chan, _peer) = UnixStream::pair().unwrap();
        let p = handed(chan.into());
        let spec = Spec {
            chan: p,
            parent: 1,
            drain_ms: Some(1234),
            manager: Some(m),
            groups: vec![vec![a]],
        };
        // SAFETY: the three numbers were released above and are used only here.
        let got = unsafe { adopt(&spec) }.unwrap();
        assert!(cloexec(a) && cloexec(m) && cloexec(p));
        assert_eq!(got.handover.drain, Duration::from_millis(1234));
        assert!(got.manager.unwrap().local_addr().is_ok());
        assert_eq!(got.groups[0].len(), 1);
        // Named twice: refused before anything is owned.
        let twice = Spec {
            groups: vec![vec![a, a]],
            ..spec.clone()
        };
        // SAFETY: refused before it owns anything (nothing is closed).
        assert!(matches!(
            unsafe { adopt(&twice) },
            Err(UpgradeError::Malformed(_))
        ));
        drop(got.groups);
        drop(got.handover);
        // Not a listener where one must be (a connected pair's end): refused,
        // and closed with the rest.
        let (x, _y) = UnixStream::pair().unwrap();
        let (c2, _c2peer) = UnixStream::pair().unwrap();
        let wrong = Spec {
            chan: handed(c2.into()),
            manager: None,
            groups: vec![vec![handed(x.into())]],
            ..spec.clone()
        };
        // SAFETY: both numbers were released above and are used only here.
        assert!(matches!(
            unsafe { adopt(&wrong) },
            Err(UpgradeError::BadDescriptor { .. })
        ));
        // Numbers that are not open are refused, not owned (far above any
        // this test process opens, so no other test's).
        let unopened = Spec {
            chan: 999_998,
            manager: None,
            groups: vec![vec![999_999]],
            ..spec
        };
        // SAFETY: nothing owns descriptors that are not open.
        assert!(matches!(
            unsafe { adopt(&unopened) },
            Err(UpgradeError::BadDescriptor { .. })
        ));
    }
}
