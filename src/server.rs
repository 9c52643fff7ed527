//! Assembles every service on one listener and serves until shut down.

pub mod metrics;

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use tokio::net::TcpListener;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::server::TcpIncoming;
use tonic::transport::{Certificate, Identity, ServerTlsConfig};
use tonic_health::ServingStatus;

use crate::config::Settings;
use crate::error::Error;
use crate::execution::Engine;
use crate::proto::asset::{fetch_server::FetchServer, push_server::PushServer};
use crate::proto::bytestream::byte_stream_server::ByteStreamServer;
use crate::proto::longrunning::operations_server::OperationsServer;
use crate::proto::remote_execution::execution_server::ExecutionServer;
use crate::proto::remote_execution::{
    action_cache_server::ActionCacheServer, capabilities_server::CapabilitiesServer,
    content_addressable_storage_server::ContentAddressableStorageServer,
};
use crate::proto::remoteworkers::bots_server::BotsServer;
use crate::service::asset::{FetchService, PushService};
use crate::service::bots::BotsService;
use crate::service::{
    action_cache::ActionCacheService, bytestream::ByteStreamService,
    capabilities::CapabilitiesService, cas::CasService,
};
use crate::service::{execution::ExecutionService, operations::OperationsService};
use crate::state::Context;
use crate::storage::{ActionCache, Cas};

/// Per-stream HTTP/2 flow-control window: enough to keep a fast link busy (loopback uploads
/// ran as fast with 2 MiB as with 4), small enough that concurrent uploads do not pile up
/// tens of MiB in memory each.
const STREAM_WINDOW: u32 = 2 * 1024 * 1024;
/// Per-connection window, shared by the streams of one client.
const CONNECTION_WINDOW: u32 = 16 * 1024 * 1024;
/// Largest ByteStream message accepted; clients send 16 KiB to 4 MiB chunks.
const MAX_STREAM_MESSAGE: usize = 16 * 1024 * 1024;

/// Fully-qualified names of the services this server answers, as reflection lists them.
const SERVED: &[&str] = &[
    "build.bazel.remote.execution.v2.Capabilities",
    "build.bazel.remote.execution.v2.ContentAddressableStorage",
    "build.bazel.remote.execution.v2.ActionCache",
    "google.bytestream.ByteStream",
    "build.bazel.remote.asset.v1.Fetch",
    "build.bazel.remote.asset.v1.Push",
    "grpc.health.v1.Health",
];

/// Served only while execution is enabled.
const SERVED_WITH_EXECUTION: &[&str] = &[
    "build.bazel.remote.execution.v2.Execution",
    "google.longrunning.Operations",
    "google.devtools.remoteworkers.v1test2.Bots",
];

/// Opens the stores under the configured data directory. Blocking; call before serving.
pub fn open_context(settings: Settings) -> Result<Context, Error> {
    let config = &settings.written;
    let data_dir = &settings.data_dir;
    let started = std::time::Instant::now();
    let cas = Cas::open(data_dir, settings.cas.clone())?;
    let ac = ActionCache::open(data_dir, config.storage.fsync)?;

    tracing::info!(
        data_dir = %data_dir.display(),
        blobs = cas.index().len(),
        bytes = cas.index().total_bytes(),
        elapsed_ms = started.elapsed().as_millis() as u64,
        "storage opened"
    );
    let store = crate::storage::TieredStore::open(
        cas.clone(),
        ac.clone(),
        config.storage.remote.as_ref(),
        config.storage.fsync,
    )?;
    let asset = crate::asset::Assets::open(
        &config.asset,
        settings.download_timeout,
        store.clone(),
        config.storage.fsync,
    )?;
    let history =
        crate::history::History::new(crate::history::HistoryLimits::from_config(&config.ui));
    let execution = if config.execution.enabled {
        Some(Arc::new(Engine::new(
            &settings.execution,
            &config.sandbox,
            data_dir,
            store.clone(),
            Some(history.clone()),
        )?))
    } else {
        None
    };
    let uploads = Arc::new(crate::storage::uploads::Uploads::new(settings.uploads));
    let chunker = crate::storage::chunking::Chunker::new(
        cas.clone(),
        store.clone(),
        config.storage.chunking(),
    );
    Ok(Context {
        settings: Arc::new(settings),
        cas,
        ac,
        store,
        asset,
        execution,
        uploads,
        history,
        chunker,
    })
}

/// Serves every rexd service on `listener` until `shutdown` completes, then shuts down
/// gracefully (see [`graceful_stop`]) and returns.
pub async fn run(
    ctx: Context,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), Error> {
    let settings = ctx.settings.clone();
    let config = &settings.written;
    let max_batch_message = ctx.max_batch_bytes() as usize + 1024 * 1024;
    let auth = settings.authenticator.clone();
    let authn = auth.interceptor();
    let shutting_down = Arc::new(AtomicBool::new(false));

    let metrics_task = match metrics::bind(&config.metrics).await? {
        Some(http) => {
            let addr = http
                .local_addr()
                .map_err(|e| Error::io("the HTTP listener's address", e))?;
            tracing::info!(ui = %format!("http://{addr}/"), "web UI, /metrics and /healthz on plain HTTP");
            metrics::handle();
            let scraped = ctx.clone();
            let routes = metrics::routes(
                Arc::new(move || metrics::render(&scraped)),
                shutting_down.clone(),
                ctx.store.remote().map(|r| r.watch_reachable()),
            )
            .merge(crate::web::router(ctx.clone()));
            Some(tokio::spawn(metrics::serve(http, routes)))
        }
        None => None,
    };

    let (health_reporter, health_service) = tonic_health::server::health_reporter();
    let mut served = SERVED.to_vec();
    if ctx.execution.is_some() {
        served.extend_from_slice(SERVED_WITH_EXECUTION);
    }
    for name in &served {
        health_reporter
            .set_service_status(*name, ServingStatus::Serving)
            .await;
    }
    ctx.store.start();
    if let Some(remote) = ctx.store.remote() {
        tokio::spawn(report_remote_health(
            remote.watch_reachable(),
            health_reporter.clone(),
        ));
    }

    // grpcurl tries reflection v1, then v1alpha; serve both.
    let reflection_error = |e| Error::Bug(format!("building the reflection service: {e}"));
    let reflection_v1 = reflection_builder(&served)
        .build_v1()
        .map_err(reflection_error)?;
    let reflection_v1alpha = reflection_builder(&served)
        .build_v1alpha()
        .map_err(reflection_error)?;

    let local_addr = listener
        .local_addr()
        .map_err(|e| Error::io("reading the listen address", e))?;
    // TCP_NODELAY: without it, small replies wait on the client's delayed ACK (~40 ms).
    let incoming = TcpIncoming::from(listener).with_nodelay(Some(true));

    let order_saver = spawn_order_saver(ctx.cas.clone());
    let (execution, operations, bots) = match &ctx.execution {
        Some(engine) => {
            engine.start();
            (
                Some(InterceptedService::new(
                    ExecutionServer::new(ExecutionService::new(ctx.clone())),
                    authn.clone(),
                )),
                Some(InterceptedService::new(
                    OperationsServer::new(OperationsService::new(ctx.clone())),
                    authn.clone(),
                )),
                Some(InterceptedService::new(
                    BotsServer::new(BotsService::new(ctx.clone()))
                        .max_decoding_message_size(MAX_STREAM_MESSAGE)
                        .max_encoding_message_size(MAX_STREAM_MESSAGE),
                    authn.clone(),
                )),
            )
        }
        None => (None, None, None),
    };

    let mut builder = tonic::transport::Server::builder();
    if let Some(tls) = &config.tls {
        builder = builder
            .tls_config(load_tls(tls)?)
            .map_err(|e| Error::BadInput(format!("TLS configuration: {e}")))?;
    }
    let limits = &config.limits;
    tracing::info!(
        %local_addr,
        tls = config.tls.is_some(),
        auth = auth.enabled(),
        "rexd serving"
    );
    let grace = settings.shutdown_grace;
    let (stopped_tx, stopped_rx) = tokio::sync::oneshot::channel::<()>();
    let stop = graceful_stop(
        shutdown,
        health_reporter,
        served.clone(),
        ctx.execution.clone(),
        grace,
        shutting_down,
    );
    let stop = async move {
        stop.await;
        let _ = stopped_tx.send(());
    };
    let serve = builder
        .initial_stream_window_size(STREAM_WINDOW)
        .initial_connection_window_size(CONNECTION_WINDOW)
        .max_frame_size(1024 * 1024 - 1)
        .max_concurrent_streams(limits.max_streams_per_connection)
        .trace_fn(request_span)
        .layer(tower::limit::GlobalConcurrencyLimitLayer::new(
            limits.max_concurrent_requests,
        ))
        .layer(metrics::RpcMetricsLayer)
        .add_service(health_service)
        .add_service(reflection_v1)
        .add_service(reflection_v1alpha)
        .add_service(InterceptedService::new(
            CapabilitiesServer::new(CapabilitiesService::new(ctx.clone())),
            auth.interceptor_with(config.auth.public_capabilities),
        ))
        .add_service(InterceptedService::new(
            ContentAddressableStorageServer::new(CasService::new(ctx.clone()))
                .max_decoding_message_size(max_batch_message)
                .max_encoding_message_size(max_batch_message),
            authn.clone(),
        ))
        .add_service(InterceptedService::new(
            ByteStreamServer::new(ByteStreamService::new(ctx.clone()))
                .max_decoding_message_size(MAX_STREAM_MESSAGE),
            authn.clone(),
        ))
        .add_service(InterceptedService::new(
            ActionCacheServer::new(ActionCacheService::new(ctx.clone()))
                .max_decoding_message_size(MAX_STREAM_MESSAGE),
            authn.clone(),
        ))
        .add_service(InterceptedService::new(
            FetchServer::new(FetchService::new(ctx.clone()))
                .max_decoding_message_size(MAX_STREAM_MESSAGE)
                .max_encoding_message_size(MAX_STREAM_MESSAGE),
            authn.clone(),
        ))
        .add_service(InterceptedService::new(
            PushServer::new(PushService::new(ctx.clone()))
                .max_decoding_message_size(MAX_STREAM_MESSAGE),
            authn.clone(),
        ))
        .add_optional_service(execution)
        .add_optional_service(operations)
        .add_optional_service(bots)
        .serve_with_incoming_shutdown(incoming, stop);
    // Once stopped, requests in flight get the grace period again to finish; a client holding
    // a stream open for longer (a stalled upload or download) must not keep rexd running.
    let overdue = async {
        match stopped_rx.await {
            Ok(()) => tokio::time::sleep(grace).await,
            Err(_) => std::future::pending().await,
        }
    };
    tokio::select! {
        served = serve => {
            served.map_err(|e| Error::Io(format!("gRPC server failed: {e}")))?;
        }
        () = overdue => {
            tracing::warn!(
                grace_secs = grace.as_secs(),
                "requests still in flight after the grace period; stopping without them"
            );
        }
    }
    order_saver.abort();
    ctx.store.stop();
    if let Some(task) = metrics_task {
        task.abort();
    }
    // Interrupted uploads die with the server: their temp files go now, and any write still
    // finishing is not kept.
    ctx.uploads.close();
    let cas = ctx.cas.clone();
    crate::offload::blocking(move || cas.save_order()).await?;
    tracing::info!("rexd stopped");
    Ok(())
}

/// Completes when the server may stop accepting connections: after `shutdown`, health says
/// NOT_SERVING, execution accepts nothing new and running actions get `grace` to finish
/// (the rest are cancelled, their waiters told UNAVAILABLE). Requests in flight then drain.
async fn graceful_stop(
    shutdown: impl Future<Output = ()>,
    health: tonic_health::server::HealthReporter,
    served: Vec<&'static str>,
    engine: Option<Arc<Engine>>,
    grace: Duration,
    shutting_down: Arc<AtomicBool>,
) {
    shutdown.await;
    tracing::info!(grace_secs = grace.as_secs(), "shutting down");
    shutting_down.store(true, Ordering::Relaxed);
    for name in served {
        health
            .set_service_status(name, ServingStatus::NotServing)
            .await;
    }
    health
        .set_service_status("", ServingStatus::NotServing)
        .await;
    if let Some(engine) = engine {
        engine.drain(grace).await;
    }
}

/// A tracing span per RPC, carrying what the client said about itself in the REAPI
/// RequestMetadata header (tool, invocation, action, target), so every log line of the
/// call can be traced back to a build.
fn request_span(request: &tonic::codegen::http::Request<()>) -> tracing::Span {
    let metadata = request
        .headers()
        .get(crate::service::execution::REQUEST_METADATA_HEADER)
        .and_then(|v| decode_request_metadata(v.as_bytes()));
    let m = metadata.unwrap_or_default();
    let tool = m.tool_details.as_ref();
    tracing::info_span!(
        "rpc",
        method = request.uri().path(),
        tool = tool.map(|t| t.tool_name.as_str()).unwrap_or_default(),
        tool_version = tool.map(|t| t.tool_version.as_str()).unwrap_or_default(),
        invocation = m.tool_invocation_id.as_str(),
        correlated_invocations = m.correlated_invocations_id.as_str(),
        mnemonic = m.action_mnemonic.as_str(),
        target = m.target_id.as_str(),
    )
}

/// Decodes a `*-bin` gRPC header (base64, padded or not) as RequestMetadata.
pub fn decode_request_metadata(
    value: &[u8],
) -> Option<crate::proto::remote_execution::RequestMetadata> {
    use base64::Engine as _;
    let engine = base64::engine::GeneralPurpose::new(
        &base64::alphabet::STANDARD,
        base64::engine::GeneralPurposeConfig::new()
            .with_decode_padding_mode(base64::engine::DecodePaddingMode::Indifferent),
    );
    let bytes = engine.decode(value).ok()?;
    prost::Message::decode(&bytes[..]).ok()
}

/// Reads the PEM files of the TLS configuration.
fn load_tls(tls: &crate::config::TlsConfig) -> Result<ServerTlsConfig, Error> {
    let read = |path: &std::path::Path, what: &str| {
        std::fs::read(path)
            .map_err(|e| Error::BadInput(format!("cannot read TLS {what} {}: {e}", path.display())))
    };
    let mut config = ServerTlsConfig::new().identity(Identity::from_pem(
        read(&tls.cert, "certificate")?,
        read(&tls.key, "key")?,
    ));
    if let Some(ca) = &tls.client_ca {
        config = config.client_ca_root(Certificate::from_pem(read(ca, "client CA")?));
    }
    Ok(config)
}

/// Reflection over our descriptors, listing only the services actually served.
fn reflection_builder(served: &[&str]) -> tonic_reflection::server::Builder<'static> {
    served.iter().fold(
        tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(crate::proto::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET),
        |builder, name| builder.with_service_name(*name),
    )
}

/// Saves the CAS use order every few minutes, so even a crash keeps most of the LRU order.
fn spawn_order_saver(cas: Cas) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut interval = tokio::time::interval(std::time::Duration::from_secs(300));
        interval.tick().await;
        loop {
            interval.tick().await;
            let cas = cas.clone();
            if let Err(e) = crate::offload::blocking(move || cas.save_order()).await {
                tracing::warn!(error = %e, "cannot save the CAS use order");
            }
        }
    })
}

/// The health service name that reports the object-store tier: NOT_SERVING while the store
/// does not answer. The server itself stays SERVING, since local blobs still read.
pub const REMOTE_HEALTH_NAME: &str = "rexd.storage.ObjectStore";

async fn report_remote_health(
    mut reachable: tokio::sync::watch::Receiver<bool>,
    reporter: tonic_health::server::HealthReporter,
) {
    loop {
        let status = if *reachable.borrow_and_update() {
            ServingStatus::Serving
        } else {
            ServingStatus::NotServing
        };
        reporter
            .set_service_status(REMOTE_HEALTH_NAME, status)
            .await;
        if reachable.changed().await.is_err() {
            return;
        }
    }
}
