//! Exchanges that stop moving (SPEC §10, `listener.stream_idle_timeout`):
//! HTTP/2 streams whose window the client never opens, HTTP/1.1 clients
//! that stop reading a response or stop sending a body, and request bodies
//! that are malformed. Each held an upstream connection and gateway memory
//! for as long as the client liked, or blamed the upstream for the client's
//! fault.

mod common;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use common::*;
use http::{Request, Response};
use http_body_util::{BodyExt, Either, Full};
use hyper::body::{Body, Frame, Incoming};
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// `listener.stream_idle_timeout` in these tests.
const STALL: Duration = Duration::from_secs(1);
/// How long after `STALL` the gateway has to have ended a stalled exchange.
const MARGIN: Duration = Duration::from_secs(4);

/// An upstream that answers `/big` with an endless body, anything else by
/// reading the whole request body first and echoing its length, and counts
/// the connections it has open and has accepted.
struct Upstream {
    addr: SocketAddr,
    open: Arc<AtomicUsize>,
    accepted: Arc<AtomicUsize>,
}

impl Upstream {
    async fn start() -> Upstream {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let open = Arc::new(AtomicUsize::new(0));
        let accepted = Arc::new(AtomicUsize::new(0));
        let (counter, accepts) = (open.clone(), accepted.clone());
        tokio::spawn(async move {
            loop {
                let Ok((tcp, _)) = listener.accept().await else {
                    continue;
                };
                accepts.fetch_add(1, Ordering::SeqCst);
                counter.fetch_add(1, Ordering::SeqCst);
                let counter = counter.clone();
                tokio::spawn(async move {
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(tcp), hyper::service::service_fn(answer))
                        .await;
                    counter.fetch_sub(1, Ordering::SeqCst);
                });
            }
        });
        Upstream {
            addr,
            open,
            accepted,
        }
    }

    fn open(&self) -> usize {
        self.open.load(Ordering::SeqCst)
    }

    fn accepted(&self) -> usize {
        self.accepted.load(Ordering::SeqCst)
    }
}

async fn answer(
    req: Request<Incoming>,
) -> Result<Response<Either<Endless, Full<Bytes>>>, Infallible> {
    if req.uri().path() == "/big" {
        return Ok(Response::new(Either::Left(Endless)));
    }
    let len = match req.into_body().collect().await {
        Ok(body) => body.to_bytes().len(),
        Err(_) => 0,
    };
    Ok(Response::new(Either::Right(Full::new(Bytes::from(
        len.to_string(),
    )))))
}

/// 64 KiB chunks, forever.
struct Endless;

impl Body for Endless {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        self: Pin<&mut Self>,
        _: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        static CHUNK: [u8; 65536] = [b'x'; 65536];
        Poll::Ready(Some(Ok(Frame::data(Bytes::from_static(&CHUNK)))))
    }
}

fn setup(upstream: &Upstream, stream_idle_timeout: &str) -> Setup {
    let mut setup = Setup::new(upstream.addr);
    setup.listener = Some(format!(
        "[listener]\naddress = \"127.0.0.1:0\"\nstream_idle_timeout = \"{stream_idle_timeout}\"\n"
    ));
    setup.extra = "[authorization]\ndefault = \"authenticated\"\n".into();
    setup
}

fn wait_until(what: &str, timeout: Duration, done: impl FnMut() -> bool) {
    assert!(eventually(timeout, done), "{what} within {timeout:?}");
}

// ------------------------------------------------------------ HTTP/2 ----

/// Streams whose flow-control window the client never opens: each pins an
/// upstream connection and the body bytes read ahead, until
/// `stream_idle_timeout` resets the stream and the upstream side goes too.
#[tokio::test(flavor = "multi_thread")]
async fn zero_window_http2_streams_are_reset_and_release_the_upstream() {
    let upstream = Upstream::start().await;
    let setup = setup(&upstream, "1s");
    let gw = setup.start();
    let client = setup.client_h2(&setup.ca.issue(&LeafSpec::client("slow")));

    // Two rounds of stalled streams: what the first held must be released
    // and reused, so the second round does not add to it.
    let mut stalled_rss = Vec::new();
    for round in 1..=2 {
        let streams = stall_http2_streams(&client, gw.addr, &upstream).await;
        stalled_rss.push(rss_kib(gw.pid()));
        wait_until(
            "the upstream connections are released",
            STALL + MARGIN,
            || upstream.open() == 0,
        );
        for resp in streams {
            let read =
                tokio::time::timeout(Duration::from_secs(5), resp.into_body().collect()).await;
            assert!(
                matches!(read, Ok(Err(_))),
                "round {round}: the client sees its stream reset, not a completed body"
            );
        }
        assert_eq!(
            gw.metric("certgate_stream_idle_timeouts_total"),
            (round * STALLED_STREAMS) as f64
        );
    }
    assert!(gw.wait_for_log(&["stream_idle_timeout", "resetting the stream"], MARGIN));
    eprintln!("RSS with stalled streams, KiB: {stalled_rss:?}");
    assert!(
        stalled_rss[1] < stalled_rss[0] + 2048,
        "the second round reuses what the first released: {stalled_rss:?} KiB"
    );

    // The gateway still serves clients that read.
    let reply = client.get(gw.addr, "/small").await.unwrap();
    assert_eq!(reply.status, 200);
}

const STALLED_STREAMS: usize = 100;

/// Opens [`STALLED_STREAMS`] streams on 4 connections of a client that
/// never opens a window to receive data in, and returns their responses.
async fn stall_http2_streams(
    client: &TestClient,
    gateway: SocketAddr,
    upstream: &Upstream,
) -> Vec<Response<Incoming>> {
    let accepted_before = upstream.accepted();
    let mut responses = Vec::new();
    for _ in 0..4 {
        let tls = client.tls(gateway).await.unwrap();
        let (sender, conn) =
            hyper::client::conn::http2::Builder::new(hyper_util::rt::TokioExecutor::new())
                .initial_stream_window_size(0)
                .handshake::<_, Full<Bytes>>(TokioIo::new(tls))
                .await
                .unwrap();
        tokio::spawn(conn);
        for _ in 0..STALLED_STREAMS / 4 {
            let mut sender = sender.clone();
            let req = Request::get("https://localhost/big")
                .body(Full::new(Bytes::new()))
                .unwrap();
            sender.ready().await.unwrap();
            responses.push(sender.send_request(req).await.unwrap());
        }
    }
    assert!(
        responses.iter().all(|r| r.status() == 200),
        "each stream got its response head"
    );
    // Counted as accepted, not as open: on a slow machine the first
    // streams may already have been reset while the last were opened.
    assert_eq!(
        upstream.accepted() - accepted_before,
        STALLED_STREAMS,
        "one upstream exchange per stream"
    );
    responses
}

// ---------------------------------------------------------- HTTP/1.1 ----

/// A client that reads the head of a large response and then stops reading:
/// once the socket buffers are full nothing moves, and the connection is
/// closed after `stream_idle_timeout`.
#[tokio::test(flavor = "multi_thread")]
async fn http1_reader_that_stops_reading_is_closed() {
    let upstream = Upstream::start().await;
    let setup = setup(&upstream, "1s");
    let gw = setup.start();
    let client = setup.client(&setup.ca.issue(&LeafSpec::client("slow")));

    let mut tls = client.tls(gw.addr).await.unwrap();
    tls.write_all(b"GET /big HTTP/1.1\r\nhost: localhost\r\n\r\n")
        .await
        .unwrap();
    let mut head = [0u8; 1024];
    let n = tls.read(&mut head).await.unwrap();
    assert!(
        head[..n].starts_with(b"HTTP/1.1 200"),
        "{:?}",
        String::from_utf8_lossy(&head[..n])
    );
    assert_eq!(upstream.open(), 1);

    // Not reading: the gateway's writes back up until nothing moves.
    wait_until(
        "the upstream connection is released",
        STALL + MARGIN + MARGIN,
        || upstream.open() == 0,
    );
    assert_eq!(gw.metric("certgate_stream_idle_timeouts_total"), 1.0);
    assert!(gw.wait_for_log(&["stream_idle_timeout", "closing the connection"], MARGIN));

    // What the socket buffers held is readable; then the connection ends.
    let mut sink = vec![0u8; 1 << 20];
    let ended = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            match tls.read(&mut sink).await {
                Ok(0) | Err(_) => break,
                Ok(_) => {}
            }
        }
    })
    .await;
    assert!(ended.is_ok(), "the gateway closed the connection");
}

/// A client that sends part of its body and then stops: the connection is
/// closed after `stream_idle_timeout`, and the upstream, which was waiting
/// for the rest, is released.
#[tokio::test(flavor = "multi_thread")]
async fn trickled_upload_that_stops_is_closed() {
    let upstream = Upstream::start().await;
    let setup = setup(&upstream, "1s");
    let gw = setup.start();
    let leaf = setup.ca.issue(&LeafSpec::client("slow"));
    let client = setup.client(&leaf);

    let mut tls = client.tls(gw.addr).await.unwrap();
    tls.write_all(b"POST /upload HTTP/1.1\r\nhost: localhost\r\ncontent-length: 1000\r\n\r\n")
        .await
        .unwrap();
    for _ in 0..3 {
        tls.write_all(&[b'a'; 10]).await.unwrap();
        tls.flush().await.unwrap();
        // Bytes that keep arriving keep the exchange alive.
        tokio::time::sleep(STALL / 2).await;
    }
    assert_eq!(upstream.open(), 1, "still uploading: still open");
    wait_until(
        "the upstream connection is released",
        STALL + MARGIN,
        || upstream.open() == 0,
    );
    let mut rest = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(5), tls.read_to_end(&mut rest)).await;
    assert!(read.is_ok(), "the gateway closed the connection");
    assert_eq!(gw.metric("certgate_stream_idle_timeouts_total"), 1.0);
    assert_eq!(
        gw.metric("certgate_upstream_errors_total{kind=\"timeout\",upstream=\"default\"}"),
        0.0
    );

    // The same upload on an HTTP/2 stream is reset.
    let h2 = setup.client_h2(&leaf);
    let tls = h2.tls(gw.addr).await.unwrap();
    let (mut sender, conn) = hyper::client::conn::http2::handshake(
        hyper_util::rt::TokioExecutor::new(),
        TokioIo::new(tls),
    )
    .await
    .unwrap();
    tokio::spawn(conn);
    let (mut body_tx, body) = Trickle::new();
    let req = Request::post("https://localhost/upload")
        .header("content-length", "1000")
        .body(body)
        .unwrap();
    sender.ready().await.unwrap();
    let sent = tokio::spawn(sender.send_request(req));
    body_tx.send(Bytes::from_static(b"0123456789")).await;
    wait_until(
        "the HTTP/2 upload's upstream is released",
        STALL + MARGIN,
        || gw.metric("certgate_stream_idle_timeouts_total") == 2.0,
    );
    let outcome = tokio::time::timeout(Duration::from_secs(5), sent)
        .await
        .unwrap()
        .unwrap();
    assert!(outcome.is_err(), "the stream was reset: {outcome:?}");
    wait_until("no upstream connection left", MARGIN, || {
        upstream.open() == 0
    });
    drop(body_tx);
}

/// `upstream.timeout` passing while the client still owes its body is the
/// client's fault: 408, not an upstream timeout.
#[tokio::test(flavor = "multi_thread")]
async fn upstream_timeout_during_a_stalled_upload_blames_the_client() {
    let upstream = Upstream::start().await;
    let mut setup = setup(&upstream, "60s");
    setup
        .env
        .push(("CERTGATE_UPSTREAM__TIMEOUT".into(), "1s".into()));
    let gw = setup.start();
    let client = setup.client(&setup.ca.issue(&LeafSpec::client("slow")));
    let mut tls = client.tls(gw.addr).await.unwrap();
    tls.write_all(b"POST /upload HTTP/1.1\r\nhost: localhost\r\ncontent-length: 100\r\n\r\nabc")
        .await
        .unwrap();
    let mut raw = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), tls.read_to_end(&mut raw))
        .await
        .expect("answered")
        .ok();
    let reply = parse_http1(&raw);
    assert_gateway_error(&reply, 408, "request_body_timeout", "stalled upload");
    assert_eq!(
        gw.metric("certgate_upstream_errors_total{kind=\"timeout\",upstream=\"default\"}"),
        0.0
    );
    assert_eq!(gw.metric("certgate_requests_total{code=\"408\"}"), 1.0);
}

/// A malformed chunked body is the client's error (400), not the upstream's.
#[tokio::test(flavor = "multi_thread")]
async fn malformed_chunked_body_is_a_client_error() {
    let upstream = Upstream::start().await;
    let setup = setup(&upstream, "60s");
    let gw = setup.start();
    let client = setup.client(&setup.ca.issue(&LeafSpec::client("sloppy")));
    let reply = raw_exchange(
        &client,
        gw.addr,
        b"POST /upload HTTP/1.1\r\nhost: localhost\r\ntransfer-encoding: chunked\r\n\r\n5\r\nhello\r\nzz\r\n",
    )
    .await;
    assert_gateway_error(&reply, 400, "bad_request_body", "malformed chunk");
    assert_eq!(
        gw.metric("certgate_upstream_errors_total{kind=\"protocol\",upstream=\"default\"}"),
        0.0
    );
    assert_eq!(gw.metric("certgate_requests_total{code=\"400\"}"), 1.0);
    assert!(gw.wait_for_log(&["request body from the client was malformed"], MARGIN));
}

/// A request body whose frames are sent by the test, one at a time.
struct Trickle {
    rx: tokio::sync::mpsc::Receiver<Bytes>,
}

struct TrickleSender(tokio::sync::mpsc::Sender<Bytes>);

impl TrickleSender {
    async fn send(&mut self, bytes: Bytes) {
        self.0.send(bytes).await.unwrap();
    }
}

impl Trickle {
    fn new() -> (TrickleSender, Trickle) {
        let (tx, rx) = tokio::sync::mpsc::channel(1);
        (TrickleSender(tx), Trickle { rx })
    }
}

impl Body for Trickle {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        self.rx
            .poll_recv(cx)
            .map(|chunk| chunk.map(|b| Ok(Frame::data(b))))
    }
}
