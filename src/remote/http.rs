//! What every HTTP-based source shares: one client configuration, the check that a ranged
//! reply is exactly the range asked for, Retry-After parsing, and transport error
//! classification.

use std::path::PathBuf;
use std::time::{Duration, SystemTime};

use futures_util::StreamExt;
use reqwest::header::{HeaderMap, CONTENT_RANGE, RETRY_AFTER};
use reqwest::{Response, StatusCode};

use super::types::{ByteRange, ByteStream};
use crate::error::{Condition, Error, Kind, Result};

/// Client settings that do not depend on the scheme.
#[derive(Debug, Clone)]
pub struct ClientOptions {
    pub connect_timeout: Duration,
    /// A body that delivers nothing for this long is cut and the chunk retried, so a stalled
    /// connection never hangs the pod.
    pub read_timeout: Duration,
    /// Extra PEM roots (AWS_CA_BUNDLE), merged with the system's (which honour SSL_CERT_FILE).
    pub ca_bundles: Vec<PathBuf>,
    pub max_idle_per_host: usize,
    /// TLS certificates are not checked (KServe's `S3_VERIFY_SSL=0`, said with a warning).
    pub accept_invalid_certs: bool,
}

impl Default for ClientOptions {
    fn default() -> Self {
        ClientOptions {
            connect_timeout: Duration::from_secs(10),
            read_timeout: Duration::from_secs(30),
            ca_bundles: Vec::new(),
            max_idle_per_host: 64,
            accept_invalid_certs: false,
        }
    }
}

/// One reqwest client: rustls, system proxies (HTTPS_PROXY/NO_PROXY), no automatic redirects
/// (S3 answers a wrong region with 301, which must be seen, not followed), no decompression
/// (Content-Length must stay the object's size), `Accept-Encoding: identity`.
pub fn client(opts: &ClientOptions) -> Result<reqwest::Client> {
    client_builder(opts)?.build().map_err(|e| {
        Error::new(
            Kind::Usage,
            "cannot set up the HTTP client (TLS roots or proxy settings)",
        )
        .with_source(e)
    })
}

/// The builder [`client`] finishes, for clients that add to it (the P2P proxy's).
pub fn client_builder(opts: &ClientOptions) -> Result<reqwest::ClientBuilder> {
    let mut b = reqwest::Client::builder()
        .user_agent(concat!("model-loader/", env!("CARGO_PKG_VERSION")))
        .redirect(reqwest::redirect::Policy::none())
        // Said outright: CloudFront (the Hub's CDN) ignores Range when a client accepts gzip,
        // and a proxy that adds compression must see that none is wanted. GCS asks for its
        // stored bytes per request.
        .default_headers(HeaderMap::from_iter([(
            reqwest::header::ACCEPT_ENCODING,
            reqwest::header::HeaderValue::from_static("identity"),
        )]))
        .connect_timeout(opts.connect_timeout)
        .read_timeout(opts.read_timeout)
        .pool_max_idle_per_host(opts.max_idle_per_host)
        .tcp_nodelay(true);
    for path in &opts.ca_bundles {
        let pem = std::fs::read(path).map_err(|e| {
            Error::usage(format!(
                "cannot read the CA bundle {} (AWS_CA_BUNDLE or --p2p-ca): fix the path or unset it",
                path.display()
            ))
            .with_source(e)
        })?;
        let not_pem = || {
            Error::usage(format!(
                "the CA bundle {} holds no valid PEM certificate (AWS_CA_BUNDLE or --p2p-ca): point it at a PEM file",
                path.display()
            ))
        };
        let certs =
            reqwest::Certificate::from_pem_bundle(&pem).map_err(|e| not_pem().with_source(e))?;
        if certs.is_empty() {
            return Err(not_pem());
        }
        b = b.tls_certs_merge(certs);
    }
    if opts.accept_invalid_certs {
        b = b.danger_accept_invalid_certs(true);
    }
    Ok(b)
}

/// Classifies a failure to send a request or read its body. Everything at this level is a
/// network problem worth retrying (resets, timeouts, refused connections, DNS hiccups), except a
/// certificate the client refuses: that is configuration, and the same on every try.
pub fn transport_error(what: &str, err: reqwest::Error) -> Error {
    if let Some(why) = refused_certificate(&err) {
        return Error::new(
            Kind::Network,
            format!(
                "{what}: the server's TLS certificate is not trusted ({why}): if the endpoint \
                 uses a private CA, give a PEM bundle holding it in SSL_CERT_FILE (or, for s3://, \
                 AWS_CA_BUNDLE); for a KServe S3 endpoint, S3_VERIFY_SSL=0 turns the check off"
            ),
        )
        .with_source(strip_url(err));
    }
    let detail = if err.is_timeout() {
        "timed out"
    } else if err.is_connect() {
        "could not connect"
    } else {
        "connection failed"
    };
    Error::new(Kind::Network, format!("{what}: {detail}"))
        .with_source(strip_url(err))
        .transient(None)
}

/// The rustls error of a refused server certificate, found in the chain reqwest → hyper →
/// io::Error (whose `source()` skips the error it wraps, so each io::Error is opened).
fn refused_certificate(err: &reqwest::Error) -> Option<String> {
    let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(err);
    while let Some(e) = cur {
        let inner = e
            .downcast_ref::<std::io::Error>()
            .and_then(|io| io.get_ref())
            .map(|i| i as &(dyn std::error::Error + 'static));
        for candidate in [Some(e), inner].into_iter().flatten() {
            if let Some(t @ rustls::Error::InvalidCertificate(_)) =
                candidate.downcast_ref::<rustls::Error>()
            {
                return Some(t.to_string());
            }
        }
        cur = inner.or_else(|| e.source());
    }
    None
}

/// reqwest puts the full URL in its Display; a presigned URL carries a signature in its query,
/// and an endpoint may carry `user:password@`, so errors keep only scheme, host and path.
fn strip_url(err: reqwest::Error) -> reqwest::Error {
    match err.url() {
        Some(u) if u.query().is_some() || !u.username().is_empty() || u.password().is_some() => {
            let mut u = u.clone();
            u.set_query(None);
            let _ = u.set_username("");
            let _ = u.set_password(None);
            err.with_url(u)
        }
        _ => err,
    }
}

/// The wait a server asked for: `Retry-After` as seconds or as an HTTP date.
pub fn retry_after(headers: &HeaderMap) -> Option<Duration> {
    let v = headers.get(RETRY_AFTER)?.to_str().ok()?.trim();
    if let Ok(secs) = v.parse::<u64>() {
        return Some(Duration::from_secs(secs));
    }
    let when = httpdate::parse_http_date(v).ok()?;
    Some(
        when.duration_since(SystemTime::now())
            .unwrap_or(Duration::ZERO),
    )
}

/// The most a listing page, API reply or upload reply may hold: a hostile or broken server
/// (a captive portal, an endless body) must not grow memory without bound. Generous: the Hub's
/// revision info names every file of a repository (a million-file dataset runs to ~100 MB).
pub const MAX_REPLY: usize = 256 << 20;
/// The most of an error reply that is read; the rest is dropped (only its code and message
/// are used).
pub const MAX_ERROR_BODY: usize = 64 << 10;

/// A reply's body as text, failing (non-transient) past `MAX_REPLY` bytes.
pub async fn capped_text(resp: Response, what: &str) -> Result<String> {
    let (body, whole) = read_capped(resp, MAX_REPLY)
        .await
        .map_err(|e| transport_error(what, e))?;
    if !whole {
        return Err(Error::new(
            Kind::Network,
            format!(
                "{what}: the server's reply is larger than {} MiB, which no listing page or API \
                 reply is; check the endpoint (a proxy or captive portal may be answering)",
                MAX_REPLY >> 20
            ),
        ));
    }
    Ok(String::from_utf8_lossy(&body).into_owned())
}

/// At most the first `MAX_ERROR_BODY` bytes of an error reply, as text; empty when it
/// cannot be read.
pub async fn error_text(resp: Response) -> String {
    read_capped(resp, MAX_ERROR_BODY)
        .await
        .map(|(b, _)| String::from_utf8_lossy(&b).into_owned())
        .unwrap_or_default()
}

/// Up to `cap` bytes of the body, and whether that was all of it.
async fn read_capped(mut resp: Response, cap: usize) -> reqwest::Result<(Vec<u8>, bool)> {
    let mut out = Vec::new();
    while let Some(chunk) = resp.chunk().await? {
        let room = cap - out.len();
        if chunk.len() > room {
            out.extend_from_slice(&chunk[..room]);
            return Ok((out, false));
        }
        out.extend_from_slice(&chunk);
    }
    Ok((out, true))
}

/// The error for a reply that says "try again later": transient, and [`Condition::Throttled`]
/// when the server asks to slow down (429, 503) rather than failed (500, 502, 504).
pub fn busy(message: String, status: StatusCode, after: Option<Duration>) -> Error {
    let e = Error::new(Kind::Network, message).transient(after);
    if matches!(status.as_u16(), 429 | 503) {
        e.with_condition(Condition::Throttled)
    } else {
        e
    }
}

/// A reply header's value as text, trimmed; None when absent or not text.
pub fn header(h: &HeaderMap, name: &str) -> Option<String> {
    h.get(name)
        .and_then(|v| v.to_str().ok())
        .map(|v| v.trim().to_string())
}

/// Statuses that say "try again later" whatever the service.
pub fn is_transient_status(status: StatusCode) -> bool {
    status == StatusCode::TOO_MANY_REQUESTS
        || status == StatusCode::REQUEST_TIMEOUT
        || status.is_server_error()
}

/// Set once something on the way has been seen to ignore `Range` (see
/// [`accept_whole_bodies`]). Process-wide: the CDN or proxy in front of a service is the same
/// for every file of the run.
static WHOLE_BODIES: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// From now on, a 200 with the whole object to a ranged GET is read as the object: the bytes
/// before the range are skipped and the range's own taken (the download plans one request
/// per file from then on, so this costs at most a retry's prefix).
pub fn accept_whole_bodies() {
    WHOLE_BODIES.store(true, std::sync::atomic::Ordering::SeqCst);
}

/// Checks a reply to `Range: bytes=a-b` and turns its body into a stream that fails unless
/// exactly `range.len()` bytes arrive. A server (or proxy) that ignores Range answers 200 with
/// the whole object; writing that at the chunk's offset would corrupt the file, so the reply
/// is refused with [`Condition::RangeIgnored`] (the download switches to whole-body streams),
/// or, once it has, read past the bytes before the range. A reply whose bytes were encoded on
/// the way (`Content-Encoding`) is refused: they are not the object's.
pub fn ranged_body(resp: Response, range: ByteRange, total: u64, what: &str) -> Result<ByteStream> {
    if let Some(enc) = resp
        .headers()
        .get(reqwest::header::CONTENT_ENCODING)
        .and_then(|v| v.to_str().ok())
        .filter(|e| !e.trim().eq_ignore_ascii_case("identity"))
    {
        return Err(Error::new(
            Kind::Network,
            format!(
                "{what}: the reply is {enc}-encoded although none was asked for (a proxy or \
                 CDN compressed it on the way); its bytes are not the object's, so it was \
                 discarded: exempt the storage host from the proxy's compression"
            ),
        )
        .transient(None));
    }
    ranged_body_as_stored(resp, range, total, what)
}

/// [`ranged_body`] for a service whose objects may be stored encoded (GCS with
/// `Accept-Encoding: gzip`): the reply's bytes are the stored ones whatever its
/// `Content-Encoding` says.
pub fn ranged_body_as_stored(
    resp: Response,
    range: ByteRange,
    total: u64,
    what: &str,
) -> Result<ByteStream> {
    let status = resp.status();
    let whole_file = range.start == 0 && range.end == total;
    let mut skip = 0;
    let ok = if status == StatusCode::PARTIAL_CONTENT {
        let cr = resp
            .headers()
            .get(CONTENT_RANGE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("");
        match parse_content_range(cr) {
            Some((s, e, t)) => s == range.start && e == range.end && t.is_none_or(|t| t == total),
            None => false,
        }
    } else if status == StatusCode::OK && whole_file {
        // Some servers answer a range covering the whole object with 200: fine, same bytes.
        true
    } else if status == StatusCode::OK && resp.content_length() == Some(total) {
        if !WHOLE_BODIES.load(std::sync::atomic::Ordering::SeqCst) {
            return Err(Error::new(
                Kind::Network,
                format!(
                    "{what}: asked for {range} of {total} bytes but the reply is the whole \
                     object (200): something on the way ignores Range"
                ),
            )
            .with_condition(Condition::RangeIgnored));
        }
        skip = range.start;
        true
    } else {
        false
    };
    if !ok {
        let got = resp
            .headers()
            .get(CONTENT_RANGE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("none")
            .to_string();
        return Err(Error::new(
            Kind::Network,
            format!(
                "{what}: asked for {range} of {total} but the server answered {status} with \
                 Content-Range {got}; a proxy or server that ignores Range would corrupt the \
                 file, so the reply was discarded"
            ),
        )
        .transient(None));
    }
    let expected = range.len();
    let state = BodyState {
        body: Box::pin(resp.bytes_stream()),
        what: what.to_string(),
        seen: 0,
        skip,
        whole_left: (status == StatusCode::OK && !whole_file).then_some(expected),
        done: false,
    };
    Ok(Box::pin(futures_util::stream::unfold(
        state,
        move |mut st| async move {
            if st.done {
                return None;
            }
            let item: std::result::Result<(), String> = match st.next().await {
                Some(Ok(b)) => {
                    st.seen += b.len() as u64;
                    if st.seen > expected {
                        Err(format!(
                            "the server sent more than the {expected} bytes asked for"
                        ))
                    } else {
                        return Some((Ok(b), st));
                    }
                }
                Some(Err(e)) => {
                    st.done = true;
                    let e = transport_error(&st.what, e);
                    return Some((Err(e), st));
                }
                None if st.seen < expected => Err(format!(
                    "the body ended after {} of {expected} bytes",
                    st.seen
                )),
                None => return None,
            };
            st.done = true;
            let msg = item.unwrap_err();
            let e = Error::new(Kind::Network, format!("{}: {msg}", st.what)).transient(None);
            Some((Err(e), st))
        },
    )))
}

impl BodyState {
    /// The next piece of the body within the range: a whole-object reply's bytes before the
    /// range are passed over, and its bytes after it cut off (the connection is dropped).
    async fn next(&mut self) -> Option<reqwest::Result<bytes::Bytes>> {
        loop {
            let mut b = match self.body.next().await? {
                Ok(b) => b,
                Err(e) => return Some(Err(e)),
            };
            if self.skip > 0 {
                let n = self.skip.min(b.len() as u64);
                self.skip -= n;
                b = b.slice(n as usize..);
                if b.is_empty() {
                    continue;
                }
            }
            if let Some(left) = self.whole_left.as_mut() {
                let keep = (*left).min(b.len() as u64);
                *left -= keep;
                b.truncate(keep as usize);
                if keep == 0 {
                    return None;
                }
            }
            return Some(Ok(b));
        }
    }
}

struct BodyState {
    body: std::pin::Pin<Box<dyn futures_util::Stream<Item = reqwest::Result<bytes::Bytes>> + Send>>,
    what: String,
    seen: u64,
    /// Bytes of a whole-object reply still to pass over before the range begins.
    skip: u64,
    /// For a whole-object reply: the range's bytes still to take.
    whole_left: Option<u64>,
    done: bool,
}

/// RFC 3986's unreserved characters (`A-Za-z0-9-_.~`) stay; every other byte becomes `%XX`.
/// What S3 SigV4 and the Hub (Python's `quote`) expect.
const COMPONENT: &percent_encoding::AsciiSet = &percent_encoding::NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'_')
    .remove(b'.')
    .remove(b'~');
/// The same, keeping `/` (object keys and repository paths in URL paths).
const PATH: &percent_encoding::AsciiSet = &COMPONENT.remove(b'/');

/// Percent-encodes `s` as a URL component, or as a path when `keep_slash`.
pub fn uri_encode(s: &str, keep_slash: bool) -> String {
    let set = if keep_slash { PATH } else { COMPONENT };
    percent_encoding::utf8_percent_encode(s, set).to_string()
}

/// Parses `bytes a-b/total` (or `bytes a-b/*`) into a half-open range and the total.
pub fn parse_content_range(v: &str) -> Option<(u64, u64, Option<u64>)> {
    let rest = v.trim().strip_prefix("bytes ")?;
    let (range, total) = rest.split_once('/')?;
    let (a, b) = range.split_once('-')?;
    let (a, b): (u64, u64) = (a.trim().parse().ok()?, b.trim().parse().ok()?);
    if b < a {
        return None;
    }
    let total = match total.trim() {
        "*" => None,
        t => Some(t.parse().ok()?),
    };
    Some((a, b.checked_add(1)?, total))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reply(status: u16, headers: &[(&str, &str)], body: &'static [u8]) -> Response {
        let mut b = ::http::Response::builder().status(status);
        for (k, v) in headers {
            b = b.header(*k, *v);
        }
        Response::from(b.body(body).unwrap())
    }

    #[tokio::test]
    async fn replies_to_a_range_are_the_range_or_refused() {
        let r = ByteRange { start: 2, end: 4 };
        let ok = reply(206, &[("content-range", "bytes 2-3/8")], b"cd");
        let mut body = ranged_body(ok, r, 8, "GET x").unwrap();
        assert_eq!(&body.next().await.unwrap().unwrap()[..], b"cd");
        // The whole object to a ranged GET: the download is told, not a silent retry.
        let whole = reply(200, &[("content-length", "8")], b"abcdefgh");
        let e = ranged_body(whole, r, 8, "GET x").err().unwrap();
        assert_eq!(e.condition(), Some(Condition::RangeIgnored));
        // Bytes encoded on the way are not the object's, whatever the status.
        let gz = reply(
            206,
            &[
                ("content-range", "bytes 2-3/8"),
                ("content-encoding", "gzip"),
            ],
            b"cd",
        );
        let e = ranged_body(gz, r, 8, "GET x").err().unwrap();
        assert!(e.message().contains("gzip-encoded"), "{}", e.message());
        let gz = reply(
            206,
            &[
                ("content-range", "bytes 2-3/8"),
                ("content-encoding", "gzip"),
            ],
            b"cd",
        );
        assert!(ranged_body_as_stored(gz, r, 8, "GET x").is_ok());
        // Another length altogether is no whole object.
        let short = reply(200, &[("content-length", "5")], b"abcde");
        let e = ranged_body(short, r, 8, "GET x").err().unwrap();
        assert_eq!(e.condition(), None);
        assert!(matches!(e.retry(), crate::error::Retry::After(_)));
    }

    #[test]
    fn content_range_parsing() {
        assert_eq!(
            parse_content_range("bytes 0-9/100"),
            Some((0, 10, Some(100)))
        );
        assert_eq!(parse_content_range("bytes 90-99/*"), Some((90, 100, None)));
        assert_eq!(parse_content_range(" bytes 5-5/6 "), Some((5, 6, Some(6))));
        for bad in [
            "",
            "bytes",
            "bytes 9-0/10",
            "items 0-9/10",
            "bytes 0-x/10",
            "bytes */10",
            "bytes 0-9",
        ] {
            assert_eq!(parse_content_range(bad), None, "{bad}");
        }
    }

    #[test]
    fn range_header_is_inclusive() {
        let r = ByteRange { start: 0, end: 10 };
        assert_eq!(r.header(), "bytes=0-9");
        assert_eq!(r.len(), 10);
    }

    #[test]
    fn retry_after_forms() {
        let mut h = HeaderMap::new();
        h.insert(RETRY_AFTER, "7".parse().unwrap());
        assert_eq!(retry_after(&h), Some(Duration::from_secs(7)));
        h.insert(
            RETRY_AFTER,
            "Wed, 21 Oct 2015 07:28:00 GMT".parse().unwrap(),
        );
        assert_eq!(retry_after(&h), Some(Duration::ZERO));
        h.insert(RETRY_AFTER, "soon".parse().unwrap());
        assert_eq!(retry_after(&h), None);
    }
}

#[cfg(test)]
mod prop {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn content_range_never_panics_and_is_half_open(s in "\\PC{0,50}", a in any::<u64>(), b in any::<u64>(), t in any::<u64>()) {
            for v in [s, format!("bytes {a}-{b}/{t}"), format!("bytes {a}-{b}/*")] {
                if let Some((start, end, _)) = parse_content_range(&v) {
                    prop_assert!(start < end);
                }
            }
        }
    }
}
