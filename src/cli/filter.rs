//! Which files to fetch: `--include`/`--exclude` globs with `hf download` semantics.

use globset::{GlobBuilder, GlobSet, GlobSetBuilder};

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
    /// Which sides came from KServe's `STORAGE_*_PATTERNS` (fnmatch).
    include_fnmatch: bool,
    exclude_fnmatch: bool,
}

impl Filter {
    pub fn new(include: &[String], exclude: &[String]) -> Result<Self> {
        Self::named(
            Patterns::hf(include, "--include"),
            Patterns::hf(exclude, "--exclude"),
        )
    }

    /// A filter whose messages name the options or variables the patterns came from.
    pub fn named(include: Patterns<'_>, exclude: Patterns<'_>) -> Result<Self> {
        Ok(Filter {
            include: glob_set(&include)?,
            exclude: glob_set(&exclude)?,
            include_name: include.name.to_string(),
            exclude_name: exclude.name.to_string(),
            include_fnmatch: include.syntax == Syntax::Fnmatch,
            exclude_fnmatch: exclude.syntax == Syntax::Fnmatch,
            include_text: nonblank(include.list),
            exclude_text: nonblank(exclude.list),
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

    /// For a URL that names one object: KServe's initializer applies its patterns only to the
    /// files under a folder (`exact_obj_found` in `_download_s3`), so its sides are dropped;
    /// the loader's own `--include`/`--exclude` still apply.
    pub fn for_exact_object(&self) -> Filter {
        let mut f = self.clone();
        if f.include_fnmatch {
            (f.include, f.include_text, f.include_fnmatch) = (None, Vec::new(), false);
            f.include_name = "--include".into();
        }
        if f.exclude_fnmatch {
            (f.exclude, f.exclude_text, f.exclude_fnmatch) = (None, Vec::new(), false);
            f.exclude_name = "--exclude".into();
        }
        f
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
            include_fnmatch: false,
            exclude_fnmatch: false,
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

/// One side of a filter: the patterns, where they came from, and how they are read.
pub struct Patterns<'a> {
    pub list: &'a [String],
    /// The option or variable, for messages.
    pub name: &'a str,
    pub syntax: Syntax,
}

impl<'a> Patterns<'a> {
    pub fn hf(list: &'a [String], name: &'a str) -> Self {
        Patterns {
            list,
            name,
            syntax: Syntax::Hf,
        }
    }
}

/// How a pattern is read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Syntax {
    /// `hf download`'s: globs with `{a,b}`, `\` escapes, and `dir/` for a folder's contents.
    Hf,
    /// Python's `fnmatch`, as KServe's initializer matches `STORAGE_*_PATTERNS`: only `*`, `?`
    /// and `[…]`; everything else literal.
    Fnmatch,
}

fn glob_set(side: &Patterns<'_>) -> Result<Option<GlobSet>> {
    let patterns = nonblank(side.list);
    if patterns.is_empty() {
        return Ok(None);
    }
    let flag = side.name;
    let mut b = GlobSetBuilder::new();
    for p in patterns {
        let p = match side.syntax {
            // A folder pattern means everything inside it, as in huggingface_hub.
            Syntax::Hf if p.ends_with('/') => format!("{p}*"),
            Syntax::Hf => p.clone(),
            Syntax::Fnmatch => fnmatch_to_glob(&p),
        };
        let g = GlobBuilder::new(&p)
            .backslash_escape(side.syntax == Syntax::Hf)
            .build()
            .map_err(|e| {
                Error::usage(format!("{flag} {p:?} is not a valid glob")).with_source(e)
            })?;
        b.add(g);
    }
    b.build()
        .map(Some)
        .map_err(|e| Error::usage(format!("{flag}: invalid globs")).with_source(e))
}

/// An fnmatch pattern as a globset glob that matches the same paths (read with backslash
/// escapes off), following CPython's `fnmatch.translate`: runs of `*` are one `*` (no `**`
/// folder rule), braces are literal, `[!…]` negates, a `^` opening a class is literal, an
/// unclosed `[` is literal.
pub fn fnmatch_to_glob(p: &str) -> String {
    let c: Vec<char> = p.chars().collect();
    let (mut out, mut i) = (String::new(), 0);
    while i < c.len() {
        match c[i] {
            '*' => {
                out.push('*');
                while c.get(i + 1) == Some(&'*') {
                    i += 1;
                }
            }
            '{' => out.push_str("[{]"),
            '}' => out.push_str("[}]"),
            '[' => {
                let mut j = i + 1;
                if c.get(j) == Some(&'!') {
                    j += 1;
                }
                if c.get(j) == Some(&']') {
                    j += 1;
                }
                while j < c.len() && c[j] != ']' {
                    j += 1;
                }
                if j >= c.len() {
                    out.push_str("[[]");
                } else {
                    let stuff: String = c[i + 1..j].iter().collect();
                    out.push_str(&class(&stuff));
                    i = j;
                }
            }
            ch => out.push(ch),
        }
        i += 1;
    }
    out
}

/// The body of an fnmatch class as a globset class: `^` first is a literal there.
fn class(stuff: &str) -> String {
    match stuff.strip_prefix('^') {
        Some("") => "^".into(),
        Some(rest) if rest.starts_with(']') => format!("[{rest}^]"),
        Some(rest) => format!("[{rest}^]"),
        None => format!("[{stuff}]"),
    }
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

    #[test]
    fn fnmatch_patterns_match_what_python_fnmatch_matches() {
        // Each case checked against CPython 3.11's fnmatch.fnmatch.
        let f = |p: &str| {
            let list = vec![p.to_string()];
            Filter::named(
                Patterns {
                    list: &list,
                    name: "STORAGE_ALLOW_PATTERNS",
                    syntax: Syntax::Fnmatch,
                },
                Patterns::hf(&[], "--exclude"),
            )
            .unwrap()
        };
        let cases: &[(&str, &str, bool)] = &[
            ("*.json", "config.json", true),
            ("*.json", "sub/config.json", true),
            ("**/*.json", "config.json", false),
            ("**/*.json", "a/config.json", true),
            ("{a,b}.txt", "a.txt", false),
            ("{a,b}.txt", "{a,b}.txt", true),
            ("a\\b", "a\\b", true),
            ("[^x]y", "^y", true),
            ("[^x]y", "xy", true),
            ("[^x]y", "zy", false),
            ("[!x]y", "zy", true),
            ("[!x]y", "xy", false),
            ("[abc", "[abc", true),
            ("[abc", "a", false),
            ("dir/", "dir/a.bin", false),
            (
                "model-0000?-of-*.safetensors",
                "model-00001-of-00002.safetensors",
                true,
            ),
            ("[]]x", "]x", true),
        ];
        for (p, path, want) in cases {
            assert_eq!(f(p).matches(path), *want, "fnmatch({path:?}, {p:?})");
        }
    }
}
