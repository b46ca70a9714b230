//! The in-process echo upstream.

use std::net::SocketAddr;

/// Starts the echo upstream on an ephemeral loopback port (on the current
/// tokio runtime) and returns its address.
pub async fn echo_upstream() -> SocketAddr {
    let (addr, server) = certgate::devtools::echo::bind("127.0.0.1:0".parse().unwrap())
        .await
        .expect("bind echo upstream");
    tokio::spawn(server);
    addr
}

/// An HTTP/1.1 (or, from [`NamedUpstream::start_h2`], h2c) upstream that
/// names itself: every response is `200` with `x-upstream: NAME` and
/// `x-upstream-version` the HTTP version the request came in, except `/health`, which answers as
/// [`NamedUpstream::set_healthy`] says. It counts the connections it
/// accepts and the requests it serves, closes connections idle for
/// `idle_close` (as servlet containers' keep-alive timeouts do), and can be
/// stopped and started again on the same port.
pub struct NamedUpstream {
    pub addr: SocketAddr,
    pub name: &'static str,
    pub accepted: std::sync::Arc<std::sync::atomic::AtomicUsize>,
    pub served: std::sync::Arc<std::sync::atomic::AtomicUsize>,
    healthy: std::sync::Arc<std::sync::atomic::AtomicBool>,
    idle_close: Option<std::time::Duration>,
    http2: bool,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl NamedUpstream {
    pub async fn start(name: &'static str) -> NamedUpstream {
        NamedUpstream::start_with(name, None).await
    }

    /// An upstream that speaks HTTP/2 with prior knowledge (h2c) only.
    pub async fn start_h2(name: &'static str) -> NamedUpstream {
        NamedUpstream::listen(name, None, true).await
    }

    pub async fn start_with(
        name: &'static str,
        idle_close: Option<std::time::Duration>,
    ) -> NamedUpstream {
        NamedUpstream::listen(name, idle_close, false).await
    }

    async fn listen(
        name: &'static str,
        idle_close: Option<std::time::Duration>,
        http2: bool,
    ) -> NamedUpstream {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let mut up = NamedUpstream {
            addr: listener.local_addr().unwrap(),
            name,
            accepted: Default::default(),
            served: Default::default(),
            healthy: std::sync::Arc::new(std::sync::atomic::AtomicBool::new(true)),
            idle_close,
            http2,
            task: None,
        };
        up.serve(listener);
        up
    }

    pub fn accepted(&self) -> usize {
        self.accepted.load(std::sync::atomic::Ordering::SeqCst)
    }

    pub fn served(&self) -> usize {
        self.served.load(std::sync::atomic::Ordering::SeqCst)
    }

    pub fn set_healthy(&self, healthy: bool) {
        self.healthy
            .store(healthy, std::sync::atomic::Ordering::SeqCst);
    }

    /// Stops listening and drops every connection: connects are refused.
    pub fn stop(&mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }

    /// Listens again on the same port.
    pub async fn restart(&mut self) {
        self.stop();
        let listener = tokio::net::TcpListener::bind(self.addr).await.unwrap();
        self.serve(listener);
    }

    fn serve(&mut self, listener: tokio::net::TcpListener) {
        use hyper::service::service_fn;
        use std::sync::atomic::Ordering;
        let (name, accepted, served, healthy, idle_close, http2) = (
            self.name,
            self.accepted.clone(),
            self.served.clone(),
            self.healthy.clone(),
            self.idle_close,
            self.http2,
        );
        self.task = Some(tokio::spawn(async move {
            let mut connections = tokio::task::JoinSet::new();
            loop {
                let Ok((tcp, _)) = listener.accept().await else {
                    continue;
                };
                accepted.fetch_add(1, Ordering::SeqCst);
                let (served, healthy) = (served.clone(), healthy.clone());
                connections.spawn(async move {
                    let service = service_fn(move |req: http::Request<hyper::body::Incoming>| {
                        let (served, healthy) = (served.clone(), healthy.clone());
                        async move {
                            let status = if req.uri().path() == "/health" {
                                if healthy.load(Ordering::SeqCst) {
                                    200
                                } else {
                                    503
                                }
                            } else {
                                served.fetch_add(1, Ordering::SeqCst);
                                200
                            };
                            Ok::<_, std::convert::Infallible>(
                                http::Response::builder()
                                    .status(status)
                                    .header("x-upstream", name)
                                    .header("x-upstream-version", format!("{:?}", req.version()))
                                    .body(http_body_util::Full::new(bytes::Bytes::from(name)))
                                    .unwrap(),
                            )
                        }
                    });
                    let io = hyper_util::rt::TokioIo::new(tcp);
                    if http2 {
                        let _ = hyper::server::conn::http2::Builder::new(
                            hyper_util::rt::TokioExecutor::new(),
                        )
                        .serve_connection(io, service)
                        .await;
                        return;
                    }
                    let mut builder = hyper::server::conn::http1::Builder::new();
                    builder.timer(hyper_util::rt::TokioTimer::new());
                    if let Some(idle) = idle_close {
                        builder.header_read_timeout(idle);
                    }
                    let _ = builder.serve_connection(io, service).await;
                });
            }
        }));
    }
}

impl Drop for NamedUpstream {
    fn drop(&mut self) {
        self.stop();
    }
}
