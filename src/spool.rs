//! Request bodies held for forwarding: small ones in memory, larger ones in an
//! unlinked temporary file (as nginx's client_body_temp), every byte charged to a
//! process-wide [`Budget`], so many uploads at once exhaust neither memory nor
//! disk: a request whose declared length does not fit is refused with 503 before
//! its body is read, and one whose bytes pass the budget as they arrive (chunked)
//! when they do.

use bytes::{Bytes, BytesMut};
use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;

/// Bodies up to this size stay in memory (when the memory budget allows).
pub const MEMORY_BODY: u64 = 64 * 1024;
/// How much of a spooled body is read back per write to the origin.
const READ_PIECE: usize = 64 * 1024;
/// Small arriving pieces (chunked bodies, 1-byte chunks at worst) are gathered
/// to this size before a file write, so a write is not one ring submission per
/// chunk.
const WRITE_PIECE: usize = 64 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum SpoolError {
    /// The process-wide budget is spent: the server is busy (503, may retry).
    #[error("the request body budget is spent")]
    Budget,
    /// The temporary file could not be made or written (500).
    #[error("request body spool: {0}")]
    Io(#[from] io::Error),
}

#[derive(Debug, Default)]
struct Pool {
    used: AtomicU64,
    max: AtomicU64,
}

impl Pool {
    fn take(&self, n: u64) -> bool {
        let max = self.max.load(Relaxed);
        let prev = self.used.fetch_add(n, Relaxed);
        if prev.saturating_add(n) > max {
            self.used.fetch_sub(n, Relaxed);
            return false;
        }
        true
    }

    fn has_room(&self, n: u64) -> bool {
        self.used.load(Relaxed).saturating_add(n) <= self.max.load(Relaxed)
    }

    fn give(&self, n: u64) {
        self.used.fetch_sub(n, Relaxed);
    }
}

/// What all request bodies held at once may use, in memory and on disk.
#[derive(Debug)]
pub struct Budget {
    memory: Pool,
    disk: Pool,
    dir: PathBuf,
}

impl Budget {
    pub fn new(memory: u64, disk: u64, dir: PathBuf) -> Arc<Budget> {
        let b = Budget {
            memory: Pool::default(),
            disk: Pool::default(),
            dir,
        };
        b.configure(memory, disk);
        Arc::new(b)
    }

    /// New limits (a reload); bodies already held keep their charge.
    pub fn configure(&self, memory: u64, disk: u64) {
        self.memory.max.store(memory, Relaxed);
        self.disk.max.store(disk, Relaxed);
    }

    /// Would `n` more bytes fit in memory (on disk) now? Nothing is reserved:
    /// bodies are charged as their bytes arrive, so a client that declares a
    /// length and sends nothing holds nothing.
    pub fn memory_has_room(&self, n: u64) -> bool {
        self.memory.has_room(n)
    }

    pub fn disk_has_room(&self, n: u64) -> bool {
        self.disk.has_room(n)
    }

    /// Bytes held now: (memory, disk).
    pub fn used(&self) -> (u64, u64) {
        (self.memory.used.load(Relaxed), self.disk.used.load(Relaxed))
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }
}

/// A charge against one pool of the budget, released when dropped.
#[derive(Debug)]
pub struct Charge {
    budget: Arc<Budget>,
    disk: bool,
    n: u64,
}

impl Charge {
    fn pool(&self) -> &Pool {
        if self.disk {
            &self.budget.disk
        } else {
            &self.budget.memory
        }
    }

    /// Charges `n` bytes of memory, or `None` when the budget cannot hold them.
    pub fn memory(budget: &Arc<Budget>, n: u64) -> Option<Charge> {
        budget.memory.take(n).then(|| Charge {
            budget: budget.clone(),
            disk: false,
            n,
        })
    }

    /// Charges `n` bytes of disk.
    pub fn disk(budget: &Arc<Budget>, n: u64) -> Option<Charge> {
        budget.disk.take(n).then(|| Charge {
            budget: budget.clone(),
            disk: true,
            n,
        })
    }

    /// Raises the charge to at least `n` bytes.
    pub fn grow_to(&mut self, n: u64) -> Result<(), SpoolError> {
        if n > self.n {
            if !self.pool().take(n - self.n) {
                return Err(SpoolError::Budget);
            }
            self.n = n;
        }
        Ok(())
    }
}

impl Drop for Charge {
    fn drop(&mut self) {
        self.pool().give(self.n);
    }
}

enum Held {
    Memory(Bytes),
    File(tokio_uring::fs::File),
}

/// A complete request body, ready to be sent (and sent again on a retry).
pub struct RequestBody {
    held: Held,
    len: u64,
    _charge: Charge,
}

impl std::fmt::Debug for RequestBody {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let at = match self.held {
            Held::Memory(_) => "memory",
            Held::File(_) => "file",
        };
        write!(f, "RequestBody({} bytes in {at})", self.len)
    }
}

impl RequestBody {
    pub fn in_memory(bytes: Bytes, charge: Charge) -> RequestBody {
        RequestBody {
            len: bytes.len() as u64,
            held: Held::Memory(bytes),
            _charge: charge,
        }
    }

    pub fn len(&self) -> u64 {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The whole body, when it is held in memory.
    pub fn memory(&self) -> Option<&Bytes> {
        match &self.held {
            Held::Memory(b) => Some(b),
            Held::File(_) => None,
        }
    }

    pub fn is_spooled(&self) -> bool {
        matches!(self.held, Held::File(_))
    }

    /// The bytes at `at..` (at most one piece), for sending a spooled body.
    pub async fn piece(&self, at: u64) -> io::Result<Bytes> {
        match &self.held {
            Held::Memory(b) => Ok(b.slice(b.len().min(at as usize)..)),
            Held::File(f) => {
                let want = (self.len.saturating_sub(at)).min(READ_PIECE as u64) as usize;
                let (r, buf) = f.read_at(BytesMut::with_capacity(want), at).await;
                let n = r?;
                if n == 0 && want > 0 {
                    return Err(io::ErrorKind::UnexpectedEof.into());
                }
                Ok(buf.freeze())
            }
        }
    }
}

/// A body being written to its temporary file.
pub struct Spool {
    file: tokio_uring::fs::File,
    /// Bytes in the file.
    len: u64,
    /// Bytes received but not yet written (less than [`WRITE_PIECE`]): gathered
    /// while one client read's pieces are taken, written out before the next wait
    /// (see [`flush`](Self::flush)), so a stalled upload holds no memory here.
    pending: BytesMut,
    charge: Charge,
}

impl Spool {
    /// A new unlinked file in the budget's directory; `charge` covers what is
    /// known of the length so far, and grows as bytes come. The open goes
    /// through the ring, so a slow spool disk does not stall the shard.
    pub async fn create(charge: Charge) -> Result<Spool, SpoolError> {
        let file = unlinked_file(charge.budget.dir()).await?;
        Ok(Spool {
            file,
            len: 0,
            pending: BytesMut::new(),
            charge,
        })
    }

    /// Takes `piece`, charged at once; it is written when enough has gathered.
    pub async fn write(&mut self, piece: Bytes) -> Result<(), SpoolError> {
        let end = self.len + (self.pending.len() + piece.len()) as u64;
        self.charge.grow_to(end)?;
        if self.pending.is_empty() && piece.len() >= WRITE_PIECE {
            return self.write_out(piece).await;
        }
        self.pending.extend_from_slice(&piece);
        if self.pending.len() >= WRITE_PIECE {
            let full = std::mem::take(&mut self.pending).freeze();
            self.write_out(full).await?;
        }
        Ok(())
    }

    /// Writes what is gathered. Called before waiting for the client: at most one
    /// file write per client read (so 1-byte chunks cost no write each), and none of
    /// a stalled upload's bytes stay in memory, where only the disk pool counts them.
    pub async fn flush(&mut self) -> Result<(), SpoolError> {
        if self.pending.is_empty() {
            return Ok(());
        }
        let rest = std::mem::take(&mut self.pending).freeze();
        self.write_out(rest).await
    }

    async fn write_out(&mut self, piece: Bytes) -> Result<(), SpoolError> {
        let n = piece.len() as u64;
        let (r, _) = self.file.write_all_at(piece, self.len).await;
        r?;
        self.len += n;
        Ok(())
    }

    /// Writes what is gathered, and hands the body over.
    pub async fn finish(mut self) -> Result<RequestBody, SpoolError> {
        self.flush().await?;
        Ok(RequestBody {
            held: Held::File(self.file),
            len: self.len,
            _charge: self.charge,
        })
    }
}

/// Prefix of the named fallback files, which [`sweep`] removes at start.
const FALLBACK_PREFIX: &str = ".cairn-body-";

/// An anonymous file (`O_TMPFILE`), or a named one removed at once where the
/// filesystem has no `O_TMPFILE`. A crash can leave a named one behind only in
/// the moment between its open and its unlink; [`sweep`] removes those at start.
async fn unlinked_file(dir: &Path) -> io::Result<tokio_uring::fs::File> {
    use std::os::unix::fs::OpenOptionsExt;
    let tmp = tokio_uring::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .mode(0o600)
        .custom_flags(libc::O_TMPFILE)
        .open(dir)
        .await;
    match tmp {
        Ok(f) => Ok(f),
        Err(e) if matches!(e.raw_os_error(), Some(libc::EOPNOTSUPP | libc::EISDIR)) => {
            named_unlinked_file(dir).await
        }
        Err(e) => Err(e),
    }
}

async fn named_unlinked_file(dir: &Path) -> io::Result<tokio_uring::fs::File> {
    use std::os::unix::fs::OpenOptionsExt;
    static N: AtomicU64 = AtomicU64::new(0);
    // The pid alone is not unique where several containers (each pid 1) share
    // the directory: a clash is retried under a new name.
    let salt = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    let mut last = io::Error::from(io::ErrorKind::AlreadyExists);
    for _ in 0..8 {
        let path = dir.join(format!(
            "{FALLBACK_PREFIX}{}-{salt:08x}-{}",
            std::process::id(),
            N.fetch_add(1, Relaxed)
        ));
        let opened = tokio_uring::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&path)
            .await;
        match opened {
            Ok(f) => {
                match tokio_uring::fs::remove_file(&path).await {
                    // NotFound: another process's [`sweep`] took it first; unlinked
                    // all the same.
                    Ok(()) => return Ok(f),
                    Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(f),
                    Err(e) => {
                        // Not left behind on this path either (best effort, blocking:
                        // the rare error path of a rare fallback).
                        let _ = std::fs::remove_file(&path);
                        return Err(e);
                    }
                }
            }
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => last = e,
            Err(e) => return Err(e),
        }
    }
    Err(last)
}

/// Removes fallback files a crash left in `dir` (see [`unlinked_file`]); returns
/// how many. A running process's own are unlinked the moment they are opened,
/// so only a dead one's stay long enough to be found here.
pub fn sweep(dir: &Path) -> usize {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    entries
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with(FALLBACK_PREFIX))
        .filter(|e| e.file_type().is_ok_and(|t| t.is_file()))
        .filter(|e| std::fs::remove_file(e.path()).is_ok())
        .count()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn charges_are_bounded_and_released() {
        let b = Budget::new(100, 1000, std::env::temp_dir());
        let a = Charge::memory(&b, 60).unwrap();
        assert!(Charge::memory(&b, 41).is_none(), "60 + 41 > 100");
        let c = Charge::memory(&b, 40).unwrap();
        assert_eq!(b.used(), (100, 0));
        drop((a, c));
        assert_eq!(b.used(), (0, 0));
        let mut d = Charge::disk(&b, 10).unwrap();
        d.grow_to(900).unwrap();
        assert!(matches!(d.grow_to(1001), Err(SpoolError::Budget)));
        assert_eq!(b.used(), (0, 900));
        drop(d);
        assert_eq!(b.used(), (0, 0));
    }

    #[test]
    fn a_spooled_body_reads_back_in_pieces_and_leaves_no_file() {
        let dir = std::env::temp_dir().join(format!("cairn-spool-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let b = Budget::new(0, 1 << 20, dir.clone());
        tokio_uring::start(async {
            let mut s = Spool::create(Charge::disk(&b, 0).unwrap()).await.unwrap();
            let data: Vec<u8> = (0..200_000u32).map(|i| i as u8).collect();
            // Small pieces, large ones, and a last one that stays gathered.
            for part in data[..100_000]
                .chunks(7000)
                .chain(data[100_000..].chunks(70_000))
            {
                s.write(Bytes::copy_from_slice(part)).await.unwrap();
            }
            assert_eq!(b.used(), (0, 200_000), "charged on arrival, written or not");
            let body = s.finish().await.unwrap();
            assert!(body.is_spooled() && body.len() == data.len() as u64);
            let mut back = Vec::new();
            while (back.len() as u64) < body.len() {
                back.extend_from_slice(&body.piece(back.len() as u64).await.unwrap());
            }
            assert_eq!(back, data);
            assert_eq!(b.used(), (0, 200_000));
        });
        assert_eq!(b.used(), (0, 0));
        assert_eq!(
            std::fs::read_dir(&dir).unwrap().count(),
            0,
            "nothing left behind"
        );
        let _ = std::fs::remove_dir(&dir);
    }

    #[test]
    fn the_named_fallback_leaves_no_file_and_sweep_removes_a_crashs() {
        let dir = std::env::temp_dir().join(format!("cairn-spool-fb-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        // What a crash between open and unlink leaves, and a file that is not ours.
        std::fs::write(dir.join(format!("{FALLBACK_PREFIX}1-0-0")), b"x").unwrap();
        std::fs::write(dir.join("keep"), b"x").unwrap();
        assert_eq!(sweep(&dir), 1);
        assert!(dir.join("keep").exists());
        std::fs::remove_file(dir.join("keep")).unwrap();
        tokio_uring::start(async {
            let f = named_unlinked_file(&dir).await.unwrap();
            let (r, _) = f.write_all_at(Bytes::from_static(b"body"), 0).await;
            r.unwrap();
            let (r, buf) = f.read_at(BytesMut::with_capacity(4), 0).await;
            assert_eq!((r.unwrap(), &buf[..]), (4, &b"body"[..]));
            assert_eq!(
                std::fs::read_dir(&dir).unwrap().count(),
                0,
                "unlinked at once"
            );
        });
        let _ = std::fs::remove_dir(&dir);
    }
}
