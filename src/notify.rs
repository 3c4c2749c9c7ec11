//! The systemd readiness protocol (`Type=notify`, sd_notify(3)) without
//! libsystemd: a datagram to `$NOTIFY_SOCKET`. Absent variable, nothing sent.

use std::io;

/// Sends `state` (`READY=1`, `RELOADING=1`, `STOPPING=1`, …) to the service
/// manager, if one asked for it. `@name` is a Linux abstract socket.
pub fn notify(state: &str) -> io::Result<()> {
    let Some(path) = std::env::var_os("NOTIFY_SOCKET") else {
        return Ok(());
    };
    let sock = std::os::unix::net::UnixDatagram::unbound()?;
    let path = path.to_string_lossy().into_owned();
    let addr = match path.strip_prefix('@') {
        Some(name) => {
            use std::os::linux::net::SocketAddrExt;
            std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes())?
        }
        None => std::os::unix::net::SocketAddr::from_pathname(&path)?,
    };
    sock.send_to_addr(state.as_bytes(), &addr).map(|_| ())
}

/// `READY=1` with the main pid, once every shard serves.
pub fn ready() {
    let msg = format!("READY=1\nMAINPID={}\nSTATUS=serving", std::process::id());
    if let Err(e) = notify(&msg) {
        log::warn!("could not tell the service manager we are ready: {e}");
    }
}
