//! Signals, the classic way: the main thread blocks the ones we handle before any
//! shard starts (threads inherit the mask), then waits for them with `sigwait`.
//! No handler runs in signal context, so nothing here must be async-signal-safe.
#![allow(unsafe_code)]

use std::io;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Signal {
    /// SIGTERM or SIGINT: drain and exit.
    Stop,
    /// SIGHUP: reload (reported; reload is not implemented yet).
    Hup,
    /// SIGUSR1: log the per-shard counters.
    Stats,
    /// SIGUSR2: start the binary again and hand it the listening sockets.
    Upgrade,
}

fn set() -> libc::sigset_t {
    // SAFETY: sigemptyset fully initialises the set it is given; zeroed memory is a
    // valid starting value for the plain-integer sigset_t on Linux.
    unsafe {
        let mut s: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut s);
        libc::sigaddset(&mut s, libc::SIGTERM);
        libc::sigaddset(&mut s, libc::SIGINT);
        libc::sigaddset(&mut s, libc::SIGHUP);
        libc::sigaddset(&mut s, libc::SIGUSR1);
        libc::sigaddset(&mut s, libc::SIGUSR2);
        s
    }
}

/// Blocks the handled signals in the calling thread and every thread it spawns later.
pub fn block() -> io::Result<()> {
    let s = set();
    // SAFETY: `s` is an initialised sigset_t; a null old-set pointer is allowed.
    let rc = unsafe { libc::pthread_sigmask(libc::SIG_BLOCK, &s, std::ptr::null_mut()) };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::from_raw_os_error(rc))
    }
}

/// Waits for the next handled signal (they must be blocked with [`block`] first).
pub fn wait() -> io::Result<Signal> {
    let s = set();
    let mut sig: libc::c_int = 0;
    // SAFETY: both pointers are valid for the duration of the call.
    let rc = unsafe { libc::sigwait(&s, &mut sig) };
    if rc != 0 {
        return Err(io::Error::from_raw_os_error(rc));
    }
    Ok(match sig {
        libc::SIGHUP => Signal::Hup,
        libc::SIGUSR1 => Signal::Stats,
        libc::SIGUSR2 => Signal::Upgrade,
        _ => Signal::Stop,
    })
}
