//! Values the command line and environment take: booleans, sizes, and URLs typed without
//! their `//`.

/// `1/0`, `true/false`, `yes/no`, `on/off`, any case: what Kubernetes manifests and shells
/// commonly write for a boolean.
pub fn parse_bool(s: &str) -> Result<bool, String> {
    match s.trim().to_ascii_lowercase().as_str() {
        "1" | "true" | "yes" | "on" => Ok(true),
        "0" | "false" | "no" | "off" => Ok(false),
        _ => Err(format!(
            "{s:?} is not a boolean (use 1/0, true/false, yes/no or on/off)"
        )),
    }
}

/// `s3:/b/p`, `s3:b/p`, `hf:org/repo`: a known scheme without `//`, which would otherwise be
/// taken as a local folder named `s3:`. Returns the URL the user most likely meant.
pub fn mistyped_url(value: &str) -> Option<String> {
    let (scheme, rest) = value.split_once(':')?;
    let known = ["s3", "gs", "gcs", "oss", "hf", "http", "https"];
    if !known.contains(&scheme.to_ascii_lowercase().as_str()) || rest.starts_with("//") {
        return None;
    }
    let scheme = if scheme.eq_ignore_ascii_case("gcs") {
        "gs".to_string()
    } else {
        scheme.to_ascii_lowercase()
    };
    Some(format!("{scheme}://{}", rest.trim_start_matches('/')))
}

/// `64MiB`, `1.5GiB`, `8M`, `512k`, `1048576`: IEC units (`KiB`, `MiB`, `GiB`, `TiB`) and the
/// bare letters (`k`, `M`, `G`, `T`) are binary, as in rclone and Docker; SI units (`kB`, `MB`,
/// `GB`, `TB`) are decimal. Case-insensitive; fractions allowed when the result is whole bytes.
pub fn parse_size(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let split = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let bad = || format!("{s:?} is not a size (e.g. 64MiB, 1.5GiB, 8MB, 1048576)");
    if num.is_empty() || num.starts_with('.') || num.ends_with('.') {
        return Err(bad());
    }
    let n: f64 = num.parse().map_err(|_| bad())?;
    let mult: u64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kib" => 1 << 10,
        "m" | "mib" => 1 << 20,
        "g" | "gib" => 1 << 30,
        "t" | "tib" => 1 << 40,
        "kb" => 1_000,
        "mb" => 1_000_000,
        "gb" => 1_000_000_000,
        "tb" => 1_000_000_000_000,
        _ => {
            return Err(format!(
                "{s:?}: unknown unit {unit:?} (use KiB, MiB, GiB, TiB, or kB, MB, GB, TB)"
            ))
        }
    };
    let bytes = n * mult as f64;
    if bytes >= 2f64.powi(53) {
        return Err(format!("{s:?} is too large"));
    }
    if bytes.fract() != 0.0 {
        return Err(format!("{s:?} is not a whole number of bytes"));
    }
    Ok(bytes as u64)
}

/// What the user asked for (`--write-mode`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum WriteMode {
    /// Chosen per DEST: see the module's rules.
    #[default]
    Auto,
    /// `O_DIRECT` where the filesystem takes it: no page cache filled, none evicted.
    Direct,
    /// Through the page cache: the engine that reads the model next finds it in memory.
    Buffered,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mistyped_urls_are_caught_and_real_paths_are_not() {
        assert_eq!(
            mistyped_url("s3:/uploads/x").as_deref(),
            Some("s3://uploads/x")
        );
        assert_eq!(mistyped_url("s3:uploads").as_deref(), Some("s3://uploads"));
        assert_eq!(mistyped_url("GCS:/b").as_deref(), Some("gs://b"));
        assert_eq!(
            mistyped_url("hf:org/repo").as_deref(),
            Some("hf://org/repo")
        );
        for fine in [
            "s3://bkt/p",
            "/models/x",
            "./s3",
            "c:/x",
            "my:dir",
            "models",
        ] {
            assert_eq!(mistyped_url(fine), None, "{fine}");
        }
    }

    #[test]
    fn sizes() {
        assert_eq!(parse_size("64MiB"), Ok(64 << 20));
        assert_eq!(parse_size("8M"), Ok(8 << 20));
        assert_eq!(parse_size("512k"), Ok(512 << 10));
        assert_eq!(parse_size("1048576"), Ok(1 << 20));
        assert_eq!(parse_size("1.5MiB"), Ok(3 << 19));
        assert_eq!(parse_size("1.5 GiB"), Ok(3 << 29));
        assert_eq!(parse_size("8mb"), Ok(8_000_000));
        assert_eq!(parse_size("2GB"), Ok(2_000_000_000));
        assert_eq!(parse_size("1TiB"), Ok(1 << 40));
        for bad in [
            "MiB",
            "5 parsecs",
            "1.5",
            "0.3k",
            ".5M",
            "5.M",
            "1..2M",
            "9999999TiB",
        ] {
            assert!(parse_size(bad).is_err(), "{bad}");
        }
        assert!(parse_size("5 parsecs")
            .unwrap_err()
            .contains("unknown unit"));
    }

    #[test]
    fn booleans_take_what_manifests_write() {
        for t in ["1", "true", "TRUE", "yes", "On", " on "] {
            assert_eq!(parse_bool(t), Ok(true), "{t}");
        }
        for f in ["0", "false", "False", "no", "OFF"] {
            assert_eq!(parse_bool(f), Ok(false), "{f}");
        }
        for bad in ["", "2", "maybe", "y"] {
            assert!(parse_bool(bad).unwrap_err().contains("1/0"), "{bad}");
        }
    }
}
