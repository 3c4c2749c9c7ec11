//! A segment: one fixed-size file (or anonymous region, for a memory-only cache),
//! mapped once, `MAP_SHARED`, for the life of the process and never unmapped.
//!
//! Readers take a lease ([`Lease`]) that keeps the segment from being reused while an
//! in-flight response still points into it; a `Bytes` made from a lease points
//! straight into the mapping (`Bytes::from_owner`), so a cache hit's body reaches the
//! socket without a userspace copy.
//!
//! A file-backed segment can also be sent with `sendfile` ([`FileBody`]). The
//! kernel then keeps references to the page-cache pages, not copies, in the
//! socket's queues (and, on loopback, in the receiver's) after the call, and
//! the lease, returns. A reclaim must therefore never write those pages again:
//! [`Segment::renew_pages`] punches the whole file out of the page cache
//! (`FALLOC_FL_PUNCH_HOLE`, which runs `truncate_pagecache_range`: the pages
//! leave the file's mapping even when other references remain, so queued skbs
//! keep the old pages and old bytes) and allocates fresh blocks, so writes
//! after it fault in new pages. The file's size never changes, so the mapping
//! stays valid throughout (a read of a hole maps the zero page). Whether the
//! directory's filesystem does all this is tried at start on a scratch file
//! ([`renews_pages`]): a page spliced into a pipe must keep its bytes across a
//! punch and a rewrite. Where it does not, or where the segment size is not
//! a multiple of 2 MiB (a large folio across the end of the file would be
//! zeroed in place), nothing is sent this way (the send copies). Only a
//! segment something was sent from since its last renewal is renewed.
//!
//! This is the one place that writes through raw pointers into the mapping.
#![allow(unsafe_code)]

use bytes::Bytes;
use memmap2::{MmapOptions, MmapRaw};
use std::fs::{File, OpenOptions};
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd};
use std::path::Path;
use std::sync::atomic::{AtomicU32, AtomicU64, AtomicUsize, Ordering::SeqCst};
use std::sync::Arc;

/// Segment file header: magic, version, segment size, high-water mark.
pub const SEGMENT_HEADER: usize = 64;
const SEG_MAGIC: u64 = u64::from_le_bytes(*b"CRNSEG01");

pub struct Segment {
    pub id: u32,
    map: MmapRaw,
    len: usize,
    /// Bumped when the segment is reclaimed; index entries with an older value are dead.
    pub generation: AtomicU32,
    /// Leases alive: in-flight readers and writers.
    readers: AtomicUsize,
    /// File-backed on a filesystem that renews pages ([`renews_pages`]):
    /// bodies may be sent with sendfile.
    sendable: bool,
    /// Something may have been sent from it with sendfile since its pages
    /// were last renewed (set at open: a previous process may have).
    sent: std::sync::atomic::AtomicBool,
    /// The last renewal failed (logged once per run of failures).
    renew_failed: std::sync::atomic::AtomicBool,
    /// Keeps the file (and its preallocated blocks) open.
    _file: Option<File>,
}

impl std::fmt::Debug for Segment {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Segment")
            .field("id", &self.id)
            .field("len", &self.len)
            .field("sendable", &self.sendable)
            .finish_non_exhaustive()
    }
}

impl Segment {
    /// Opens (creating and preallocating if needed) a segment file of `len` bytes.
    /// Returns the segment and whether its previous contents are usable.
    /// `sendable`: the directory's filesystem punches holes ([`can_punch`]).
    pub fn open_file(
        path: &Path,
        id: u32,
        len: usize,
        sendable: bool,
    ) -> io::Result<(Segment, bool)> {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(path)?;
        let old_len = file.metadata()?.len();
        let mut header_ok = false;
        if old_len == len as u64 {
            // Read with pread, not through a mapping: a bad sector is an error here,
            // not a SIGBUS that kills the process.
            let mut head = [0u8; 16];
            header_ok = std::os::unix::fs::FileExt::read_exact_at(&file, &mut head, 0).is_ok()
                && head[..8] == SEG_MAGIC.to_le_bytes()
                && head[8..] == (len as u64).to_le_bytes();
        }
        if !header_ok {
            // Nothing in it is kept: truncating first gives the file fresh blocks, so
            // a bad sector the old ones had (the header page among them) is never
            // read or written through the mapping, where it would be a SIGBUS.
            file.set_len(0)?;
            file.set_len(len as u64)?;
        }
        preallocate(&file, len)?;
        let map = MmapOptions::new().len(len).map_raw(&file)?;
        let mut seg = Segment::from_map(id, map, len, Some(file));
        seg.sendable = sendable && len.is_multiple_of(SENDABLE_ALIGN);
        seg.sent = std::sync::atomic::AtomicBool::new(seg.sendable);
        if !header_ok {
            seg.init();
        }
        let usable = header_ok;
        Ok((seg, usable))
    }

    /// An anonymous segment, for a memory-only cache.
    pub fn anonymous(id: u32, len: usize) -> io::Result<Segment> {
        let map = MmapRaw::from(MmapOptions::new().len(len).map_anon()?);
        let seg = Segment::from_map(id, map, len, None);
        seg.init();
        Ok(seg)
    }

    fn from_map(id: u32, map: MmapRaw, len: usize, file: Option<File>) -> Segment {
        Segment {
            id,
            map,
            len,
            generation: AtomicU32::new(1),
            readers: AtomicUsize::new(0),
            sendable: false,
            sent: Default::default(),
            renew_failed: Default::default(),
            _file: file,
        }
    }

    fn init(&self) {
        self.write_at(0, &SEG_MAGIC.to_le_bytes());
        self.write_at(8, &(self.len as u64).to_le_bytes());
        self.set_high_water(SEGMENT_HEADER as u64);
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.high_water() <= SEGMENT_HEADER as u64
    }

    /// Copies `buf.len()` bytes at `off` with `pread` (from the mapping for an
    /// anonymous segment). Recovery reads this way: a truncated file or a bad
    /// sector is an `Err` to exclude the segment for, where a read through the
    /// mapping would raise SIGBUS.
    pub fn read_at(&self, off: u64, buf: &mut [u8]) -> io::Result<()> {
        let end = off
            .checked_add(buf.len() as u64)
            .filter(|&e| e <= self.len as u64)
            .ok_or_else(|| io::Error::from(io::ErrorKind::InvalidInput))?;
        match &self._file {
            Some(f) => std::os::unix::fs::FileExt::read_exact_at(f, buf, off),
            None => {
                buf.copy_from_slice(self.bytes(off as usize, (end - off) as usize));
                Ok(())
            }
        }
    }

    /// End of the committed records (persisted in the segment header), so recovery
    /// scans only what was written.
    pub fn high_water(&self) -> u64 {
        self.hwm_atomic().load(SeqCst).min(self.len as u64)
    }

    pub fn set_high_water(&self, v: u64) {
        self.hwm_atomic().store(v, SeqCst);
    }

    pub fn raise_high_water(&self, v: u64) {
        self.hwm_atomic().fetch_max(v, SeqCst);
    }

    fn hwm_atomic(&self) -> &AtomicU64 {
        // SAFETY: offset 16 is inside the mapping (len >= SEGMENT_HEADER), 8-byte
        // aligned (mappings are page-aligned), and only ever accessed through this
        // atomic, so there is no mixed atomic/non-atomic access to these bytes.
        unsafe { &*(self.map.as_mut_ptr().add(16) as *const AtomicU64) }
    }

    /// The bytes at `off..off+len`, for reading committed data.
    ///
    /// Callers only read regions that are committed and not being written: records
    /// published in the index past their header (writers never touch a published
    /// record's key, meta or body until the segment is reclaimed, which waits for
    /// leases to end; its 64-byte header may be rewritten dead by
    /// `Store::kill_record`, so readers of published records lease and read past
    /// it), the written prefix of a record being filled (its writer only appends
    /// past it, and says how far under the fill's mutex, which orders the writes
    /// before the read), headers during a reclaim (no leases: no kill runs), or,
    /// during recovery, before any writer runs.
    pub fn bytes(&self, off: usize, len: usize) -> &[u8] {
        assert!(
            off.checked_add(len).is_some_and(|e| e <= self.len),
            "segment read out of bounds"
        );
        // SAFETY: bounds checked above; the mapping lives as long as `self` (never
        // unmapped while the Segment exists); see the method doc for why no writer
        // mutates these bytes while this borrow is alive.
        unsafe { std::slice::from_raw_parts(self.map.as_ptr().add(off), len) }
    }

    /// Copies `data` into the mapping at `off`.
    ///
    /// Callers write only to a region they reserved, past any prefix a fill has
    /// announced (so no reader can reach these bytes yet), to a reclaimed segment
    /// with no leases, during recovery, or to a published record's header
    /// (`Store::kill_record`: under a lease, so no reclaim runs; one kill at a
    /// time; and no reader borrows header bytes, see [`bytes`](Self::bytes)).
    pub fn write_at(&self, off: usize, data: &[u8]) {
        assert!(
            off.checked_add(data.len()).is_some_and(|e| e <= self.len),
            "segment write out of bounds"
        );
        // SAFETY: bounds checked; the destination is inside the live mapping and, per
        // the method doc, not concurrently read or written; the source is a distinct
        // allocation, so the ranges cannot overlap.
        unsafe {
            std::ptr::copy_nonoverlapping(data.as_ptr(), self.map.as_mut_ptr().add(off), data.len())
        }
    }

    /// Moves `len` bytes from `from` to `to` within the segment (compaction on reclaim).
    pub fn move_within(&self, from: usize, to: usize, len: usize) {
        assert!(
            from.max(to).checked_add(len).is_some_and(|e| e <= self.len),
            "segment move out of bounds"
        );
        // SAFETY: both ranges are inside the mapping; `copy` allows overlap; the
        // segment is being reclaimed with no leases, so nobody else touches it.
        unsafe {
            std::ptr::copy(
                self.map.as_ptr().add(from),
                self.map.as_mut_ptr().add(to),
                len,
            )
        }
    }

    /// Whether bodies in it may go out with sendfile (see the module doc).
    pub fn sendable(&self) -> bool {
        self.sendable
    }

    /// Whether a reclaim must renew the pages before writing: something may
    /// have been sent from them with sendfile.
    pub fn needs_renewal(&self) -> bool {
        self.sendable && self.sent.load(SeqCst)
    }

    /// Before a segment that bodies were sent from is written again (a
    /// reclaim): its pages leave the page cache and its blocks are allocated
    /// afresh, so pages the kernel may still send keep their bytes (see the
    /// module doc). The header is written anew (high-water mark at the
    /// header: empty). An error leaves holes: the caller must not write the
    /// segment until a later renewal succeeds (reads see zeros, no SIGBUS).
    ///
    /// The caller holds the segment with no leases (a reclaim).
    pub(super) fn renew_pages(&self) -> io::Result<()> {
        let Some(f) = self._file.as_ref().filter(|_| self.needs_renewal()) else {
            return Ok(());
        };
        assert_eq!(self.leases(), 0, "renewing a leased segment");
        // SAFETY: fallocate on a descriptor we own, over its own range. It
        // changes the mapped bytes (to zeros, on the next access): sound only
        // because nothing borrows them now (no leases, asserted above; a
        // reclaim's caller reads nothing of the segment until it returns).
        // The mapping stays valid: the file keeps its size.
        let rc = unsafe {
            libc::fallocate(
                f.as_raw_fd(),
                libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE,
                0,
                self.len as libc::off_t,
            )
        };
        let r = if rc != 0 {
            Err(io::Error::last_os_error())
        } else {
            // Blocks again, so a full disk is this error, not a SIGBUS on a
            // later write through the mapping.
            preallocate(f, self.len)
        };
        if r.is_ok() {
            self.init();
            self.sent.store(false, SeqCst);
        }
        r
    }

    /// Logs a renewal's outcome: the first failure of a run of them, and the
    /// success that ends it.
    pub(super) fn report_renewal(&self, r: &io::Result<()>) {
        match r {
            Ok(()) => {
                if self.renew_failed.swap(false, SeqCst) {
                    log::info!("cache segment {}: renewed; back in use", self.id);
                }
            }
            Err(e) => {
                if !self.renew_failed.swap(true, SeqCst) {
                    log::error!(
                        "cache segment {}: renewing its pages before reuse failed ({e}); it stays out of use until a retry succeeds",
                        self.id
                    );
                }
            }
        }
    }

    pub fn leases(&self) -> usize {
        self.readers.load(SeqCst)
    }

    /// Asks the kernel to write dirty pages back soon (not needed for a process crash:
    /// `MAP_SHARED` pages survive it in the page cache; this narrows the power-loss window).
    pub fn flush_async(&self, off: usize, len: usize) {
        let _ = self.map.flush_async_range(off, len);
    }
}

/// A lease on a region of a segment. While any lease is alive the segment is not
/// reclaimed. As the owner of a `Bytes`, it makes that `Bytes` point into the mapping.
pub struct Lease {
    seg: Arc<Segment>,
    off: usize,
    len: usize,
}

impl Lease {
    /// Takes a lease, then confirms the segment still has `generation`; the SeqCst
    /// order against [`Segment::generation`] bumps (Dekker-style) guarantees that a
    /// reclaimer either sees this lease or this check sees its new generation.
    pub fn acquire(seg: &Arc<Segment>, generation: u32, off: usize, len: usize) -> Option<Lease> {
        seg.readers.fetch_add(1, SeqCst);
        let lease = Lease {
            seg: seg.clone(),
            off,
            len,
        };
        if seg.generation.load(SeqCst) != generation || off.checked_add(len)? > seg.len {
            return None; // dropping the lease releases the count
        }
        Some(lease)
    }

    pub fn into_bytes(self) -> Bytes {
        Bytes::from_owner(self)
    }
}

impl AsRef<[u8]> for Lease {
    fn as_ref(&self) -> &[u8] {
        self.seg.bytes(self.off, self.len)
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        self.seg.readers.fetch_sub(1, SeqCst);
    }
}

/// A leased body in a sendable segment, for `sendfile`. The lease inside
/// the `Bytes` keeps the region from reclaim, and the segment (and so the
/// file descriptor) alive, for as long as this lives.
pub struct FileBody {
    bytes: Bytes,
    seg: Arc<Segment>,
}

impl FileBody {
    /// `bytes` must lie inside `seg`'s mapping (a hit's body or a slice of
    /// it); handed back otherwise, or when `seg` is not sendable.
    pub fn new(seg: &Arc<Segment>, bytes: Bytes) -> Result<FileBody, Bytes> {
        let base = seg.map.as_ptr() as usize;
        let at = bytes.as_ptr() as usize;
        let inside = at >= base && at + bytes.len() <= base + seg.len;
        if !(seg.sendable && seg._file.is_some() && inside) {
            return Err(bytes);
        }
        // Before the send: a reclaim that follows renews the pages.
        seg.sent.store(true, SeqCst);
        Ok(FileBody {
            bytes,
            seg: seg.clone(),
        })
    }

    pub fn len(&self) -> usize {
        self.bytes.len()
    }

    pub fn is_empty(&self) -> bool {
        self.bytes.is_empty()
    }

    /// The segment file.
    pub fn fd(&self) -> BorrowedFd<'_> {
        match &self.seg._file {
            Some(f) => f.as_fd(),
            None => unreachable!("FileBody::new takes file-backed segments only"),
        }
    }

    /// Where the body starts in the file.
    pub fn offset(&self) -> u64 {
        (self.bytes.as_ptr() as usize - self.seg.map.as_ptr() as usize) as u64
    }

    /// The same bytes through the mapping, for a send that copies.
    pub fn into_bytes(self) -> Bytes {
        self.bytes
    }
}

/// Segment sizes whose pages may be sent: a multiple of the largest folio
/// the page cache commonly uses (2 MiB), so none straddles the file's end.
pub const SENDABLE_ALIGN: usize = 2 << 20;

/// Whether `dir`'s filesystem renews pages as [`Segment::renew_pages`] needs,
/// tried on a scratch file there: a page spliced into a pipe (a reference, as
/// sendfile takes) must keep its bytes across a punch, a reallocation and a
/// rewrite of the file. `Err` says why not.
pub fn renews_pages(dir: &Path) -> io::Result<()> {
    const PAGE: usize = 4096;
    let path = dir.join(".renew-probe");
    let probe = || -> io::Result<()> {
        let f = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(&path)?;
        let len = (2 * PAGE) as libc::off_t;
        // A real allocation: a filesystem without fallocate would leave the
        // renewed segment sparse (a full disk would then be a SIGBUS).
        // SAFETY: fallocate on a descriptor we own; no memory of ours.
        if unsafe { libc::fallocate(f.as_raw_fd(), 0, 0, len) } != 0 {
            return Err(io::Error::last_os_error());
        }
        std::os::unix::fs::FileExt::write_all_at(&f, &[0xA5; PAGE], 0)?;
        let mut fds = [0 as libc::c_int; 2];
        // SAFETY: `fds` has room for the two descriptors pipe2 writes.
        if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: pipe2 succeeded: two fresh descriptors owned by nobody else.
        let (r, w) = unsafe { (File::from_raw_fd(fds[0]), File::from_raw_fd(fds[1])) };
        let mut off: libc::loff_t = 0;
        // SAFETY: valid descriptors; `off` is a live local the call updates.
        let n = unsafe {
            libc::splice(
                f.as_raw_fd(),
                &mut off,
                w.as_raw_fd(),
                std::ptr::null_mut(),
                PAGE,
                0,
            )
        };
        if n != PAGE as isize {
            return Err(io::Error::other("splice into a pipe took no page"));
        }
        // SAFETY: as the first fallocate.
        let punched = unsafe {
            libc::fallocate(
                f.as_raw_fd(),
                libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE,
                0,
                len,
            )
        };
        // SAFETY: as the first fallocate.
        if punched != 0 || unsafe { libc::fallocate(f.as_raw_fd(), 0, 0, len) } != 0 {
            return Err(io::Error::last_os_error());
        }
        std::os::unix::fs::FileExt::write_all_at(&f, &[0x5A; PAGE], 0)?;
        let mut got = vec![0u8; PAGE];
        std::io::Read::read_exact(&mut &r, &mut got)?;
        if got.iter().any(|&b| b != 0xA5) {
            return Err(io::Error::other(
                "a page held by a pipe changed when the file was rewritten",
            ));
        }
        Ok(())
    };
    let r = probe();
    let _ = std::fs::remove_file(&path);
    r
}

/// Reserves the file's blocks so a full disk shows up at start, not as SIGBUS later.
fn preallocate(file: &File, len: usize) -> io::Result<()> {
    // SAFETY: fallocate on an fd we own, with valid offset/length; it does not touch
    // our memory.
    let rc = unsafe { libc::fallocate(file.as_raw_fd(), 0, 0, len as libc::off_t) };
    if rc == 0 {
        return Ok(());
    }
    let e = io::Error::last_os_error();
    // Filesystems without fallocate (tmpfs on old kernels, some network FS): the
    // file is still sized by set_len; accept it.
    if e.raw_os_error() == Some(libc::EOPNOTSUPP) {
        return Ok(());
    }
    Err(e)
}
