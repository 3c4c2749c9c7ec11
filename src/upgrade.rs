//! Replacing the binary without closing the listening sockets (SIGUSR2, as
//! nginx does): the running process starts the binary at its own path with the
//! same arguments, and the new process inherits the listening sockets (their
//! numbers in `CAIRN_UPGRADE`). The new process loads and checks its
//! configuration, says so over a pipe, then waits for the old process to be
//! gone before it opens the cache: two processes must never write the same
//! segments, and a hit's bytes are leased only within the process serving it.
//! Meanwhile the old one drains, and new connections wait in the shared listen
//! queues (shards accept on readiness, so the old takes none it will not
//! serve). No `SYN` is refused.
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
    /// Listening sockets per listen group, in shard order.
    pub groups: Vec<Vec<RawFd>>,
}

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
}

/// `pipe=5;parent=123;groups=7,8|9,10`.
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
    format!(
        "pipe={};parent={};groups={}",
        s.pipe,
        s.parent,
        groups.join("|")
    )
}

pub fn parse(v: &str) -> Result<Spec, UpgradeError> {
    let bad = UpgradeError::Malformed;
    let mut pipe = None;
    let mut parent = None;
    let mut groups = None;
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
        groups: groups.ok_or(bad("no groups"))?,
    })
}

/// What this process inherited, when it was started by an upgrade: taken
/// once (the variable is removed, so nothing below starts with it).
pub struct Inherited {
    pub pipe: OwnedFd,
    pub parent: u32,
    pub groups: Vec<Vec<TcpListener>>,
}

pub fn inherited() -> Result<Option<Inherited>, UpgradeError> {
    let Some(v) = std::env::var_os(VAR) else {
        return Ok(None);
    };
    // Called from `main` before any thread is started (the logger, shards and
    // manager come later), so changing the environment races with nothing.
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
    let mut seen = std::collections::HashSet::new();
    let all = spec.groups.iter().flatten().chain([&spec.pipe]);
    if !all.into_iter().all(|f| seen.insert(*f)) {
        return Err(UpgradeError::Malformed("a descriptor named twice"));
    }
    // SAFETY: the old process cleared close-on-exec on exactly these
    // descriptors and named them in the variable, which is read once and
    // removed above; each is named once (checked), so each is owned once.
    let own = |f: RawFd| unsafe { OwnedFd::from_raw_fd(f) };
    let groups = spec
        .groups
        .iter()
        .map(|g| g.iter().map(|&f| TcpListener::from(own(f))).collect())
        .collect();
    Ok(Some(Inherited {
        pipe: own(spec.pipe),
        parent: spec.parent,
        groups,
    }))
}

impl Inherited {
    /// Tells the old process to drain: this one takes over.
    pub fn take_over(self) -> u32 {
        let mut f = std::fs::File::from(self.pipe);
        let _ = f.write_all(b"R");
        self.parent
    }
}

/// Waits until the old process is gone (this process is re-parented),
/// logging every 10 s while it still drains.
pub fn wait_for_exit(parent: u32) {
    let mut waited = Duration::ZERO;
    // SAFETY: getppid has no preconditions and cannot fail.
    while unsafe { libc::getppid() } as u32 == parent {
        std::thread::sleep(Duration::from_millis(10));
        waited += Duration::from_millis(10);
        if waited.as_millis().is_multiple_of(10_000) {
            log::warn!("upgrade: the old process {parent} is still draining ({waited:?})");
        }
    }
}

/// The old side: the new process started, not yet taken over.
pub struct Pending {
    child: std::process::Child,
    ready: std::fs::File,
}

/// Starts the binary at this process's path (a replaced file is the new
/// binary) with the same arguments, handing down `groups`.
pub fn spawn(groups: &[Vec<TcpListener>]) -> Result<Pending, UpgradeError> {
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
        groups: groups
            .iter()
            .map(|g| g.iter().map(AsRawFd::as_raw_fd).collect())
            .collect(),
    };
    let mut keep: Vec<RawFd> = spec.groups.iter().flatten().copied().collect();
    keep.push(spec.pipe);
    let mut cmd = std::process::Command::new(&exe);
    cmd.args(std::env::args_os().skip(1))
        .env(VAR, render(&spec));
    // SAFETY: the closure runs in the forked child before exec and only calls
    // fcntl, which is async-signal-safe, on descriptors this process owns
    // (the listeners in `groups`, alive for the call, and the pipe's end).
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
            groups: vec![vec![7, 8], vec![9]],
        };
        assert_eq!(render(&s), "pipe=5;parent=77;groups=7,8|9");
        assert_eq!(parse(&render(&s)).unwrap(), s);
        for bad in [
            "",
            "pipe=5",
            "pipe=5;parent=1",
            "pipe=1;parent=1;groups=7",
            "pipe=5;parent=x;groups=7",
            "pipe=5;parent=1;groups=7,,8",
            "pipe=5;parent=1;groups=-3",
            "pipe=5;parent=1;groups=7;extra=1",
        ] {
            assert!(parse(bad).is_err(), "{bad}");
        }
    }
}
