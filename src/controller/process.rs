//! The `kubesync controller` process: HTTP listener, leader election, the reconcile loop, and a
//! clean exit on SIGTERM or SIGINT (in-flight syncs stop at a step boundary, the Lease is
//! released).
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use kube::{Api, Client};
use tokio::sync::watch;
use tracing::{info, warn};

use super::context::{Context, ControllerConfig};
use super::reconcile::run;
use super::shards::{ShardManager, Shards};
use crate::crd::GitSync;
use crate::http::{HttpState, Readiness};
use crate::lease::{Elector, LeaseConfig};
use crate::metrics::Metrics;

/// Everything the `kubesync controller` process needs besides the engine's settings.
#[derive(Clone, Debug)]
pub struct ProcessConfig {
    pub http_addr: std::net::SocketAddr,
    /// Leader election. None: this replica always syncs.
    pub lease: Option<LeaseConfig>,
    /// Sharding across replicas (instead of leader election). None: not sharded.
    pub sharding: Option<super::shards::Sharding>,
}

#[derive(Debug, thiserror::Error)]
pub enum ProcessError {
    #[error("listening on {addr}: {source}")]
    Listen {
        addr: std::net::SocketAddr,
        #[source]
        source: std::io::Error,
    },
}

/// Resolves once `stop` turns true.
async fn stopped(mut stop: watch::Receiver<bool>) {
    let _ = stop.wait_for(|s| *s).await;
}

pub async fn run_process(
    client: Client,
    kube_config: kube::Config,
    config: ControllerConfig,
    process: ProcessConfig,
) -> Result<(), ProcessError> {
    let metrics = Arc::new(Metrics::new());
    let readiness = Arc::new(Readiness::default());
    let stop = stop_on_signal(readiness.clone());
    let http_state = Arc::new(HttpState::new(
        client.clone(),
        metrics.clone(),
        readiness.clone(),
        config.namespace.clone(),
    ));
    let listener = tokio::net::TcpListener::bind(process.http_addr)
        .await
        .map_err(|source| ProcessError::Listen {
            addr: process.http_addr,
            source,
        })?;
    info!(addr = %process.http_addr, "HTTP listener: /metrics /healthz /readyz /hooks/<namespace>/<name> and the status page /");
    let http = tokio::spawn(crate::http::serve(
        listener,
        http_state,
        stopped(stop.clone()),
    ));
    if !wait_for_api(&client, &config, &stop).await {
        return Ok(());
    }
    readiness.api_reachable.store(true, Ordering::Relaxed);
    let elector = match &process.lease {
        Some(lease) => match lead(&client, lease, &readiness, &stop).await {
            Some(elector) => Some(elector),
            None => return Ok(()),
        },
        None => None,
    };
    readiness.leader.store(true, Ordering::Relaxed);
    readiness.leadership_known.store(true, Ordering::Relaxed);
    let (done_tx, done_rx) = watch::channel(false);
    let renewer = elector.map(|elector| tokio::spawn(keep_leading(elector, done_rx.clone())));
    let mut ctx = Context::new(
        client.clone(),
        kube_config,
        metrics.clone(),
        config,
        stop.clone(),
    );
    let keeper = process.sharding.as_ref().map(|sharding| {
        let shards = Arc::new(Shards::new(sharding.count));
        ctx.shards = shards.clone();
        let manager = ShardManager::new(&client, &sharding.lease, shards, metrics);
        tokio::spawn(manager.keep(done_rx))
    });
    run(Arc::new(ctx), stopped(stop)).await;
    info!("controller stopped");
    let _ = done_tx.send(true);
    if let Some(keeper) = keeper
        && let Ok(manager) = keeper.await
    {
        manager.release_all().await;
        info!("shard leases released");
    }
    if let Some(renewer) = renewer
        && let Ok(mut elector) = renewer.await
    {
        match elector.release().await {
            Ok(()) => info!("lease released"),
            Err(e) => warn!(error = %e, "releasing the lease"),
        }
    }
    let _ = http.await;
    Ok(())
}

/// A channel that turns true on SIGTERM or SIGINT, when readiness also turns false.
fn stop_on_signal(readiness: Arc<Readiness>) -> watch::Receiver<bool> {
    let (stop_tx, stop_rx) = watch::channel(false);
    tokio::spawn(async move {
        wait_for_signal().await;
        info!("shutting down: finishing or stopping in-flight syncs");
        readiness.shutting_down.store(true, Ordering::Relaxed);
        let _ = stop_tx.send(true);
    });
    stop_rx
}

/// Waits until the GitSync API answers (the CRD installed, RBAC in place). False: stopped first.
async fn wait_for_api(
    client: &Client,
    config: &ControllerConfig,
    stop: &watch::Receiver<bool>,
) -> bool {
    let api: Api<GitSync> = match &config.namespace {
        Some(ns) => Api::namespaced(client.clone(), ns),
        None => Api::all(client.clone()),
    };
    loop {
        if *stop.borrow() {
            return false;
        }
        match api.list(&kube::api::ListParams::default().limit(1)).await {
            Ok(_) => return true,
            Err(e) => {
                warn!(error = %crate::kube_ext::kube_message(&e), "cannot list GitSyncs (is the CRD installed?); retrying");
                tokio::time::sleep(Duration::from_secs(2)).await;
            }
        }
    }
}

/// Waits until this replica holds the Lease. None: stopped first.
async fn lead(
    client: &Client,
    lease: &LeaseConfig,
    readiness: &Readiness,
    stop: &watch::Receiver<bool>,
) -> Option<Elector> {
    let mut elector = Elector::new(client.clone(), lease.clone());
    let retry = elector.config().retry_period;
    loop {
        if *stop.borrow() {
            return None;
        }
        match elector.try_acquire_or_renew().await {
            Ok(true) => break,
            Ok(false) => {}
            Err(e) => warn!(error = %e, "leader election"),
        }
        readiness.leadership_known.store(true, Ordering::Relaxed);
        tokio::time::sleep(retry).await;
    }
    info!(identity = %lease.identity, lease = %lease.name, "became the leader");
    Some(elector)
}

/// The leader renews; if it cannot within the renew deadline, it exits at once, before any other
/// replica may take over (the lease duration is longer than the deadline). It keeps renewing until
/// the controller has finished its in-flight syncs (`done`), then hands the elector back.
async fn keep_leading(mut elector: Elector, done: watch::Receiver<bool>) -> Elector {
    let retry = elector.config().retry_period;
    loop {
        tokio::time::sleep(retry).await;
        if *done.borrow() {
            return elector;
        }
        match elector.try_acquire_or_renew().await {
            Ok(true) => {}
            Ok(false) => {
                tracing::error!("leadership lost to another replica; exiting");
                std::process::exit(1);
            }
            Err(e) => warn!(error = %e, "renewing the lease"),
        }
        if elector.renewal_overdue() {
            tracing::error!("could not renew the lease in time; exiting");
            std::process::exit(1);
        }
    }
}

async fn wait_for_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    match (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) {
        (Ok(mut term), Ok(mut int)) => {
            tokio::select! {
                _ = term.recv() => {}
                _ = int.recv() => {}
            }
        }
        _ => {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}
