//! Replacing the binary without closing the listening sockets (SIGUSR2, as
//! nginx does): the running process starts the binary at its own path with the
//! same arguments, and the new process inherits the listening sockets (their
//! numbers in `CAIRN_UPGRADE`). The new process loads and checks its
//! configuration, says so over a pipe, then waits for the old process to be
//! gone before it opens the cache: two processes must never write the same
//! segments, and a hit's bytes are leased only within the process serving it.
//! Meanwhile the old one drains, and new connections wait in the shared listen
//! queues (shards accept on readiness, so the old takes none it will not
//! serve); the sockets never close, so none is refused while the queue has room.
//!
//! Everything in the new process that can fail on its configuration or its
//! host (addresses, the management port, the cache directory, GeoIP, the ring)
//! is checked before it takes over: after that, the old process is draining
//! and cannot come back, so what is left must not fail (a cache that cannot be
//! opened then is replaced by one in memory, loudly).
#![allow(unsafe_code)]

use std::io::{self, Read, Write};
use std::net::TcpListener;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::time::Duration;

const VAR: &str = "CAIRN_UPGRADE";

/// What the old process handed down.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Spec {
    /// The pipe's write end: one byte once the new process takes over.
    pub pipe: RawFd,
    pub parent: u32,
    /// The old process's drain deadline: how long the new one waits for it.
    pub drain_ms: Option<u64>,
    /// The management port's listening socket.
    pub manager: Option<RawFd>,
    /// Listening sockets per listen group, in shard order.
    pub groups: Vec<Vec<RawFd>>,
}

/// When the old process names no deadline (the default drain, 30 s).
const DEFAULT_DRAIN: Duration = Duration::from_secs(30);
/// Past the old process's own deadline (its drain plus 2 s of shutdown): it
/// is stuck, and the new one kills it rather than never serving.
const EXIT_SLACK: Duration = Duration::from_secs(10);

#[derive(Debug, thiserror::Error)]
pub enum UpgradeError {
    #[error("{VAR} is malformed ({0}): the old process and this binary disagree; not started")]
    Malformed(&'static str),
    #[error("the new binary could not be started: {0}")]
    Spawn(io::Error),
    #[error("the new binary exited before taking over ({0}); still serving")]
    Exited(String),
    #[error("the new binary did not take over within {0:?}; it was killed, still serving")]
    Timeout(Duration),
    #[error("the old process {0} did not exit even when killed; not serving beside it")]
    OldStuck(u32),
}

/// `pipe=5;parent=123;drain=30000;manager=6;groups=7,8|9,10`.
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
    let mut out = format!("pipe={};parent={}", s.pipe, s.parent);
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
    let mut pipe = None;
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
    for part in v.split(';') {
        let (k, val) = part.split_once('=').ok_or(bad("a field"))?;
        match k {
            "pipe" => pipe = Some(fd(val)?),
            "parent" => parent = Some(val.parse::<u32>().map_err(|_| bad("the parent"))?),
            "drain" => drain_ms = Some(val.parse::<u64>().map_err(|_| bad("the drain"))?),
            "manager" => manager = Some(fd(val)?),
            "groups" => {
                let mut out = Vec::new();
                for g in val.split('|') {
                    let fds = g.split(',').map(fd).collect::<Result<Vec<_>, _>>()?;
                    out.push(fds);
                }
                groups = Some(out);
            }
            _ => return Err(bad("an unknown field")),
        }
    }
    Ok(Spec {
        pipe: pipe.ok_or(bad("no pipe"))?,
        parent: parent.ok_or(bad("no parent"))?,
        drain_ms,
        manager,
        groups: groups.ok_or(bad("no groups"))?,
    })
}

/// What this process inherited, when it was started by an upgrade: taken
/// once (the variable is removed, so nothing below starts with it).
pub struct Inherited {
    pub handover: Handover,
    pub manager: Option<TcpListener>,
    pub groups: Vec<Vec<TcpListener>>,
}

/// The new process's side of the handover, once its sockets are taken.
pub struct Handover {
    pipe: OwnedFd,
    parent: u32,
    drain: Duration,
}

/// Takes what the old process handed down. `main` calls it first, before any
/// thread exists (the logger, the sample origin, shards and the manager come
/// later), so removing the variable races with nothing.
pub fn inherited() -> Result<Option<Inherited>, UpgradeError> {
    let Some(v) = std::env::var_os(VAR) else {
        return Ok(None);
    };
    std::env::remove_var(VAR);
    let spec = parse(&v.to_string_lossy())?;
    // Only the process that set it may have: a stray variable (exported in a
    // shell) must not make this process adopt arbitrary descriptors.
    // SAFETY: getppid has no preconditions and cannot fail.
    if unsafe { libc::getppid() } as u32 != spec.parent {
        return Err(UpgradeError::Malformed(
            "not started by the process it names",
        ));
    }
    // SAFETY: the old process cleared close-on-exec on exactly these
    // descriptors and named them in the variable, which is read once and
    // removed above, so nothing else in this process owns them.
    unsafe { adopt(&spec) }.map(Some)
}

/// Owns the descriptors `spec` names, once each, closed on exec again.
///
/// # Safety
/// Nothing else in this process may own or use the numbers `spec` names.
unsafe fn adopt(spec: &Spec) -> Result<Inherited, UpgradeError> {
    let mut seen = std::collections::HashSet::new();
    let all = spec
        .groups
        .iter()
        .flatten()
        .chain([&spec.pipe])
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
            return Err(UpgradeError::Malformed("a descriptor that is not open"));
        }
    }
    // SAFETY: the caller's contract; each is open and named once (checked),
    // so each is owned once.
    let own = |f: RawFd| unsafe { OwnedFd::from_raw_fd(f) };
    let groups = spec
        .groups
        .iter()
        .map(|g| g.iter().map(|&f| TcpListener::from(own(f))).collect())
        .collect();
    Ok(Inherited {
        handover: Handover {
            pipe: own(spec.pipe),
            parent: spec.parent,
            drain: spec
                .drain_ms
                .map(Duration::from_millis)
                .unwrap_or(DEFAULT_DRAIN),
        },
        manager: spec.manager.map(|f| TcpListener::from(own(f))),
        groups,
    })
}

impl Handover {
    pub fn parent(&self) -> u32 {
        self.parent
    }

    /// Tells the old process to drain: this one takes over. Nothing after
    /// this may fail on the configuration.
    pub fn take_over(self) -> TakenOver {
        let mut f = std::fs::File::from(self.pipe);
        let _ = f.write_all(b"R");
        TakenOver {
            parent: self.parent,
            drain: self.drain,
        }
    }
}

/// The old process is draining.
pub struct TakenOver {
    parent: u32,
    drain: Duration,
}

impl TakenOver {
    /// Waits until the old process is gone (this process is re-parented),
    /// logging every 10 s while it drains. One stuck past its own deadline is
    /// killed: waiting for ever would serve nobody.
    pub fn wait_for_exit(self) -> Result<(), UpgradeError> {
        let parent = self.parent;
        let step = Duration::from_millis(10);
        let bound = self.drain + EXIT_SLACK;
        let mut waited = Duration::ZERO;
        let mut killed = false;
        // SAFETY: getppid has no preconditions and cannot fail.
        while unsafe { libc::getppid() } as u32 == parent {
            std::thread::sleep(step);
            waited += step;
            if waited.as_millis().is_multiple_of(10_000) {
                log::warn!("upgrade: the old process {parent} is still draining ({waited:?})");
            }
            if waited >= bound && !killed {
                log::error!(
                    "upgrade: the old process {parent} did not exit within its drain deadline and {EXIT_SLACK:?}; killing it"
                );
                // SAFETY: kill has no memory preconditions. `parent` is still
                // this process's parent (just checked), so the pid is not reused.
                unsafe { libc::kill(parent as libc::pid_t, libc::SIGKILL) };
                killed = true;
            }
            if killed && waited >= bound + Duration::from_secs(5) {
                return Err(UpgradeError::OldStuck(parent));
            }
        }
        Ok(())
    }
}

/// The old side: the new process started, not yet taken over.
pub struct Pending {
    child: std::process::Child,
    ready: std::fs::File,
}

/// What the old process hands down.
pub struct Handing<'a> {
    pub groups: &'a [Vec<TcpListener>],
    pub manager: Option<&'a TcpListener>,
    pub drain: Duration,
}

/// Starts the binary at this process's path (a replaced file is the new
/// binary) with the same arguments, handing down the sockets.
pub fn spawn(h: &Handing) -> Result<Pending, UpgradeError> {
    use std::os::unix::process::CommandExt;
    let exe = std::fs::read_link("/proc/self/exe").map_err(UpgradeError::Spawn)?;
    // A replaced binary: the link names the old file's path with this suffix.
    let exe = match exe.to_str().and_then(|s| s.strip_suffix(" (deleted)")) {
        Some(p) => p.into(),
        None => exe,
    };
    let mut fds = [0 as RawFd; 2];
    // SAFETY: `fds` has room for the two descriptors pipe2 writes.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return Err(UpgradeError::Spawn(io::Error::last_os_error()));
    }
    // SAFETY: pipe2 succeeded, so both are fresh descriptors owned by nobody else.
    let (read, write) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
    let spec = Spec {
        pipe: write.as_raw_fd(),
        parent: std::process::id(),
        drain_ms: Some(h.drain.as_millis().min(u64::MAX as u128) as u64),
        manager: h.manager.map(AsRawFd::as_raw_fd),
        groups: h
            .groups
            .iter()
            .map(|g| g.iter().map(AsRawFd::as_raw_fd).collect())
            .collect(),
    };
    let mut keep: Vec<RawFd> = spec.groups.iter().flatten().copied().collect();
    keep.push(spec.pipe);
    keep.extend(spec.manager);
    let mut cmd = std::process::Command::new(&exe);
    cmd.args(std::env::args_os().skip(1))
        .env(VAR, render(&spec));
    // SAFETY: the closure runs in the forked child before exec and only calls
    // fcntl, which is async-signal-safe, on descriptors this process owns
    // (the listeners in `groups` and the manager's, alive for the call, and
    // the pipe's end).
    unsafe {
        cmd.pre_exec(move || {
            for &f in &keep {
                if libc::fcntl(f, libc::F_SETFD, 0) != 0 {
                    return Err(io::Error::last_os_error());
                }
            }
            Ok(())
        });
    }
    let child = cmd.spawn().map_err(UpgradeError::Spawn)?;
    drop(write); // the child's copy is the only writer left: EOF if it dies
    log::info!(
        "upgrade: started {} as pid {}; it takes over once its configuration loads",
        exe.display(),
        child.id()
    );
    Ok(Pending {
        child,
        ready: std::fs::File::from(read),
    })
}

impl Pending {
    /// The new process's pid once it has taken over, or why it did not
    /// (then it is gone, and this process goes on serving).
    pub fn wait(mut self, within: Duration) -> Result<u32, UpgradeError> {
        let mut pfd = libc::pollfd {
            fd: self.ready.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        let deadline = std::time::Instant::now() + within;
        let n = loop {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            let ms = left.as_millis().min(i32::MAX as u128) as i32;
            // SAFETY: one valid pollfd for the call's duration.
            let n = unsafe { libc::poll(&mut pfd, 1, ms) };
            if n >= 0 || io::Error::last_os_error().kind() != io::ErrorKind::Interrupted {
                break n;
            }
        };
        let mut b = [0u8; 1];
        if n == 1 && matches!(self.ready.read(&mut b), Ok(1)) && b[0] == b'R' {
            return Ok(self.child.id());
        }
        // Anything but "taken over": the child must not live on beside us.
        let _ = self.child.kill();
        let status = self
            .child
            .wait()
            .map(|s| s.to_string())
            .unwrap_or_else(|e| e.to_string());
        if n == 0 {
            return Err(UpgradeError::Timeout(within));
        }
        Err(UpgradeError::Exited(status))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_handed_down_spec_round_trips_and_refuses_garbage() {
        let s = Spec {
            pipe: 5,
            parent: 77,
            drain_ms: Some(1500),
            manager: Some(6),
            groups: vec![vec![7, 8], vec![9]],
        };
        assert_eq!(
            render(&s),
            "pipe=5;parent=77;drain=1500;manager=6;groups=7,8|9"
        );
        assert_eq!(parse(&render(&s)).unwrap(), s);
        // Both optional: no management port, the default deadline.
        let bare = Spec {
            drain_ms: None,
            manager: None,
            ..s
        };
        assert_eq!(render(&bare), "pipe=5;parent=77;groups=7,8|9");
        assert_eq!(parse(&render(&bare)).unwrap(), bare);
        for bad in [
            "",
            "pipe=5",
            "pipe=5;parent=1",
            "pipe=1;parent=1;groups=7",
            "pipe=5;parent=x;groups=7",
            "pipe=5;parent=1;groups=7,,8",
            "pipe=5;parent=1;groups=-3",
            "pipe=5;parent=1;groups=7;extra=1",
            "pipe=5;parent=1;drain=-1;groups=7",
            "pipe=5;parent=1;manager=2;groups=7",
        ] {
            assert!(parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn adopted_descriptors_are_owned_once_and_closed_on_exec_again() {
        use std::os::fd::IntoRawFd;
        let cloexec = |f: RawFd| {
            // SAFETY: F_GETFD on a number has no memory effects.
            let flags = unsafe { libc::fcntl(f, libc::F_GETFD) };
            assert!(flags >= 0, "{f} is open");
            flags & libc::FD_CLOEXEC != 0
        };
        let handed = |l: TcpListener| {
            let f = l.into_raw_fd();
            // SAFETY: `f` was just released by its listener; clearing the flag
            // is what the old process does before exec.
            unsafe { libc::fcntl(f, libc::F_SETFD, 0) };
            assert!(!cloexec(f));
            f
        };
        let a = handed(TcpListener::bind("127.0.0.1:0").unwrap());
        let m = handed(TcpListener::bind("127.0.0.1:0").unwrap());
        let p = handed(TcpListener::bind("127.0.0.1:0").unwrap());
        let spec = Spec {
            pipe: p,
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
        // Numbers that are not open are refused, not owned (far above any
        // this test process opens, so no other test's).
        let unopened = Spec {
            pipe: 999_998,
            manager: None,
            groups: vec![vec![999_999]],
            ..spec
        };
        // SAFETY: nothing owns descriptors that are not open.
        assert!(matches!(
            unsafe { adopt(&unopened) },
            Err(UpgradeError::Malformed(_))
        ));
    }
}
