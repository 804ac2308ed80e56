//! For [`super::proxy::Fault::ForeignEtags`]: a server whose multipart ETags look like AWS's
//! (`"<32 hex>-N"`) but are not the MD5 of the parts' MD5s — Cloudflare R2 objects uploaded
//! before 2023-06-21 ("multipart ETags are random": rclone `backend/s3/provider/Cloudflare.yaml`
//! sets `use_multipart_etag: false`; developers.cloudflare.com/r2/objects/multipart-objects),
//! Apache Ozone (an MD5 of the part names, apache/ozone#5162), s3gw (s3gw-tech/s3gw#721).
//!
//! Every such ETag in a reply (headers and XML listings alike) has each hex digit `h` replaced
//! by `15 - h`: same length, stable, not the parts' MD5. The mapping is its own inverse, so the
//! proxy maps `If-Match` back before the request reaches the real server.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};

/// `text` with every multipart ETag (32 hex digits, `-`, a digit) foreign.
pub fn foreign(text: &[u8]) -> Vec<u8> {
    let mut out = text.to_vec();
    let hex = |b: u8| b.is_ascii_digit() || (b'a'..=b'f').contains(&b);
    let mut i = 0;
    while i + 34 <= out.len() {
        let run = out[i..i + 32].iter().all(|b| hex(*b));
        let bounded = i == 0 || !hex(out[i - 1]);
        if run && bounded && out[i + 32] == b'-' && out[i + 33].is_ascii_digit() {
            for b in &mut out[i..i + 32] {
                let v = (*b as char).to_digit(16).unwrap_or(0);
                *b = std::char::from_digit(15 - v, 16).unwrap_or('0') as u8;
            }
            i += 34;
        } else {
            i += 1;
        }
    }
    out
}

/// Copies replies from the server to the client one at a time, rewriting each head and each
/// XML body; other bodies (object bytes) pass untouched. `heads` says, per request in order,
/// whether it was a HEAD (its reply has no body).
pub async fn copy_replies(
    mut sr: OwnedReadHalf,
    cw: Arc<tokio::sync::Mutex<OwnedWriteHalf>>,
    heads: Arc<Mutex<VecDeque<bool>>>,
    down: Arc<AtomicU64>,
) {
    let mut pending: Vec<u8> = Vec::new();
    let mut buf = vec![0u8; 64 * 1024];
    let send = |bytes: Vec<u8>| {
        let cw = Arc::clone(&cw);
        let down = Arc::clone(&down);
        async move {
            down.fetch_add(bytes.len() as u64, Ordering::SeqCst);
            cw.lock().await.write_all(&bytes).await
        }
    };
    loop {
        let end = loop {
            if let Some(end) = pending.windows(4).position(|w| w == b"\r\n\r\n") {
                break end + 4;
            }
            match sr.read(&mut buf).await {
                Ok(0) | Err(_) => {
                    let _ = cw.lock().await.shutdown().await;
                    return;
                }
                Ok(n) => pending.extend_from_slice(&buf[..n]),
            }
        };
        let head: Vec<u8> = pending.drain(..end).collect();
        let text = String::from_utf8_lossy(&head).to_ascii_lowercase();
        let header = |name: &str| {
            text.split("\r\n")
                .filter_map(|l| l.split_once(':'))
                .find(|(k, _)| k.trim() == name)
                .map(|(_, v)| v.trim().to_string())
        };
        let was_head = heads.lock().unwrap().pop_front().unwrap_or(false);
        let status = text.split(' ').nth(1).unwrap_or("");
        let len: usize = if was_head || status == "204" || status == "304" {
            0
        } else {
            if header("transfer-encoding").is_some() {
                // Not framed here: the client sees the connection close and the test fails.
                eprintln!("the ETag-rewriting proxy needs Content-Length framing: {text}");
                return;
            }
            header("content-length")
                .and_then(|v| v.parse().ok())
                .unwrap_or(0)
        };
        let xml = header("content-type").is_some_and(|t| t.contains("xml"));
        if send(foreign(&head)).await.is_err() {
            return;
        }
        let mut left = len;
        while left > 0 {
            if pending.is_empty() {
                match sr.read(&mut buf).await {
                    Ok(0) | Err(_) => return,
                    Ok(n) => pending.extend_from_slice(&buf[..n]),
                }
            }
            // An XML body is rewritten whole; object bytes stream through as they come.
            if xml && pending.len() < left {
                match sr.read(&mut buf).await {
                    Ok(0) | Err(_) => return,
                    Ok(n) => pending.extend_from_slice(&buf[..n]),
                }
                continue;
            }
            let take = left.min(pending.len());
            let part: Vec<u8> = pending.drain(..take).collect();
            left -= take;
            let part = if xml { foreign(&part) } else { part };
            if send(part).await.is_err() {
                return;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_multipart_etags_change_and_the_mapping_undoes_itself() {
        let md5 = "0123456789abcdef0123456789abcdef";
        let text = format!("ETag: \"{md5}-3\"\r\nx: {md5}\r\n<ETag>&quot;{md5}-12&quot;</ETag>");
        let once = foreign(text.as_bytes());
        let s = String::from_utf8(once.clone()).unwrap();
        assert!(s.contains("\"fedcba9876543210fedcba9876543210-3\""), "{s}");
        assert!(
            s.contains(&format!("x: {md5}\r\n")),
            "a single-part MD5 stays: {s}"
        );
        assert!(s.contains(";fedcba9876543210fedcba9876543210-12&"), "{s}");
        assert_eq!(foreign(&once), text.as_bytes());
    }
}
