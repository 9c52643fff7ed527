//! Prometheus metrics and plain-HTTP health, on the listener the web UI shares.
//!
//! RPC counts and latencies are recorded by [`RpcMetricsLayer`] around every gRPC call;
//! storage and queue figures are read from their owners when `/metrics` is scraped, so the
//! hot paths pay for nothing but a few atomic adds. Label sets are bounded: methods by the
//! served protos, codes by gRPC, outcomes by a fixed list.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};
use std::task::{Context as TaskContext, Poll};
use std::time::Instant;

use axum::Router;
use axum::http::{StatusCode, header};
use axum::routing::get;
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use tokio::net::TcpListener;
use tonic::codegen::http;

use crate::config::MetricsConfig;
use crate::error::Error;
use crate::state::Context;

/// The process-wide recorder (metrics are global; several in-process servers share it).
pub fn handle() -> PrometheusHandle {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    HANDLE
        .get_or_init(|| {
            let recorder = PrometheusBuilder::new()
                .set_buckets(&[
                    0.0001, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
                    2.5, 5.0, 10.0, 30.0, 60.0, 300.0,
                ])
                .expect("valid buckets")
                .build_recorder();
            let handle = recorder.handle();
            // Another recorder may already be installed (by an embedding program); then our
            // handle renders only what we record through it.
            let _ = metrics::set_global_recorder(recorder);
            handle
        })
        .clone()
}

/// Copies the figures owned elsewhere into gauges, then renders the exposition text.
pub fn render(ctx: &Context) -> String {
    let stats = ctx.cas.stats().snapshot();
    metrics::gauge!("rexd_cas_blobs").set(ctx.cas.index().len() as f64);
    metrics::gauge!("rexd_cas_disk_bytes").set(ctx.cas.index().total_bytes() as f64);
    metrics::gauge!("rexd_cas_hits_total").set(stats.hits as f64);
    metrics::gauge!("rexd_cas_misses_total").set(stats.misses as f64);
    metrics::gauge!("rexd_cas_bytes_in_total").set(stats.bytes_in as f64);
    metrics::gauge!("rexd_cas_bytes_out_total").set(stats.bytes_out as f64);
    metrics::gauge!("rexd_cas_evictions_total").set(stats.evictions as f64);
    metrics::gauge!("rexd_cas_evicted_bytes_total").set(stats.evicted_bytes as f64);
    metrics::gauge!("rexd_cas_corrupt_blobs_total").set(stats.corrupt as f64);
    if let Some(remote) = ctx.store.remote() {
        metrics::gauge!("rexd_remote_reachable").set(f64::from(u8::from(remote.is_reachable())));
        metrics::gauge!("rexd_remote_write_back_queue").set(ctx.store.queued_uploads() as f64);
        metrics::gauge!("rexd_remote_known_objects").set(remote.known.len() as f64);
        metrics::gauge!("rexd_remote_fills_in_flight").set(remote.fetches.len() as f64);
    }
    if let Some(engine) = &ctx.execution {
        let running = engine.running();
        metrics::gauge!("rexd_actions_queued").set(engine.queued() as f64);
        metrics::gauge!("rexd_actions_running").set(running as f64);
        metrics::gauge!("rexd_workers").set(engine.worker_count() as f64);
        metrics::gauge!("rexd_worker_utilisation")
            .set(running as f64 / engine.worker_count().max(1) as f64);
        metrics::gauge!("rexd_operations").set(engine.operations().len() as f64);
    }
    handle().render()
}

/// What `/metrics` shows: the server's [`render`], or a worker's own counters.
pub type Renderer = Arc<dyn Fn() -> String + Send + Sync>;

/// Whether the object-store tier answers, when there is one; `/healthz` reports it.
pub type RemoteReachable = Option<tokio::sync::watch::Receiver<bool>>;

/// Binds the plain-HTTP listener the configuration asks for. An address the operator wrote
/// must bind; the built-in default may be held by another rexd on the host (a worker next
/// to its server, say), and then this one runs without it, with a warning.
pub async fn bind(config: &MetricsConfig) -> Result<Option<TcpListener>, Error> {
    let Some(addr) = config.address() else {
        return Ok(None);
    };
    match TcpListener::bind(addr).await {
        Ok(listener) => Ok(Some(listener)),
        Err(e) if config.is_default_address() && e.kind() == std::io::ErrorKind::AddrInUse => {
            tracing::warn!(%addr, "the web UI and /metrics are off: their default address is in use; set [metrics] listen");
            Ok(None)
        }
        Err(e) => Err(Error::io(format!("binding the HTTP listener {addr}"), e)),
    }
}

/// `/metrics` and `/healthz`; the server adds the web UI beside them.
pub fn routes(render: Renderer, shutting_down: Arc<AtomicBool>, remote: RemoteReachable) -> Router {
    Router::new()
        .route(
            "/metrics",
            get(move || {
                let body = render();
                async move { ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], body) }
            }),
        )
        .route(
            "/healthz",
            get(move || {
                let answer = health(&shutting_down, &remote);
                async move { answer }
            }),
        )
}

/// Serves `router` on `listener` until the task is dropped.
pub async fn serve(listener: TcpListener, router: Router) {
    if let Err(e) = axum::serve(listener, router).await {
        tracing::error!(error = %e, "the HTTP listener stopped");
    }
}

fn health(shutting_down: &AtomicBool, remote: &RemoteReachable) -> (StatusCode, &'static str) {
    if shutting_down.load(Ordering::Relaxed) {
        (StatusCode::SERVICE_UNAVAILABLE, "shutting down\n")
    } else if remote.as_ref().is_some_and(|r| !*r.borrow()) {
        // Still serving: local blobs read, and write-back uploads queue, without the store.
        (
            StatusCode::OK,
            "degraded: the object store is unreachable; serving from the local disk\n",
        )
    } else {
        (StatusCode::OK, "ok\n")
    }
}

/// Records `rexd_rpc_requests_total` and `rexd_rpc_duration_seconds` by method and code.
#[derive(Clone, Default)]
pub struct RpcMetricsLayer;

impl<S> tower::Layer<S> for RpcMetricsLayer {
    type Service = RpcMetrics<S>;

    fn layer(&self, inner: S) -> Self::Service {
        RpcMetrics { inner }
    }
}

/// The `method` label of an RPC: its path if this server serves it, else `other`, so that a
/// client sending made-up paths cannot grow the label set (it is bounded by the methods of
/// the served protos).
fn method_label(path: &str) -> String {
    static SERVED: OnceLock<std::collections::HashSet<String>> = OnceLock::new();
    let served = SERVED.get_or_init(|| {
        use prost::Message;
        let set = prost_types::FileDescriptorSet::decode(crate::proto::FILE_DESCRIPTOR_SET)
            .expect("the embedded descriptor set decodes");
        let ours = set.file.iter().flat_map(|file| {
            file.service.iter().flat_map(move |service| {
                service.method.iter().map(move |method| {
                    format!("/{}.{}/{}", file.package(), service.name(), method.name())
                })
            })
        });
        let extra = [
            "/grpc.health.v1.Health/Check",
            "/grpc.health.v1.Health/Watch",
            "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo",
            "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo",
        ];
        ours.chain(extra.map(String::from)).collect()
    });
    if served.contains(path) {
        path.to_string()
    } else {
        "other".to_string()
    }
}

#[derive(Clone)]
pub struct RpcMetrics<S> {
    inner: S,
}

impl<S, B, RB> tower::Service<http::Request<B>> for RpcMetrics<S>
where
    S: tower::Service<http::Request<B>, Response = http::Response<RB>>,
    S::Future: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut TaskContext<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<B>) -> Self::Future {
        let method = method_label(req.uri().path());
        let start = Instant::now();
        let future = self.inner.call(req);
        Box::pin(async move {
            let response = future.await?;
            // Errors come back as trailers-only responses, with grpc-status in the headers;
            // a response without it is a success (or a stream whose end is not seen here).
            let code = response
                .headers()
                .get("grpc-status")
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.parse::<i32>().ok())
                .map(|c| format!("{:?}", tonic::Code::from(c)))
                .unwrap_or_else(|| "Ok".to_string());
            metrics::counter!("rexd_rpc_requests_total", "method" => method.clone(), "code" => code)
                .increment(1);
            metrics::histogram!("rexd_rpc_duration_seconds", "method" => method)
                .record(start.elapsed().as_secs_f64());
            Ok(response)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn method_labels_are_the_served_methods_or_other() {
        assert_eq!(
            method_label("/build.bazel.remote.execution.v2.Execution/Execute"),
            "/build.bazel.remote.execution.v2.Execution/Execute"
        );
        assert_eq!(
            method_label("/google.bytestream.ByteStream/Write"),
            "/google.bytestream.ByteStream/Write"
        );
        assert_eq!(
            method_label("/grpc.health.v1.Health/Check"),
            "/grpc.health.v1.Health/Check"
        );
        for made_up in 0..1000 {
            assert_eq!(method_label(&format!("/made.Up/Method{made_up}")), "other");
        }
        assert_eq!(method_label("/google.bytestream.ByteStream/Nope"), "other");
    }
}
