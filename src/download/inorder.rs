//! In-order hashing of a file fetched in several ranges at once, for checksums that cannot be
//! combined from pieces: the SHA-256 of a Hub LFS file, the MD5 ETag of a single-part S3 object,
//! a SHA-1, a multipart ETag over parts of unequal lengths. (CRCs combine mathematically and
//! checksums over equal parts are hashed part by part; they never come here.)
//!
//! One hashing thread per file follows a frontier: everything before `pos` is hashed. The
//! streams hand it what they receive, and it is kept in memory until hashed: bytes near the
//! frontier always, bytes further ahead while a memory budget shared by the run allows. A
//! stream further ahead than the budget allows waits (its socket is not read, so the server
//! slows down) until the frontier catches up. The file's ranges are handed out in order and
//! kept short ([`IN_ORDER_CHUNK`]), so the streams on one file stay within the budget of each
//! other and rarely wait; nothing is read back from disk but what an earlier run left.
//!
//! Spilling to disk and reading back when the budget is exceeded was tried first and measured
//! worse: on a disk busy with the download's own writes the read-back is slow, the frontier
//! falls behind, and ever more of the file spills (80 % read back, twice the wall time).

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};

use bytes::Bytes;

use crate::checksum::Hasher;
use crate::error::{Error, Kind, Result};
use crate::remote::{ByteRange, Checksum};

/// Requests for a file hashed in order are at most this long, so the streams working on one
/// file stay close together and what arrives ahead of the frontier fits the memory budget.
/// Measured on the hf bench (2 × 512 MiB, 16 streams): 4 MiB with a 64 MiB budget hashed 93 %
/// from memory and 7 % at the frontier with nothing read back; 16 MiB chunks with a 16 MiB
/// budget were as fast on loopback but let only about two streams per file make progress,
/// which on a real network (tens of MB/s per stream) would cap the file at two streams' speed.
pub const IN_ORDER_CHUNK: u64 = 4 << 20;

/// Bytes gathered per worker before one positional write when a run hashes files in order:
/// larger than the default (256 KiB) because such a run already holds up to [`hold_limit`] in
/// memory, so eight times fewer `O_DIRECT` writes (each a thread hand-over, a page pinning and
/// a device kick) cost only 28 MiB more at the default concurrency. 2 MiB, one huge page (see
/// [`crate::download::writer::AlignedBuf::new`]): 1 → 2 MiB with huge pages took the hf bench
/// from 1.52 to 1.43 CPU-s/GiB (8 rounds, lower in 7; BENCHMARKS.md).
pub const WRITE_BUFFER: usize = 2 << 20;

/// Bytes held in memory ahead of the frontiers, over all files of a run: one in-order chunk
/// per request in flight, so every stream can be a chunk ahead without waiting. Bounded by the
/// streams, not the model: 64 MiB with 16, 16 MiB while a ramped run keeps 2 (see `ramp`).
pub fn hold_limit(concurrency: usize) -> usize {
    concurrency.max(4) * IN_ORDER_CHUNK as usize
}
/// Bytes this close to a frontier are held whatever the budget: the stream at the frontier
/// must never wait for streams far ahead of it (they would wait for it in turn).
const NEAR: u64 = 4 << 20;
/// Waiting streams are woken after this much is hashed (not per piece: that would wake every
/// waiter thousands of times per GiB).
const WAKE_EVERY: u64 = 1 << 20;

/// Reads a range of the part file back, feeding it to the closure in pieces.
pub type ReadBack = Box<dyn Fn(ByteRange, &mut dyn FnMut(&[u8])) -> Result<()> + Send>;

/// The memory budget for held bytes, shared by every file of one run.
#[derive(Debug)]
pub struct Budget {
    held: AtomicUsize,
    /// Follows the streams a ramping run allows ([`Budget::set_limit`]).
    limit: AtomicUsize,
    /// Woken as frontiers move (every [`WAKE_EVERY`] bytes, and whenever a hashing thread runs
    /// out of work), for the streams that wait for room.
    pub freed: tokio::sync::Notify,
}

impl Budget {
    pub fn new(limit: usize) -> Arc<Self> {
        Arc::new(Budget {
            held: AtomicUsize::new(0),
            limit: AtomicUsize::new(limit),
            freed: tokio::sync::Notify::new(),
        })
    }

    fn take(&self, n: usize) -> bool {
        self.held
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |h| {
                h.checked_add(n)
                    .filter(|&t| t <= self.limit.load(Ordering::Acquire))
            })
            .is_ok()
    }

    fn give(&self, n: usize) {
        self.held.fetch_sub(n, Ordering::AcqRel);
    }

    /// A new limit: with fewer streams, fewer bytes ahead of the frontiers (a stream alone
    /// ahead would otherwise run the whole budget ahead, out of the caches); more room wakes
    /// the streams waiting for it.
    pub fn set_limit(&self, limit: usize) {
        if self.limit.swap(limit, Ordering::AcqRel) < limit {
            self.freed.notify_waiters();
        }
    }

    pub fn held(&self) -> usize {
        self.held.load(Ordering::Acquire)
    }
}

/// Where the hashed bytes came from: the measure of how well the ranges arrived in order.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Stats {
    /// Held because they arrived at (near) the frontier.
    pub at_frontier: u64,
    /// Held ahead of the frontier, within the budget.
    pub from_memory: u64,
    pub read_back: u64,
}

impl Stats {
    pub fn add(&mut self, o: Stats) {
        self.at_frontier += o.at_frontier;
        self.from_memory += o.from_memory;
        self.read_back += o.read_back;
    }

    pub fn total(&self) -> u64 {
        self.at_frontier + self.from_memory + self.read_back
    }
}

pub struct InOrder {
    state: Mutex<State>,
    wake: Condvar,
    budget: Arc<Budget>,
    size: u64,
    thread: Mutex<Option<std::thread::JoinHandle<Result<Checksum>>>>,
}

struct State {
    /// Everything before is hashed, or being hashed.
    pos: u64,
    /// Received ahead of the frontier and kept in memory: start → (bytes, counted in the budget).
    held: BTreeMap<u64, (Bytes, bool)>,
    /// In the part file already (an earlier run's ranges): start → end, read back in turn.
    landed: BTreeMap<u64, u64>,
    stats: Stats,
    /// No more bytes will be offered: once out of pieces, the thread ends.
    closed: bool,
}

enum Piece {
    Memory(Bytes, bool),
    Disk(ByteRange),
}

impl InOrder {
    /// `present`: ranges already in the part file (a resumed download), read back in turn.
    pub fn new(size: u64, present: &[ByteRange], budget: Arc<Budget>) -> Self {
        let landed = present
            .iter()
            .filter(|r| !r.is_empty())
            .map(|r| (r.start, r.end))
            .collect();
        InOrder {
            state: Mutex::new(State {
                pos: 0,
                held: BTreeMap::new(),
                landed,
                stats: Stats::default(),
                closed: false,
            }),
            wake: Condvar::new(),
            budget,
            size,
            thread: Mutex::new(None),
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Starts the hashing thread (once; later calls do nothing).
    pub fn start(self: &Arc<Self>, hasher: Hasher, read: ReadBack) -> Result<()> {
        let mut slot = self.thread.lock().unwrap_or_else(|p| p.into_inner());
        if slot.is_some() {
            return Ok(());
        }
        let me = Arc::clone(self);
        let handle = std::thread::Builder::new()
            .name("in-order hash".into())
            .spawn(move || me.run(hasher, read))
            .map_err(|e| {
                Error::new(Kind::Local, "could not start a hashing thread").with_source(e)
            })?;
        *slot = Some(handle);
        Ok(())
    }

    pub fn budget(&self) -> &Budget {
        &self.budget
    }

    /// Bytes received for offset `at`, kept until hashed. Returns false when they are too far
    /// ahead of the frontier for the budget: the caller waits for [`Budget::freed`] and offers
    /// them again.
    pub fn offer(&self, at: u64, bytes: &Bytes) -> bool {
        if bytes.is_empty() {
            return true;
        }
        let mut s = self.lock();
        let near = at < s.pos.saturating_add(NEAR);
        let counted = !near;
        if counted && !self.budget.take(bytes.len()) {
            return false;
        }
        let n = bytes.len() as u64;
        if near {
            s.stats.at_frontier += n;
        } else {
            s.stats.from_memory += n;
        }
        s.held.insert(at, (bytes.clone(), counted));
        // The thread only ever sleeps for the piece at its frontier.
        let wanted = at == s.pos;
        drop(s);
        if wanted {
            self.wake.notify_one();
        }
        true
    }

    /// The hashing thread: takes the piece at the frontier as soon as it is there.
    ///
    /// A frontier that moves changes which bytes are near it, and hashed pieces give budget
    /// back: both can let a waiting stream go on. Waiters are woken every [`WAKE_EVERY`] bytes
    /// and always before the thread sleeps, so none waits for a frontier that already moved:
    /// the piece the thread sleeps for is at its frontier, and a stream offering it never waits.
    fn run(&self, mut hasher: Hasher, read: ReadBack) -> Result<Checksum> {
        let mut unannounced = 0u64;
        loop {
            let piece = {
                let mut s = self.lock();
                loop {
                    if s.pos >= self.size {
                        self.budget.freed.notify_waiters();
                        return Ok(hasher.finish());
                    }
                    if let Some(p) = next_piece(&mut s) {
                        break p;
                    }
                    if s.closed {
                        self.budget.freed.notify_waiters();
                        return Err(Error::new(
                            Kind::Local,
                            "the hash cannot reach the end of the file",
                        ));
                    }
                    if unannounced > 0 {
                        unannounced = 0;
                        self.budget.freed.notify_waiters();
                    }
                    s = self.wake.wait(s).unwrap_or_else(|p| p.into_inner());
                }
            };
            match piece {
                Piece::Memory(bytes, counted) => {
                    hasher.update(&bytes);
                    if counted {
                        self.budget.give(bytes.len());
                    }
                    unannounced += bytes.len() as u64;
                }
                Piece::Disk(r) => {
                    read(r, &mut |d| hasher.update(d))?;
                    unannounced += r.len();
                }
            }
            if unannounced >= WAKE_EVERY {
                unannounced = 0;
                self.budget.freed.notify_waiters();
            }
        }
    }

    pub fn stats(&self) -> Stats {
        self.lock().stats
    }

    /// No more bytes will be offered (the file is complete, or the run stopped): the thread
    /// hashes what it has and ends.
    pub fn close(&self) {
        self.lock().closed = true;
        self.wake.notify_all();
    }

    /// Waits for the hash of the whole file (everything is written by now). `None` when it
    /// could not be completed (a read-back failed): the caller hashes the file again.
    pub fn finish(&self) -> Option<Checksum> {
        // Should a piece be missing (a bug), the thread ends instead of waiting for it forever.
        self.close();
        let handle = self
            .thread
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take()?;
        handle.join().ok()?.ok()
    }
}

/// The piece that starts at the frontier, if it is there; the frontier moves past it.
fn next_piece(s: &mut State) -> Option<Piece> {
    let pos = s.pos;
    let piece = if let Some((bytes, counted)) = s.held.remove(&pos) {
        s.pos += bytes.len() as u64;
        Piece::Memory(bytes, counted)
    } else {
        let end = s.landed.remove(&pos)?;
        s.stats.read_back += end - pos;
        s.pos = end;
        Piece::Disk(ByteRange { start: pos, end })
    };
    Some(piece)
}

impl Drop for InOrder {
    fn drop(&mut self) {
        let held: usize = self
            .lock()
            .held
            .values()
            .filter(|(_, counted)| *counted)
            .map(|(b, _)| b.len())
            .sum();
        self.budget.give(held);
        self.budget.freed.notify_waiters();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use sha2::{Digest, Sha256};

    fn sha(data: &[u8]) -> Checksum {
        Checksum::Sha256(Sha256::digest(data).into())
    }

    fn disk(data: Arc<Vec<u8>>) -> ReadBack {
        Box::new(move |r, f| {
            f(&data[r.start as usize..r.end as usize]);
            Ok(())
        })
    }

    fn frame(data: &[u8], at: u64, n: u64) -> Bytes {
        Bytes::copy_from_slice(&data[at as usize..(at + n) as usize])
    }

    #[test]
    fn pieces_in_any_order_hash_to_the_whole_within_the_budget() {
        let size = 40u64 << 20;
        let data: Arc<Vec<u8>> = Arc::new((0..size).map(|i| (i * 7 % 251) as u8).collect());
        let want = sha(&data);
        let budget = Budget::new(8 << 20);
        let io = Arc::new(InOrder::new(size, &[], Arc::clone(&budget)));
        io.start(Hasher::for_checksum(&want, size), disk(Arc::clone(&data)))
            .unwrap();
        // Four streams of 10 MiB in 1 MiB frames, the one at the frontier slowest: the others
        // are refused once they are 8 MiB ahead, and offer again after the frontier moved.
        let mut next = [0u64, 10 << 20, 20 << 20, 30 << 20];
        let mut refused = 0;
        while next
            .iter()
            .enumerate()
            .any(|(i, &n)| n < (i as u64 + 1) * (10 << 20))
        {
            for (i, n) in next.iter_mut().enumerate().rev() {
                if *n >= (i as u64 + 1) * (10 << 20) {
                    continue;
                }
                if io.offer(*n, &frame(&data, *n, 1 << 20)) {
                    *n += 1 << 20;
                } else {
                    refused += 1;
                    std::thread::sleep(std::time::Duration::from_millis(1));
                }
                assert!(budget.held() <= 8 << 20);
            }
        }
        assert!(refused > 0, "streams far ahead were held back");
        assert_eq!(io.finish(), Some(want));
        let stats = io.stats();
        assert_eq!(stats.total(), size);
        assert_eq!(stats.read_back, 0);
        assert_eq!(budget.held(), 0, "every held byte was given back");
    }

    #[test]
    fn a_resumed_prefix_is_read_back_and_the_rest_taken_as_it_comes() {
        let data = Arc::new(vec![5u8; 5000]);
        let want = sha(&data);
        let io = Arc::new(InOrder::new(
            5000,
            &[ByteRange {
                start: 0,
                end: 2000,
            }],
            Budget::new(0),
        ));
        io.start(Hasher::for_checksum(&want, 5000), disk(Arc::clone(&data)))
            .unwrap();
        assert!(
            io.offer(2000, &frame(&data, 2000, 3000)),
            "near the frontier"
        );
        assert_eq!(io.finish(), Some(want));
        assert_eq!(io.stats().read_back, 2000);
    }

    #[test]
    fn a_run_that_stops_early_ends_the_thread_without_a_checksum() {
        let data = Arc::new(vec![1u8; 1000]);
        let want = sha(&data);
        let budget = Budget::new(1000);
        let io = Arc::new(InOrder::new(100 << 20, &[], Arc::clone(&budget)));
        io.start(Hasher::for_checksum(&want, 100), disk(Arc::clone(&data)))
            .unwrap();
        assert!(
            io.offer(50 << 20, &frame(&data, 0, 100)),
            "within the budget"
        );
        assert!(
            !io.offer(60 << 20, &frame(&data, 0, 1000)),
            "beyond the budget"
        );
        assert_eq!(budget.held(), 100);
        io.close();
        assert_eq!(io.finish(), None);
        drop(io);
        assert_eq!(budget.held(), 0, "dropping the file gives its budget back");
    }

    #[test]
    fn a_piece_that_never_comes_gives_no_checksum_instead_of_a_hang() {
        let data = Arc::new(vec![1u8; 100]);
        let want = sha(&data);
        let io = Arc::new(InOrder::new(100, &[], Budget::new(100)));
        io.start(Hasher::for_checksum(&want, 100), disk(Arc::clone(&data)))
            .unwrap();
        assert!(io.offer(0, &frame(&data, 0, 40)));
        assert!(io.offer(60, &frame(&data, 60, 40)));
        assert_eq!(io.finish(), None, "bytes 40..60 never came");
    }

    #[test]
    fn a_failed_read_back_gives_no_checksum() {
        let want = sha(&[1u8; 100]);
        let io = Arc::new(InOrder::new(
            100,
            &[ByteRange { start: 0, end: 100 }],
            Budget::new(0),
        ));
        let fail: ReadBack = Box::new(|_, _| Err(Error::new(Kind::Local, "boom")));
        io.start(Hasher::for_checksum(&want, 100), fail).unwrap();
        assert_eq!(io.finish(), None);
    }
}
