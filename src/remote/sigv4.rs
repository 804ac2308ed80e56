//! AWS Signature Version 4 for the few requests a downloader makes (GET object, HEAD, list):
//! pure functions, checked against the examples in AWS's S3 documentation. Hand-written
//! because it is ~100 lines, while an SDK would bring a second HTTP stack (see README,
//! "Dependencies").

use std::time::SystemTime;

use hmac::{Hmac, Mac};
use sha2::{Digest, Sha256};

pub use super::http::uri_encode;

/// SHA-256 of the empty payload, for GET, HEAD and list requests.
pub const EMPTY_SHA256: &str = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";
/// For uploads: the body is protected by Content-MD5 instead of being hashed twice.
pub const UNSIGNED_PAYLOAD: &str = "UNSIGNED-PAYLOAD";

/// Static or temporary credentials; Debug never shows the secret or the token.
#[derive(Clone)]
pub struct Credentials {
    pub key_id: String,
    pub secret: String,
    pub token: Option<String>,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credentials")
            .field("key_id", &self.key_id)
            .field("secret", &"** redacted **")
            .field("token", &self.token.as_ref().map(|_| "** redacted **"))
            .finish()
    }
}

/// Everything that goes into one signature.
pub struct Request<'a> {
    pub method: &'a str,
    /// `host` or `host:port`, exactly as sent in the Host header.
    pub host: &'a str,
    /// Already URI-encoded path (see [`uri_encode`]), starting with `/`.
    pub path: &'a str,
    /// Raw (unencoded) query parameters.
    pub query: &'a [(&'a str, &'a str)],
    /// Extra headers to sign besides host, x-amz-content-sha256, x-amz-date and the token:
    /// lower-case names.
    pub headers: &'a [(&'a str, &'a str)],
    pub region: &'a str,
    pub service: &'a str,
    /// `YYYYMMDDTHHMMSSZ`.
    pub amz_date: &'a str,
    /// [`EMPTY_SHA256`] or [`UNSIGNED_PAYLOAD`].
    pub payload_hash: &'a str,
}

/// The canonical (and wire) form of a query: encoded pairs sorted by key, then value.
pub fn canonical_query(query: &[(&str, &str)]) -> String {
    let mut pairs: Vec<(String, String)> = query
        .iter()
        .map(|(k, v)| (uri_encode(k, false), uri_encode(v, false)))
        .collect();
    pairs.sort();
    pairs
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join("&")
}

/// The headers to add to the request: `x-amz-date`, `x-amz-content-sha256`, the session
/// token if any, and `authorization`.
pub fn sign(creds: &Credentials, req: &Request<'_>) -> Vec<(&'static str, String)> {
    let mut headers: Vec<(String, String)> = vec![
        ("host".into(), req.host.to_string()),
        ("x-amz-content-sha256".into(), req.payload_hash.into()),
        ("x-amz-date".into(), req.amz_date.into()),
    ];
    if let Some(t) = &creds.token {
        headers.push(("x-amz-security-token".into(), t.clone()));
    }
    for (k, v) in req.headers {
        headers.push((k.to_string(), v.trim().to_string()));
    }
    headers.sort();
    let signed_headers = headers
        .iter()
        .map(|(k, _)| k.as_str())
        .collect::<Vec<_>>()
        .join(";");
    let canonical_headers: String = headers.iter().map(|(k, v)| format!("{k}:{v}\n")).collect();
    let canonical_request = format!(
        "{}\n{}\n{}\n{}\n{}\n{}",
        req.method,
        req.path,
        canonical_query(req.query),
        canonical_headers,
        signed_headers,
        req.payload_hash
    );
    let date = &req.amz_date[..8];
    let scope = format!("{date}/{}/{}/aws4_request", req.region, req.service);
    let string_to_sign = format!(
        "AWS4-HMAC-SHA256\n{}\n{scope}\n{}",
        req.amz_date,
        hex::encode(Sha256::digest(canonical_request.as_bytes()))
    );
    let k_date = hmac(format!("AWS4{}", creds.secret).as_bytes(), date.as_bytes());
    let k_region = hmac(&k_date, req.region.as_bytes());
    let k_service = hmac(&k_region, req.service.as_bytes());
    let k_signing = hmac(&k_service, b"aws4_request");
    let signature = hex::encode(hmac(&k_signing, string_to_sign.as_bytes()));

    let mut out = vec![
        ("x-amz-date", req.amz_date.to_string()),
        ("x-amz-content-sha256", req.payload_hash.to_string()),
        (
            "authorization",
            format!(
                "AWS4-HMAC-SHA256 Credential={}/{scope}, SignedHeaders={signed_headers}, Signature={signature}",
                creds.key_id
            ),
        ),
    ];
    if let Some(t) = &creds.token {
        out.push(("x-amz-security-token", t.clone()));
    }
    out
}

fn hmac(key: &[u8], data: &[u8]) -> Vec<u8> {
    let mut m = Hmac::<Sha256>::new_from_slice(key).expect("HMAC takes any key length");
    m.update(data);
    m.finalize().into_bytes().to_vec()
}

/// `YYYYMMDDTHHMMSSZ` for `t` (UTC).
pub fn amz_date(t: SystemTime) -> String {
    let secs = t
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let (days, rem) = (secs / 86_400, secs % 86_400);
    let (y, m, d) = civil_from_days(days as i64);
    format!(
        "{y:04}{m:02}{d:02}T{:02}{:02}{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

/// Days since 1970-01-01 to a proleptic Gregorian date (Howard Hinnant's algorithm).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn example_creds() -> Credentials {
        Credentials {
            key_id: "AKIAIOSFODNN7EXAMPLE".into(),
            secret: "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY".into(),
            token: None,
        }
    }

    fn signature(headers: &[(&'static str, String)]) -> String {
        let auth = &headers
            .iter()
            .find(|(k, _)| *k == "authorization")
            .unwrap()
            .1;
        auth.rsplit("Signature=").next().unwrap().to_string()
    }

    /// "Example: GET Object" in AWS's "Signature Calculations for the Authorization Header".
    #[test]
    fn aws_example_get_object() {
        let h = sign(
            &example_creds(),
            &Request {
                method: "GET",
                host: "examplebucket.s3.amazonaws.com",
                path: "/test.txt",
                query: &[],
                headers: &[("range", "bytes=0-9")],
                region: "us-east-1",
                service: "s3",
                amz_date: "20130524T000000Z",
                payload_hash: EMPTY_SHA256,
            },
        );
        assert_eq!(
            signature(&h),
            "f0e8bdb87c964420e857bd35b5d6ed310bd44f0170aba48dd91039c6036bdb41"
        );
    }

    /// "Example: GET Bucket (List Objects)" from the same page.
    #[test]
    fn aws_example_list_objects() {
        let h = sign(
            &example_creds(),
            &Request {
                method: "GET",
                host: "examplebucket.s3.amazonaws.com",
                path: "/",
                query: &[("prefix", "J"), ("max-keys", "2")],
                headers: &[],
                region: "us-east-1",
                service: "s3",
                amz_date: "20130524T000000Z",
                payload_hash: EMPTY_SHA256,
            },
        );
        assert_eq!(
            signature(&h),
            "34b48302e7b5fa45bde8084f4b7868a86f0a534bc59db6670ed5711ef69dc6f7"
        );
    }

    #[test]
    fn encoding_and_dates() {
        assert_eq!(uri_encode("a b/ü~*.bin", true), "a%20b/%C3%BC~%2A.bin");
        assert_eq!(uri_encode("a/b", false), "a%2Fb");
        assert_eq!(
            canonical_query(&[("prefix", "x/y"), ("list-type", "2")]),
            "list-type=2&prefix=x%2Fy"
        );
        assert_eq!(amz_date(SystemTime::UNIX_EPOCH), "19700101T000000Z");
        let t = SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(1_369_353_600);
        assert_eq!(amz_date(t), "20130524T000000Z");
        let leap = SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(951_782_400 + 3661);
        assert_eq!(amz_date(leap), "20000229T010101Z");
    }

    #[test]
    fn debug_hides_secrets() {
        let mut c = example_creds();
        c.token = Some("TOKENVALUE".into());
        let d = format!("{c:?}");
        assert!(
            !d.contains("EXAMPLEKEY") && !d.contains("TOKENVALUE"),
            "{d}"
        );
    }
}
