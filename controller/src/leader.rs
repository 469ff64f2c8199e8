//! Leader election on a `coordination.k8s.io` Lease (kube-lease-manager): of several
//! replicas only the holder of the Lease runs the controller.

use kube::Client;
use kube_lease_manager::{LeaseManagerBuilder, LeaseManagerError};
use tokio::sync::watch;
use tokio::task::JoinHandle;

pub struct LeaseConfig {
    pub name: String,
    pub namespace: String,
    pub identity: String,
    pub duration_seconds: u64,
    pub grace_seconds: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum LeaderError {
    #[error("lease duration ({duration}s) must be greater than its grace ({grace}s), both > 0")]
    BadTiming { duration: u64, grace: u64 },
    #[error("cannot set up the Lease: {0}")]
    Lease(#[from] LeaseManagerError),
}

/// Whether this replica leads, as it changes.
pub struct Leadership {
    rx: watch::Receiver<bool>,
    // Without election: keeps the channel open (always leader).
    _always: Option<watch::Sender<bool>>,
    task: Option<JoinHandle<Result<kube_lease_manager::LeaseManager, LeaseManagerError>>>,
}

impl Leadership {
    /// Always the leader (a single replica, `--leader-elect=false`).
    pub fn always() -> Self {
        let (tx, rx) = watch::channel(true);
        Self {
            rx,
            _always: Some(tx),
            task: None,
        }
    }

    /// Starts competing for the Lease in the background.
    pub async fn elect(client: Client, c: LeaseConfig) -> Result<Self, LeaderError> {
        if c.duration_seconds == 0 || c.grace_seconds == 0 || c.grace_seconds >= c.duration_seconds
        {
            return Err(LeaderError::BadTiming {
                duration: c.duration_seconds,
                grace: c.grace_seconds,
            });
        }
        let manager = LeaseManagerBuilder::new(client, c.name)
            .with_namespace(c.namespace)
            .with_identity(c.identity)
            .with_duration(c.duration_seconds)
            .with_grace(c.grace_seconds)
            .build()
            .await?;
        let (rx, task) = manager.watch().await;
        Ok(Self {
            rx,
            _always: None,
            task: Some(task),
        })
    }

    /// A receiver that tells whether this replica leads now.
    pub fn subscribe(&self) -> watch::Receiver<bool> {
        self.rx.clone()
    }

    /// Gives the Lease up (so a successor need not wait for it to expire).
    pub async fn release(self) {
        let Self { rx, task, .. } = self;
        drop(rx);
        if let Some(task) = task {
            match task.await {
                Ok(Ok(_)) => tracing::info!("released the leader Lease"),
                Ok(Err(error)) => tracing::warn!(%error, "could not release the leader Lease"),
                Err(error) => tracing::warn!(%error, "the Lease task ended abnormally"),
            }
        }
    }
}
