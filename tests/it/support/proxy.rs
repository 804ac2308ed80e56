//! A TCP proxy in front of a test server that records every HTTP request line, so tests can
//! count the requests a run makes (for example: a rerun of a complete DEST makes no GET).

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

pub struct Proxy {
    pub addr: SocketAddr,
    log: Arc<Mutex<Vec<String>>>,
}

impl Proxy {
    /// Starts forwarding to `upstream` (`http://host:port`) on a thread of its own.
    pub fn start(upstream: &str) -> Proxy {
        let target: SocketAddr = upstream
            .trim_start_matches("http://")
            .trim_end_matches('/')
            .parse()
            .expect("upstream is http://IP:PORT");
        let log = Arc::new(Mutex::new(Vec::new()));
        let (tx, rx) = std::sync::mpsc::channel();
        let log2 = Arc::clone(&log);
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
                    let log = Arc::clone(&log2);
                    tokio::spawn(async move {
                        let Ok(server) = TcpStream::connect(target).await else {
                            return;
                        };
                        let (mut cr, mut cw) = client.into_split();
                        let (mut sr, mut sw) = server.into_split();
                        tokio::spawn(async move {
                            let _ = tokio::io::copy(&mut sr, &mut cw).await;
                            let _ = cw.shutdown().await;
                        });
                        let mut pending: Vec<u8> = Vec::new();
                        let mut skip_body = 0usize;
                        let mut buf = vec![0u8; 64 * 1024];
                        loop {
                            let n = match cr.read(&mut buf).await {
                                Ok(0) | Err(_) => break,
                                Ok(n) => n,
                            };
                            if sw.write_all(&buf[..n]).await.is_err() {
                                break;
                            }
                            pending.extend_from_slice(&buf[..n]);
                            loop {
                                if skip_body > 0 {
                                    let k = skip_body.min(pending.len());
                                    pending.drain(..k);
                                    skip_body -= k;
                                    if skip_body > 0 {
                                        break;
                                    }
                                }
                                let Some(end) = pending.windows(4).position(|w| w == b"\r\n\r\n")
                                else {
                                    break;
                                };
                                let head = String::from_utf8_lossy(&pending[..end]).to_string();
                                pending.drain(..end + 4);
                                let mut lines = head.lines();
                                let first = lines.next().unwrap_or_default().to_string();
                                skip_body = lines
                                    .filter_map(|l| l.split_once(':'))
                                    .find(|(k, _)| k.trim().eq_ignore_ascii_case("content-length"))
                                    .and_then(|(_, v)| v.trim().parse().ok())
                                    .unwrap_or(0);
                                log.lock().unwrap().push(first);
                            }
                        }
                        let _ = sw.shutdown().await;
                    });
                }
            });
        });
        let addr = rx.recv().unwrap();
        Proxy { addr, log }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn requests(&self) -> Vec<String> {
        self.log.lock().unwrap().clone()
    }

    pub fn clear(&self) {
        self.log.lock().unwrap().clear();
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
