//! The part file: created at its full length, written at chunk offsets from many tasks at
//! once, synced, and renamed to its final path only when complete.
//!
//! Aligned blocks go through a second, `O_DIRECT` descriptor: the bytes go from our buffer to
//! the device without a copy into the page cache, and without the inode lock every buffered
//! writer of one file contends on. On this project's VM that took a 4 GiB download from 10.5 to
//! 4 s of system time (BENCHMARKS.md). Unaligned pieces (the tail of a file, a resumed chunk)
//! and filesystems without `O_DIRECT` (tmpfs) use the ordinary descriptor; the kernel keeps the
//! two coherent. Whether there is a direct descriptor at all is the run's write mode
//! (`write_mode`): buffered writes leave the model in the page cache for the engine.

use std::alloc::{alloc, dealloc, Layout};
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use rustix::fs::OFlags;
use std::sync::atomic::{AtomicBool, Ordering};

use crate::confine::Dir;
use crate::error::{Error, Result};
use crate::remote::ByteRange;

/// The buffer each thread reads back with.
const READ_BACK_BUFFER: usize = 1 << 20;

/// Alignment `O_DIRECT` needs for memory, file offsets and lengths (covers 512-byte and 4 KiB
/// devices).
pub const DIRECT_ALIGN: usize = 4096;

pub struct PartFile {
    file: File,
    direct: Option<File>,
    /// Cleared when the filesystem refuses a direct write: the rest goes buffered.
    direct_ok: AtomicBool,
    path: PathBuf,
    /// The file's path under DEST, so errors name what the user asked for, not the part file.
    shown: String,
}

/// A reusable write buffer aligned for `O_DIRECT`.
pub struct AlignedBuf {
    ptr: *mut u8,
    cap: usize,
    len: usize,
    layout: Layout,
}

/// A transparent huge page on x86-64 and (with 4 KiB base pages) arm64.
const HUGE_PAGE: usize = 2 << 20;

// SAFETY: the buffer owns its allocation exclusively, like a Vec<u8>.
unsafe impl Send for AlignedBuf {}

impl AlignedBuf {
    /// `cap` is rounded up to a multiple of [`DIRECT_ALIGN`].
    ///
    /// A buffer of whole huge pages is aligned to them and asks the kernel for huge pages
    /// (`MADV_HUGEPAGE`, which is what `transparent_hugepage=madvise`, the usual default, waits
    /// for) before it is first touched: one page fault instead of 512 per 2 MiB, and an
    /// `O_DIRECT` write pins one page instead of 512. Where the kernel has no huge pages to
    /// give, the advice is ignored and the buffer is made of small pages as before.
    pub fn new(cap: usize) -> Self {
        let cap = cap.max(1).div_ceil(DIRECT_ALIGN) * DIRECT_ALIGN;
        let huge = cap.is_multiple_of(HUGE_PAGE);
        let align = if huge { HUGE_PAGE } else { DIRECT_ALIGN };
        let layout = Layout::from_size_align(cap, align).expect("valid layout");
        // SAFETY: the layout has a non-zero size.
        let ptr = unsafe { alloc(layout) };
        if ptr.is_null() {
            std::alloc::handle_alloc_error(layout);
        }
        if huge {
            // SAFETY: `ptr..ptr + cap` is our allocation, aligned to a page; advice does not
            // change its contents or validity, and a refusal leaves it as it was.
            unsafe { libc::madvise(ptr.cast(), cap, libc::MADV_HUGEPAGE) };
        }
        // SAFETY: `cap` bytes at `ptr` are ours. Zeroed, so the whole capacity can be lent out
        // as a slice for reads; this first touch is what faults the (huge) pages in.
        unsafe { std::ptr::write_bytes(ptr, 0, cap) };
        AlignedBuf {
            ptr,
            cap,
            len: 0,
            layout,
        }
    }

    pub fn capacity(&self) -> usize {
        self.cap
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub fn clear(&mut self) {
        self.len = 0;
    }

    /// Appends as much of `data` as fits; returns how much that was.
    ///
    /// The buffer is only ever read by the device (an `O_DIRECT` write) or the kernel, never by
    /// us, so the copy streams past the CPU caches: see [`copy_streaming`].
    pub fn fill(&mut self, data: &[u8]) -> usize {
        let n = (self.cap - self.len).min(data.len());
        // SAFETY: `n` bytes fit after `len` in the allocation, which `data` cannot overlap
        // (it is borrowed shared while `self` is borrowed exclusively).
        unsafe { copy_streaming(data.as_ptr(), self.ptr.add(self.len), n) };
        self.len += n;
        n
    }

    /// Reads into the whole buffer from `off`; the buffer then holds what was read.
    fn read_from(&mut self, file: &File, off: u64) -> std::io::Result<usize> {
        // SAFETY: the allocation is `cap` bytes, initialised (zeroed) at creation.
        let all = unsafe { std::slice::from_raw_parts_mut(self.ptr, self.cap) };
        let n = file.read_at(all, off)?;
        self.len = n;
        Ok(n)
    }

    pub fn as_slice(&self) -> &[u8] {
        // SAFETY: the first `len` bytes were written by `fill`.
        unsafe { std::slice::from_raw_parts(self.ptr, self.len) }
    }
}

/// Copies `n` bytes with non-temporal stores where the CPU has them (every x86-64: SSE2), the
/// rest with an ordinary copy.
///
/// Every received byte is copied once into an aligned write buffer, and nothing reads that
/// buffer but the disk. An ordinary copy first reads each destination line into the cache and
/// then evicts the hashing thread's and the socket's lines to make room; streaming stores write
/// the lines straight to memory. Measured on the hf bench (8 alternating pairs): 1.65 → 1.58
/// CPU-s/GiB, lower in 6 pairs of 8; an AVX2 variant did no better than this SSE2 one
/// (BENCHMARKS.md).
///
/// # Safety
/// `src` must be valid for reading and `dst` for writing `n` bytes, and they must not overlap.
unsafe fn copy_streaming(src: *const u8, dst: *mut u8, n: usize) {
    #[cfg(target_arch = "x86_64")]
    if n >= STREAMING_MIN {
        use std::arch::x86_64::{__m128i, _mm_loadu_si128, _mm_sfence, _mm_stream_si128};
        const LINE: usize = 64;
        // SAFETY: the caller's contract covers every access below: `head + body + tail == n`;
        // the stores go to 16-byte aligned addresses (`dst + head` is 64-byte aligned), which
        // `_mm_stream_si128` requires; the loads may be unaligned.
        unsafe {
            let head = dst.align_offset(LINE).min(n);
            std::ptr::copy_nonoverlapping(src, dst, head);
            let body = (n - head) / LINE * LINE;
            let (s, d) = (src.add(head), dst.add(head));
            let mut i = 0;
            while i < body {
                for k in (0..LINE).step_by(16) {
                    let v = _mm_loadu_si128(s.add(i + k).cast::<__m128i>());
                    _mm_stream_si128(d.add(i + k).cast::<__m128i>(), v);
                }
                i += LINE;
            }
            // Streaming stores are weakly ordered: make them visible before the buffer is
            // handed to the kernel.
            _mm_sfence();
            std::ptr::copy_nonoverlapping(s.add(body), d.add(body), n - head - body);
        }
        return;
    }
    // SAFETY: the caller's contract.
    unsafe { std::ptr::copy_nonoverlapping(src, dst, n) };
}

/// Shorter copies (a socket read is usually tens to hundreds of KiB) keep the ordinary path:
/// a few lines gain nothing from streaming.
#[cfg(target_arch = "x86_64")]
const STREAMING_MIN: usize = 4096;

impl Drop for AlignedBuf {
    fn drop(&mut self) {
        // SAFETY: allocated in `new` with this layout.
        unsafe { dealloc(self.ptr, self.layout) };
    }
}

/// How far buffered writes reach: each ends at a multiple of this in the file (but a body's
/// last, and one forced by [`MAX_PIECES`]), so the kernel can cache it in folios this large
/// (it sizes a folio by the write that creates it), which the engine's read of the weights
/// walks fewer of. What a stream holds until then is memory: on
/// 2 × 1 GiB, peak RSS was 32–36 MiB with 256 KiB, 40–41 with 512 KiB, 47–48 with 1 MiB, at
/// the same CPU (1.0–1.1 s); the read after took 0.38–0.39, 0.36–0.37 and 0.36–0.37 s.
pub const BUFFERED_WRITE: u64 = 512 << 10;

/// Most received pieces one buffered write gathers (the kernel's `IOV_MAX` is 1024).
const MAX_PIECES: usize = 256;

/// Where one stream's received bytes wait for their write, chosen per stream by the part file's
/// write mode:
/// - `O_DIRECT`: copied into an aligned buffer, which the device reads.
/// - Buffered: the received pieces themselves, written together with one `pwritev`. The kernel
///   copies them into the page cache; a copy into a buffer of ours first would be one more pass
///   over every byte, and the kernel's copy would then read cold memory (the streaming stores
///   of [`AlignedBuf::fill`] bypass the cache). Measured on 2 × 1 GiB: the buffer's fill alone
///   was 15 % of the load's CPU samples.
pub struct Staging {
    /// Allocated for the first stream written directly: buffered runs never touch one.
    buf: Option<AlignedBuf>,
    cap: usize,
    pieces: Vec<bytes::Bytes>,
    pieces_len: usize,
    direct: bool,
}

impl Staging {
    pub fn new(cap: usize) -> Self {
        Staging {
            buf: None,
            cap,
            pieces: Vec::new(),
            pieces_len: 0,
            direct: false,
        }
    }

    /// Empties it for a stream that writes directly or through the page cache.
    pub fn begin(&mut self, direct: bool) {
        if direct {
            self.buf
                .get_or_insert_with(|| AlignedBuf::new(self.cap))
                .clear();
        }
        self.pieces.clear();
        self.pieces_len = 0;
        self.direct = direct;
    }

    /// Bytes waiting.
    pub fn waiting(&self) -> usize {
        match &self.buf {
            Some(buf) if self.direct => buf.len(),
            _ => self.pieces_len,
        }
    }

    /// Takes what fits of `bytes` and returns the rest (buffered: all of it fits).
    pub fn take(&mut self, bytes: bytes::Bytes) -> bytes::Bytes {
        if let Some(buf) = self.buf.as_mut().filter(|_| self.direct) {
            let took = buf.fill(&bytes);
            return bytes.slice(took..);
        }
        if !bytes.is_empty() {
            self.pieces_len += bytes.len();
            self.pieces.push(bytes);
        }
        bytes::Bytes::new()
    }

    /// How many of the waiting bytes, the first of which goes at `at`, are due to be written
    /// now: a full buffer; buffered, what reaches the next [`BUFFERED_WRITE`] boundary (or
    /// all of it, once it is [`MAX_PIECES`] pieces).
    pub fn due(&self, at: u64) -> Option<usize> {
        if let Some(buf) = self.buf.as_ref().filter(|_| self.direct) {
            return (buf.len() == buf.capacity()).then_some(buf.len());
        }
        let to_boundary = (at / BUFFERED_WRITE + 1) * BUFFERED_WRITE - at;
        if self.pieces_len as u64 >= to_boundary {
            Some(to_boundary as usize)
        } else if self.pieces.len() >= MAX_PIECES {
            Some(self.pieces_len)
        } else {
            None
        }
    }

    /// Writes the first `n` waiting bytes at `at` and forgets them.
    pub fn write(&mut self, part: &PartFile, at: u64, n: usize) -> Result<()> {
        if let Some(buf) = self.buf.as_mut().filter(|_| self.direct) {
            debug_assert_eq!(n, buf.len());
            part.write_at(buf.as_slice(), at)?;
            buf.clear();
            return Ok(());
        }
        let mut slices = Vec::with_capacity(self.pieces.len());
        let mut left = n;
        for p in &self.pieces {
            if left == 0 {
                break;
            }
            let take = p.len().min(left);
            slices.push(std::io::IoSlice::new(&p[..take]));
            left -= take;
        }
        debug_assert_eq!(left, 0, "due() never asks for more than is waiting");
        part.write_all_vectored_at(&mut slices, at)?;
        // The pieces written whole go; the one written in part keeps its rest.
        let (mut whole, mut left) = (0, n);
        while whole < self.pieces.len() && self.pieces[whole].len() <= left {
            left -= self.pieces[whole].len();
            whole += 1;
        }
        self.pieces.drain(..whole);
        if left > 0 {
            bytes::Buf::advance(&mut self.pieces[0], left);
        }
        self.pieces_len -= n;
        Ok(())
    }
}

/// Reserves the part file's blocks before any byte is fetched: a volume without room for the
/// file fails now (ENOSPC, with its remedy) rather than after most of it was downloaded, and
/// the file gets few, long extents instead of one allocation per write from many streams.
/// Blocks a resumed file already has are left as they are. Filesystems without `fallocate`
/// (some network and FUSE mounts) allocate as the writes land, as before.
fn preallocate(file: &File, size: u64) -> std::io::Result<()> {
    if size == 0 {
        return Ok(());
    }
    match rustix::fs::fallocate(file, rustix::fs::FallocateFlags::empty(), 0, size) {
        Ok(()) => Ok(()),
        Err(e) if e == rustix::io::Errno::OPNOTSUPP || e == rustix::io::Errno::NOSYS => Ok(()),
        Err(e) => Err(e.into()),
    }
}

impl PartFile {
    /// Opens the part file `name` in the parts folder (never through a symlink). A fresh one
    /// (not `resume`) is a new inode — the old name unlinked, then created exclusively, never
    /// truncated in place, so a loader that lost the lease cannot zero the inode another one
    /// writes — and sized to `size` so chunks can land anywhere in it. A resumed one must still
    /// be there with its length: its journal records vouch for its bytes.
    pub fn open(
        parts: &Dir,
        name: &str,
        size: u64,
        resume: bool,
        shown: &str,
        direct: bool,
    ) -> Result<Self> {
        let path = parts.path().join(name);
        let file = if resume {
            let file = parts
                .open_file(name, OFlags::RDWR, 0)
                .map_err(|e| Error::local("reopen the partial file", &path, e).context(shown))?;
            let len = file
                .metadata()
                .map_err(|e| Error::local("stat the partial file", &path, e).context(shown))?
                .len();
            if len != size {
                return Err(Error::new(
                    crate::error::Kind::Corrupt,
                    format!(
                        "{shown}: the partial file {} holds {len} bytes, not {size}: it changed \
                         since it was planned; it will be fetched again",
                        path.display()
                    ),
                ));
            }
            file
        } else {
            match parts.remove_file(name) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => {
                    return Err(Error::local("remove the old partial file", &path, e).context(shown))
                }
            }
            let file = parts
                .open_file(name, OFlags::RDWR | OFlags::CREATE | OFlags::EXCL, 0o664)
                .map_err(|e| Error::local("create the partial file", &path, e).context(shown))?;
            file.set_len(size)
                .map_err(|e| Error::local("size the partial file", &path, e).context(shown))?;
            preallocate(&file, size)
                .map_err(|e| Error::local("reserve space for", &path, e).context(shown))?;
            file
        };
        let direct = direct
            .then(|| parts.open_file(name, OFlags::RDWR | OFlags::DIRECT, 0).ok())
            .flatten();
        Ok(PartFile {
            file,
            direct_ok: AtomicBool::new(direct.is_some()),
            direct,
            path,
            shown: shown.to_string(),
        })
    }

    pub fn write_at(&self, buf: &[u8], offset: u64) -> Result<()> {
        let aligned = offset.is_multiple_of(DIRECT_ALIGN as u64)
            && buf.len().is_multiple_of(DIRECT_ALIGN)
            && (buf.as_ptr() as usize).is_multiple_of(DIRECT_ALIGN);
        if aligned && self.direct_ok.load(Ordering::Relaxed) {
            if let Some(d) = &self.direct {
                match d.write_all_at(buf, offset) {
                    Ok(()) => return Ok(()),
                    // Some filesystems accept O_DIRECT at open and refuse it at write time.
                    Err(e) if e.raw_os_error() == Some(libc::EINVAL) => {
                        self.direct_ok.store(false, Ordering::Relaxed);
                    }
                    Err(e) => {
                        return Err(Error::local("write", &self.path, e).context(&self.shown));
                    }
                }
            }
        }
        self.file
            .write_all_at(buf, offset)
            .map_err(|e| Error::local("write", &self.path, e).context(&self.shown))
    }

    /// Writes `pieces` one after another from `offset`, through the page cache (`pwritev`,
    /// again for what a short write left).
    pub fn write_all_vectored_at(
        &self,
        pieces: &mut [std::io::IoSlice<'_>],
        mut offset: u64,
    ) -> Result<()> {
        let mut rest = pieces;
        while !rest.is_empty() {
            match rustix::io::pwritev(&self.file, rest, offset) {
                Ok(0) => {
                    let e = std::io::Error::from(std::io::ErrorKind::WriteZero);
                    return Err(Error::local("write", &self.path, e).context(&self.shown));
                }
                Ok(n) => {
                    offset += n as u64;
                    std::io::IoSlice::advance_slices(&mut rest, n);
                }
                Err(rustix::io::Errno::INTR) => {}
                Err(e) => {
                    let e = std::io::Error::from(e);
                    return Err(Error::local("write", &self.path, e).context(&self.shown));
                }
            }
        }
        Ok(())
    }

    /// Reads `range` back (for a hash that must see the bytes in order), in pieces, through
    /// the `O_DIRECT` descriptor when there is one: the direct writes bypassed the page cache,
    /// and a direct read brings the bytes from the device into our buffer without filling it.
    pub fn read_range(&self, range: ByteRange, f: &mut dyn FnMut(&[u8])) -> Result<()> {
        thread_local! {
            static BUF: std::cell::RefCell<AlignedBuf> = std::cell::RefCell::new(AlignedBuf::new(READ_BACK_BUFFER));
        }
        BUF.with_borrow_mut(|buf| {
            let align = DIRECT_ALIGN as u64;
            let mut direct = self
                .direct
                .as_ref()
                .filter(|_| self.direct_ok.load(Ordering::Relaxed));
            let mut off = match direct {
                Some(_) => range.start / align * align,
                None => range.start,
            };
            while off < range.end {
                let n = match direct {
                    Some(d) => match buf.read_from(d, off) {
                        // Refused at read time: the rest goes through the page cache.
                        Err(e) if e.raw_os_error() == Some(libc::EINVAL) => {
                            self.direct_ok.store(false, Ordering::Relaxed);
                            direct = None;
                            off = off.max(range.start);
                            continue;
                        }
                        other => other,
                    },
                    None => buf.read_from(&self.file, off),
                }
                .map_err(|e| Error::local("read back", &self.path, e).context(&self.shown))?;
                // Short of the range's start too: the file shrank under us (a read that would
                // slice backwards), which is the same corruption as an early end.
                if n == 0 || off + n as u64 <= range.start {
                    return Err(Error::new(
                        crate::error::Kind::Corrupt,
                        format!(
                            "{} ended at byte {}, before {}",
                            self.path.display(),
                            off + n as u64,
                            range.end
                        ),
                    ));
                }
                let from = (range.start.max(off) - off) as usize;
                let to = (range.end.min(off + n as u64) - off) as usize;
                f(&buf.as_slice()[from..to]);
                off += n as u64;
            }
            Ok(())
        })
    }

    /// Whether writes go around the page cache (the run's write mode, and the filesystem took
    /// `O_DIRECT` at open).
    pub fn is_direct(&self) -> bool {
        self.direct.is_some() && self.direct_ok.load(Ordering::Relaxed)
    }

    /// Starts writing `range` back to the device without waiting (`sync_file_range` with
    /// `SYNC_FILE_RANGE_WRITE`): buffered writes then reach the disk while the rest of the file
    /// arrives, so the final fsync is short and dirty pages do not pile up. Durability still
    /// comes from that fsync; this only moves the work earlier. Where the call is not
    /// supported, the final fsync does it all. Its result is ignored safely: `WRITE` alone does
    /// not consume a write-back error, so the final fsync still reports it (adding `WAIT_AFTER`
    /// would need the result checked).
    pub fn start_writeback(&self, range: ByteRange) {
        use std::os::fd::AsRawFd;
        // SAFETY: sync_file_range only reads its integer arguments; the descriptor is ours
        // and open for the life of `self`.
        unsafe {
            libc::sync_file_range(
                self.file.as_raw_fd(),
                range.start as libc::off64_t,
                (range.end - range.start) as libc::off64_t,
                libc::SYNC_FILE_RANGE_WRITE,
            );
        }
    }

    /// Makes written data durable (before its journal record, and before the rename).
    pub fn sync_data(&self) -> Result<()> {
        self.file
            .sync_data()
            .map_err(|e| Error::local("sync", &self.path, e).context(&self.shown))
    }

    /// Data and metadata, before the file's name is made final.
    pub fn sync_all(&self) -> Result<()> {
        self.file
            .sync_all()
            .map_err(|e| Error::local("sync", &self.path, e).context(&self.shown))
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn file(&self) -> &File {
        &self.file
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn a_buffer_of_whole_huge_pages_is_aligned_to_them_and_zeroed() {
        for (cap, align) in [
            (HUGE_PAGE, HUGE_PAGE),
            (2 * HUGE_PAGE, HUGE_PAGE),
            (256 << 10, DIRECT_ALIGN),
        ] {
            let mut buf = AlignedBuf::new(cap);
            assert_eq!(buf.capacity(), cap);
            assert_eq!(buf.ptr as usize % align, 0, "{cap}");
            // SAFETY: the allocation is `cap` bytes, zeroed at creation.
            let all = unsafe { std::slice::from_raw_parts(buf.ptr, buf.cap) };
            assert!(all.iter().all(|&b| b == 0));
            let data = vec![7u8; cap];
            assert_eq!(buf.fill(&data), cap);
            assert_eq!(buf.as_slice(), &data[..]);
        }
    }

    proptest! {
        /// The streaming copy's head, body and tail together are exactly the bytes given, at
        /// any destination alignment and length, and nothing past them is touched.
        #[test]
        fn fill_copies_exactly_what_fits(
            before in 0usize..200,
            len in 0usize..20_000,
            seed in any::<u8>(),
        ) {
            let mut buf = AlignedBuf::new(16 << 10);
            let pre: Vec<u8> = (0..before).map(|i| i as u8 ^ 0x5a).collect();
            prop_assert_eq!(buf.fill(&pre), before);
            let data: Vec<u8> = (0..len).map(|i| (i as u8).wrapping_mul(31) ^ seed).collect();
            let took = buf.fill(&data);
            prop_assert_eq!(took, len.min(buf.capacity() - before));
            prop_assert_eq!(&buf.as_slice()[..before], &pre[..]);
            prop_assert_eq!(&buf.as_slice()[before..], &data[..took]);
            // SAFETY: the allocation is `cap` bytes, zeroed at creation.
            let all = unsafe { std::slice::from_raw_parts(buf.ptr, buf.cap) };
            prop_assert!(all[before + took..].iter().all(|&b| b == 0));
        }
    }

    #[test]
    fn a_part_file_is_reserved_whole_when_opened() {
        use std::os::unix::fs::MetadataExt;
        let tmp = tempfile::tempdir().unwrap();
        let dir = Dir::open(tmp.path()).unwrap();
        let size = 3 << 20;
        let part = PartFile::open(&dir, "r.part", size, false, "r", true).unwrap();
        let meta = std::fs::metadata(part.path()).unwrap();
        assert_eq!(meta.len(), size);
        assert!(
            meta.blocks() * 512 >= size,
            "{} bytes allocated for a {size}-byte part file",
            meta.blocks() * 512
        );
        // Reopened to resume: the bytes written stay.
        part.write_at(&[7u8; 100], 10).unwrap();
        drop(part);
        let again = PartFile::open(&dir, "r.part", size, true, "r", true).unwrap();
        let got = std::fs::read(again.path()).unwrap();
        assert_eq!(&got[10..110], &[7u8; 100]);
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(48))]
        /// Streamed pieces of any size, from any offset, staged either way: the file holds
        /// exactly the bytes at their offsets, and buffered writes end on the write boundary
        /// (the last excepted).
        #[test]
        fn staged_pieces_land_in_order_and_buffered_writes_end_on_boundaries(
            start in 0u64..(3 << 20),
            sizes in proptest::collection::vec(1usize..400_000, 1..24),
            direct: bool,
        ) {
            let tmp = tempfile::tempdir().unwrap();
            let total: usize = sizes.iter().sum();
            let size = start + total as u64;
            let dir = Dir::open(tmp.path()).unwrap();
            let part = PartFile::open(&dir, "p.part", size, false, "p", direct).unwrap();
            let mut staging = Staging::new(256 * 1024);
            staging.begin(direct);
            let mut at = start;
            let mut sent = Vec::with_capacity(total);
            for (i, n) in sizes.iter().enumerate() {
                let piece: Vec<u8> = (0..*n).map(|k| (k * 31 + i * 7) as u8).collect();
                sent.extend_from_slice(&piece);
                let mut rest = bytes::Bytes::from(piece);
                loop {
                    rest = staging.take(rest);
                    while let Some(n) = staging.due(at) {
                        staging.write(&part, at, n).unwrap();
                        at += n as u64;
                        prop_assert!(
                            direct || at % BUFFERED_WRITE == 0,
                            "a buffered write ended at {at}"
                        );
                    }
                    if rest.is_empty() {
                        break;
                    }
                }
                prop_assert_eq!(at + staging.waiting() as u64, start + sent.len() as u64);
            }
            let n = staging.waiting();
            staging.write(&part, at, n).unwrap();
            prop_assert_eq!(staging.waiting(), 0);
            let got = std::fs::read(tmp.path().join("p.part")).unwrap();
            prop_assert_eq!(got.len() as u64, size);
            prop_assert!(got[start as usize..] == sent[..], "the bytes differ");
        }
    }

    #[test]
    fn many_tiny_pieces_are_written_before_they_outgrow_one_pwritev() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = Dir::open(tmp.path()).unwrap();
        let part = PartFile::open(&dir, "p.part", 1000, false, "p", false).unwrap();
        let mut staging = Staging::new(4096);
        staging.begin(false);
        let mut at = 0;
        for i in 0..1000u32 {
            staging.take(bytes::Bytes::from(vec![i as u8]));
            if let Some(n) = staging.due(at) {
                assert_eq!(n, MAX_PIECES, "all of them, far from the next boundary");
                staging.write(&part, at, n).unwrap();
                at += n as u64;
            }
        }
        let n = staging.waiting();
        staging.write(&part, at, n).unwrap();
        let got = std::fs::read(tmp.path().join("p.part")).unwrap();
        assert!(got.iter().enumerate().all(|(i, &b)| b == i as u8));
    }

    #[test]
    fn aligned_and_unaligned_writes_land_where_asked() {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("p.part");
        let size = 3 * DIRECT_ALIGN as u64 + 100;
        let dir = Dir::open(tmp.path()).unwrap();
        let part = PartFile::open(&dir, "p.part", size, false, "p", true).unwrap();
        let mut buf = AlignedBuf::new(2 * DIRECT_ALIGN);
        assert_eq!(
            buf.fill(&vec![1u8; 3 * DIRECT_ALIGN]),
            2 * DIRECT_ALIGN,
            "fills up to capacity"
        );
        part.write_at(buf.as_slice(), 0).unwrap();
        buf.clear();
        buf.fill(&vec![2u8; DIRECT_ALIGN + 100]);
        part.write_at(buf.as_slice(), 2 * DIRECT_ALIGN as u64)
            .unwrap();
        part.write_at(&[3u8; 10], 5).unwrap();
        part.sync_data().unwrap();
        let got = std::fs::read(&path).unwrap();
        assert_eq!(got.len() as u64, size);
        assert_eq!(&got[..5], &[1u8; 5]);
        assert_eq!(&got[5..15], &[3u8; 10]);
        assert!(got[15..2 * DIRECT_ALIGN].iter().all(|&b| b == 1));
        assert!(got[2 * DIRECT_ALIGN..].iter().all(|&b| b == 2));
    }
}
