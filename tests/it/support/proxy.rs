//! A proxy in front of a test server that records every HTTP request line (so tests can count
//! what a run asks for) and can inject faults into ranged GETs: a proxy that drops Range, error
//! statuses with Retry-After, a body cut mid-way, a body that stalls.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::OwnedWriteHalf;
use tokio::net::{TcpListener, TcpStream};

/// What to do to ranged GETs (object reads; listings carry no Range).
#[derive(Debug, Clone, Copy)]
pub enum Fault {
    None,
    /// Forward without the Range header, as a broken proxy would: the server answers 200.
    StripRange,
    /// `StripRange`, and close the connection after `bytes` bytes of the first `first` ranged
    /// replies: a whole-body stream that breaks must resume without Range too.
    StripRangeCut {
        bytes: usize,
        first: usize,
    },
    /// Answer the first `first` ranged GETs with `code` (and `Retry-After: 0` if asked).
    Status {
        code: u16,
        retry_after: bool,
        first: usize,
    },
    /// Let the first `ok` ranged GETs through, then answer every later one with 500.
    FailAfter {
        ok: usize,
    },
    /// Close the connection after `bytes` bytes of the first `first` ranged replies.
    Cut {
        bytes: usize,
        first: usize,
    },
    /// Stop sending after `bytes` bytes of the first `first` ranged replies, keeping the
    /// connection open.
    Stall {
        bytes: usize,
        first: usize,
    },
    /// Pass every reply, but at most `bytes_per_sec` over all connections together.
    Throttle {
        bytes_per_sec: u64,
    },
    /// Pass every reply, but at most `bytes_per_sec` on each connection, as object stores
    /// serve one connection (S3: 85–90 MB/s each).
    ThrottleEach {
        bytes_per_sec: u64,
    },
    /// Flip one bit of body byte `at` (counted from the start of the reply's body) in the first
    /// `first` ranged replies long enough to have it; lengths unchanged, as a bad NIC or a broken
    /// proxy would.
    Flip {
        at: u64,
        first: usize,
    },
    /// Answer the first `heads` HEAD requests with `503 SlowDown` (S3 throttling, which comes
    /// without Retry-After), and flip the bit at body offset `flip_at` of the first `flips`
    /// ranged replies.
    SlowDownHeads {
        heads: usize,
        flip_at: u64,
        flips: usize,
    },
    /// The bucket lives in `bucket_region`: a request signed for another region is refused
    /// as AWS (301) or, with `malformed`, MinIO (400) does (see `wrong_region_reply`).
    Region {
        bucket_region: &'static str,
        malformed: bool,
    },
    /// The server's clock runs `server_ahead_secs` ahead of this machine's: a request signed
    /// more than 15 minutes off it gets 403 RequestTimeTooSkewed with the server's `Date`, as
    /// S3 answers (the body as boto printed it: gist.github.com/ryanmr/57ab14bd87ab4be7079f;
    /// OSS and Huawei OBS use the same code and 15 minutes).
    Skew {
        server_ahead_secs: i64,
    },
    /// Every request, of any kind, answered `503 SlowDown` (S3's throttling: no Retry-After,
    /// to every request while it re-partitions; pingcap/tiflash#10538 shows the headers) for
    /// `ms` milliseconds from the first ranged GET on.
    SlowDownFor {
        ms: u64,
    },
    /// A server that only knows ListObjects V1 (scality/cloudserver#1191): `list-type=2` and
    /// `continuation-token` are dropped from listings, which then page by `marker`, at most
    /// `max_keys` keys a page.
    ListV1 {
        max_keys: usize,
    },
    /// A requester-pays S3 bucket: a request without `x-amz-request-payer: requester` (GET,
    /// HEAD and LIST alike: aws/aws-cli#2557, s3tools/s3cmd#849) gets 403 AccessDenied, with
    /// no hint.
    RequesterPays,
    /// A requester-pays GCS bucket: without `userProject` the JSON API answers 400 "Bucket is
    /// a requester pays bucket but no user project provided." (googleapis/google-cloud-python#4674).
    GcsRequesterPays,
    /// Multipart ETags that are not MD5s of the parts (see `etags`).
    ForeignEtags,
    /// The Hub's per-IP quota on `/resolve` running out: every `/resolve` request for `ms`
    /// milliseconds from the first one gets 429 with `RateLimit: "resolvers";r=0;t=<seconds
    /// left>` and its `RateLimit-Policy` (huggingface.co/docs/hub/rate-limits: fixed 5-minute
    /// windows, anonymous 3,000 resolves per IP; huggingface_hub >= 1.2 waits for `t`).
    HubRateLimit {
        ms: u64,
    },
    /// Session credentials that expire: an access key id `ASIA<unix millis when issued>` is
    /// refused `valid_ms` after it was issued, with S3's 400 `ExpiredToken` ("The provided
    /// token has expired."): IRSA sessions last an hour, and clients that do not refresh fail
    /// on long transfers (secureCodeBox/secureCodeBox#2255, dragonflydb/dragonfly#7666; the
    /// SDKs refresh on that code: aws/aws-sdk-go#253, romange/helio#616).
    ExpiringKeys {
        valid_ms: u64,
    },
}

/// Milliseconds since the epoch when the `ASIA<millis>` key that signed the request was issued.
fn key_issued_ms(lines: &[String]) -> Option<u64> {
    let auth = lines
        .iter()
        .find(|l| l.to_ascii_lowercase().starts_with("authorization:"))?;
    let key = auth.split("Credential=").nth(1)?.split('/').next()?;
    key.strip_prefix("ASIA")?.parse().ok()
}

/// The region in a SigV4 `Authorization` header's credential scope.
fn signed_region(lines: &[String]) -> Option<String> {
    let auth = lines
        .iter()
        .find(|l| l.to_ascii_lowercase().starts_with("authorization:"))?;
    let scope = auth.split("Credential=").nth(1)?.split(',').next()?;
    scope.split('/').nth(2).map(str::to_string)
}

/// The time in a request's `x-amz-date` (`20261205T101500Z`), as seconds since the epoch.
fn amz_date(lines: &[String]) -> Option<i64> {
    let v = lines.iter().find_map(|l| {
        l.to_ascii_lowercase()
            .strip_prefix("x-amz-date:")
            .map(|v| v.trim().to_string())
    })?;
    let n = |a: usize, b: usize| v.get(a..b)?.parse::<i64>().ok();
    let (y, m, d) = (n(0, 4)?, n(4, 6)?, n(6, 8)?);
    let (hh, mm, ss) = (n(9, 11)?, n(11, 13)?, n(13, 15)?);
    // Days from the civil date (Howard Hinnant's algorithm).
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let doy = (153 * ((m + 9) % 12) + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    Some(days * 86_400 + hh * 3600 + mm * 60 + ss)
}

/// What AWS S3 answers a request signed for the wrong region: 301 PermanentRedirect without a
/// Location but with `x-amz-bucket-region` (yanganto/s3rs#18, apache/arrow-rs#2795), or, with
/// `malformed`, 400 AuthorizationHeaderMalformed naming the region in the body only (as MinIO
/// with MINIO_REGION does, minio/minio#12886; AWS adds the header too, minio/minio-go#677).
fn wrong_region_reply(head: bool, bucket_region: &str, signed: &str, malformed: bool) -> String {
    let (status, header, body) = if malformed {
        (
            "400 Bad Request",
            String::new(),
            format!("<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<Error><Code>AuthorizationHeaderMalformed</Code><Message>The authorization header is malformed; the region '{signed}' is wrong; expecting '{bucket_region}'</Message><Region>{bucket_region}</Region><RequestId>0</RequestId></Error>"),
        )
    } else {
        (
            "301 Moved Permanently",
            format!("x-amz-bucket-region: {bucket_region}\r\n"),
            "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<Error><Code>PermanentRedirect</Code><Message>The bucket you are attempting to access must be addressed using the specified endpoint. Please send all future requests to this endpoint.</Message><Endpoint>s3.amazonaws.com</Endpoint></Error>".to_string(),
        )
    };
    let body = if head { String::new() } else { body };
    format!(
        "HTTP/1.1 {status}\r\n{header}Content-Type: application/xml\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
}

pub struct Proxy {
    pub addr: SocketAddr,
    log: Arc<Mutex<Vec<String>>>,
    heads: Arc<Mutex<Vec<String>>>,
    down: Arc<std::sync::atomic::AtomicU64>,
    refused: Arc<AtomicUsize>,
    /// Connections open now, and the most open at once.
    open: Arc<(AtomicUsize, AtomicUsize)>,
    ranged_at: Arc<Mutex<Vec<std::time::Instant>>>,
}

struct Shared {
    target: SocketAddr,
    fault: Fault,
    faulted: AtomicUsize,
    /// HEADs faulted so far (`SlowDownHeads`).
    heads_faulted: Arc<AtomicUsize>,
    log: Arc<Mutex<Vec<String>>>,
    heads: Arc<Mutex<Vec<String>>>,
    down: Arc<std::sync::atomic::AtomicU64>,
    /// When `SlowDownFor`'s burst began (the first ranged GET).
    burst_from: std::sync::OnceLock<std::time::Instant>,
    /// Runs once, just before the first ranged GET is forwarded.
    before_first_read: Mutex<Option<Box<dyn FnOnce() + Send>>>,
    /// When the first reply began to be relayed (`Throttle`'s clock).
    relaying_since: std::sync::OnceLock<std::time::Instant>,
    /// When each ranged GET arrived.
    ranged_at: Arc<Mutex<Vec<std::time::Instant>>>,
}

impl Proxy {
    pub fn start(upstream: &str) -> Proxy {
        Self::with_fault(upstream, Fault::None)
    }

    /// Starts forwarding to `upstream` (`http://IP:PORT`) on a thread of its own.
    pub fn with_fault(upstream: &str, fault: Fault) -> Proxy {
        Self::build(upstream, fault, None)
    }

    /// A proxy that runs `hook` just before it forwards the first ranged GET (for example, to
    /// replace the object between the listing and the download).
    pub fn with_hook(upstream: &str, hook: Box<dyn FnOnce() + Send>) -> Proxy {
        Self::build(upstream, Fault::None, Some(hook))
    }

    fn build(upstream: &str, fault: Fault, hook: Option<Box<dyn FnOnce() + Send>>) -> Proxy {
        let target: SocketAddr = upstream
            .trim_start_matches("http://")
            .trim_end_matches('/')
            .parse()
            .expect("upstream is http://IP:PORT");
        let log = Arc::new(Mutex::new(Vec::new()));
        let heads = Arc::new(Mutex::new(Vec::new()));
        let down = Arc::new(std::sync::atomic::AtomicU64::new(0));
        let refused = Arc::new(AtomicUsize::new(0));
        let open = Arc::new((AtomicUsize::new(0), AtomicUsize::new(0)));
        let ranged_at = Arc::new(Mutex::new(Vec::new()));
        let counts = Arc::clone(&open);
        let shared = Arc::new(Shared {
            target,
            fault,
            faulted: AtomicUsize::new(0),
            heads_faulted: Arc::clone(&refused),
            log: Arc::clone(&log),
            heads: Arc::clone(&heads),
            down: Arc::clone(&down),
            before_first_read: Mutex::new(hook),
            burst_from: std::sync::OnceLock::new(),
            relaying_since: std::sync::OnceLock::new(),
            ranged_at: Arc::clone(&ranged_at),
        });
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async move {
                let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
                tx.send(l.local_addr().unwrap()).unwrap();
                loop {
                    let Ok((client, _)) = l.accept().await else {
                        continue;
                    };
                    let now = counts.0.fetch_add(1, Ordering::SeqCst) + 1;
                    counts.1.fetch_max(now, Ordering::SeqCst);
                    let (shared, counts) = (Arc::clone(&shared), Arc::clone(&counts));
                    tokio::spawn(async move {
                        connection(client, shared).await;
                        counts.0.fetch_sub(1, Ordering::SeqCst);
                    });
                }
            });
        });
        Proxy {
            addr: rx.recv().unwrap(),
            log,
            heads,
            down,
            refused,
            open,
            ranged_at,
        }
    }

    /// When each ranged GET arrived, in order.
    pub fn ranged_get_times(&self) -> Vec<std::time::Instant> {
        self.ranged_at.lock().unwrap().clone()
    }

    /// The most connections open at once: at least as many as the requests a client had in
    /// flight at once (and its idle kept-alive ones).
    pub fn peak_connections(&self) -> usize {
        self.open.1.load(Ordering::SeqCst)
    }

    /// Bytes the server sent through this proxy (headers included).
    pub fn bytes_down(&self) -> u64 {
        self.down.load(Ordering::SeqCst)
    }

    /// Requests refused by `SlowDownFor` (for `SlowDownHeads`: HEADs seen).
    pub fn refused(&self) -> usize {
        self.refused.load(Ordering::SeqCst)
    }

    /// Every request head as received (request line and headers).
    pub fn heads(&self) -> Vec<String> {
        self.heads.lock().unwrap().clone()
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn requests(&self) -> Vec<String> {
        self.log.lock().unwrap().clone()
    }

    pub fn clear(&self) {
        self.log.lock().unwrap().clear();
        self.heads.lock().unwrap().clear();
    }

    /// GET or HEAD requests for objects (path-style `/bucket/key`), as opposed to listings.
    pub fn object_requests(&self, bucket: &str) -> usize {
        let prefix = format!("/{bucket}/");
        self.requests()
            .iter()
            .filter(|l| {
                let mut parts = l.split(' ');
                let method = parts.next().unwrap_or_default();
                let path = parts.next().unwrap_or_default();
                (method == "GET" || method == "HEAD") && path.starts_with(&prefix)
            })
            .count()
    }
}

/// Per connection: requests are parsed and forwarded one at a time (HTTP/1.1 clients do not
/// pipeline), so a fault can be tied to the reply of the request that triggered it.
async fn connection(client: TcpStream, sh: Arc<Shared>) {
    let Ok(server) = TcpStream::connect(sh.target).await else {
        return;
    };
    let (mut cr, cw) = client.into_split();
    let (mut sr, mut sw) = server.into_split();
    let cw = Arc::new(tokio::sync::Mutex::new(cw));
    // Bytes of the next reply to pass before cutting (usize::MAX: no limit), and whether to
    // stall instead of closing.
    let budget = Arc::new(AtomicUsize::new(usize::MAX));
    let stall = Arc::new(std::sync::atomic::AtomicBool::new(false));
    // Body offset to corrupt in the next reply, and where in that reply the copy loop is.
    let flip: Arc<Mutex<Option<FlipState>>> = Arc::new(Mutex::new(None));
    // Per request forwarded, in order: whether it was a HEAD (`ForeignEtags` frames replies).
    let methods = Arc::new(Mutex::new(std::collections::VecDeque::new()));
    if let Fault::ForeignEtags = sh.fault {
        tokio::spawn(super::etags::copy_replies(
            sr,
            Arc::clone(&cw),
            Arc::clone(&methods),
            Arc::clone(&sh.down),
        ));
    } else {
        let (cw, budget, stall, flip) = (
            Arc::clone(&cw),
            Arc::clone(&budget),
            Arc::clone(&stall),
            Arc::clone(&flip),
        );
        let down = Arc::clone(&sh.down);
        let rate = match sh.fault {
            Fault::Throttle { bytes_per_sec } => Some(bytes_per_sec),
            _ => None,
        };
        let each = match sh.fault {
            Fault::ThrottleEach { bytes_per_sec } => Some(bytes_per_sec),
            _ => None,
        };
        let shared = Arc::clone(&sh);
        tokio::spawn(async move {
            let paced = rate.is_some() || each.is_some();
            let mut buf = vec![0u8; if paced { 16 * 1024 } else { 64 * 1024 }];
            // When this connection may send again (`ThrottleEach`): a token bucket holding one
            // read's worth, so a connection idle between replies gains no burst.
            let mut next_at = std::time::Instant::now();
            loop {
                if each.is_some() {
                    tokio::time::sleep_until(next_at.into()).await;
                }
                // Wait until the bytes sent so far fit the rate since the first reply began
                // (not the proxy's start: a client that takes a while before its first
                // request gets no burst for it).
                if let (Some(rate), Some(started)) = (rate, shared.relaying_since.get()) {
                    let due =
                        Duration::from_secs_f64(down.load(Ordering::SeqCst) as f64 / rate as f64);
                    if let Some(wait) = due.checked_sub(started.elapsed()) {
                        tokio::time::sleep(wait).await;
                    }
                }
                let n = match sr.read(&mut buf).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => n,
                };
                shared.relaying_since.get_or_init(std::time::Instant::now);
                if let Some(f) = flip.lock().unwrap().as_mut() {
                    f.apply(&mut buf[..n]);
                }
                let allowed = budget.load(Ordering::SeqCst);
                let pass = n.min(allowed);
                down.fetch_add(pass as u64, Ordering::SeqCst);
                if let Some(rate) = each {
                    let now = std::time::Instant::now();
                    next_at = next_at.max(now - Duration::from_millis(2))
                        + Duration::from_secs_f64(pass as f64 / rate as f64);
                }
                let mut w = cw.lock().await;
                if w.write_all(&buf[..pass]).await.is_err() {
                    break;
                }
                if allowed != usize::MAX {
                    budget.store(allowed - pass, Ordering::SeqCst);
                    if pass < n || allowed - pass == 0 {
                        if stall.load(Ordering::SeqCst) {
                            tokio::time::sleep(Duration::from_secs(120)).await;
                        }
                        let _ = w.shutdown().await;
                        break;
                    }
                }
            }
            let _ = cw.lock().await.shutdown().await;
        });
    }
    let mut pending: Vec<u8> = Vec::new();
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let Some(end) = pending.windows(4).position(|w| w == b"\r\n\r\n") else {
            match cr.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => pending.extend_from_slice(&buf[..n]),
            }
            continue;
        };
        let head = String::from_utf8_lossy(&pending[..end]).to_string();
        pending.drain(..end + 4);
        let mut lines: Vec<String> = head.split("\r\n").map(str::to_string).collect();
        let first = lines[0].clone();
        sh.log.lock().unwrap().push(first.clone());
        sh.heads.lock().unwrap().push(head.clone());
        // Used as a forward proxy (HTTP_PROXY), clients send absolute-form targets; the server
        // behind wants origin-form, with the Host header left as the client sent it.
        let mut parts = first.splitn(3, ' ');
        if let (Some(m), Some(target), Some(v)) = (parts.next(), parts.next(), parts.next()) {
            if let Some(rest) = target.strip_prefix("http://") {
                let origin = rest.find('/').map(|i| &rest[i..]).unwrap_or("/");
                lines[0] = format!("{m} {origin} {v}");
            }
        }
        if let Fault::ListV1 { max_keys } = sh.fault {
            let mut parts = lines[0].splitn(3, ' ');
            if let (Some(m), Some(target), Some(v)) = (parts.next(), parts.next(), parts.next()) {
                if let Some((path, query)) = target.split_once('?') {
                    if query.split('&').any(|p| p == "list-type=2") {
                        let mut kept: Vec<String> = query
                            .split('&')
                            .filter(|p| {
                                *p != "list-type=2" && !p.starts_with("continuation-token=")
                            })
                            .map(str::to_string)
                            .collect();
                        kept.push(format!("max-keys={max_keys}"));
                        lines[0] = format!("{m} {path}?{} {v}", kept.join("&"));
                    }
                }
            }
        }
        let body_len: usize = lines
            .iter()
            .filter_map(|l| l.split_once(':'))
            .find(|(k, _)| k.trim().eq_ignore_ascii_case("content-length"))
            .and_then(|(_, v)| v.trim().parse().ok())
            .unwrap_or(0);
        while pending.len() < body_len {
            match cr.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => pending.extend_from_slice(&buf[..n]),
            }
        }
        let body: Vec<u8> = pending.drain(..body_len).collect();
        let ranged = first.starts_with("GET ")
            && lines
                .iter()
                .any(|l| l.to_ascii_lowercase().starts_with("range:"));
        if ranged {
            sh.ranged_at.lock().unwrap().push(std::time::Instant::now());
            let hook = sh.before_first_read.lock().unwrap().take();
            if let Some(hook) = hook {
                tokio::task::spawn_blocking(hook).await.unwrap();
            }
        }
        let take = |first_n: usize| ranged && sh.faulted.fetch_add(1, Ordering::SeqCst) < first_n;
        let refusal = match sh.fault {
            Fault::Region {
                bucket_region,
                malformed,
            } => signed_region(&lines)
                .filter(|r| r != bucket_region)
                .map(|r| {
                    wrong_region_reply(first.starts_with("HEAD "), bucket_region, &r, malformed)
                }),
            Fault::Skew { server_ahead_secs } => {
                let server = std::time::SystemTime::now()
                    + Duration::from_secs(server_ahead_secs.unsigned_abs());
                let server_secs = server
                    .duration_since(std::time::UNIX_EPOCH)
                    .unwrap()
                    .as_secs() as i64;
                amz_date(&lines)
                    .filter(|t| (server_secs - t).abs() > 15 * 60)
                    .map(|_| {
                        let body = if first.starts_with("HEAD ") {
                            String::new()
                        } else {
                            "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<Error><Code>RequestTimeTooSkewed</Code><Message>The difference between the request time and the current time is too large.</Message><MaxAllowedSkewMilliseconds>900000</MaxAllowedSkewMilliseconds></Error>".to_string()
                        };
                        format!(
                            "HTTP/1.1 403 Forbidden\r\nDate: {}\r\nContent-Type: application/xml\r\nContent-Length: {}\r\n\r\n{body}",
                            httpdate::fmt_http_date(server),
                            body.len()
                        )
                    })
            }
            Fault::SlowDownFor { ms }
                if {
                    if ranged {
                        sh.burst_from.get_or_init(std::time::Instant::now);
                    }
                    sh.burst_from
                        .get()
                        .is_some_and(|t| t.elapsed() < Duration::from_millis(ms))
                } =>
            {
                sh.heads_faulted.fetch_add(1, Ordering::SeqCst);
                let body = "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<Error><Code>SlowDown</Code><Message>Please reduce your request rate.</Message></Error>";
                let body = if first.starts_with("HEAD ") { "" } else { body };
                Some(format!(
                    "HTTP/1.1 503 Slow Down\r\nContent-Type: application/xml\r\nContent-Length: {}\r\n\r\n{body}",
                    body.len()
                ))
            }
            Fault::RequesterPays
                if !lines
                    .iter()
                    .any(|l| l.eq_ignore_ascii_case("x-amz-request-payer: requester")) =>
            {
                let body = if first.starts_with("HEAD ") {
                    ""
                } else {
                    "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<Error><Code>AccessDenied</Code><Message>Access Denied</Message></Error>"
                };
                Some(format!(
                    "HTTP/1.1 403 Forbidden\r\nContent-Type: application/xml\r\nContent-Length: {}\r\n\r\n{body}",
                    body.len()
                ))
            }
            Fault::HubRateLimit { ms }
                if first.contains("/resolve/")
                    && sh.burst_from.get_or_init(std::time::Instant::now).elapsed()
                        < Duration::from_millis(ms) =>
            {
                sh.heads_faulted.fetch_add(1, Ordering::SeqCst);
                let left = Duration::from_millis(ms)
                    .saturating_sub(sh.burst_from.get().unwrap().elapsed())
                    .as_secs_f64()
                    .ceil() as u64;
                let body = r#"{"error":"You have been rate-limited; you can retry this action in about 5 minutes."}"#;
                Some(format!(
                    "HTTP/1.1 429 Too Many Requests\r\nRateLimit: \"resolvers\";r=0;t={left}\r\nRateLimit-Policy: \"fixed window\";\"resolvers\";q=3000;w=300\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
                    body.len()
                ))
            }
            Fault::ExpiringKeys { valid_ms }
                if key_issued_ms(&lines).is_some_and(|issued| {
                    let now = std::time::SystemTime::now()
                        .duration_since(std::time::UNIX_EPOCH)
                        .unwrap()
                        .as_millis() as u64;
                    now.saturating_sub(issued) > valid_ms
                }) =>
            {
                sh.heads_faulted.fetch_add(1, Ordering::SeqCst);
                let body = if first.starts_with("HEAD ") {
                    ""
                } else {
                    "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<Error><Code>ExpiredToken</Code><Message>The provided token has expired.</Message></Error>"
                };
                Some(format!(
                    "HTTP/1.1 400 Bad Request\r\nContent-Type: application/xml\r\nContent-Length: {}\r\n\r\n{body}",
                    body.len()
                ))
            }
            Fault::GcsRequesterPays if !first.contains("userProject=") => {
                let body = r#"{"error":{"code":400,"message":"Bucket is a requester pays bucket but no user project provided.","errors":[{"message":"Bucket is a requester pays bucket but no user project provided.","domain":"global","reason":"required"}]}}"#;
                Some(format!(
                    "HTTP/1.1 400 Bad Request\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
                    body.len()
                ))
            }
            _ => None,
        };
        if let Some(reply) = refusal {
            if reply_direct(&cw, reply.as_bytes()).await.is_err() {
                break;
            }
            continue;
        }
        match sh.fault {
            Fault::StripRange if ranged => {
                lines.retain(|l| !l.to_ascii_lowercase().starts_with("range:"))
            }
            Fault::StripRangeCut { bytes, first } if ranged => {
                lines.retain(|l| !l.to_ascii_lowercase().starts_with("range:"));
                if take(first) {
                    budget.store(bytes, Ordering::SeqCst);
                }
            }
            Fault::Status {
                code,
                retry_after,
                first,
            } if take(first) => {
                let extra = if retry_after {
                    "Retry-After: 0\r\n"
                } else {
                    ""
                };
                let reply = format!("HTTP/1.1 {code} Injected\r\n{extra}Content-Length: 0\r\n\r\n");
                if reply_direct(&cw, reply.as_bytes()).await.is_err() {
                    break;
                }
                continue;
            }
            Fault::FailAfter { ok }
                if ranged && sh.faulted.fetch_add(1, Ordering::SeqCst) >= ok =>
            {
                if reply_direct(&cw, b"HTTP/1.1 500 Injected\r\nContent-Length: 0\r\n\r\n")
                    .await
                    .is_err()
                {
                    break;
                }
                continue;
            }
            Fault::Cut { bytes, first } if take(first) => budget.store(bytes, Ordering::SeqCst),
            Fault::Flip { at, first } if take(first) => {
                *flip.lock().unwrap() = Some(FlipState {
                    at,
                    head: Vec::new(),
                    body_seen: None,
                })
            }
            Fault::SlowDownHeads { heads, .. }
                if first.starts_with("HEAD ")
                    && sh.heads_faulted.fetch_add(1, Ordering::SeqCst) < heads =>
            {
                let reply = b"HTTP/1.1 503 Slow Down\r\nContent-Length: 0\r\n\r\n";
                if reply_direct(&cw, reply).await.is_err() {
                    break;
                }
                continue;
            }
            Fault::SlowDownHeads { flip_at, flips, .. } if take(flips) => {
                *flip.lock().unwrap() = Some(FlipState {
                    at: flip_at,
                    head: Vec::new(),
                    body_seen: None,
                })
            }
            Fault::Stall { bytes, first } if take(first) => {
                stall.store(true, Ordering::SeqCst);
                budget.store(bytes, Ordering::SeqCst);
            }
            _ => {}
        }
        if let Fault::ForeignEtags = sh.fault {
            for l in lines.iter_mut() {
                if l.to_ascii_lowercase().starts_with("if-match:") {
                    *l = String::from_utf8(super::etags::foreign(l.as_bytes())).unwrap();
                }
            }
        }
        if let Fault::ForeignEtags = sh.fault {
            methods
                .lock()
                .unwrap()
                .push_back(first.starts_with("HEAD "));
        }
        let mut out = lines.join("\r\n").into_bytes();
        out.extend_from_slice(b"\r\n\r\n");
        out.extend_from_slice(&body);
        if sw.write_all(&out).await.is_err() {
            break;
        }
    }
    let _ = sw.shutdown().await;
}

/// Finds the end of the reply head, then flips the bit at body offset `at` once.
struct FlipState {
    at: u64,
    head: Vec<u8>,
    /// Body bytes already passed; None while still in the head.
    body_seen: Option<u64>,
}

impl FlipState {
    fn apply(&mut self, chunk: &mut [u8]) {
        let mut body_start = 0;
        if self.body_seen.is_none() {
            let before = self.head.len();
            self.head.extend_from_slice(chunk);
            match self.head.windows(4).position(|w| w == b"\r\n\r\n") {
                Some(end) => {
                    body_start = end + 4 - before;
                    self.body_seen = Some(0);
                }
                None => return,
            }
        }
        let seen = self.body_seen.unwrap_or(0);
        let body = &mut chunk[body_start..];
        if self.at >= seen && self.at < seen + body.len() as u64 {
            body[(self.at - seen) as usize] ^= 0x01;
            self.at = u64::MAX; // once
        }
        self.body_seen = Some(seen + body.len() as u64);
    }
}

async fn reply_direct(
    cw: &tokio::sync::Mutex<OwnedWriteHalf>,
    bytes: &[u8],
) -> std::io::Result<()> {
    cw.lock().await.write_all(bytes).await
}
