//! Object reads through a node-local P2P proxy (Dragonfly's `dfdaemon`, port 4001 on each node):
//! a GET it recognises becomes a task split into pieces, each fetched from the origin once for
//! the whole cluster. Only object data goes this way — listings, tokens, metadata and API calls
//! stay direct — and each request is one every node makes identically, so they share a task:
//! presigned (query-authenticated) URLs, the signature parameters named as filtered, and a task
//! identity from the object's content identity (bucket/key@ETag, generation, LFS sha256).
//!
//! Never worse than direct: a proxy that refuses the connection or answers anything but a
//! success (an error it marks as its own with `X-Dragonfly-Error-Type`, a 5xx, or a 4xx that
//! may be its own rather than the origin's) has that request sent direct; a reply through it
//! that fails its checks or whose body breaks sends that object direct for the rest of the run
//! (retried at once); after three failures in a row the run stops asking it; and a file that
//! fails verification is fetched again direct. The run reports how many requests went each
//! way. Verification stays end to end: what a file is checked against comes from the listing
//! and the origin's own replies (a proxied reply's headers are never believed), so a proxy can
//! slow a load down but never make it wrong.

use std::collections::HashSet;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use futures_util::StreamExt;

use reqwest::header::{HeaderMap, HeaderName, HeaderValue};
use reqwest::Response;

use super::http::{self, ClientOptions};
use super::types::Fetched;
use crate::error::{Error, Kind, Result};

/// `--p2p-proxy` and `--p2p-ca`.
#[derive(Debug, Clone)]
pub struct P2pOptions {
    /// `http://HOST:PORT` of the node's dfdaemon proxy.
    pub proxy: String,
    /// The CA dfdaemon signs intercepted HTTPS with.
    pub ca: Option<PathBuf>,
}

/// Query parameters that sign a URL but do not name the object: S3 and OSS SigV4 presigning,
/// GCS V4 signing, CloudFront (the Hub's CDN), OSS V1. Dragonfly drops them from the task id.
pub const FILTERED_QUERY_PARAMS: &str = "X-Amz-Algorithm,X-Amz-Credential,X-Amz-Date,X-Amz-Expires,X-Amz-SignedHeaders,X-Amz-Signature,X-Amz-Security-Token,X-Amz-Content-Sha256,x-id,X-Goog-Algorithm,X-Goog-Credential,X-Goog-Date,X-Goog-Expires,X-Goog-SignedHeaders,X-Goog-Signature,Expires,Signature,Key-Pair-Id,Policy,OSSAccessKeyId,security-token";

/// What crossed the proxy and what went around it.
#[derive(Debug, Default, Clone)]
pub struct P2pReport {
    pub proxy: String,
    pub through: u64,
    pub direct: u64,
    /// Why the first request went direct.
    pub first_fallback: Option<String>,
}

/// After this many failures in a row the proxy is left alone for the rest of the run: a
/// black-holed proxy would otherwise cost a connect timeout on every request.
const GIVE_UP_AFTER: u32 = 3;

/// A client for object reads through the proxy.
pub struct P2p {
    client: reqwest::Client,
    shown: String,
    through: AtomicU64,
    direct: AtomicU64,
    failures_in_a_row: AtomicU32,
    first_fallback: Mutex<Option<String>>,
    /// Objects (by key) whose reply through the proxy failed: they go direct from now on.
    avoid: Mutex<HashSet<String>>,
    /// Set when a file failed verification: the refetch goes direct, so one poisoned cache
    /// cannot fail every node on every run.
    off: AtomicBool,
}

impl P2p {
    pub fn new(opts: &P2pOptions, base: &ClientOptions) -> Result<P2p> {
        let proxy = reqwest::Proxy::all(&opts.proxy).map_err(|e| {
            Error::usage(format!(
                "--p2p-proxy {:?} is not a proxy URL (e.g. http://$(HOST_IP):4001)",
                crate::redact::userinfo(&opts.proxy)
            ))
            .with_source(e)
        })?;
        let mut with_ca = base.clone();
        with_ca.ca_bundles.extend(opts.ca.iter().cloned());
        let client = http::client_builder(&with_ca)?
            .proxy(proxy)
            .build()
            .map_err(|e| Error::usage("cannot set up the P2P proxy client").with_source(e))?;
        Ok(P2p {
            client,
            shown: crate::redact::userinfo(&opts.proxy),
            through: AtomicU64::new(0),
            direct: AtomicU64::new(0),
            failures_in_a_row: AtomicU32::new(0),
            first_fallback: Mutex::new(None),
            avoid: Mutex::new(HashSet::new()),
            off: AtomicBool::new(false),
        })
    }

    /// GETs `url` through the proxy with `headers` (Range, If-Match, a bearer) plus Dragonfly's:
    /// use P2P, the filtered signature parameters, and `task` as the task identity when given.
    /// `None`: send this request direct instead (counted, the first reason kept).
    /// `key` names the object, for [`P2p::watch`].
    pub async fn get(
        &self,
        url: &str,
        mut headers: HeaderMap,
        task: Option<&str>,
        key: &str,
    ) -> Option<Response> {
        if self.failures_in_a_row.load(Ordering::Relaxed) >= GIVE_UP_AFTER
            || self.off.load(Ordering::Relaxed)
            || self.avoided(key)
        {
            self.direct.fetch_add(1, Ordering::Relaxed);
            return None;
        }
        headers.insert(
            HeaderName::from_static("x-dragonfly-use-p2p"),
            HeaderValue::from_static("true"),
        );
        headers.insert(
            HeaderName::from_static("x-dragonfly-filtered-query-params"),
            HeaderValue::from_static(FILTERED_QUERY_PARAMS),
        );
        if let Some(v) = task.and_then(|t| HeaderValue::from_str(t).ok()) {
            headers.insert(
                HeaderName::from_static("x-dragonfly-content-for-calculating-task-id"),
                v,
            );
        }
        let (why, the_proxys) = match self.client.get(url).headers(headers).send().await {
            Ok(resp) => match fallback_reason(&resp) {
                None => {
                    self.through.fetch_add(1, Ordering::Relaxed);
                    self.failures_in_a_row.store(0, Ordering::Relaxed);
                    return Some(resp);
                }
                Some(why) => why,
            },
            Err(e) => (
                format!("the proxy is unreachable ({})", deepest_cause(&e)),
                true,
            ),
        };
        if the_proxys {
            self.direct.fetch_add(1, Ordering::Relaxed);
            self.failed(why);
        } else {
            // Maybe the origin's own answer relayed (an object deleted meanwhile): asked
            // direct, but no reason to stop using the proxy.
            self.bypass(&why);
        }
        None
    }

    /// A request sent direct by the caller's choice (not the proxy's failure), counted with why.
    pub fn bypass(&self, why: &str) {
        self.direct.fetch_add(1, Ordering::Relaxed);
        let mut first = self
            .first_fallback
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        first.get_or_insert_with(|| why.to_string());
    }

    fn failed(&self, why: String) {
        self.failures_in_a_row.fetch_add(1, Ordering::Relaxed);
        let mut first = self
            .first_fallback
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        first.get_or_insert(why);
    }

    fn avoided(&self, key: &str) -> bool {
        self.avoid
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .contains(key)
    }

    /// The object `key` goes direct from now on: its reply through the proxy failed.
    fn avoid(&self, key: &str, why: String) {
        self.avoid
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(key.to_string());
        self.failed(why);
    }

    /// Turns a fetch made through the proxy into one that cannot fail the run on the proxy's
    /// account: a reply that fails its checks (Content-Range, version) is retried direct at
    /// once, and a body that breaks or stalls sends the object direct for its next request.
    pub fn watch(self: &Arc<Self>, key: &str, fetched: Result<Fetched>) -> Result<Fetched> {
        let mut fetched = match fetched {
            Ok(f) => f,
            Err(e) if e.kind() == Kind::Interrupted => return Err(e),
            Err(e) => {
                self.avoid(
                    key,
                    format!("a reply through the proxy failed: {}", e.message()),
                );
                // The object goes direct next: a busy proxy (503) must not slow the whole run
                // down, nor its stripping Range switch it to whole-body streams.
                return Err(e.without_condition().transient(None));
            }
        };
        let (me, key) = (Arc::clone(self), key.to_string());
        fetched.body = Box::pin(fetched.body.map(move |item| {
            if let Err(e) = &item {
                me.avoid(
                    &key,
                    format!("a body through the proxy broke: {}", e.message()),
                );
            }
            item
        }));
        Ok(fetched)
    }

    /// No more requests through the proxy in this run (a file failed verification: its
    /// refetch must not come from the same cache).
    pub fn stop(&self, why: &str) {
        if !self.off.swap(true, Ordering::Relaxed) {
            self.failed(why.to_string());
        }
    }

    pub fn report(&self) -> P2pReport {
        P2pReport {
            proxy: self.shown.clone(),
            through: self.through.load(Ordering::Relaxed),
            direct: self.direct.load(Ordering::Relaxed),
            first_fallback: self
                .first_fallback
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .clone(),
        }
    }
}

/// The innermost cause of a transport error ("Connection refused (os error 111)").
fn deepest_cause(e: &(dyn std::error::Error + 'static)) -> String {
    let mut cur = e;
    while let Some(next) = cur.source() {
        cur = next;
    }
    cur.to_string()
}

/// Why a reply from the proxy should not be used: an error the proxy or daemon marks as its
/// own (`X-Dragonfly-Error-Type`, also `backend` — a presigned URL the daemon replayed too late
/// is refused there but fine direct), or any other answer but a success: a 5xx, or a 4xx that
/// may be the proxy's own (407 from a corporate proxy at that address, a daemon's 404 or 403)
/// — the origin is asked direct before such an answer is believed.
/// Also says whether it is surely the proxy's failure (marked, or a 5xx), which counts toward
/// giving up on the proxy, rather than perhaps the origin's answer relayed (a 4xx).
fn fallback_reason(resp: &Response) -> Option<(String, bool)> {
    let status = resp.status();
    if let Some(kind) = resp
        .headers()
        .get("x-dragonfly-error-type")
        .and_then(|v| v.to_str().ok())
    {
        return Some((
            format!("the proxy answered HTTP {status} ({kind} error)"),
            true,
        ));
    }
    (!status.is_success()).then(|| {
        (
            format!("the proxy answered HTTP {status}"),
            status.is_server_error(),
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_signature_parameter_is_filtered() {
        let names: Vec<&str> = FILTERED_QUERY_PARAMS.split(',').collect();
        for p in [
            "X-Amz-Signature",
            "X-Amz-Credential",
            "X-Amz-Date",
            "X-Amz-Expires",
            "X-Amz-Security-Token",
            "X-Goog-Signature",
            "Expires",
            "Signature",
            "Key-Pair-Id",
            "Policy",
        ] {
            assert!(names.contains(&p), "{p}");
        }
        assert!(HeaderValue::from_str(FILTERED_QUERY_PARAMS).is_ok());
    }
}
