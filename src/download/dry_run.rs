//! `--dry-run` for downloads: the plan, from a read-only look at DEST, on stdout.

use crate::cli::Config;
use crate::progress;

use super::plan::{plan, PlanOptions};
use super::select::Selection;
use super::state;

/// `--dry-run`: what a run would fetch, skip (up to date) and remove, from a read-only look
/// at DEST; with `--verbose` or `--progress json`, also what the patterns left out and why.
/// JSON mode prints one object per line.
pub(super) fn print(cfg: &Config, selection: &Selection, options: PlanOptions) {
    use std::io::Write;
    let (local, _) = state::peek(&cfg.dest, &selection.files).unwrap_or_default();
    let mut p = plan(selection.files.clone(), &local, options);
    // Planned largest first; read in path order.
    p.fetch.sort_by(|a, b| a.path.cmp(&b.path));
    p.skip.sort_by(|a, b| a.0.cmp(&b.0));
    p.remove.sort();
    let json = cfg.progress == progress::ProgressMode::Json;
    let mut out = std::io::stdout().lock();
    let mut line = |action: &str, size: Option<u64>, path: &str, why: Option<&str>| {
        let _ = if json {
            writeln!(
                out,
                "{}",
                serde_json::json!({"action": action, "path": path, "size": size, "reason": why})
            )
        } else {
            let size = size.map_or("-".to_string(), |s| s.to_string());
            let why = why.map(|w| format!("  ({w})")).unwrap_or_default();
            writeln!(out, "{action:<8}{size:>14}  {path}{why}")
        };
    };
    for f in &p.fetch {
        let missing: u64 = f.missing.iter().map(|r| r.end - r.start).sum();
        let on_disk = f.file.size - missing.min(f.file.size);
        let resumed =
            (f.resume && on_disk > 0).then(|| format!("resumes, {on_disk} bytes on disk"));
        line(
            "fetch",
            Some(f.file.size),
            f.path.as_str(),
            resumed.as_deref(),
        );
    }
    for (path, f) in &p.skip {
        line("skip", Some(f.size), path.as_str(), Some("up to date"));
    }
    for path in &p.remove {
        line(
            "remove",
            None,
            path.as_str(),
            Some("no longer selected or listed"),
        );
    }
    if cfg.verbose || json {
        for (path, why) in &selection.filtered {
            line("filtered", None, path, Some(why));
        }
    }
    let skipped: u64 = p.skip.iter().map(|(_, f)| f.size).sum();
    let summary = format!(
        "total: {} to fetch, {} ({} bytes); {} up to date ({}); {} to remove",
        progress::count(p.fetch.len(), "file"),
        progress::human(p.bytes_to_fetch),
        p.bytes_to_fetch,
        progress::count(p.skip.len(), "file"),
        progress::human(skipped),
        progress::count(p.remove.len(), "file"),
    );
    let _ = if json {
        writeln!(
            out,
            "{}",
            serde_json::json!({"action": "total", "fetch_files": p.fetch.len(),
                "fetch_bytes": p.bytes_to_fetch, "skip_files": p.skip.len(),
                "skip_bytes": skipped, "remove_files": p.remove.len(),
                "filtered_files": selection.filtered.len()})
        )
    } else {
        writeln!(out, "{summary}")
    };
}

/// `--dry-run` of an artifact with archive layers: their files are known only once a layer is
/// fetched and unpacked, so the layers are listed as they are, beside the plain files the
/// patterns keep.
pub(super) fn print_layers(
    cfg: &Config,
    filter: &crate::cli::Filter,
    files: &[crate::remote::RemoteFile],
    layers: &[crate::remote::RemoteFile],
) {
    use std::io::Write;
    let json = cfg.progress == progress::ProgressMode::Json;
    let mut out = std::io::stdout().lock();
    let why = "an archive: its files are known once it is fetched and unpacked";
    let kept: Vec<_> = files
        .iter()
        .filter(|f| filter.why_not(&f.path).is_none())
        .collect();
    for (action, f, reason) in kept
        .iter()
        .map(|f| ("fetch", *f, None))
        .chain(layers.iter().map(|l| ("unpack", l, Some(why))))
    {
        let _ = if json {
            writeln!(
                out,
                "{}",
                serde_json::json!({"action": action, "path": f.path, "size": f.size, "reason": reason})
            )
        } else {
            let reason = reason.map(|w| format!("  ({w})")).unwrap_or_default();
            writeln!(out, "{action:<8}{:>14}  {}{reason}", f.size, f.path)
        };
    }
    if !json {
        let _ = writeln!(
            out,
            "dry run: {} and {}; nothing was fetched",
            progress::count(kept.len(), "file"),
            progress::count(layers.len(), "archive layer")
        );
    }
}
