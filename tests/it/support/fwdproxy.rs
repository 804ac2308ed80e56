//! A recording forward proxy, standing in for a node's P2P proxy (Dragonfly's dfdaemon): it
//! takes absolute-form requests (`GET http://host:port/path HTTP/1.1`), records each request
//! line and its headers, and either forwards it to that host (loopback only) or answers with
//! an error Dragonfly marks as its own.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::{Arc, Mutex};

#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Forward,
    /// `500` with `X-Dragonfly-Error-Type: dfdaemon`, as a daemon that lost its scheduler.
    DaemonError,
    /// A poisoned or hostile daemon: forwards, then flips one byte of every object body and
    /// adds headers that would switch verification off (`x-amz-server-side-encryption:
    /// aws:kms`) or supply the value to check against (`x-oss-hash-crc64ecma` of the altered
    /// body).
    Tamper,
    /// `404` with no Dragonfly marking: a daemon's (or another proxy's) own answer.
    NotFound,
    /// Forwards the head and half the body, then closes: a peer that dies mid-piece.
    CutBody,
}

/// One request the proxy received.
#[derive(Debug, Clone)]
pub struct Seen {
    pub method: String,
    /// The absolute URL asked for.
    pub url: String,
    /// Lower-case names.
    pub headers: Vec<(String, String)>,
}

impl Seen {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }
}

pub struct FwdProxy {
    pub url: String,
    seen: Arc<Mutex<Vec<Seen>>>,
}

impl FwdProxy {
    pub fn start(mode: Mode) -> FwdProxy {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let seen = Arc::new(Mutex::new(Vec::new()));
        let log = Arc::clone(&seen);
        std::thread::spawn(move || {
            for client in listener.incoming().flatten() {
                let log = Arc::clone(&log);
                std::thread::spawn(move || serve(client, mode, &log));
            }
        });
        FwdProxy { url, seen }
    }

    pub fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }
}

/// One request per connection: the reply is sent with `Connection: close`.
fn serve(mut client: TcpStream, mode: Mode, log: &Mutex<Vec<Seen>>) {
    let mut reader = BufReader::new(client.try_clone().unwrap());
    let mut line = String::new();
    if reader.read_line(&mut line).unwrap_or(0) == 0 {
        return;
    }
    let mut parts = line.split_whitespace();
    let (method, url) = (
        parts.next().unwrap_or_default().to_string(),
        parts.next().unwrap_or_default().to_string(),
    );
    let mut headers = Vec::new();
    let mut len = 0usize;
    loop {
        let mut h = String::new();
        if reader.read_line(&mut h).unwrap_or(0) == 0 || h == "\r\n" {
            break;
        }
        if let Some((k, v)) = h.trim_end().split_once(':') {
            let (k, v) = (k.trim().to_ascii_lowercase(), v.trim().to_string());
            if k == "content-length" {
                len = v.parse().unwrap_or(0);
            }
            headers.push((k, v));
        }
    }
    let mut body = vec![0u8; len];
    let _ = reader.read_exact(&mut body);
    log.lock().unwrap().push(Seen {
        method: method.clone(),
        url: url.clone(),
        headers: headers.clone(),
    });
    if mode == Mode::DaemonError {
        let _ = client.write_all(b"HTTP/1.1 500 Internal Server Error\r\nX-Dragonfly-Error-Type: dfdaemon\r\nContent-Length: 0\r\nConnection: close\r\n\r\n");
        return;
    }
    if mode == Mode::NotFound {
        let _ = client
            .write_all(b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n");
        return;
    }
    let Some(rest) = url.strip_prefix("http://") else {
        let _ = client.write_all(
            b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
        );
        return;
    };
    let (authority, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
    assert!(
        authority.starts_with("127.0.0.1:")
            || authority.contains(".test:")
            || authority.starts_with("localhost:"),
        "the proxy was asked for a non-loopback host: {authority}"
    );
    let target = if authority.starts_with("127.0.0.1:") || authority.starts_with("localhost:") {
        authority.to_string()
    } else {
        return;
    };
    let Ok(mut upstream) = TcpStream::connect(&target) else {
        let _ = client.write_all(
            b"HTTP/1.1 502 Bad Gateway\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
        );
        return;
    };
    let mut head = format!(
        "{method} {} HTTP/1.1\r\n",
        if path.is_empty() { "/" } else { path }
    );
    for (k, v) in &headers {
        if k.starts_with("proxy-") || k == "connection" {
            continue;
        }
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    head.push_str("connection: close\r\n\r\n");
    if upstream.write_all(head.as_bytes()).is_err() || upstream.write_all(&body).is_err() {
        return;
    }
    if mode == Mode::Forward {
        let _ = std::io::copy(&mut upstream, &mut client);
        return;
    }
    let mut reply = Vec::new();
    let _ = upstream.read_to_end(&mut reply);
    let Some(end) = reply.windows(4).position(|w| w == b"\r\n\r\n") else {
        return;
    };
    let (head, body) = (reply[..end].to_vec(), reply[end + 4..].to_vec());
    let ok = head.starts_with(b"HTTP/1.1 20");
    let out = match mode {
        Mode::Tamper if ok && !body.is_empty() => {
            let mut body = body;
            let at = body.len() / 2;
            body[at] ^= 0x01;
            let crc = crc_fast::checksum(crc_fast::CrcAlgorithm::Crc64Xz, &body);
            let mut out = head;
            out.extend_from_slice(
                format!(
                    "\r\nx-amz-server-side-encryption: aws:kms\r\nx-oss-hash-crc64ecma: {crc}\r\n\r\n"
                )
                .as_bytes(),
            );
            out.extend_from_slice(&body);
            out
        }
        Mode::CutBody if ok && body.len() > 1 => {
            let mut out = reply[..end + 4].to_vec();
            out.extend_from_slice(&body[..body.len() / 2]);
            out
        }
        _ => reply,
    };
    let _ = client.write_all(&out);
}
