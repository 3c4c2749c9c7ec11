//! Running as a service: the systemd readiness protocol over a real datagram
//! socket of the test's own (`NOTIFY_SOCKET`), and the unit in dist/.

mod support;

use std::os::unix::net::UnixDatagram;
use std::process::{Command, Stdio};
use std::time::Duration;
use support::*;

fn recv(sock: &UnixDatagram) -> String {
    let mut buf = [0u8; 512];
    let n = sock
        .recv(&mut buf)
        .expect("a notification within the timeout");
    String::from_utf8_lossy(&buf[..n]).into_owned()
}

#[test]
fn readiness_reload_and_stop_are_notified() {
    let origin = Origin::start(|_| ok(b"x"));
    let dir = config_dir(&origin.addr.to_string(), "", "");
    let path = temp_dir("notify").join("notify.sock");
    let sock = UnixDatagram::bind(&path).unwrap();
    sock.set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    let mut child = Command::new(BIN)
        .args(["run", "--shards", "1", "--config"])
        .arg(&dir)
        .env("NOTIFY_SOCKET", &path)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let pid = child.id();
    let ready = recv(&sock);
    assert!(ready.contains("READY=1"), "{ready}");
    assert!(ready.contains(&format!("MAINPID={pid}")), "{ready}");
    // READY comes after the listeners serve: nothing is sent before.
    let kill = |sig: &str| {
        Command::new("kill")
            .args([&format!("-{sig}"), &pid.to_string()])
            .status()
            .unwrap()
    };
    kill("HUP");
    assert_eq!(recv(&sock), "RELOADING=1");
    assert_eq!(recv(&sock), "READY=1");
    kill("TERM");
    assert_eq!(recv(&sock), "STOPPING=1");
    let status = child.wait().unwrap();
    assert!(status.success(), "{status:?}");
}

#[test]
fn the_systemd_unit_verifies() {
    let shipped =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/dist/cairn.service"))
            .unwrap();
    // A binary upgrade's new process names itself the main pid: systemd must
    // take that from a process other than the main one.
    assert!(
        shipped.lines().any(|l| l.trim() == "NotifyAccess=all"),
        "{shipped}"
    );
    let Ok(out) = Command::new("systemd-analyze").arg("--version").output() else {
        eprintln!("systemd-analyze is not installed: the unit is not verified here");
        return;
    };
    assert!(out.status.success());
    // The unit names the installed binary; point it at the built one.
    let unit = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/dist/cairn.service"))
        .unwrap()
        .replace("/usr/local/bin/cairn", BIN);
    let dir = temp_dir("unit");
    let path = dir.join("cairn.service");
    std::fs::write(&path, unit).unwrap();
    let out = Command::new("systemd-analyze")
        .args(["verify", "--man=no"])
        .arg(&path)
        .output()
        .unwrap();
    let text =
        String::from_utf8_lossy(&out.stderr).into_owned() + &String::from_utf8_lossy(&out.stdout);
    // No complaint about the unit's lines (an unknown key, a bad value).
    let about_unit: Vec<&str> = text
        .lines()
        .filter(|l| l.contains("cairn.service"))
        .collect();
    assert!(out.status.success() && about_unit.is_empty(), "{text}");
}
