//! How the bytes are written: around the page cache (`O_DIRECT`) or through it. Chosen per
//! DEST for what follows the load, which is an engine reading every tensor:
//!
//! - Through the page cache when the model will be read on this node and fits comfortably in
//!   the memory this process may use: the engine then reads it from memory (vLLM's loader reads
//!   a model 4–7× faster from the page cache than from storage), instead of from the disk the
//!   direct writes went to.
//! - Around it when the model does not fit: its pages would only evict others (and, in a
//!   memory-limited container, be charged to it), and the engine reads from disk either way.
//! - Through it, always, on network and FUSE filesystems, tmpfs and overlay: `O_DIRECT` there
//!   is refused, ignored, or (the Linux NFS client) turns every write into a synchronous one.
//!
//! The classification and the decision are pure and unit-tested; `probe` reads statfs,
//! `/proc/meminfo` and the memory cgroup.

use std::path::Path;

pub use crate::cli::WriteMode;

/// What DEST's filesystem is, from its statfs magic.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FsKind {
    /// A local block filesystem (ext4, XFS, btrfs, ZFS, F2FS…): `O_DIRECT` works.
    Local(&'static str),
    /// Network, FUSE, memory or stacked: never `O_DIRECT`.
    Shared(&'static str),
    /// Unknown magic: treated as local (`O_DIRECT` is tried, and falls back per write).
    Unknown(i64),
}

/// `statfs(2)` `f_type` values (linux/magic.h, and each filesystem's own header where it is
/// not there: GPFS, Lustre, ZFS).
pub fn classify(magic: i64) -> FsKind {
    use FsKind::{Local, Shared};
    match magic as u32 {
        0xEF53 => Local("ext2/3/4"),
        0x5846_5342 => Local("xfs"),
        0x9123_683E => Local("btrfs"),
        0x2FC1_2FC1 => Local("zfs"),
        0xF2F5_2010 => Local("f2fs"),
        0x6969 => Shared("nfs"),
        0xFF53_4D42 => Shared("cifs"),
        0xFE53_4D42 => Shared("smb2"),
        0x517B => Shared("smb"),
        0x6573_5546 => Shared("fuse"),
        0x0BD0_0BD0 => Shared("lustre"),
        0x00C3_6400 => Shared("ceph"),
        0x4750_4653 => Shared("gpfs"),
        0x794C_7630 => Shared("overlay"),
        0x0102_1994 => Shared("tmpfs"),
        0x8584_58F6 => Shared("ramfs"),
        0x0102_1997 => Shared("9p"),
        0x5346_414F => Shared("afs"),
        0x7461_636F => Shared("ocfs2"),
        _ => FsKind::Unknown(magic),
    }
}

/// What the decision needs to know about the machine.
#[derive(Debug, Clone, Copy)]
pub struct Room {
    /// `MemAvailable` of /proc/meminfo.
    pub available: Option<u64>,
    /// The memory cgroup's limit less its usage (none when unlimited).
    pub cgroup_free: Option<u64>,
}

impl Room {
    /// What this process's page cache may hold without evicting what others need, or being
    /// reclaimed (and, in a container, throttled) before the engine reads it.
    pub fn budget(&self) -> Option<u64> {
        match (self.available, self.cgroup_free) {
            (Some(a), Some(c)) => Some(a.min(c)),
            (a, c) => a.or(c),
        }
    }
}

/// The mode a run writes with, and why (said once in the log).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Chosen {
    pub direct: bool,
    pub reason: String,
}

/// A model "fits comfortably" in at most this share of the budget: the engine's own memory,
/// the next model, and the kernel's dirty limits need the rest.
const SHARE: f64 = 0.5;

pub fn decide(asked: WriteMode, fs: FsKind, model_bytes: u64, room: Room) -> Chosen {
    let human = crate::progress::human;
    let fs_name = match fs {
        FsKind::Local(n) | FsKind::Shared(n) => n.to_string(),
        FsKind::Unknown(m) => format!("a filesystem of type {m:#x}"),
    };
    let chosen = |direct: bool, why: String| Chosen {
        direct,
        reason: format!(
            "write mode: {} ({why})",
            if direct { "direct" } else { "buffered" }
        ),
    };
    match (asked, fs) {
        (WriteMode::Buffered, _) => chosen(false, "--write-mode buffered".into()),
        // Asked for: some parallel filesystems (Lustre, GPFS) do well with it; where the
        // filesystem refuses it, each write falls back.
        (WriteMode::Direct, _) => chosen(true, format!("--write-mode direct, DEST on {fs_name}")),
        (_, FsKind::Shared(_)) => chosen(
            false,
            format!("DEST is on {fs_name}, where O_DIRECT is refused, ignored or made synchronous"),
        ),
        (WriteMode::Auto, _) => match room.budget() {
            Some(b) if (model_bytes as f64) <= b as f64 * SHARE => chosen(
                false,
                format!(
                    "the model, {}, fits in the {} of memory free here: the engine will read it \
                     from the page cache",
                    human(model_bytes),
                    human(b)
                ),
            ),
            Some(b) => chosen(
                true,
                format!(
                    "the model, {}, is more than half the {} of memory free here: its pages \
                     would only evict others",
                    human(model_bytes),
                    human(b)
                ),
            ),
            None => chosen(true, "the memory free here is unknown".into()),
        },
    }
}

/// Reads what `decide` needs for `dest` (an existing folder).
pub fn probe(dest: &Path) -> (FsKind, Room) {
    // f_type is an i64 here, a u32 or i32 on other targets.
    #[allow(clippy::unnecessary_cast)]
    let fs = rustix::fs::statfs(dest)
        .map(|s| classify(s.f_type as i64))
        .unwrap_or(FsKind::Unknown(0));
    let room = Room {
        available: std::fs::read_to_string("/proc/meminfo")
            .ok()
            .and_then(|m| meminfo_available(&m)),
        cgroup_free: cgroup_free(),
    };
    (fs, room)
}

fn meminfo_available(meminfo: &str) -> Option<u64> {
    let line = meminfo.lines().find(|l| l.starts_with("MemAvailable:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

/// The room left under this process's memory cgroup limits, found through /proc/self/cgroup:
/// the smallest of `limit - working set` over our cgroup and its ancestors (a container's
/// limit may sit on a parent of the cgroup the process is in). The working set is usage less
/// the inactive file cache, as the kubelet counts it: cache that the kernel reclaims first is
/// room. v1: `memory.limit_in_bytes`, `memory.usage_in_bytes`, `total_inactive_file`; v2:
/// `memory.max`, `memory.current`, `inactive_file`. `None` when nothing limits us (or nothing
/// can be read: MemAvailable then decides alone).
fn cgroup_free() -> Option<u64> {
    let cgroups = std::fs::read_to_string("/proc/self/cgroup").ok()?;
    for line in cgroups.lines() {
        let mut parts = line.splitn(3, ':');
        let (_, controllers, path) = (parts.next()?, parts.next()?, parts.next()?);
        let v1 = controllers.split(',').any(|c| c == "memory");
        if !v1 && !controllers.is_empty() {
            continue;
        }
        let root = if v1 {
            "/sys/fs/cgroup/memory"
        } else {
            "/sys/fs/cgroup"
        };
        let path = path.trim_end_matches('/');
        // Our folder and its ancestors; in a container without its own cgroup namespace the
        // path names the host's hierarchy while the mount is the container's own cgroup, so
        // the mount's root is read too (a limit there applies to us either way).
        let mut rooms = Vec::new();
        let mut rel = path;
        loop {
            if let Some(r) = room_in(&format!("{root}{rel}"), v1) {
                rooms.push(r);
            }
            match rel.rfind('/') {
                Some(i) if !rel.is_empty() => rel = &rel[..i],
                _ => break,
            }
        }
        return rooms.into_iter().flatten().min();
    }
    None
}

/// The room under one cgroup folder: `Some(None)` when it is readable and unlimited.
fn room_in(dir: &str, v1: bool) -> Option<Option<u64>> {
    let read = |f: &str| std::fs::read_to_string(format!("{dir}/{f}")).ok();
    let (limit, usage, inactive_key) = if v1 {
        (
            read("memory.limit_in_bytes")?,
            read("memory.usage_in_bytes")?,
            "total_inactive_file",
        )
    } else {
        (
            read("memory.max")?,
            read("memory.current")?,
            "inactive_file",
        )
    };
    let inactive = read("memory.stat")
        .and_then(|stat| stat_value(&stat, inactive_key))
        .unwrap_or(0);
    Some(room_under(&limit, &usage, inactive))
}

/// A `key value` line of memory.stat.
fn stat_value(stat: &str, key: &str) -> Option<u64> {
    stat.lines().find_map(|l| {
        let (k, v) = l.split_once(' ')?;
        (k == key).then(|| v.trim().parse().ok())?
    })
}

/// `limit - (usage - inactive file cache)`; `max` or a v1 "unlimited" (a page-rounded
/// i64::MAX) is no limit.
fn room_under(limit: &str, usage: &str, inactive: u64) -> Option<u64> {
    let limit: u64 = limit.trim().parse().ok()?;
    if limit >= 1 << 62 {
        return None;
    }
    let usage: u64 = usage.trim().parse().ok()?;
    Some(limit.saturating_sub(usage.saturating_sub(inactive)))
}

#[cfg(test)]
mod tests {
    use super::*;

    const GIB: u64 = 1 << 30;

    fn room(available: u64, cgroup: Option<u64>) -> Room {
        Room {
            available: Some(available),
            cgroup_free: cgroup,
        }
    }

    #[test]
    fn filesystems_are_told_apart_by_magic() {
        assert_eq!(classify(0xEF53), FsKind::Local("ext2/3/4"));
        assert_eq!(classify(0x5846_5342), FsKind::Local("xfs"));
        assert_eq!(classify(0x6969), FsKind::Shared("nfs"));
        assert_eq!(classify(0x6573_5546), FsKind::Shared("fuse"));
        assert_eq!(classify(0x0102_1994), FsKind::Shared("tmpfs"));
        assert_eq!(classify(0x794C_7630), FsKind::Shared("overlay"));
        // f_type is a signed long: on 32-bit targets CIFS's magic arrives negative.
        assert_eq!(
            classify(0xFF53_4D42_u32 as i32 as i64),
            FsKind::Shared("cifs")
        );
        assert_eq!(classify(0x1234), FsKind::Unknown(0x1234));
    }

    #[test]
    fn a_model_that_fits_is_written_through_the_page_cache() {
        let c = decide(
            WriteMode::Auto,
            FsKind::Local("ext4"),
            GIB,
            room(20 * GIB, None),
        );
        assert!(!c.direct, "{}", c.reason);
        assert!(c.reason.contains("page cache"), "{}", c.reason);
        let c = decide(
            WriteMode::Auto,
            FsKind::Local("ext4"),
            16 * GIB,
            room(20 * GIB, None),
        );
        assert!(c.direct, "{}", c.reason);
        // The container's limit, not the host's memory, decides.
        let c = decide(
            WriteMode::Auto,
            FsKind::Local("xfs"),
            2 * GIB,
            room(20 * GIB, Some(GIB / 4)),
        );
        assert!(c.direct, "{}", c.reason);
        let unknown = Room {
            available: None,
            cgroup_free: None,
        };
        assert!(decide(WriteMode::Auto, FsKind::Local("ext4"), 1, unknown).direct);
    }

    #[test]
    fn shared_filesystems_get_o_direct_only_when_asked() {
        for fs in [
            FsKind::Shared("nfs"),
            FsKind::Shared("fuse"),
            FsKind::Shared("tmpfs"),
        ] {
            for asked in [WriteMode::Auto, WriteMode::Buffered] {
                let c = decide(asked, fs, 100 * GIB, room(GIB, None));
                assert!(!c.direct, "{asked:?} on {fs:?}: {}", c.reason);
            }
            assert!(decide(WriteMode::Direct, fs, 1, room(GIB, None)).direct);
        }
        let big = 100 * GIB;
        assert!(
            !decide(
                WriteMode::Buffered,
                FsKind::Local("ext4"),
                big,
                room(GIB, None)
            )
            .direct
        );
        assert!(
            decide(
                WriteMode::Direct,
                FsKind::Local("ext4"),
                1,
                room(100 * GIB, None)
            )
            .direct
        );
    }

    #[test]
    fn cgroup_and_meminfo_values_are_read_as_the_kernel_writes_them() {
        assert_eq!(room_under("max\n", "123\n", 0), None);
        assert_eq!(room_under("9223372036854771712\n", "5\n", 0), None);
        assert_eq!(
            room_under("268435456\n", "67108864\n", 0),
            Some(201_326_592)
        );
        // Inactive file cache is room: the kernel reclaims it first.
        assert_eq!(
            room_under("268435456\n", "67108864\n", 1 << 26),
            Some(268_435_456)
        );
        assert_eq!(room_under("100\n", "200\n", 0), Some(0));
        let stat = "cache 5\ntotal_inactive_file 4096\ninactive_file 12\n";
        assert_eq!(stat_value(stat, "total_inactive_file"), Some(4096));
        assert_eq!(stat_value(stat, "inactive_file"), Some(12));
        assert_eq!(stat_value(stat, "active_file"), None);
        let m = "MemTotal:       24000000 kB\nMemFree:  1 kB\nMemAvailable:   20000000 kB\n";
        assert_eq!(meminfo_available(m), Some(20_000_000 * 1024));
        assert_eq!(meminfo_available("MemTotal: 1 kB\n"), None);
    }
}
