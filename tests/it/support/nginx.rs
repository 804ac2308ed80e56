//! nginx (Debian's nginx-light, installed by scripts/test.sh) started for one test with a
//! server block of its own: a caching proxy, a TLS front. Stopped when dropped.

use std::path::{Path, PathBuf};

use super::signal;

pub struct Nginx {
    pub port: u16,
    /// Its folder: config, logs, cache, and whatever the test puts there (certificates).
    pub root: PathBuf,
    child: std::process::Child,
}

impl Nginx {
    /// Starts nginx in `dir/nginx` with `http_block(port, root)` as the body of its `http {}`
    /// (temp paths and logs are set here), and waits until the port answers.
    pub fn start(dir: &Path, http_block: impl FnOnce(u16, &Path) -> String) -> Nginx {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let root = dir.join("nginx");
        std::fs::create_dir_all(root.join("tmp")).unwrap();
        let body = http_block(port, &root);
        let conf = format!(
            r#"daemon off;
worker_processes 1;
pid {root}/nginx.pid;
error_log {root}/error.log;
events {{ worker_connections 256; }}
http {{
  access_log {root}/access.log;
  client_body_temp_path {root}/tmp;
  proxy_temp_path {root}/tmp;
{body}
}}
"#,
            root = root.display()
        );
        std::fs::write(root.join("nginx.conf"), conf).unwrap();
        let child = std::process::Command::new(nginx())
            .args(["-c", root.join("nginx.conf").to_str().unwrap(), "-p"])
            .arg(&root)
            .stderr(std::fs::File::create(root.join("stderr")).unwrap())
            .spawn()
            .expect("nginx runs (scripts/test.sh installs nginx-light)");
        for _ in 0..100 {
            if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        Nginx { port, root, child }
    }
}

impl Drop for Nginx {
    /// SIGQUIT: nginx's master stops its workers too (SIGKILL would orphan them).
    fn drop(&mut self) {
        signal(&self.child, libc::SIGQUIT);
        let _ = self.child.wait();
    }
}

fn nginx() -> String {
    std::env::var("MODEL_LOADER_TEST_NGINX").unwrap_or_else(|_| "nginx".into())
}

/// A TLS front for `upstream` (plain http) at `https://127.0.0.1:PORT`, with a certificate for
/// 127.0.0.1 signed by a CA of its own (`ca.pem` in its root; the `openssl` command makes both).
pub fn tls_front(dir: &Path, upstream: &str) -> Nginx {
    tls_front_for(dir, upstream, "IP:127.0.0.1")
}

/// [`tls_front`] with a certificate for `san` (`DNS:name,IP:…`): a real service's name that
/// the test sends to loopback.
pub fn tls_front_for(dir: &Path, upstream: &str, san: &str) -> Nginx {
    let upstream = upstream.trim_end_matches('/').to_string();
    Nginx::start(dir, |port, root| {
        make_certificates(root, san);
        format!(
            r#"  server {{
    listen 127.0.0.1:{port} ssl;
    ssl_certificate {root}/server.pem;
    ssl_certificate_key {root}/server.key;
    client_max_body_size 0;
    location / {{
      proxy_http_version 1.1;
      proxy_set_header Host $http_host;
      proxy_buffering off;
      proxy_pass {upstream};
    }}
  }}"#,
            root = root.display()
        )
    })
}

/// `ca.pem`/`ca.key` and a `server.pem`/`server.key` for `san` signed by it: rustls refuses a
/// self-signed leaf as its own trust anchor, so the chain has two links.
fn make_certificates(root: &Path, san: &str) {
    let sh = format!(
        r#"set -e
cd '{root}'
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 2 \
  -subj /CN=model-loader-test-ca -keyout ca.key -out ca.pem 2>/dev/null
openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes \
  -subj /CN=127.0.0.1 -keyout server.key -out server.csr 2>/dev/null
printf 'subjectAltName={san}\nbasicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\n' > ext.cnf
openssl x509 -req -in server.csr -CA ca.pem -CAkey ca.key -CAcreateserial -days 2 \
  -extfile ext.cnf -out server.pem 2>/dev/null
"#,
        root = root.display()
    );
    let st = std::process::Command::new("sh")
        .args(["-c", &sh])
        .status()
        .expect("sh runs");
    assert!(
        st.success(),
        "openssl made the test certificates (scripts/test.sh installs it)"
    );
}
