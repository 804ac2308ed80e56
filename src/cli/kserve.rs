//! KServe's environment that is not S3 addressing (that is `remote::s3::kserve`): the storage
//! spec (`STORAGE_CONFIG`, `STORAGE_OVERRIDE_CONFIG`) and the file patterns
//! (`STORAGE_ALLOW_PATTERNS`, `STORAGE_IGNORE_PATTERNS`), read as KServe's own initializer reads
//! them (kserve/kserve `python/storage/kserve_storage/kserve_storage.py`:
//! `_update_with_storage_spec`, `_parse_patterns_from_env`).

use serde_json::Value;

use crate::error::{Error, Result};

/// `STORAGE_ALLOW_PATTERNS`/`STORAGE_IGNORE_PATTERNS`: a JSON array (`["*.json","*.safetensors"]`)
/// or, failing that, comma-separated; blank entries dropped; unset or empty is `None`. fnmatch
/// patterns, where `*` also matches `/`, as in the loader's own `--include`.
pub fn patterns(name: &str) -> Option<Vec<String>> {
    parse_patterns(&crate::env::var(name)?)
}

fn parse_patterns(value: &str) -> Option<Vec<String>> {
    let trimmed = |s: &str| Some(s.trim().to_string()).filter(|s| !s.is_empty());
    let out: Vec<String> = match serde_json::from_str::<Value>(value.trim()) {
        Ok(Value::Array(items)) => items
            .iter()
            .filter_map(|v| trimmed(&scalar_text(v)))
            .collect(),
        Ok(v) => trimmed(&scalar_text(&v)).into_iter().collect(),
        Err(_) => value.split(',').filter_map(trimmed).collect(),
    };
    (!out.is_empty()).then_some(out)
}

/// A JSON scalar as Python's `str()` writes it for the values KServe's JSON holds: strings
/// bare, booleans `True`/`False` (what `"anonymous": "False"` in KServe's samples compares to).
fn scalar_text(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Bool(true) => "True".into(),
        Value::Bool(false) => "False".into(),
        other => other.to_string(),
    }
}

/// The variables a storage spec of `"type": "s3"` stands for, as KServe's initializer sets
/// them (`_update_with_storage_spec`). `bucket` and `cabundle_configmap` are the webhook's
/// (it rewrites the URL and mounts the CA bundle); other keys are ignored, as KServe does.
const S3_KEYS: [(&str, &str); 7] = [
    ("endpoint_url", "AWS_ENDPOINT_URL"),
    ("access_key_id", "AWS_ACCESS_KEY_ID"),
    ("secret_access_key", "AWS_SECRET_ACCESS_KEY"),
    ("region", "AWS_DEFAULT_REGION"),
    ("ca_bundle", "AWS_CA_BUNDLE"),
    ("verify_ssl", "S3_VERIFY_SSL"),
    ("anonymous", "awsAnonymousCredential"),
];

/// `STORAGE_CONFIG` with `STORAGE_OVERRIDE_CONFIG`'s keys over it, as (variable, value) pairs
/// to set. Empty unless the type is `s3`: the other storage-spec types (`hdfs`, `webhdfs`) are
/// schemes the loader does not have, and their URLs are refused as such. Errors never quote the
/// JSON: it holds the secret key.
pub fn storage_spec(
    config: Option<&str>,
    overrides: Option<&str>,
) -> Result<Vec<(&'static str, String)>> {
    let mut spec = object(config, "STORAGE_CONFIG")?;
    for (k, v) in object(overrides, "STORAGE_OVERRIDE_CONFIG")? {
        spec.insert(k, v);
    }
    if spec.get("type").map(scalar_text).as_deref() != Some("s3") {
        return Ok(Vec::new());
    }
    let mut set: Vec<(&'static str, String)> = S3_KEYS
        .iter()
        .filter_map(|(key, var)| Some((*var, scalar_text(spec.get(*key)?))))
        .collect();
    // botocore reads only AWS_DEFAULT_REGION; the loader (like the AWS SDKs) reads AWS_REGION
    // first, which EKS's pod-identity webhooks set: the spec's region must win over it too.
    if let Some(region) = spec.get("region") {
        set.push(("AWS_REGION", scalar_text(region)));
    }
    Ok(set)
}

fn object(text: Option<&str>, name: &str) -> Result<serde_json::Map<String, Value>> {
    let Some(text) = text.map(str::trim).filter(|t| !t.is_empty()) else {
        return Ok(Default::default());
    };
    match serde_json::from_str::<Value>(text) {
        Ok(Value::Object(map)) => Ok(map),
        Ok(_) => Err(Error::usage(format!(
            "{name} is not a JSON object: KServe's storage spec is an object such as \
             {{\"type\": \"s3\", \"endpoint_url\": …}}; check the key of the storage-config secret"
        ))),
        Err(e) => Err(Error::usage(format!(
            "{name} is not valid JSON (line {}, column {}; its text is not shown, it holds \
             credentials): check the key of the storage-config secret",
            e.line(),
            e.column()
        ))),
    }
}

/// Applies the storage spec to this process's environment, once, before any thread starts;
/// later lookups (ours and the AWS SDK's) then see KServe's values, which replace what the
/// variables held, as in KServe's initializer. Returns a line for the log naming the variables
/// set (never their values).
pub fn apply_storage_spec() -> Result<Option<String>> {
    let set = storage_spec(
        std::env::var("STORAGE_CONFIG").ok().as_deref(),
        std::env::var("STORAGE_OVERRIDE_CONFIG").ok().as_deref(),
    )?;
    if set.is_empty() {
        return Ok(None);
    }
    let names: Vec<&str> = set.iter().map(|(k, _)| *k).collect();
    for (k, v) in set {
        // Edition 2021: safe; sound here because main calls this before any other thread.
        std::env::set_var(k, v);
    }
    Ok(Some(format!(
        "KServe storage spec (STORAGE_CONFIG, type s3): set {}",
        names.join(", ")
    )))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn patterns_as_kserve_reads_them() {
        let p = |s: &str| parse_patterns(s);
        assert_eq!(
            p(r#"["*.safetensors", " *.json ", ""]"#).unwrap(),
            ["*.safetensors", "*.json"]
        );
        assert_eq!(
            p("*.safetensors, *.json,,").unwrap(),
            ["*.safetensors", "*.json"]
        );
        assert_eq!(p(r#""*.bin""#).unwrap(), ["*.bin"]);
        assert_eq!(p("[not json"), Some(vec!["[not json".to_string()]));
        assert_eq!(p("[]"), None);
        assert_eq!(p(" , "), None);
    }

    #[test]
    fn storage_spec_maps_s3_keys_and_overrides_win() {
        let cfg = r#"{"type":"s3","access_key_id":"AKID","secret_access_key":"SECRET",
            "endpoint_url":"http://minio:9000","bucket":"models","region":"us-south",
            "anonymous":"False","verify_ssl":"0"}"#;
        let set = storage_spec(Some(cfg), Some(r#"{"endpoint_url":"http://other:9000"}"#)).unwrap();
        let get = |k: &str| set.iter().find(|(n, _)| *n == k).map(|(_, v)| v.as_str());
        assert_eq!(get("AWS_ENDPOINT_URL"), Some("http://other:9000"));
        assert_eq!(get("AWS_ACCESS_KEY_ID"), Some("AKID"));
        assert_eq!(get("AWS_SECRET_ACCESS_KEY"), Some("SECRET"));
        assert_eq!(get("AWS_DEFAULT_REGION"), Some("us-south"));
        assert_eq!(get("awsAnonymousCredential"), Some("False"));
        assert_eq!(get("S3_VERIFY_SSL"), Some("0"));
        assert_eq!(get("AWS_CA_BUNDLE"), None);
        assert_eq!(get("AWS_REGION"), Some("us-south"));
        assert_eq!(set.len(), 7, "bucket is the webhook's");
        // The type may come from the override alone; other types set nothing.
        assert_eq!(
            storage_spec(Some(r#"{"access_key_id":"A"}"#), Some(r#"{"type":"s3"}"#))
                .unwrap()
                .len(),
            1
        );
        assert!(storage_spec(Some(r#"{"type":"hdfs","x":"y"}"#), None)
            .unwrap()
            .is_empty());
        assert!(storage_spec(None, None).unwrap().is_empty());
        assert_eq!(
            storage_spec(Some(r#"{"type":"s3","anonymous":true}"#), None).unwrap(),
            [("awsAnonymousCredential", "True".to_string())]
        );
    }

    #[test]
    fn a_broken_spec_is_a_usage_error_that_never_quotes_it() {
        for bad in [
            r#"{"type":"s3","secret_access_key":"SECRET""#,
            r#"["SECRET"]"#,
        ] {
            let e = storage_spec(Some(bad), None).unwrap_err();
            assert_eq!(e.kind(), crate::error::Kind::Usage);
            assert!(e.message().contains("STORAGE_CONFIG"), "{}", e.message());
            assert!(!e.render().contains("SECRET"), "{}", e.render());
        }
        let e = storage_spec(None, Some("nope SECRET")).unwrap_err();
        assert!(e.message().contains("STORAGE_OVERRIDE_CONFIG") && !e.render().contains("SECRET"));
    }
}
