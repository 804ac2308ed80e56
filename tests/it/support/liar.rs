//! A server that lies: every reply comes from a closure given the request line and headers, and
//! is written raw (status line, headers, body, exactly as the test says), then the connection
//! closes. For listings with impossible sizes, bodies shorter than promised, Content-Range
//! headers that disagree.

use std::sync::{Arc, Mutex};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

pub type Handler = dyn Fn(&str, &[String]) -> Vec<u8> + Send + Sync;

pub struct Liar {
    pub url: String,
    requests: Arc<Mutex<Vec<String>>>,
}

impl Liar {
    pub fn start(handler: Box<Handler>) -> Liar {
        let handler: Arc<Handler> = Arc::from(handler);
        let requests = Arc::new(Mutex::new(Vec::new()));
        let log = Arc::clone(&requests);
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async move {
                let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
                tx.send(l.local_addr().unwrap()).unwrap();
                loop {
                    let Ok((mut c, _)) = l.accept().await else {
                        continue;
                    };
                    let (handler, log) = (Arc::clone(&handler), Arc::clone(&log));
                    tokio::spawn(async move {
                        let mut head = Vec::new();
                        let mut buf = [0u8; 4096];
                        while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                            match c.read(&mut buf).await {
                                Ok(0) | Err(_) => return,
                                Ok(n) => head.extend_from_slice(&buf[..n]),
                            }
                        }
                        let text = String::from_utf8_lossy(&head).to_string();
                        let mut lines: Vec<String> =
                            text.split("\r\n").map(str::to_string).collect();
                        let first = lines.remove(0);
                        log.lock().unwrap().push(first.clone());
                        let reply = handler(&first, &lines);
                        let _ = c.write_all(&reply).await;
                        let _ = c.shutdown().await;
                    });
                }
            });
        });
        Liar {
            url: format!("http://{}", rx.recv().unwrap()),
            requests,
        }
    }

    pub fn requests(&self) -> Vec<String> {
        self.requests.lock().unwrap().clone()
    }
}

/// A ListObjectsV2 page listing `(key, size text)` pairs, sizes written verbatim.
pub fn listing(objects: &[(&str, &str)]) -> Vec<u8> {
    let mut xml = String::from(
        r#"<?xml version="1.0" encoding="UTF-8"?><ListBucketResult><Name>b</Name><IsTruncated>false</IsTruncated>"#,
    );
    for (k, size) in objects {
        xml.push_str(&format!(
            "<Contents><Key>{k}</Key><ETag>&quot;v1&quot;</ETag><Size>{size}</Size></Contents>"
        ));
    }
    xml.push_str("</ListBucketResult>");
    raw(
        "200 OK",
        &[("Content-Type", "application/xml")],
        xml.as_bytes(),
        None,
    )
}

/// A raw reply; `length` overrides Content-Length (to promise more than is sent).
pub fn raw(status: &str, headers: &[(&str, &str)], body: &[u8], length: Option<u64>) -> Vec<u8> {
    let mut out = format!("HTTP/1.1 {status}\r\nConnection: close\r\n");
    for (k, v) in headers {
        out.push_str(&format!("{k}: {v}\r\n"));
    }
    out.push_str(&format!(
        "Content-Length: {}\r\n\r\n",
        length.unwrap_or(body.len() as u64)
    ));
    let mut out = out.into_bytes();
    out.extend_from_slice(body);
    out
}
