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
    let _ = std::io::copy(&mut upstream, &mut client);
}
