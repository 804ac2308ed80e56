//! One writer per DEST, across processes, PID namespaces, containers and machines: several pods
//! on a ReadWriteMany volume, an init container and a sidecar of one pod, or a restarted pod
//! while the old one is still terminating.
//!
//! `flock` does not work reliably on NFS-like filesystems, so the lock is a lease: a file
//! `DEST/.model-loader/lock`, created with O_EXCL, that names its holder. Its content is written
//! once; the holder's heartbeat is the file's mtime, refreshed (to the volume's own "now",
//! `UTIME_NOW`) through a descriptor whose content it has just checked, so a heartbeat can never
//! overwrite another holder's lease. The heartbeat runs on its own OS thread.
//!
//! - **Waiting.** A lease is stale when its file has not changed for the stale limit as *this*
//!   waiter's monotonic clock measures it (immune to clock skew between hosts), or when its
//!   mtime is older than the limit by the wall clock. The only faster path: the holder ran on
//!   this very boot, in this very PID namespace (boot id and `/proc/self/ns/pid` match, and our
//!   `/proc` is our namespace's), and its pid is gone or belongs to a process started at another
//!   time. Two containers on one node with the node's hostname never take this path.
//! - **Take-over is atomic.** A waiter that judged a lease stale first creates, with O_EXCL, a
//!   marker named after that exact lease (content, inode, mtime); only the waiter that creates
//!   it may replace the lease, and only if the file is still byte-for-byte what it judged.
//! - **Release removes only our own lease.** A holder that lost the lease leaves the file
//!   alone; otherwise it is renamed aside first and its content read there; someone else's
//!   lease (taken over since) is linked back.
//! - **A holder that lost the lease stops.** [`Held::verify`] reads the file afresh; the
//!   state folder calls it before every journal record, part-file creation, rename and
//!   removal, and at least once a second while part files are written (the first write after
//!   taking the lease included). A read error is retried, then reported as such: it is never
//!   taken for a lost lease.

use std::io::Write;
use std::os::unix::fs::MetadataExt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use rustix::fs::OFlags;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::confine::Dir;
use crate::error::{Error, Kind, Result};
use crate::progress::Reporter;

const LOCK: &str = "lock";

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
struct Lease {
    /// Unique per process run: host, pid and a random part.
    owner: String,
    host: String,
    pid: u32,
    /// `/proc/sys/kernel/random/boot_id`: the same pid on another boot is another process.
    #[serde(default)]
    boot_id: String,
    /// `/proc/self/ns/pid` (`pid:[inode]`), empty when our `/proc` is not our namespace's.
    #[serde(default)]
    pid_ns: String,
    /// Start time of `pid` in clock ticks since boot, so a reused pid is told apart.
    #[serde(default)]
    start_ticks: u64,
    source: String,
    started: u64,
    /// When the lease was written (wall clock); the live heartbeat is the file's mtime.
    heartbeat: u64,
}

#[derive(Debug, Clone, Copy)]
pub struct LockTimes {
    /// How often the holder refreshes its heartbeat.
    pub heartbeat: Duration,
    /// A lease unchanged for this long belongs to a dead or frozen holder.
    pub stale: Duration,
    /// How often a waiter looks again.
    pub poll: Duration,
}

impl Default for LockTimes {
    fn default() -> Self {
        LockTimes {
            heartbeat: Duration::from_secs(5),
            stale: Duration::from_secs(30),
            poll: Duration::from_secs(1),
        }
    }
}

/// The lease this process holds; shared with everything that writes to DEST.
pub struct Held {
    dir: Arc<Dir>,
    owner: String,
    lost: AtomicBool,
    last_verified: Mutex<Option<Instant>>,
}

/// Retries of a lock read that failed with an I/O error (0.28 s in all: the sleeps block the
/// calling worker, so this stays short).
const LOCK_READ_RETRIES: u32 = 3;

impl Held {
    /// Reads the lock file now; fails (and stays failed) if it is no longer ours. An error
    /// reading it (EMFILE, EIO, ESTALE, EINTR) is retried for about a second, then fails the
    /// run as what it is — without taking the lease for lost, which it may well not be.
    pub fn verify(&self) -> Result<()> {
        if !self.lost.load(Ordering::SeqCst) {
            match self.look() {
                Ok(true) => {
                    *self.last_verified.lock().unwrap_or_else(|p| p.into_inner()) =
                        Some(Instant::now());
                    return Ok(());
                }
                Ok(false) => self.lost.store(true, Ordering::SeqCst),
                Err(e) => {
                    return Err(Error::local(
                        "read the lock file",
                        &self.dir.path().join(LOCK),
                        e,
                    ))
                }
            }
        }
        Err(Error::new(
            Kind::Local,
            format!(
                "the lock {} is no longer ours: another loader took it over (this one looked stalled for the --lock-stale time) or DEST was removed under us; stopped so two loaders never write one DEST — rerun to continue",
                self.dir.path().join(LOCK).display()
            ),
        ))
    }

    /// Whether the lock file, read afresh, holds our lease; read errors retried a few times.
    fn look(&self) -> std::io::Result<bool> {
        let mut tries = 0;
        loop {
            match Seen::try_read(&self.dir, LOCK) {
                Ok(seen) => {
                    return Ok(seen.is_some_and(|s| s.owner().as_deref() == Some(&*self.owner)))
                }
                Err(e) if tries >= LOCK_READ_RETRIES => return Err(e),
                Err(_) => {
                    tries += 1;
                    std::thread::sleep(Duration::from_millis(20 << tries));
                }
            }
        }
    }

    /// [`Held::verify`], unless it succeeded less than `within` ago: cheap enough to call per
    /// write, while a holder that was frozen past the stale limit still stops at its first write.
    pub fn verify_recent(&self, within: Duration) -> Result<()> {
        // Never verified counts as stale: a lease just taken is read before the first write.
        let fresh = self
            .last_verified
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .is_some_and(|t| t.elapsed() < within);
        if fresh && !self.lost.load(Ordering::SeqCst) {
            return Ok(());
        }
        self.verify()
    }

    pub fn is_lost(&self) -> bool {
        self.lost.load(Ordering::SeqCst)
    }
}

/// A held lease; [`DestLock::release`] (or dropping it) stops the heartbeat and removes the
/// lock file if it is still ours. Release only after every writer has stopped.
pub struct DestLock {
    held: Arc<Held>,
    heartbeat: Option<(std::thread::JoinHandle<()>, Arc<AtomicBool>)>,
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Seen {
    bytes: Vec<u8>,
    ino: u64,
    mtime_ns: i128,
}

impl Seen {
    /// The file as it is now; None when it does not exist or cannot be read.
    fn read(dir: &Dir, name: &str) -> Option<Seen> {
        Seen::try_read(dir, name).ok().flatten()
    }

    /// The file as it is now; `Ok(None)` only when it does not exist, so that a read error is
    /// never mistaken for a lease that is gone.
    fn try_read(dir: &Dir, name: &str) -> std::io::Result<Option<Seen>> {
        use std::io::Read;
        let mut f = match dir.open_file(name, OFlags::RDONLY, 0) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e),
        };
        let md = f.metadata()?;
        let mut bytes = Vec::new();
        Read::by_ref(&mut f)
            .take(64 * 1024)
            .read_to_end(&mut bytes)?;
        Ok(Some(Seen {
            bytes,
            ino: md.ino(),
            mtime_ns: md.mtime() as i128 * 1_000_000_000 + md.mtime_nsec() as i128,
        }))
    }

    /// The owner its lease names, if it parses.
    fn owner(&self) -> Option<String> {
        serde_json::from_slice::<Lease>(&self.bytes)
            .ok()
            .map(|l| l.owner)
    }

    fn fingerprint(&self) -> String {
        let mut h = Sha256::new();
        h.update(&self.bytes);
        h.update(self.ino.to_le_bytes());
        h.update(self.mtime_ns.to_le_bytes());
        hex::encode(&h.finalize()[..12])
    }

    /// Wall-clock age of the last heartbeat.
    fn age(&self) -> Duration {
        let mtime = UNIX_EPOCH + Duration::from_nanos(self.mtime_ns.max(0) as u64);
        SystemTime::now().duration_since(mtime).unwrap_or_default()
    }
}

fn write_new(dir: &Dir, name: &str, lease: &Lease) -> std::io::Result<()> {
    let mut f = dir.open_file(name, OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL, 0o664)?;
    f.write_all(&serde_json::to_vec(lease).map_err(std::io::Error::other)?)?;
    f.sync_all()
}

/// Takes over the lease that was `seen` stale, if no other waiter did first. True if we won.
fn take_over(dir: &Dir, seen: &Seen, mine: &Lease) -> std::io::Result<bool> {
    let marker = format!("lock.takeover.{}", seen.fingerprint());
    match write_new(dir, &marker, mine) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => return Ok(false),
        Err(e) => return Err(e),
    }
    // The marker is ours: no other waiter can act on this version of the lease. It must still
    // be that version (not refreshed by a holder that was only slow, not removed).
    if Seen::read(dir, LOCK).as_ref() != Some(seen) {
        let _ = dir.remove_file(&marker);
        return Ok(false);
    }
    let tmp = format!("lock.tmp.{}", mine.owner);
    let _ = dir.remove_file(&tmp);
    write_new(dir, &tmp, mine)?;
    dir.rename(&tmp, dir, LOCK)?;
    dir.sync().map_err(std::io::Error::other)?;
    // The marker stays: a waiter that read the same old lease long ago must still lose.
    Ok(true)
}

/// Markers of take-overs long past (a waiter cannot still be acting on them).
fn remove_old_markers(dir: &Dir, older_than: Duration) {
    for name in dir.entries().unwrap_or_default() {
        if !name.starts_with("lock.takeover.") && !name.starts_with("lock.tmp.") {
            continue;
        }
        let old = dir.stat(&name).is_ok_and(|st| {
            let mtime = UNIX_EPOCH + Duration::from_secs(st.st_mtime.max(0) as u64);
            SystemTime::now()
                .duration_since(mtime)
                .is_ok_and(|a| a > older_than)
        });
        if old {
            let _ = dir.remove_file(&name);
        }
    }
}

/// What one look at somebody else's lock file found.
enum Observed {
    /// It was stale or its holder is gone, and we took it over.
    TookOver,
    /// It changed or vanished under us: try to create it again at once.
    Changed,
    /// A live holder: wait and look again.
    Held,
}

/// A waiter's memory across looks: which lease it saw and since when (by its own clock, so a
/// holder's wrong clock cannot make it look stale), and when it last said it is waiting.
#[derive(Default)]
struct Waiter {
    watched: Option<(Seen, Instant)>,
    last_log: Option<Instant>,
}

impl Waiter {
    fn observe(
        &mut self,
        state: &Dir,
        me: &Lease,
        times: LockTimes,
        reporter: &dyn Reporter,
    ) -> std::io::Result<Observed> {
        let Some(seen) = Seen::read(state, LOCK) else {
            return Ok(Observed::Changed); // released in between
        };
        let unchanged_for = match &self.watched {
            Some((s, since)) if *s == seen => since.elapsed(),
            _ => {
                self.watched = Some((seen.clone(), Instant::now()));
                Duration::ZERO
            }
        };
        // An unreadable lease (torn by a crash, or being written) ages like any other.
        let held: Option<Lease> = serde_json::from_slice(&seen.bytes).ok();
        let gone = held.as_ref().is_some_and(|h| holder_is_gone(h, me));
        if gone || unchanged_for > times.stale || seen.age() > times.stale {
            if !take_over(state, &seen, me)? {
                return Ok(Observed::Changed);
            }
            reporter.warn(&format!(
                "took over the lock on {} from {}, which is gone or was silent for {}s",
                state.path().display(),
                held.as_ref()
                    .map_or("an unreadable lease".into(), |h| format!(
                        "{} (pid {})",
                        h.host, h.pid
                    )),
                seen.age().as_secs().max(unchanged_for.as_secs()),
            ));
            return Ok(Observed::TookOver);
        }
        if let Some(held) = &held {
            if self
                .last_log
                .is_none_or(|t| t.elapsed() >= Duration::from_secs(10))
            {
                reporter.info(&format!(
                    "waiting: {} is being loaded by {} (pid {}) since {}s, from {}",
                    state.path().parent().unwrap_or(state.path()).display(),
                    held.host,
                    held.pid,
                    now().saturating_sub(held.started),
                    held.source
                ));
                self.last_log = Some(Instant::now());
            }
        }
        Ok(Observed::Held)
    }
}

/// Who we are, as a lease records it.
fn identity(source: &str) -> Lease {
    let host = hostname();
    let pid = std::process::id();
    Lease {
        owner: format!("{host}-{pid}-{:08x}", fastrand::u32(..)),
        host,
        pid,
        boot_id: std::fs::read_to_string("/proc/sys/kernel/random/boot_id")
            .map(|s| s.trim().to_string())
            .unwrap_or_default(),
        pid_ns: own_pid_ns().unwrap_or_default(),
        start_ticks: start_ticks(pid).unwrap_or(0),
        source: source.to_string(),
        started: now(),
        heartbeat: now(),
    }
}

/// Our PID namespace, but only when `/proc` shows our namespace's processes (a container that
/// shares the host's `/proc` with its own namespace would otherwise see the wrong pids).
fn own_pid_ns() -> Option<String> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    let pid: u32 = stat.split(' ').next()?.parse().ok()?;
    if pid != std::process::id() {
        return None;
    }
    let ns = std::fs::read_link("/proc/self/ns/pid").ok()?;
    Some(ns.to_string_lossy().into_owned())
}

/// Field 22 of `/proc/PID/stat`: when the process started, in ticks since boot.
fn start_ticks(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    parse_start_ticks(&stat)
}

fn parse_start_ticks(stat: &str) -> Option<u64> {
    // The command name (field 2) may hold spaces and parentheses; fields after the last ')'.
    let rest = &stat[stat.rfind(')')? + 1..];
    rest.split_whitespace().nth(19)?.parse().ok()
}

/// The holder ran on this boot, in this PID namespace, and its process no longer exists (or
/// its pid now belongs to a process started at another time): no need to wait for staleness.
fn holder_is_gone(held: &Lease, me: &Lease) -> bool {
    let same_namespace = held.host == me.host
        && !held.boot_id.is_empty()
        && held.boot_id == me.boot_id
        && !held.pid_ns.is_empty()
        && held.pid_ns == me.pid_ns;
    if !same_namespace {
        return false;
    }
    // Our own pid included: a lease of this very process (started at our start time) is live.
    match start_ticks(held.pid) {
        None => true,
        Some(t) => held.start_ticks != 0 && t != held.start_ticks,
    }
}

impl DestLock {
    /// Waits until this process holds the lease in `state` (`DEST/.model-loader`).
    pub async fn acquire(
        state: Arc<Dir>,
        source: &str,
        times: LockTimes,
        reporter: &dyn Reporter,
    ) -> Result<DestLock> {
        let path = state.path().join(LOCK);
        let mut me = identity(source);
        let mut waiter = Waiter::default();
        loop {
            me.heartbeat = now();
            match write_new(&state, LOCK, &me) {
                Ok(()) => break,
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
                Err(e) => return Err(Error::local("create the lock file", &path, e)),
            }
            match waiter
                .observe(&state, &me, times, reporter)
                .map_err(|e| Error::local("take over the lock file", &path, e))?
            {
                Observed::TookOver => break,
                Observed::Changed => continue,
                Observed::Held => tokio::time::sleep(times.poll).await,
            }
        }
        remove_old_markers(&state, times.stale.max(Duration::from_secs(60)) * 10);
        let held = Arc::new(Held {
            dir: state,
            owner: me.owner,
            lost: AtomicBool::new(false),
            last_verified: Mutex::new(None),
        });
        let stop = Arc::new(AtomicBool::new(false));
        let beat = {
            let (held, stop) = (Arc::clone(&held), Arc::clone(&stop));
            std::thread::Builder::new()
                .name("lock-heartbeat".into())
                .spawn(move || heartbeat(held, times.heartbeat, stop))
                .map_err(|e| Error::local("start the lock heartbeat for", &path, e))?
        };
        Ok(DestLock {
            held,
            heartbeat: Some((beat, stop)),
        })
    }

    /// The lease, for everything that writes to DEST.
    pub fn held(&self) -> Arc<Held> {
        Arc::clone(&self.held)
    }

    /// Fails if another loader took the lease over.
    pub fn check(&self) -> Result<()> {
        self.held.verify()
    }

    /// Stops the heartbeat and removes the lock file if (and only if) it is still ours.
    pub fn release(mut self) {
        self.release_inner();
    }

    fn release_inner(&mut self) {
        let Some((beat, stop)) = self.heartbeat.take() else {
            return;
        };
        stop.store(true, Ordering::SeqCst);
        beat.thread().unpark();
        let _ = beat.join();
        // A holder that lost the lease never touches the lock file: it is the new holder's,
        // and moving it aside even for a moment could eject that holder or let a third in.
        if self.held.verify().is_err() {
            return;
        }
        let dir = &self.held.dir;
        let aside = format!("lock.release.{}", self.held.owner);
        if dir.rename(LOCK, dir, &aside).is_err() {
            return;
        }
        let ours = read_named(dir, &aside).is_some_and(|l| l.owner == self.held.owner);
        if !ours {
            // Taken over since the check: put it back (fails only if yet another was created).
            let _ = dir.link(&aside, LOCK);
        }
        let _ = dir.remove_file(&aside);
        let _ = dir.sync();
    }
}

fn read_named(dir: &Dir, name: &str) -> Option<Lease> {
    serde_json::from_slice(&Seen::read(dir, name)?.bytes).ok()
}

impl Drop for DestLock {
    fn drop(&mut self) {
        self.release_inner();
    }
}

/// Refreshes the lease's mtime through a descriptor whose content was just checked to be ours;
/// marks the lease lost the first time it is someone else's (or gone). On its own OS thread, so
/// no blocking work on the async workers can delay a beat (a 1-vCPU pod has one worker).
fn heartbeat(held: Arc<Held>, every: Duration, stop: Arc<AtomicBool>) {
    loop {
        std::thread::park_timeout(every);
        if stop.load(Ordering::SeqCst) {
            return;
        }
        match touch_if_ours(&held) {
            Ok(true) => {
                *held.last_verified.lock().unwrap_or_else(|p| p.into_inner()) =
                    Some(Instant::now());
            }
            Ok(false) => {
                held.lost.store(true, Ordering::SeqCst);
                return;
            }
            // A read error (EMFILE, ESTALE, EIO) says nothing about who holds the lease: the
            // beat is missed and the next one tries again; writes verify on their own.
            Err(_) => {}
        }
    }
}

/// Whether the lease is ours, and if so its mtime refreshed to the volume's "now"
/// (`UTIME_NOW`: an NFS server stamps its own time, so liveness never depends on this host's
/// clock agreeing with a waiter's).
fn touch_if_ours(held: &Held) -> std::io::Result<bool> {
    use std::io::Read;
    let mut f = match held.dir.open_file(LOCK, OFlags::RDWR, 0) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(false),
        Err(e) => return Err(e),
    };
    let mut bytes = Vec::new();
    Read::by_ref(&mut f)
        .take(64 * 1024)
        .read_to_end(&mut bytes)?;
    match serde_json::from_slice::<Lease>(&bytes) {
        Ok(l) if l.owner == held.owner => {
            use rustix::fs::{Timespec, Timestamps, UTIME_NOW, UTIME_OMIT};
            let times = Timestamps {
                last_access: Timespec {
                    tv_sec: 0,
                    tv_nsec: UTIME_OMIT,
                },
                last_modification: Timespec {
                    tv_sec: 0,
                    tv_nsec: UTIME_NOW,
                },
            };
            // A failed touch only ages the lease; the next beat tries again.
            let _ = rustix::fs::futimens(&f, &times);
            Ok(true)
        }
        _ => Ok(false),
    }
}

fn hostname() -> String {
    std::env::var("HOSTNAME")
        .ok()
        .filter(|h| !h.is_empty())
        .or_else(|| {
            std::fs::read_to_string("/proc/sys/kernel/hostname")
                .ok()
                .map(|h| h.trim().to_string())
        })
        .unwrap_or_else(|| "unknown-host".into())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::progress::QuietReporter;

    const FAST: LockTimes = LockTimes {
        heartbeat: Duration::from_millis(50),
        stale: Duration::from_secs(2),
        poll: Duration::from_millis(20),
    };

    fn dir(tmp: &tempfile::TempDir) -> Arc<Dir> {
        Arc::new(Dir::open(tmp.path()).unwrap())
    }

    fn lease_of(owner: &str, pid: u32, me: &Lease) -> Lease {
        Lease {
            owner: owner.into(),
            pid,
            start_ticks: start_ticks(pid).unwrap_or(1),
            ..me.clone()
        }
    }

    #[test]
    fn start_ticks_parse_survives_odd_command_names() {
        let stat = "42 (a) b) c) S 1 42 42 0 -1 4194560 1 0 0 0 0 0 0 0 20 0 1 0 123456 0 0";
        assert_eq!(parse_start_ticks(stat), Some(123456));
        assert_eq!(parse_start_ticks("garbage"), None);
        assert!(start_ticks(std::process::id()).is_some());
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_second_loader_waits_for_a_live_holder() {
        let tmp = tempfile::tempdir().unwrap();
        let d = dir(&tmp);
        let me = identity("s3://a");
        // A live holder in this namespace: pid 1 always exists.
        write_new(&d, LOCK, &lease_of("live", 1, &me)).unwrap();
        let second = tokio::spawn(async move {
            DestLock::acquire(d, "s3://a", FAST, &QuietReporter)
                .await
                .map(|_| ())
        });
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert!(!second.is_finished(), "the second loader must wait");
        std::fs::remove_file(tmp.path().join(LOCK)).unwrap();
        tokio::time::timeout(Duration::from_secs(2), second)
            .await
            .unwrap()
            .unwrap()
            .unwrap();
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_holder_in_another_pid_namespace_is_never_judged_by_its_pid() {
        let tmp = tempfile::tempdir().unwrap();
        let d = dir(&tmp);
        let me = identity("s3://a");
        // Same host and boot, a pid that does not exist here, but another namespace.
        let other = Lease {
            pid_ns: "pid:[1]".into(),
            ..lease_of("other-ns", 999_999, &me)
        };
        assert!(!holder_is_gone(&other, &me));
        // Same namespace, our pid but another start time: an earlier process, gone.
        let earlier = Lease {
            start_ticks: me.start_ticks.saturating_sub(1).max(1),
            ..lease_of("reused", me.pid, &me)
        };
        assert!(holder_is_gone(&earlier, &me));
        assert!(!holder_is_gone(&lease_of("us", me.pid, &me), &me));
        // Same namespace, a pid that exists but started at another time: reused.
        let reused = Lease {
            start_ticks: 1,
            ..lease_of("x", 1, &me)
        };
        assert!(holder_is_gone(&reused, &me) || start_ticks(1) == Some(1));
        // A lease from before these fields existed is judged by staleness only.
        let old = Lease {
            boot_id: String::new(),
            pid_ns: String::new(),
            ..lease_of("old", 999_999, &me)
        };
        assert!(!holder_is_gone(&old, &me));
        write_new(&d, LOCK, &other).unwrap();
        let slow = LockTimes {
            stale: Duration::from_secs(600),
            ..FAST
        };
        let r = tokio::time::timeout(
            Duration::from_millis(500),
            DestLock::acquire(d, "s3://a", slow, &QuietReporter),
        )
        .await;
        assert!(r.is_err(), "waited for the other namespace's holder");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_holder_whose_process_is_gone_is_taken_over_at_once() {
        let tmp = tempfile::tempdir().unwrap();
        let d = dir(&tmp);
        let mut child = std::process::Command::new("true").spawn().unwrap();
        let pid = child.id();
        child.wait().unwrap();
        write_new(&d, LOCK, &lease_of("gone", pid, &identity("s3://a"))).unwrap();
        let slow = LockTimes {
            stale: Duration::from_secs(600),
            ..FAST
        };
        tokio::time::timeout(
            Duration::from_secs(2),
            DestLock::acquire(d, "s3://a", slow, &QuietReporter),
        )
        .await
        .unwrap()
        .unwrap();
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn many_waiters_on_a_stale_lease_one_wins_at_a_time() {
        let tmp = tempfile::tempdir().unwrap();
        let d = dir(&tmp);
        let dead = Lease {
            host: "elsewhere".into(),
            ..identity("s3://a")
        };
        write_new(&d, LOCK, &dead).unwrap();
        let old = SystemTime::now() - Duration::from_secs(120);
        std::fs::File::options()
            .write(true)
            .open(tmp.path().join(LOCK))
            .unwrap()
            .set_modified(old)
            .unwrap();
        let inside = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let mut tasks = Vec::new();
        for _ in 0..8 {
            let (d, inside) = (Arc::clone(&d), Arc::clone(&inside));
            tasks.push(tokio::spawn(async move {
                let lock = DestLock::acquire(d, "s3://a", FAST, &QuietReporter)
                    .await
                    .unwrap();
                assert_eq!(inside.fetch_add(1, Ordering::SeqCst), 0, "two holders");
                tokio::time::sleep(Duration::from_millis(30)).await;
                lock.check().unwrap();
                inside.fetch_sub(1, Ordering::SeqCst);
                lock.release();
            }));
        }
        for t in tasks {
            tokio::time::timeout(Duration::from_secs(20), t)
                .await
                .unwrap()
                .unwrap();
        }
        assert!(!tmp.path().join(LOCK).exists());
    }

    /// A lease taken on a fresh state folder in `tmp`: the folder, the lock's path, the lock.
    async fn held(tmp: &tempfile::TempDir) -> (Arc<Dir>, std::path::PathBuf, DestLock) {
        let d = dir(tmp);
        let lock = DestLock::acquire(Arc::clone(&d), "s3://a", FAST, &QuietReporter)
            .await
            .unwrap();
        lock.check().unwrap();
        (d, tmp.path().join(LOCK), lock)
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_dead_holder_is_taken_over_and_the_old_holder_notices() {
        let tmp = tempfile::tempdir().unwrap();
        let (d, path, lock) = held(&tmp).await;
        // Someone else replaces our lease: we notice at once when asked, and at the heartbeat.
        let other = Lease {
            owner: "other".into(),
            ..identity("s3://a")
        };
        write_new(&d, "x", &other).unwrap();
        d.rename("x", &d, LOCK).unwrap();
        assert_eq!(lock.check().unwrap_err().kind(), Kind::Local);
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert!(lock.held().is_lost());
        // Dropping the lost lease must not even move the new holder's file aside for a moment
        // (that ejects the new holder, or lets a third loader in): its ctime stays as it was.
        let ctime = |p: &std::path::Path| {
            let m = std::fs::metadata(p).unwrap();
            (m.ino(), m.ctime(), m.ctime_nsec())
        };
        let before = ctime(&path);
        tokio::time::sleep(Duration::from_millis(20)).await;
        drop(lock);
        assert_eq!(
            ctime(&path),
            before,
            "the new holder's lease was not touched"
        );
        assert!(
            read_named(&d, LOCK).is_some_and(|l| l.owner == "other"),
            "a lock that is no longer ours is not removed"
        );
        assert!(path.exists());
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn an_unreadable_lock_file_is_an_error_not_a_lost_lease() {
        let tmp = tempfile::tempdir().unwrap();
        let (_, path, lock) = held(&tmp).await;
        // Reading it fails (EISDIR here; EMFILE, EIO or ESTALE in the field) for a while.
        let lease = std::fs::read(&path).unwrap();
        std::fs::remove_file(&path).unwrap();
        std::fs::create_dir(&path).unwrap();
        let err = lock.check().unwrap_err();
        assert!(err.message().contains("cannot read the lock file"), "{err}");
        assert!(!err.message().contains("took it over"), "{err}");
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert!(
            !lock.held().is_lost(),
            "a read error is no loss of the lease"
        );
        std::fs::remove_dir(&path).unwrap();
        std::fs::write(&path, lease).unwrap();
        lock.check().unwrap();
        drop(lock);
        assert!(!path.exists(), "released once readable again");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_torn_lease_is_taken_over_once_stale() {
        let tmp = tempfile::tempdir().unwrap();
        let d = dir(&tmp);
        std::fs::write(tmp.path().join(LOCK), b"{\"owner\":\"tor").unwrap();
        let lock = tokio::time::timeout(
            Duration::from_secs(5),
            DestLock::acquire(Arc::clone(&d), "s3://a", FAST, &QuietReporter),
        )
        .await
        .unwrap()
        .unwrap();
        lock.check().unwrap();
    }
}
