//! The bundled sample origin: a small static file server that `cairn` with no
//! `--config` starts on 127.0.0.1:8081 in front of `examples/site/`, so a newcomer
//! sees the proxy work without any other software. Plain blocking threads: it is a
//! demo origin, not part of the data path.

pub mod path;

use crate::http1::{request, Limits};
use bytes::BytesMut;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Starts serving `root` on `addr` in background threads; returns the bound address.
pub fn start(addr: SocketAddr, root: PathBuf) -> std::io::Result<SocketAddr> {
    let listener = TcpListener::bind(addr)?;
    let local = listener.local_addr()?;
    std::thread::Builder::new()
        .name("sample-origin".into())
        .spawn(move || {
            for stream in listener.incoming().flatten() {
                let root = root.clone();
                let _ = std::thread::Builder::new()
                    .name("sample-origin-conn".into())
                    .spawn(move || serve(stream, &root));
            }
        })?;
    Ok(local)
}

fn serve(mut s: TcpStream, root: &Path) {
    let _ = s.set_nodelay(true);
    let _ = s.set_read_timeout(Some(Duration::from_secs(30)));
    let mut buf = BytesMut::with_capacity(8192);
    let limits = Limits::default();
    loop {
        let head = loop {
            match request::parse(&mut buf, &limits) {
                Ok(Some(h)) => break h,
                Ok(None) => {}
                Err(e) => {
                    let _ = respond(
                        &mut s,
                        e.status(),
                        "text/plain",
                        b"bad request\n",
                        true,
                        false,
                        None,
                    );
                    return;
                }
            }
            let mut tmp = [0u8; 8192];
            match s.read(&mut tmp) {
                Ok(0) | Err(_) => return,
                Ok(n) => buf.extend_from_slice(&tmp[..n]),
            }
        };
        if head.framing != request::Framing::None {
            let _ = respond(
                &mut s,
                405,
                "text/plain",
                b"read-only origin\n",
                true,
                false,
                None,
            );
            return;
        }
        let close = head.close || head.version == request::Version::Http10;
        let is_head = head.is_head();
        let ok = match head.method() {
            b"GET" | b"HEAD" => serve_file(&mut s, root, head.path(), close, is_head),
            _ => respond(
                &mut s,
                405,
                "text/plain",
                b"method not allowed\n",
                close,
                false,
                None,
            ),
        };
        if ok.is_err() || close {
            return;
        }
    }
}

fn serve_file(
    s: &mut TcpStream,
    root: &Path,
    url: &[u8],
    close: bool,
    is_head: bool,
) -> std::io::Result<()> {
    let Some(segs) = path::normalize(url) else {
        return respond(s, 400, "text/plain", b"bad path\n", close, is_head, None);
    };
    let mut p = root.to_path_buf();
    p.extend(&segs);
    if p.is_dir() {
        p.push("index.html");
    }
    match std::fs::read(&p) {
        Ok(body) => {
            let modified = std::fs::metadata(&p).and_then(|m| m.modified()).ok();
            respond(s, 200, content_type(&p), &body, close, is_head, modified)
        }
        Err(_) => respond(s, 404, "text/plain", b"not found\n", close, is_head, None),
    }
}

fn content_type(p: &Path) -> &'static str {
    match p.extension().and_then(|e| e.to_str()).unwrap_or("") {
        "html" | "htm" => "text/html; charset=utf-8",
        "css" => "text/css",
        "js" => "application/javascript",
        "json" => "application/json",
        "txt" => "text/plain; charset=utf-8",
        "svg" => "image/svg+xml",
        "png" => "image/png",
        "jpg" | "jpeg" => "image/jpeg",
        "gif" => "image/gif",
        _ => "application/octet-stream",
    }
}

fn respond(
    s: &mut TcpStream,
    status: u16,
    ctype: &str,
    body: &[u8],
    close: bool,
    is_head: bool,
    modified: Option<std::time::SystemTime>,
) -> std::io::Result<()> {
    let mut head = format!(
        "HTTP/1.1 {status} {}\r\nServer: cairn-sample-origin\r\nDate: {}\r\nContent-Type: {ctype}\r\nContent-Length: {}\r\n",
        crate::http1::headers::reason(status),
        crate::httpdate::format(std::time::SystemTime::now()),
        body.len()
    );
    if let Some(m) = modified {
        head.push_str(&format!(
            "Last-Modified: {}\r\n",
            crate::httpdate::format(m)
        ));
    }
    if close {
        head.push_str("Connection: close\r\n");
    }
    head.push_str("\r\n");
    s.write_all(head.as_bytes())?;
    if !is_head {
        s.write_all(body)?;
    }
    Ok(())
}
