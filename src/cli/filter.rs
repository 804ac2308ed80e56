//! Which files to fetch: `--include`/`--exclude` globs with `hf download` semantics.

use globset::{Glob, GlobSet, GlobSetBuilder};

use crate::error::{Error, Result};

/// Splits a pattern list at commas: spaces around each pattern are trimmed, a comma inside
/// `{a,b}` belongs to the glob's alternation, and `\,` is a literal comma.
pub fn split_patterns(values: &[String]) -> Vec<String> {
    let mut out = Vec::new();
    for v in values {
        let (mut cur, mut depth, mut chars) = (String::new(), 0usize, v.chars());
        while let Some(c) = chars.next() {
            match c {
                '\\' => match chars.next() {
                    Some(',') => cur.push(','),
                    Some(n) => {
                        cur.push('\\');
                        cur.push(n);
                    }
                    None => cur.push('\\'),
                },
                '{' => {
                    depth += 1;
                    cur.push(c);
                }
                '}' => {
                    depth = depth.saturating_sub(1);
                    cur.push(c);
                }
                ',' if depth == 0 => out.push(std::mem::take(&mut cur)),
                _ => cur.push(c),
            }
        }
        out.push(cur);
    }
    out.into_iter()
        .map(|p| p.trim().to_string())
        .filter(|p| !p.is_empty())
        .collect()
}

/// Which relative paths to fetch: `hf download` semantics.
#[derive(Debug, Clone)]
pub struct Filter {
    include: Option<GlobSet>,
    exclude: Option<GlobSet>,
    /// The patterns as given, for hints and explanations.
    include_text: Vec<String>,
    exclude_text: Vec<String>,
    /// Where the patterns came from (`--include`, `MODEL_LOADER_INCLUDE`,
    /// `STORAGE_ALLOW_PATTERNS`…), so messages name what the user set.
    include_name: String,
    exclude_name: String,
}

impl Filter {
    pub fn new(include: &[String], exclude: &[String]) -> Result<Self> {
        Self::named(include, exclude, "--include", "--exclude")
    }

    /// A filter whose messages name the options or variables the patterns came from.
    pub fn named(
        include: &[String],
        exclude: &[String],
        include_name: &str,
        exclude_name: &str,
    ) -> Result<Self> {
        Ok(Filter {
            include: glob_set(include, include_name)?,
            exclude: glob_set(exclude, exclude_name)?,
            include_name: include_name.to_string(),
            exclude_name: exclude_name.to_string(),
            include_text: nonblank(include),
            exclude_text: nonblank(exclude),
        })
    }

    /// Why `path` is filtered out (None: it is selected): the first --exclude pattern that
    /// matches it, or that no --include pattern does.
    pub fn why_not(&self, path: &str) -> Option<String> {
        if let Some(set) = &self.exclude {
            if let Some(&i) = set.matches(path).first() {
                return Some(format!("{} {}", self.exclude_name, self.exclude_text[i]));
            }
        }
        match &self.include {
            Some(set) if !set.is_match(path) => Some(format!("matches no {}", self.include_name)),
            _ => None,
        }
    }

    /// An include pattern that names a folder of `path` without the trailing '/' (`sub` for
    /// `sub/a.bin`): what the user most likely meant when nothing matched.
    pub fn folder_hint(&self, path: &str) -> Option<String> {
        self.include_text.iter().find_map(|p| {
            let folder = p.trim_end_matches('*');
            (!folder.is_empty()
                && !folder.ends_with('/')
                && path.starts_with(folder)
                && path[folder.len()..].starts_with('/'))
            .then(|| format!("{folder}/"))
        })
    }

    /// `--include/--exclude`, or the names the patterns came from.
    pub fn names(&self) -> String {
        format!("{}/{}", self.include_name, self.exclude_name)
    }

    pub fn matches(&self, path: &str) -> bool {
        self.include.as_ref().is_none_or(|s| s.is_match(path))
            && !self.exclude.as_ref().is_some_and(|s| s.is_match(path))
    }
}

impl Default for Filter {
    fn default() -> Self {
        Filter {
            include: None,
            exclude: None,
            include_text: Vec::new(),
            exclude_text: Vec::new(),
            include_name: "--include".into(),
            exclude_name: "--exclude".into(),
        }
    }
}

fn nonblank(patterns: &[String]) -> Vec<String> {
    patterns
        .iter()
        .filter(|p| !p.trim().is_empty())
        .cloned()
        .collect()
}

fn glob_set(patterns: &[String], flag: &str) -> Result<Option<GlobSet>> {
    let patterns = nonblank(patterns);
    if patterns.is_empty() {
        return Ok(None);
    }
    let mut b = GlobSetBuilder::new();
    for p in patterns {
        // A folder pattern means everything inside it, as in huggingface_hub.
        let p = if p.ends_with('/') {
            format!("{p}*")
        } else {
            p.clone()
        };
        let g = Glob::new(&p).map_err(|e| {
            Error::usage(format!("{flag} {p:?} is not a valid glob")).with_source(e)
        })?;
        b.add(g);
    }
    b.build()
        .map(Some)
        .map_err(|e| Error::usage(format!("{flag}: invalid globs")).with_source(e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn patterns_split_at_commas_outside_braces() {
        let split =
            |v: &[&str]| split_patterns(&v.iter().map(|s| s.to_string()).collect::<Vec<_>>());
        assert_eq!(split(&["*.json, sub/"]), ["*.json", "sub/"]);
        assert_eq!(split(&["*.{json,txt}", " a "]), ["*.{json,txt}", "a"]);
        assert_eq!(split(&["a\\,b.txt,c"]), ["a,b.txt", "c"]);
        assert_eq!(split(&["x\\*y"]), ["x\\*y"]);
        assert_eq!(split(&[",, ,"]), Vec::<String>::new());
        let f = Filter::new(&split(&["*.{json,txt}", "a\\,b"]), &[]).unwrap();
        assert!(f.matches("c.json") && f.matches("d.txt") && f.matches("a,b"));
        assert!(!f.matches("e.bin"));
    }

    #[test]
    fn filters_follow_hf_download() {
        let f = Filter::new(
            &["*.safetensors".into(), "*.json".into()],
            &["*/optimizer*".into()],
        )
        .unwrap();
        assert!(f.matches("model.safetensors"));
        assert!(
            f.matches("sub/dir/model.safetensors"),
            "* crosses folders, as fnmatch does"
        );
        assert!(f.matches("config.json"));
        assert!(!f.matches("README.md"));
        assert!(!f.matches("ckpt/optimizer.json"));
        assert_eq!(f.why_not("a.json"), None);
        assert_eq!(
            f.why_not("README.md").as_deref(),
            Some("matches no --include")
        );
        assert_eq!(
            f.why_not("ckpt/optimizer.json").as_deref(),
            Some("--exclude */optimizer*")
        );
        let folder = Filter::new(&["onnx/".into()], &[]).unwrap();
        assert!(folder.matches("onnx/model.onnx") && !folder.matches("model.onnx"));
        assert!(Filter::default().matches("anything"));
        let f = Filter::new(&["sub".into(), "x*".into()], &[]).unwrap();
        assert_eq!(f.folder_hint("sub/a.bin").as_deref(), Some("sub/"));
        assert_eq!(f.folder_hint("x/a.bin").as_deref(), Some("x/"));
        assert_eq!(f.folder_hint("subway/a.bin"), None);
        assert!(Filter::new(&["a[".into()], &[]).is_err());
    }
}
