//! The bridge to etcd: the store's own runtime waited on from any thread,
//! one RPC with retries while the cluster is unavailable, the layout check,
//! and how etcd's errors become [`StoreError`]s.

use std::future::Future;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use etcd_client::{Client, Compare, CompareOp, Txn, TxnOp, TxnOpResponse, TxnResponse};

use super::{Inner, LAYOUT_VERSION};
use crate::StoreError;

/// Spawns `fut` on `runtime` and waits for its answer on a plain channel (see the
/// module documentation for why not `block_on`).
pub(super) fn wait<T: Send + 'static>(
    runtime: &tokio::runtime::Runtime,
    op: &'static str,
    fut: impl Future<Output = Result<T, StoreError>> + Send + 'static,
) -> Result<T, StoreError> {
    let (tx, rx) = mpsc::sync_channel(1);
    runtime.spawn(async move {
        let _ = tx.send(fut.await);
    });
    rx.recv().unwrap_or_else(|_| {
        Err(StoreError::Etcd {
            op,
            source: "the etcd client's runtime stopped before answering".into(),
        })
    })
}

/// A member down, no leader, a connection refused or reset: worth retrying
/// within the request timeout. Anything else (a refused request, a compacted
/// revision) is final.
fn is_transient(e: &etcd_client::Error) -> bool {
    match e {
        etcd_client::Error::TransportError(_) | etcd_client::Error::IoError(_) => true,
        etcd_client::Error::GRpcStatus(s) => {
            matches!(
                s.code(),
                tonic::Code::Unavailable
                    | tonic::Code::DeadlineExceeded
                    | tonic::Code::Cancelled
                    | tonic::Code::Unknown
            ) && !s.message().contains("too many operations")
                && !s.message().contains("request is too large")
        }
        _ => false,
    }
}

/// How long one attempt of a request may go unanswered before it is sent
/// again on fresh connections: half the request's time (two attempts), at
/// least 500 ms.
fn attempt_timeout(request_timeout: Duration) -> Duration {
    (request_timeout / 2).max(Duration::from_millis(500))
}

pub(super) fn etcd_err(op: &'static str, e: etcd_client::Error) -> StoreError {
    StoreError::Etcd {
        op,
        source: Box::new(e),
    }
}

pub(super) fn corrupt(what: impl Into<String>, detail: impl Into<String>) -> StoreError {
    StoreError::Corrupt {
        what: what.into(),
        detail: detail.into(),
    }
}

/// `e` as the failure of a batch of which `written` of `total` items are already
/// in etcd; plain `e` when none are.
pub(super) fn partial(written: usize, total: usize, e: StoreError) -> StoreError {
    if written == 0 {
        e
    } else {
        StoreError::Partial {
            written,
            total,
            source: Box::new(e),
        }
    }
}

impl Inner {
    /// Runs one RPC with `client`, retrying while the cluster is unavailable
    /// (a member down, no leader yet) until [`EtcdConfig::request_timeout`].
    /// Every Ferry write is safe to send twice (a put of the same value; a
    /// transaction whose compare fails the second time and is judged again).
    pub(super) async fn call<T, F, Fut>(&self, op: &'static str, mut f: F) -> Result<T, StoreError>
    where
        F: FnMut(Client) -> Fut,
        Fut: Future<Output = Result<T, etcd_client::Error>>,
    {
        let after = self.cfg.request_timeout;
        let deadline = Instant::now() + after;
        let attempt = attempt_timeout(after);
        let mut backoff = Duration::from_millis(20);
        let mut last: String;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match tokio::time::timeout(left.min(attempt), f(self.client.clone())).await {
                Ok(Ok(v)) => return Ok(v),
                Ok(Err(e)) if is_transient(&e) => last = e.to_string(),
                Ok(Err(e)) => return Err(etcd_err(op, e)),
                Err(_) => {
                    last = format!("no answer within {attempt:?}");
                    self.reconnect(attempt).await;
                }
            }
            if Instant::now() + backoff >= deadline {
                return Err(StoreError::Unavailable { op, after, last });
            }
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(Duration::from_millis(500));
        }
    }

    /// Opens a fresh connection to every member, at most once per `every`.
    /// A member cut off without a word (a link down, a silent drop) keeps
    /// its connection looking alive until the HTTP/2 pings give up (up to
    /// [`super::KEEP_ALIVE_INTERVAL`] + [`super::KEEP_ALIVE_TIMEOUT`]), and
    /// the balancer keeps sending it requests; a runner's lease would
    /// expire first. A new connection to it fails or hangs in connect, so
    /// the balancer sends the retry to a member that answers. Streams on
    /// the replaced connections (watches, keep-alives) end and are opened
    /// again by their owners.
    async fn reconnect(&self, every: Duration) {
        {
            let Ok(mut at) = self.reconnected.lock() else {
                return;
            };
            if at.is_some_and(|t| t.elapsed() < every) {
                return;
            }
            *at = Some(Instant::now());
        }
        for ep in &self.cfg.endpoints {
            // Inserting an endpoint already known replaces its connection;
            // an error (the client's endpoint list closed) leaves the old
            // one, which the pings still end.
            let _ = self.client.add_endpoint(ep).await;
        }
    }

    pub(super) async fn txn(&self, op: &'static str, txn: Txn) -> Result<TxnResponse, StoreError> {
        self.call(op, |mut c| {
            let txn = txn.clone();
            async move { c.txn(txn).await }
        })
        .await
    }

    /// Writes the layout version on an empty prefix, or checks the one there.
    pub(super) async fn check_layout(&self) -> Result<(), StoreError> {
        let key = self.keys.schema();
        let txn = Txn::new()
            .when([Compare::version(key.clone(), CompareOp::Equal, 0)])
            .and_then([TxnOp::put(key.clone(), LAYOUT_VERSION.to_string(), None)])
            .or_else([TxnOp::get(key.clone(), None)]);
        let resp = self.txn("check the layout version", txn).await?;
        if resp.succeeded() {
            return Ok(());
        }
        let raw = resp
            .op_responses()
            .into_iter()
            .find_map(|r| match r {
                TxnOpResponse::Get(g) => g.kvs().first().map(|kv| kv.value().to_vec()),
                _ => None,
            })
            .unwrap_or_default();
        let found = std::str::from_utf8(&raw)
            .ok()
            .and_then(|s| s.parse::<u32>().ok())
            .filter(|v| *v > 0)
            .ok_or_else(|| {
                corrupt(
                    format!("layout version at {key}"),
                    format!(
                        "{:?} is not a version number",
                        String::from_utf8_lossy(&raw)
                    ),
                )
            })?;
        if found > LAYOUT_VERSION {
            return Err(StoreError::NewerLayout {
                prefix: self.keys.prefix.clone(),
                found,
                supported: LAYOUT_VERSION,
            });
        }
        Ok(())
    }
}
