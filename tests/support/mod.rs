//! Test harness: the real `cairn` binary, a test-owned origin on an ephemeral
//! loopback port, and a raw HTTP/1.1 client. No mocks: real sockets throughout.
#![allow(dead_code)]

pub mod mmdb;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant};

/// The first value of header `name` (case-insensitive).
pub fn header_in<'a>(headers: &'a [(String, String)], name: &str) -> Option<&'a str> {
    headers
        .iter()
        .find(|(n, _)| n.eq_ignore_ascii_case(name))
        .map(|(_, v)| v.as_str())
}

/// Runs `cairn check --config dir`.
pub fn check(dir: &std::path::Path) -> std::process::Output {
    Command::new(BIN)
        .args(["check", "--config"])
        .arg(dir)
        .output()
        .unwrap()
}

/// A request as the origin saw it.
#[derive(Debug, Clone)]
pub struct SeenRequest {
    pub method: String,
    pub path: String,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl SeenRequest {
    pub fn header(&self, name: &str) -> Option<&str> {
        header_in(&self.headers, name)
    }
}

/// What the origin does with a request: raw bytes to write (then keep the connection
/// open for the next request), optionally after a delay, or close after writing.
pub enum Reply {
    Bytes(Vec<u8>),
    /// Write these bytes, then close the connection.
    ThenClose(Vec<u8>),
    /// Wait, then write.
    After(Duration, Vec<u8>),
    /// Say nothing; hold the connection for this long.
    Silent(Duration),
}

pub fn ok(body: &[u8]) -> Reply {
    let mut v = format!(
        "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: {}\r\n\r\n",
        body.len()
    )
    .into_bytes();
    v.extend_from_slice(body);
    Reply::Bytes(v)
}

type Handler = dyn Fn(&SeenRequest) -> Reply + Send + Sync;

/// An origin that reads one request per connection, then lets `script` write
/// whatever it wants, at whatever pace (for timing tests `Reply` cannot express).
pub fn scripted_origin(script: fn(&mut TcpStream)) -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    std::thread::spawn(move || {
        for mut s in l.incoming().flatten() {
            std::thread::spawn(move || {
                let mut buf = [0u8; 4096];
                let _ = s.read(&mut buf);
                script(&mut s);
            });
        }
    });
    addr
}

/// A real HTTP/1.1 origin server on 127.0.0.1:0, driven by a closure.
pub struct Origin {
    pub addr: SocketAddr,
    pub requests: Arc<AtomicUsize>,
    pub connections: Arc<AtomicUsize>,
    pub seen: Arc<Mutex<Vec<SeenRequest>>>,
}

impl Origin {
    pub fn start(handler: impl Fn(&SeenRequest) -> Reply + Send + Sync + 'static) -> Origin {
        Origin::start_over(Some, handler)
    }

    /// An HTTPS origin: each connection is a rustls server session under
    /// `config`; the SNI names clients sent are kept in `sni`.
    pub fn start_tls(
        config: Arc<rustls::ServerConfig>,
        sni: Arc<Mutex<Vec<Option<String>>>>,
        handler: impl Fn(&SeenRequest) -> Reply + Send + Sync + 'static,
    ) -> Origin {
        Origin::start_over(
            move |tcp| {
                let conn = rustls::ServerConnection::new(config.clone()).ok()?;
                let mut s = rustls::StreamOwned::new(conn, tcp);
                while s.conn.is_handshaking() {
                    s.conn.complete_io(&mut s.sock).ok()?;
                }
                sni.lock()
                    .unwrap()
                    .push(s.conn.server_name().map(str::to_owned));
                Some(s)
            },
            handler,
        )
    }

    /// An origin whose connections are `wrap`ped (a TLS session) before the
    /// HTTP exchange; `None` drops the connection.
    pub fn start_over<S: Read + Write + 'static>(
        wrap: impl Fn(TcpStream) -> Option<S> + Send + Sync + 'static,
        handler: impl Fn(&SeenRequest) -> Reply + Send + Sync + 'static,
    ) -> Origin {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let requests = Arc::new(AtomicUsize::new(0));
        let connections = Arc::new(AtomicUsize::new(0));
        let seen = Arc::new(Mutex::new(Vec::new()));
        let handler: Arc<Handler> = Arc::new(handler);
        let (r, c, s) = (requests.clone(), connections.clone(), seen.clone());
        let wrap = Arc::new(wrap);
        std::thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                c.fetch_add(1, Ordering::SeqCst);
                let (h, r, s, w) = (handler.clone(), r.clone(), s.clone(), wrap.clone());
                std::thread::spawn(move || {
                    if let Some(stream) = w(stream) {
                        origin_conn(stream, &*h, &r, &s)
                    }
                });
            }
        });
        Origin {
            addr,
            requests,
            connections,
            seen,
        }
    }

    pub fn count(&self) -> usize {
        self.requests.load(Ordering::SeqCst)
    }
    pub fn last(&self) -> SeenRequest {
        self.seen
            .lock()
            .unwrap()
            .last()
            .cloned()
            .expect("origin saw no request")
    }
}

fn origin_conn(
    mut s: impl Read + Write,
    handler: &Handler,
    count: &AtomicUsize,
    seen: &Mutex<Vec<SeenRequest>>,
) {
    let mut buf = Vec::new();
    loop {
        let req = loop {
            if let Some((req, used)) = parse_request(&buf) {
                buf.drain(..used);
                break req;
            }
            let mut tmp = [0u8; 65536];
            match s.read(&mut tmp) {
                Ok(0) | Err(_) => return,
                Ok(n) => buf.extend_from_slice(&tmp[..n]),
            }
        };
        count.fetch_add(1, Ordering::SeqCst);
        seen.lock().unwrap().push(req.clone());
        match handler(&req) {
            Reply::Bytes(b) => {
                if s.write_all(&b).is_err() {
                    return;
                }
            }
            Reply::ThenClose(b) => {
                let _ = s.write_all(&b);
                return;
            }
            Reply::After(d, b) => {
                std::thread::sleep(d);
                if s.write_all(&b).is_err() {
                    return;
                }
            }
            Reply::Silent(d) => {
                std::thread::sleep(d);
                return;
            }
        }
    }
}

/// Parses one request with a Content-Length body (the proxy always sends lengths).
fn parse_request(buf: &[u8]) -> Option<(SeenRequest, usize)> {
    let mut headers = [httparse::EMPTY_HEADER; 128];
    let mut req = httparse::Request::new(&mut headers);
    let n = match req.parse(buf).ok()? {
        httparse::Status::Complete(n) => n,
        httparse::Status::Partial => return None,
    };
    let headers: Vec<(String, String)> = req
        .headers
        .iter()
        .map(|h| {
            (
                h.name.to_string(),
                String::from_utf8_lossy(h.value).into_owned(),
            )
        })
        .collect();
    let len: usize = headers
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case("content-length"))
        .map(|(_, v)| v.trim().parse().unwrap())
        .unwrap_or(0);
    if buf.len() < n + len {
        return None;
    }
    Some((
        SeenRequest {
            method: req.method.unwrap().to_string(),
            path: req.path.unwrap().to_string(),
            headers,
            body: buf[n..n + len].to_vec(),
        },
        n + len,
    ))
}

/// A running cairn process; killed when dropped.
pub struct Cairn {
    pub child: Child,
    pub addr: SocketAddr,
    /// The `<Https>` listeners, in the order cairn printed them.
    pub https: Vec<SocketAddr>,
    pub stderr: Arc<Mutex<String>>,
    pub dir: PathBuf,
}

pub fn temp_dir(tag: &str) -> PathBuf {
    static N: AtomicUsize = AtomicUsize::new(0);
    let d = std::env::temp_dir().join(format!(
        "cairn-test-{}-{}-{tag}",
        std::process::id(),
        N.fetch_add(1, Ordering::SeqCst)
    ));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

pub const BIN: &str = env!("CARGO_BIN_EXE_cairn");

/// `<Cache>` for tests: a small disk cache inside the test's config directory.
pub const TEST_CACHE: &str =
    r#"<Cache><Storage SegmentSize="16MB" Quota="64MB"><Disk>cache</Disk></Storage></Cache>"#;

/// A `server.xml` with the test cache, these `<Options>` and `<OriginOptions>`.
pub fn server_xml(options: &str, origin_options: &str) -> String {
    format!("<Server>{TEST_CACHE}<VHostDefault><Options>{options}</Options><OriginOptions>{origin_options}</OriginOptions></VHostDefault></Server>")
}

/// A config directory with one vhost `test.local` in front of `origin`, listening on
/// an ephemeral port. `options` and `origin_options` go into `<VHostDefault>`.
pub fn config_dir(origin: &str, options: &str, origin_options: &str) -> PathBuf {
    config_dir_in(temp_dir("conf"), origin, options, origin_options)
}

/// Adds `<Cairn>{settings}</Cairn>` to the directory's `server.xml`.
pub fn add_cairn_settings(dir: &Path, settings: &str) {
    edit_server_xml(
        dir,
        "</Server>",
        &format!("<Cairn>{settings}</Cairn></Server>"),
    );
}

/// Replaces `from` (which must be there) with `to` in the directory's `server.xml`.
pub fn edit_server_xml(dir: &Path, from: &str, to: &str) {
    let path = dir.join("server.xml");
    let xml = std::fs::read_to_string(&path).unwrap();
    assert!(xml.contains(from), "{from:?} not in {xml}");
    std::fs::write(path, xml.replacen(from, to, 1)).unwrap();
}

/// A `/proc/<pid>/status` field in kB (`VmRSS`, `RssAnon`).
pub fn status_kb(pid: u32, field: &str) -> u64 {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    s.lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .map(|v| v.trim().trim_end_matches(" kB").trim().parse().unwrap())
        .unwrap()
}

/// Like [`config_dir`], in a given directory (to restart on the same cache).
pub fn config_dir_in(dir: PathBuf, origin: &str, options: &str, origin_options: &str) -> PathBuf {
    write_config(dir, &server_xml(options, origin_options), origin)
}

/// `server.xml` as given, and `vhosts.xml` with one vhost `test.local` in
/// front of `origin` on an ephemeral port, in `dir` (made if missing).
pub fn write_config(dir: PathBuf, server: &str, origin: &str) -> PathBuf {
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("server.xml"), server).unwrap();
    std::fs::write(
        dir.join("vhosts.xml"),
        format!(
            "<Vhosts><Vhost Name=\"test.local\"><Listen>127.0.0.1:0</Listen><Origin><Address>{origin}</Address></Origin></Vhost><Default>test.local</Default></Vhosts>"
        ),
    )
    .unwrap();
    dir
}

impl Cairn {
    pub fn start(dir: PathBuf, shards: usize) -> Cairn {
        Cairn::start_args(dir, &["--shards", &shards.to_string()])
    }

    pub fn start_args(dir: PathBuf, extra: &[&str]) -> Cairn {
        Cairn::start_bin(Path::new(BIN), dir, extra)
    }

    /// From another copy of the binary (the upgrade test replaces it).
    pub fn start_bin(bin: &Path, dir: PathBuf, extra: &[&str]) -> Cairn {
        Cairn::start_env(bin, dir, extra, &[])
    }

    /// With more environment variables (`NOTIFY_SOCKET`).
    pub fn start_env(bin: &Path, dir: PathBuf, extra: &[&str], env: &[(&str, &str)]) -> Cairn {
        let mut child = Command::new(bin)
            // Arms `/debug/panic` in fault-injection builds (inert otherwise).
            .env("CAIRN_FAULT_INJECTION", "1")
            .envs(env.iter().copied())
            .arg("run")
            .arg("--config")
            .arg(&dir)
            .args(extra)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start cairn");
        let stderr = Arc::new(Mutex::new(String::new()));
        let err_sink = stderr.clone();
        let mut err = BufReader::new(child.stderr.take().unwrap());
        std::thread::spawn(move || {
            let mut line = String::new();
            while err.read_line(&mut line).unwrap_or(0) > 0 {
                err_sink.lock().unwrap().push_str(&line);
                line.clear();
            }
        });
        let (tx, rx) = mpsc::channel();
        let mut out = BufReader::new(child.stdout.take().unwrap());
        std::thread::spawn(move || {
            let mut line = String::new();
            while out.read_line(&mut line).unwrap_or(0) > 0 {
                let _ = tx.send(line.clone());
                line.clear();
            }
        });
        let deadline = Instant::now() + Duration::from_secs(20);
        // TLS listeners are listed first, then the plain ones.
        let mut https = Vec::new();
        let addr = loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match rx.recv_timeout(left) {
                Ok(l) => {
                    if let Some(rest) = l.trim().strip_prefix("cairn listening on http://") {
                        break rest.trim_end_matches('/').parse().unwrap();
                    }
                    if let Some(rest) = l.trim().strip_prefix("cairn listening on https://") {
                        https.push(rest.trim_end_matches('/').parse().unwrap());
                    }
                }
                Err(_) => panic!("cairn did not start; stderr:\n{}", stderr.lock().unwrap()),
            }
        };
        Cairn {
            child,
            addr,
            https,
            stderr,
            dir,
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn signal(&self, sig: &str) {
        let ok = Command::new("kill")
            .arg(format!("-{sig}"))
            .arg(self.pid().to_string())
            .status()
            .unwrap();
        assert!(ok.success());
    }

    /// Waits for the process to exit; returns its exit code.
    pub fn wait_exit(&mut self, within: Duration) -> Option<i32> {
        let deadline = Instant::now() + within;
        while Instant::now() < deadline {
            if let Some(st) = self.child.try_wait().unwrap() {
                return st.code();
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        None
    }

    /// Waits (up to 5 s) until the log contains `needle`; returns the log.
    pub fn wait_log(&self, needle: &str) -> String {
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let log = self.stderr();
            if log.contains(needle) || Instant::now() > deadline {
                return log;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn stderr(&self) -> String {
        self.stderr.lock().unwrap().clone()
    }

    pub fn connect(&self) -> Client {
        Client::connect(self.addr)
    }

    /// The management listener's address, from its start-up log line.
    pub fn manager_addr(&self) -> SocketAddr {
        let log = self.wait_log("manager listening on http://");
        let rest = log
            .split("manager listening on http://")
            .nth(1)
            .expect("manager address in the log");
        rest[..rest.find('/').unwrap()].parse().unwrap()
    }
}

impl Drop for Cairn {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A parsed response.
#[derive(Debug, Clone)]
pub struct Response {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Response {
    pub fn header(&self, name: &str) -> Option<&str> {
        header_in(&self.headers, name)
    }
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// A raw HTTP/1.1 client over one connection: TCP, or TLS (any `Read + Write`).
pub struct Client<S = TcpStream> {
    pub stream: S,
    buf: Vec<u8>,
}

impl<S: Read + Write> Client<S> {
    pub fn over(stream: S) -> Client<S> {
        Client {
            stream,
            buf: Vec::new(),
        }
    }
}

impl Client {
    pub fn from_stream(stream: TcpStream) -> Client {
        Client {
            stream,
            buf: Vec::new(),
        }
    }

    pub fn connect(addr: SocketAddr) -> Client {
        let stream = TcpStream::connect(addr).unwrap();
        stream
            .set_read_timeout(Some(Duration::from_secs(15)))
            .unwrap();
        Client {
            stream,
            buf: Vec::new(),
        }
    }

    /// True if the server closed the connection within `within` (EOF or reset);
    /// false if it stayed open (read timed out) or sent more bytes.
    pub fn is_closed(&mut self, within: Duration) -> bool {
        self.stream.set_read_timeout(Some(within)).unwrap();
        let mut tmp = [0u8; 1024];
        let r = match self.stream.read(&mut tmp) {
            Ok(0) => true,
            Ok(_) => false,
            Err(e) => e.kind() == std::io::ErrorKind::ConnectionReset,
        };
        self.stream
            .set_read_timeout(Some(Duration::from_secs(15)))
            .unwrap();
        r
    }
}

impl<S: Read + Write> Client<S> {
    pub fn send(&mut self, raw: &[u8]) {
        self.stream.write_all(raw).unwrap();
        self.stream.flush().unwrap();
    }

    pub fn get(&mut self, path: &str) -> Response {
        self.send(format!("GET {path} HTTP/1.1\r\nHost: test.local\r\n\r\n").as_bytes());
        self.response(false).expect("a response")
    }

    fn fill(&mut self) -> bool {
        let mut tmp = [0u8; 65536];
        match self.stream.read(&mut tmp) {
            Ok(0) | Err(_) => false,
            Ok(n) => {
                self.buf.extend_from_slice(&tmp[..n]);
                true
            }
        }
    }

    /// Reads one response; `None` if the connection closed first or the body was cut
    /// short (a broken response).
    pub fn response(&mut self, head_request: bool) -> Option<Response> {
        let (status, headers, n) = loop {
            let mut hs = [httparse::EMPTY_HEADER; 128];
            let mut r = httparse::Response::new(&mut hs);
            if let Ok(httparse::Status::Complete(n)) = r.parse(&self.buf) {
                let headers: Vec<(String, String)> = r
                    .headers
                    .iter()
                    .map(|h| {
                        (
                            h.name.to_string(),
                            String::from_utf8_lossy(h.value).into_owned(),
                        )
                    })
                    .collect();
                break (r.code.unwrap(), headers, n);
            }
            if !self.fill() {
                return None;
            }
        };
        self.buf.drain(..n);
        let mut resp = Response {
            status,
            headers,
            body: Vec::new(),
        };
        if head_request || status == 204 || status == 304 || (100..200).contains(&status) {
            return Some(resp);
        }
        if resp
            .header("transfer-encoding")
            .is_some_and(|v| v.contains("chunked"))
        {
            loop {
                let line_end = loop {
                    if let Some(p) = self.buf.windows(2).position(|w| w == b"\r\n") {
                        break p;
                    }
                    if !self.fill() {
                        return None;
                    }
                };
                let size =
                    usize::from_str_radix(std::str::from_utf8(&self.buf[..line_end]).unwrap(), 16)
                        .unwrap();
                self.buf.drain(..line_end + 2);
                while self.buf.len() < size + 2 {
                    if !self.fill() {
                        return None;
                    }
                }
                resp.body.extend_from_slice(&self.buf[..size]);
                self.buf.drain(..size + 2);
                if size == 0 {
                    return Some(resp);
                }
            }
        }
        match resp
            .header("content-length")
            .map(|v| v.trim().parse::<usize>().unwrap())
        {
            Some(len) => {
                while self.buf.len() < len {
                    if !self.fill() {
                        return None;
                    }
                }
                resp.body = self.buf.drain(..len).collect();
            }
            None => {
                while self.fill() {}
                resp.body = std::mem::take(&mut self.buf);
            }
        }
        Some(resp)
    }
}

/// Waits (up to 10 s) until the access logs under `dir` hold every one of
/// `paths`, and returns their text.
#[allow(dead_code)] // not every test binary reads logs
pub fn wait_logs(dir: &Path, paths: &[&str]) -> String {
    let read = || -> String {
        std::fs::read_dir(dir)
            .map(|d| {
                d.flatten()
                    .map(|e| std::fs::read_to_string(e.path()).unwrap_or_default())
                    .collect()
            })
            .unwrap_or_default()
    };
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let text = read();
        if paths.iter().all(|p| text.contains(p)) || Instant::now() >= deadline {
            return text;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// A GET to the management port: status and body.
pub fn manager_call(mgr: SocketAddr, target: &str) -> (u16, String) {
    let mut s = TcpStream::connect(mgr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(format!("GET {target} HTTP/1.1\r\nHost: m\r\n\r\n").as_bytes())
        .unwrap();
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out);
    let text = String::from_utf8_lossy(&out).into_owned();
    let status = text.get(9..12).and_then(|s| s.parse().ok()).unwrap_or(0);
    let body = text.split_once("\r\n\r\n").map(|x| x.1).unwrap_or("");
    (status, body.to_string())
}

/// One sample of `/metrics`, by its exact name and labels.
pub fn metric(mgr: SocketAddr, sample: &str) -> u64 {
    let (_, text) = manager_call(mgr, "/metrics");
    text.lines()
        .find_map(|l| l.strip_prefix(sample)?.strip_prefix(' '))
        .unwrap_or_else(|| panic!("{sample} in /metrics"))
        .parse()
        .unwrap()
}
