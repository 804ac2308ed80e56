//! One writer per DEST, across processes and machines: several pods on a ReadWriteMany volume,
//! or a restarted pod while the old one is still terminating.
//!
//! `flock` does not work reliably on NFS-like filesystems, so the lock is a lease: a file
//! `DEST/.model-loader/lock` created with O_EXCL that names its holder and carries a heartbeat
//! the holder refreshes. Others wait, logging who holds it; a lease whose heartbeat is older
//! than the stale limit belongs to a dead holder and is taken over (write a new lease to a temp
//! file, rename it over the old one, then re-read to see who won a race). A holder that finds
//! its lease replaced stops, rather than writing beside another loader.

use std::fs::{self, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use crate::error::{Error, Kind, Result};
use crate::progress::Reporter;

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
struct Lease {
    /// Unique per process run: host, pid and a random part.
    owner: String,
    host: String,
    pid: u32,
    source: String,
    started: u64,
    heartbeat: u64,
}

#[derive(Debug, Clone, Copy)]
pub struct LockTimes {
    /// How often the holder refreshes its heartbeat.
    pub heartbeat: Duration,
    /// A heartbeat older than this means the holder is gone.
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

/// A held lease; dropping it stops the heartbeat and removes the lock file.
pub struct DestLock {
    path: PathBuf,
    owner: String,
    stop: Arc<AtomicBool>,
    lost: Arc<AtomicBool>,
    heartbeat: Option<tokio::task::JoinHandle<()>>,
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

fn read_lease(path: &Path) -> Option<Lease> {
    serde_json::from_slice(&fs::read(path).ok()?).ok()
}

fn write_new(path: &Path, lease: &Lease) -> std::io::Result<()> {
    let mut f = OpenOptions::new().write(true).create_new(true).open(path)?;
    f.write_all(&serde_json::to_vec(lease).expect("lease serializes"))?;
    f.sync_all()
}

/// Replaces the lock file atomically (temp file + rename), for heartbeats and take-overs.
fn replace(path: &Path, lease: &Lease) -> std::io::Result<()> {
    let tmp = path.with_extension(format!("tmp.{}", lease.owner));
    {
        let mut f = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .open(&tmp)?;
        f.write_all(&serde_json::to_vec(lease).expect("lease serializes"))?;
        f.sync_all()?;
    }
    fs::rename(&tmp, path)
}

impl DestLock {
    /// Waits until this process holds the lease on `state_dir`.
    pub async fn acquire(
        state_dir: &Path,
        source: &str,
        times: LockTimes,
        reporter: &dyn Reporter,
    ) -> Result<DestLock> {
        let path = state_dir.join("lock");
        let host = hostname();
        let pid = std::process::id();
        let owner = format!("{host}-{pid}-{:08x}", fastrand::u32(..));
        let mut lease = Lease {
            owner: owner.clone(),
            host,
            pid,
            source: source.to_string(),
            started: now(),
            heartbeat: now(),
        };
        let mut last_log = None::<std::time::Instant>;
        loop {
            lease.heartbeat = now();
            match write_new(&path, &lease) {
                Ok(()) => break,
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
                Err(e) => return Err(Error::local("create the lock file", &path, e)),
            }
            match read_lease(&path) {
                Some(held)
                    if now().saturating_sub(held.heartbeat) > times.stale.as_secs()
                        || holder_is_gone(&held, &lease) =>
                {
                    reporter.warn(&format!(
                        "taking over the lock on {} from {} (pid {}), which is gone or silent for {}s",
                        state_dir.display(),
                        held.host,
                        held.pid,
                        now().saturating_sub(held.heartbeat)
                    ));
                    replace(&path, &lease)
                        .map_err(|e| Error::local("take over the lock file", &path, e))?;
                    // Two waiters may take over at once: the last rename wins, the other waits.
                    tokio::time::sleep(times.poll.min(Duration::from_millis(500))).await;
                    if read_lease(&path).is_some_and(|l| l.owner == owner) {
                        break;
                    }
                }
                Some(held) => {
                    if last_log.is_none_or(|t| t.elapsed() >= Duration::from_secs(10)) {
                        reporter.info(&format!(
                            "waiting: {} is being loaded by {} (pid {}) since {}s, from {}",
                            state_dir.parent().unwrap_or(state_dir).display(),
                            held.host,
                            held.pid,
                            now().saturating_sub(held.started),
                            held.source
                        ));
                        last_log = Some(std::time::Instant::now());
                    }
                }
                // Unreadable: being written right now, or torn by a crash. A torn file ages
                // like any other: its mtime stands in for the heartbeat.
                None => {
                    let age = fs::metadata(&path)
                        .and_then(|m| m.modified())
                        .ok()
                        .and_then(|t| t.elapsed().ok())
                        .unwrap_or_default();
                    if age > times.stale {
                        let _ = fs::remove_file(&path);
                        continue;
                    }
                }
            }
            tokio::time::sleep(times.poll).await;
        }

        let stop = Arc::new(AtomicBool::new(false));
        let lost = Arc::new(AtomicBool::new(false));
        let heartbeat = {
            let (path, stop, lost, mut lease) =
                (path.clone(), Arc::clone(&stop), Arc::clone(&lost), lease);
            tokio::spawn(async move {
                while !stop.load(Ordering::Relaxed) {
                    tokio::time::sleep(times.heartbeat).await;
                    if stop.load(Ordering::Relaxed) {
                        break;
                    }
                    if read_lease(&path).is_none_or(|l| l.owner != lease.owner) {
                        lost.store(true, Ordering::Relaxed);
                        break;
                    }
                    lease.heartbeat = now();
                    let p = path.clone();
                    let l = lease.clone();
                    let _ = tokio::task::spawn_blocking(move || replace(&p, &l)).await;
                }
            })
        };
        Ok(DestLock {
            path,
            owner,
            stop,
            lost,
            heartbeat: Some(heartbeat),
        })
    }

    /// Fails if another loader took the lease over (this one looked dead): writing on would
    /// mix two loaders' files.
    pub fn check(&self) -> Result<()> {
        if self.lost.load(Ordering::Relaxed) {
            return Err(Error::new(
                Kind::Local,
                format!(
                    "the lock {} is no longer ours: another loader took it over (this one looked stalled) or DEST was removed under us; stopping so two loaders never write one DEST",
                    self.path.display()
                ),
            ));
        }
        Ok(())
    }
}

impl Drop for DestLock {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(h) = self.heartbeat.take() {
            h.abort();
        }
        if read_lease(&self.path).is_some_and(|l| l.owner == self.owner) {
            let _ = fs::remove_file(&self.path);
        }
    }
}

/// A holder on this same host whose process no longer exists (killed, or this is a restarted
/// container reusing its PID) does not need the stale timeout to pass.
fn holder_is_gone(held: &Lease, me: &Lease) -> bool {
    if held.host != me.host {
        return false;
    }
    if held.pid == me.pid {
        return true;
    }
    // SAFETY: signal 0 only checks that the process exists.
    let r = unsafe { libc::kill(held.pid as libc::pid_t, 0) };
    r != 0 && std::io::Error::last_os_error().raw_os_error() == Some(libc::ESRCH)
}

fn hostname() -> String {
    std::env::var("HOSTNAME")
        .ok()
        .filter(|h| !h.is_empty())
        .or_else(|| {
            fs::read_to_string("/proc/sys/kernel/hostname")
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

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_second_loader_waits_for_a_live_holder() {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("lock");
        // A live holder on this host: pid 1 always exists.
        let live = Lease {
            owner: "live".into(),
            host: hostname(),
            pid: 1,
            source: "s3://a".into(),
            started: now(),
            heartbeat: now(),
        };
        write_new(&path, &live).unwrap();
        let dir = tmp.path().to_path_buf();
        let second = tokio::spawn(async move {
            DestLock::acquire(&dir, "s3://a", FAST, &QuietReporter)
                .await
                .map(|_| ())
        });
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert!(!second.is_finished(), "the second loader must wait");
        std::fs::remove_file(&path).unwrap();
        tokio::time::timeout(Duration::from_secs(2), second)
            .await
            .unwrap()
            .unwrap()
            .unwrap();
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_holder_whose_process_is_gone_is_taken_over_at_once() {
        let tmp = tempfile::tempdir().unwrap();
        let mut child = std::process::Command::new("true").spawn().unwrap();
        let pid = child.id();
        child.wait().unwrap();
        let gone = Lease {
            owner: "gone".into(),
            host: hostname(),
            pid,
            source: "s3://a".into(),
            started: now(),
            heartbeat: now(),
        };
        write_new(&tmp.path().join("lock"), &gone).unwrap();
        let slow = LockTimes {
            stale: Duration::from_secs(600),
            ..FAST
        };
        tokio::time::timeout(
            Duration::from_secs(2),
            DestLock::acquire(tmp.path(), "s3://a", slow, &QuietReporter),
        )
        .await
        .unwrap()
        .unwrap();
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_dead_holder_is_taken_over_and_the_old_holder_notices() {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("lock");
        let dead = Lease {
            owner: "gone-1-x".into(),
            host: "gone".into(),
            pid: 1,
            source: "s3://a".into(),
            started: 0,
            heartbeat: now() - 60,
        };
        write_new(&path, &dead).unwrap();
        let lock = tokio::time::timeout(
            Duration::from_secs(3),
            DestLock::acquire(tmp.path(), "s3://a", FAST, &QuietReporter),
        )
        .await
        .unwrap()
        .unwrap();
        assert!(read_lease(&path)
            .unwrap()
            .owner
            .contains(&std::process::id().to_string()));
        // Someone else replaces our lease: we notice at the next heartbeat.
        replace(&path, &dead).unwrap();
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert_eq!(lock.check().unwrap_err().kind(), Kind::Local);
        drop(lock);
        assert!(
            path.exists(),
            "a lock that is no longer ours is not removed"
        );
    }
}
