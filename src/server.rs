//! Assembles every service on one listener and serves until shut down.

use std::future::Future;
use std::sync::Arc;

use tokio::net::TcpListener;
use tonic::transport::server::TcpIncoming;

use crate::config::Config;
use crate::error::Error;
use crate::execution::Engine;
use crate::proto::bytestream::byte_stream_server::ByteStreamServer;
use crate::proto::longrunning::operations_server::OperationsServer;
use crate::proto::remote_execution::execution_server::ExecutionServer;
use crate::proto::remote_execution::{
    action_cache_server::ActionCacheServer, capabilities_server::CapabilitiesServer,
    content_addressable_storage_server::ContentAddressableStorageServer,
};
use crate::service::{
    Context, action_cache::ActionCacheService, bytestream::ByteStreamService,
    capabilities::CapabilitiesService, cas::CasService,
};
use crate::service::{execution::ExecutionService, operations::OperationsService};
use crate::storage::{ActionCache, Cas};

/// Per-stream HTTP/2 flow-control window: large, so one stream can fill a fast link.
const STREAM_WINDOW: u32 = 16 * 1024 * 1024;
/// Per-connection window, shared by the streams of one client.
const CONNECTION_WINDOW: u32 = 64 * 1024 * 1024;
/// Largest ByteStream message accepted; clients send 16 KiB to 4 MiB chunks.
const MAX_STREAM_MESSAGE: usize = 16 * 1024 * 1024;

/// Fully-qualified names of the services this server answers, as reflection lists them.
const SERVED: &[&str] = &[
    "build.bazel.remote.execution.v2.Capabilities",
    "build.bazel.remote.execution.v2.ContentAddressableStorage",
    "build.bazel.remote.execution.v2.ActionCache",
    "google.bytestream.ByteStream",
    "grpc.health.v1.Health",
];

/// Served only while execution is enabled.
const SERVED_WITH_EXECUTION: &[&str] = &[
    "build.bazel.remote.execution.v2.Execution",
    "google.longrunning.Operations",
];

/// Opens the stores under the configured data directory. Blocking; call before serving.
pub fn open_context(config: Config) -> Result<Context, Error> {
    let data_dir = config.data_dir();
    let started = std::time::Instant::now();
    let cas = Cas::open(&data_dir, config.storage.cas_options())?;
    let ac = ActionCache::open(&data_dir, config.storage.fsync)?;
    tracing::info!(
        data_dir = %data_dir.display(),
        blobs = cas.index().len(),
        bytes = cas.index().total_bytes(),
        elapsed_ms = started.elapsed().as_millis() as u64,
        "storage opened"
    );
    let execution = if config.execution.enabled {
        Some(Arc::new(Engine::new(
            &config.execution,
            &config.sandbox,
            &data_dir,
            cas.clone(),
            ac.clone(),
        )?))
    } else {
        None
    };
    Ok(Context {
        config: Arc::new(config),
        cas,
        ac,
        execution,
    })
}

/// Serves every rexd service on `listener` until `shutdown` completes, then drains in-flight
/// requests and returns.
pub async fn run(
    ctx: Context,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), Error> {
    let max_batch_message = ctx.max_batch_bytes() as usize + 1024 * 1024;

    let (health_reporter, health_service) = tonic_health::server::health_reporter();
    health_reporter
        .set_serving::<ContentAddressableStorageServer<CasService>>()
        .await;
    health_reporter
        .set_serving::<ByteStreamServer<ByteStreamService>>()
        .await;
    health_reporter
        .set_serving::<ActionCacheServer<ActionCacheService>>()
        .await;
    health_reporter
        .set_serving::<CapabilitiesServer<CapabilitiesService>>()
        .await;

    // grpcurl tries reflection v1, then v1alpha; serve both.
    let reflection_error = |e| Error::Internal(format!("building the reflection service: {e}"));
    let mut served = SERVED.to_vec();
    if ctx.execution.is_some() {
        served.extend_from_slice(SERVED_WITH_EXECUTION);
    }
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
    tracing::info!(%local_addr, "rexd serving");

    let order_saver = spawn_order_saver(ctx.cas.clone());
    let (execution, operations) = match &ctx.execution {
        Some(engine) => {
            engine.start();
            health_reporter
                .set_serving::<ExecutionServer<ExecutionService>>()
                .await;
            (
                Some(ExecutionServer::new(ExecutionService::new(ctx.clone()))),
                Some(OperationsServer::new(OperationsService::new(ctx.clone()))),
            )
        }
        None => (None, None),
    };

    tonic::transport::Server::builder()
        .initial_stream_window_size(STREAM_WINDOW)
        .initial_connection_window_size(CONNECTION_WINDOW)
        .max_frame_size(1024 * 1024 - 1)
        .add_service(health_service)
        .add_service(reflection_v1)
        .add_service(reflection_v1alpha)
        .add_service(CapabilitiesServer::new(CapabilitiesService::new(
            ctx.clone(),
        )))
        .add_service(
            ContentAddressableStorageServer::new(CasService::new(ctx.clone()))
                .max_decoding_message_size(max_batch_message)
                .max_encoding_message_size(max_batch_message),
        )
        .add_service(
            ByteStreamServer::new(ByteStreamService::new(ctx.clone()))
                .max_decoding_message_size(MAX_STREAM_MESSAGE),
        )
        .add_service(
            ActionCacheServer::new(ActionCacheService::new(ctx.clone()))
                .max_decoding_message_size(MAX_STREAM_MESSAGE),
        )
        .add_optional_service(execution)
        .add_optional_service(operations)
        .serve_with_incoming_shutdown(incoming, shutdown)
        .await
        .map_err(|e| Error::Unavailable(format!("gRPC server failed: {e}")))?;
    order_saver.abort();
    let cas = ctx.cas.clone();
    crate::service::blocking(move || cas.save_order()).await?;
    tracing::info!("rexd stopped");
    Ok(())
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
            if let Err(e) = crate::service::blocking(move || cas.save_order()).await {
                tracing::warn!(error = %e, "cannot save the CAS use order");
            }
        }
    })
}
