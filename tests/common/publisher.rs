//! Where a PKI publishes revocation data: a small HTTP/1.1 server on
//! loopback that serves one body at any path, with an ETag and `304 Not
//! Modified` on revalidation, and that can be made slow or go away; and a
//! real OCSP responder (`openssl ocsp`) over an index file.

use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use super::pki::{Leaf, TestCa};
use super::tools::eventually;

/// What the publisher serves now.
#[derive(Default)]
struct Published {
    body: Vec<u8>,
    version: u64,
    delay: Duration,
}

/// An HTTP server publishing one CRL; counts requests and revalidations.
pub struct Publisher {
    pub addr: SocketAddr,
    published: Arc<Mutex<Published>>,
    pub requests: Arc<AtomicU64>,
    /// Requests answered `304 Not Modified`.
    pub revalidated: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
}

impl Publisher {
    pub fn start(body: &[u8]) -> Publisher {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind publisher");
        let addr = listener.local_addr().unwrap();
        let publisher = Publisher {
            addr,
            published: Arc::new(Mutex::new(Published {
                body: body.to_vec(),
                version: 1,
                delay: Duration::ZERO,
            })),
            requests: Arc::default(),
            revalidated: Arc::default(),
            stop: Arc::default(),
        };
        let (published, requests, revalidated, stop) = (
            publisher.published.clone(),
            publisher.requests.clone(),
            publisher.revalidated.clone(),
            publisher.stop.clone(),
        );
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                if stop.load(Ordering::Relaxed) {
                    return;
                }
                let Ok(stream) = stream else { continue };
                let (published, requests, revalidated) =
                    (published.clone(), requests.clone(), revalidated.clone());
                std::thread::spawn(move || {
                    let _ = serve(stream, &published, &requests, &revalidated);
                });
            }
        });
        publisher
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// Publishes a new body (a new ETag).
    pub fn publish(&self, body: &[u8]) {
        let mut p = self.published.lock().unwrap();
        p.body = body.to_vec();
        p.version += 1;
    }

    /// Waits this long before answering each request.
    pub fn set_delay(&self, delay: Duration) {
        self.published.lock().unwrap().delay = delay;
    }
}

impl Drop for Publisher {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        let _ = TcpStream::connect(self.addr);
    }
}

fn serve(
    mut stream: TcpStream,
    published: &Mutex<Published>,
    requests: &AtomicU64,
    revalidated: &AtomicU64,
) -> std::io::Result<()> {
    stream.set_read_timeout(Some(Duration::from_secs(5)))?;
    let mut reader = BufReader::new(stream.try_clone()?);
    let mut if_none_match = None;
    let mut line = String::new();
    reader.read_line(&mut line)?;
    loop {
        line.clear();
        if reader.read_line(&mut line)? == 0 || line == "\r\n" {
            break;
        }
        if let Some((name, value)) = line.split_once(':') {
            if name.eq_ignore_ascii_case("if-none-match") {
                if_none_match = Some(value.trim().to_owned());
            }
        }
    }
    requests.fetch_add(1, Ordering::Relaxed);
    let (body, etag, delay) = {
        let p = published.lock().unwrap();
        (p.body.clone(), format!("\"v{}\"", p.version), p.delay)
    };
    std::thread::sleep(delay);
    if if_none_match.as_deref() == Some(etag.as_str()) {
        revalidated.fetch_add(1, Ordering::Relaxed);
        let head =
            format!("HTTP/1.1 304 Not Modified\r\nETag: {etag}\r\nConnection: close\r\n\r\n");
        return stream.write_all(head.as_bytes());
    }
    let head = format!(
        "HTTP/1.1 200 OK\r\nContent-Type: application/pkix-crl\r\nContent-Length: {}\r\nETag: {etag}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    stream.write_all(head.as_bytes())?;
    stream.write_all(&body)
}

/// A port free right now on loopback, for tools that take a port number.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// `openssl ocsp` answering for `ca`'s certificates from an index file
/// (signed by the CA itself), on a loopback port. Killed on drop.
pub struct OcspResponder {
    pub port: u16,
    child: Child,
    index: PathBuf,
    entries: Mutex<Vec<String>>,
}

impl OcspResponder {
    /// Starts the responder; `good` and `revoked` are listed in its index,
    /// any other certificate of the CA is `unknown`.
    pub fn start_on(
        port: u16,
        dir: &Path,
        ca: &TestCa,
        good: &[&Leaf],
        revoked: &[&Leaf],
    ) -> OcspResponder {
        let ca_file = super::files::write(dir, "ocsp-ca.pem", &ca.pem);
        let key_file = super::files::write(dir, "ocsp-ca.key", &ca.key_pem);
        let index = dir.join("index.txt");
        let mut entries: Vec<String> = good.iter().map(|l| entry(l, None)).collect();
        entries.extend(revoked.iter().map(|l| entry(l, Some("250101000000Z"))));
        std::fs::write(&index, entries.concat()).unwrap();
        let log = dir.join("ocsp.log");
        let child = Command::new("openssl")
            .args(["ocsp", "-index"])
            .arg(&index)
            .args(["-port", &port.to_string(), "-CA"])
            .arg(&ca_file)
            .arg("-rsigner")
            .arg(&ca_file)
            .arg("-rkey")
            .arg(&key_file)
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .expect("start openssl ocsp");
        let responder = OcspResponder {
            port,
            child,
            index,
            entries: Mutex::new(entries),
        };
        // Readiness from its log: a probe connection would hold the
        // single-threaded responder until it times out.
        assert!(
            eventually(Duration::from_secs(10), || std::fs::read_to_string(&log)
                .is_ok_and(|l| l.contains("waiting for OCSP client connections"))),
            "openssl ocsp did not listen on {port}"
        );
        responder
    }

    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}/", self.port)
    }

    /// Marks `leaf` revoked in the index (the responder reloads a changed index).
    pub fn revoke(&self, leaf: &Leaf) {
        let mut entries = self.entries.lock().unwrap();
        let good = entry(leaf, None);
        entries.retain(|e| *e != good);
        entries.push(entry(leaf, Some("250101000000Z")));
        std::fs::write(&self.index, entries.concat()).unwrap();
        // openssl notices a changed index by its mtime, in whole seconds:
        // a rewrite within the second it was written would go unseen.
        let later = std::time::SystemTime::now() + Duration::from_secs(2);
        std::fs::File::options()
            .write(true)
            .open(&self.index)
            .and_then(|f| f.set_modified(later))
            .unwrap();
    }

    /// Stops answering: the port refuses connections.
    pub fn stop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for OcspResponder {
    fn drop(&mut self) {
        self.stop();
    }
}

/// An `openssl ca` index line: status, expiry, revocation time, serial, file, subject.
fn entry(leaf: &Leaf, revoked_at: Option<&str>) -> String {
    let serial = hex::encode_upper(leaf.serial.to_bytes());
    let (status, revoked) = match revoked_at {
        Some(at) => ("R", at),
        None => ("V", ""),
    };
    format!("{status}\t301231235959Z\t{revoked}\t{serial}\tunknown\t/CN=test\n")
}
