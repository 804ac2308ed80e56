//! Which listed files a run takes: --include/--exclude, then the paths that could escape DEST
//! or collide are refused. Pure: no I/O.

use std::collections::HashSet;

use crate::cli::Filter;
use crate::error::{self, Error, Result};
use crate::progress;
use crate::remote::RemoteFile;
use crate::url::{self, RelPath};

/// The largest object any supported store holds (S3 and OSS ~50 TB, GCS 5 TiB), with margin.
/// A listing that claims more is refused before any per-file work.
pub const MAX_OBJECT_SIZE: u64 = 64 << 40;

/// What the filters kept, and what they left out and why (for `--dry-run`).
pub struct Selection {
    pub files: Vec<(RelPath, RemoteFile)>,
    /// Listed path → the pattern (or lack of one) that filtered it out.
    pub filtered: Vec<(String, String)>,
}

/// Files that would land in a folder another pair of the call loads into (`nested`, relative
/// to DEST): two pairs would write, and then remove, each other's files. Refused before any
/// byte is fetched.
pub fn refuse_nested(
    files: &[(RelPath, RemoteFile)],
    nested: &[String],
    src: &url::SourceUrl,
) -> Result<()> {
    for (p, _) in files {
        let s = p.as_str();
        if let Some(n) = nested.iter().find(|n| {
            s == n.as_str()
                || s.strip_prefix(n.as_str())
                    .is_some_and(|r| r.starts_with('/'))
        }) {
            return Err(Error::usage(format!(
                "{src} has {s}, inside {n}/, which another pair of this call loads into: two \
                 models cannot share files; give that pair a DEST outside this one, or leave \
                 {n}/ out of this one with --exclude '{n}/'"
            )));
        }
    }
    Ok(())
}

/// Objects that must be restored before they can be read: one error naming them, before any
/// byte is fetched (rather than a 403 per object after other files were fetched).
fn refuse_archived(files: &[(RelPath, RemoteFile)], src: &url::SourceUrl) -> Result<()> {
    let archived: Vec<String> = files
        .iter()
        .filter_map(|(p, f)| f.archived.as_ref().map(|class| format!("{p} ({class})")))
        .collect();
    if archived.is_empty() {
        return Ok(());
    }
    let shown = archived
        .iter()
        .take(5)
        .cloned()
        .collect::<Vec<_>>()
        .join(", ");
    let more = archived.len().saturating_sub(5);
    Err(Error::new(
        error::Kind::Denied,
        format!(
            "{src} has {} archived object{} that cannot be read until restored: {shown}{}; \
             restore them first (aws s3api restore-object --restore-request Days=N), or leave \
             them out with --exclude",
            archived.len(),
            if archived.len() == 1 { "" } else { "s" },
            if more > 0 {
                format!(" and {more} more")
            } else {
                String::new()
            },
        ),
    ))
}

/// Applies --include/--exclude, then refuses any path that could escape DEST or collide: a
/// file and a folder of the same name, or two files with one path.
pub fn select(files: Vec<RemoteFile>, filter: &Filter, src: &url::SourceUrl) -> Result<Selection> {
    let mut out = Vec::with_capacity(files.len());
    let mut filtered = Vec::new();
    let mut seen = HashSet::new();
    let mut hint = None;
    for f in files {
        if let Some(why) = filter.why_not(&f.path) {
            if hint.is_none() {
                hint = filter.folder_hint(&f.path);
            }
            filtered.push((f.path, why));
            continue;
        }
        if f.size > MAX_OBJECT_SIZE {
            return Err(Error::new(
                error::Kind::Corrupt,
                format!(
                    "{src} lists {} as {} bytes, more than the {} any supported store allows; the listing cannot be trusted (a broken proxy or server?)",
                    f.path,
                    f.size,
                    progress::human(MAX_OBJECT_SIZE)
                ),
            ));
        }
        let p = RelPath::new(&f.path).map_err(|e| e.context(format!("in {src}")))?;
        if !seen.insert(p.as_str().to_string()) {
            return Err(Error::usage(format!(
                "{src} lists {p} twice; refusing to guess which one to keep"
            )));
        }
        out.push((p, f));
    }
    refuse_file_folder_clash(&out, &seen, src)?;
    refuse_archived(&out, src)?;
    if out.is_empty() {
        let remedy = match hint {
            Some(h) => format!("did you mean {h:?}? A folder pattern ends with '/'"),
            None => "check the patterns".into(),
        };
        return Err(Error::new(
            error::Kind::NotFound,
            format!("no file in {src} matches {}; {remedy}", filter.names()),
        ));
    }
    Ok(Selection {
        files: out,
        filtered,
    })
}

fn refuse_file_folder_clash(
    out: &[(RelPath, RemoteFile)],
    seen: &HashSet<String>,
    src: &url::SourceUrl,
) -> Result<()> {
    for (p, _) in out {
        let s = p.as_str();
        for (i, _) in s.match_indices('/') {
            if seen.contains(&s[..i]) {
                return Err(Error::usage(format!(
                    "{src} has both a file {} and a folder {0}/ (holding {s}); a local folder cannot be both. \
                     Skip one with --exclude",
                    &s[..i]
                )));
            }
        }
    }
    Ok(())
}
