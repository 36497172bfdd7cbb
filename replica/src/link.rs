//! The connection to the cluster: one small runtime, the JetStream
//! context, the state's stream and its lease bucket.

use crate::{Error, Options, Result};
use async_nats::jetstream::{self, kv, stream};
use std::future::Future;
use std::time::Duration;

/// Header: the first and last LSN of a commit message (`first-last`).
pub const HDR_LSN: &str = "Mmsb-Lsn";
/// Header: the epoch of the leader that published a message.
pub const HDR_EPOCH: &str = "Mmsb-Epoch";
/// Header: set on a fence message (no records), carrying the LSN the
/// new leader starts after.
pub const HDR_FENCE: &str = "Mmsb-Fence";
/// The lease key in the state's bucket.
pub const LEASE_KEY: &str = "leader";

/// The JetStream names of one replicated state.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Names {
    /// The stream of commits: `MMSB_<state>`.
    pub stream: String,
    /// Its only subject: `mmsb.<state>.log`.
    pub subject: String,
    /// The key-value bucket holding the lease: `MMSB_LEASE_<state>`.
    pub lease_bucket: String,
}

impl Names {
    /// The names for state `state` (letters, digits, `-` and `_`).
    ///
    /// # Errors
    /// [`Error::Config`] for an empty name or another character.
    pub fn of(state: &str) -> Result<Names> {
        if state.is_empty() || !state.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_') {
            return Err(Error::Config(format!(
                "state name {state:?} must be non-empty ASCII letters, digits, '-' or '_'"
            )));
        }
        Ok(Names {
            stream: format!("MMSB_{state}"),
            subject: format!("mmsb.{state}.log"),
            lease_bucket: format!("MMSB_LEASE_{state}"),
        })
    }
}

/// A connection to the cluster for one state.
#[derive(Debug)]
pub struct Link {
    rt: tokio::runtime::Runtime,
    pub(crate) js: jetstream::Context,
    pub(crate) stream: stream::Stream,
    pub(crate) kv: kv::Store,
    pub(crate) names: Names,
    pub(crate) timeout: Duration,
}

fn js_err(op: &'static str) -> impl Fn(&dyn std::fmt::Display) -> Error {
    move |e| Error::JetStream { op, reason: e.to_string() }
}

impl Link {
    /// Connect to `opts.urls`, creating the state's stream (R`replicas`,
    /// file storage) and lease bucket when missing.
    ///
    /// # Errors
    /// [`Error::Connect`], [`Error::JetStream`], [`Error::Timeout`].
    pub fn connect(opts: &Options) -> Result<Link> {
        let names = Names::of(&opts.state)?;
        let rt =
            tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().map_err(
                |e| Error::Connect { url: opts.urls.join(","), reason: format!("no runtime: {e}") },
            )?;
        let addrs = opts
            .urls
            .iter()
            .map(|u| {
                u.parse::<async_nats::ServerAddr>()
                    .map_err(|e| Error::Config(format!("bad NATS URL {u:?}: {e}")))
            })
            .collect::<Result<Vec<_>>>()?;
        if addrs.is_empty() {
            return Err(Error::Config("no NATS URL given".into()));
        }
        let timeout = opts.timeout;
        let urls = opts.urls.join(",");
        let replicas = opts.replicas;
        let names2 = names.clone();
        // Each server gets a share of the time: a server that accepts the
        // connection but never answers (a stopped process) must leave time
        // to try the others.
        let per_server = (timeout / (addrs.len() as u32 + 1)).max(Duration::from_millis(250));
        let (js, stream, kv) = rt.block_on(async move {
            let client = tokio::time::timeout(
                timeout,
                async_nats::ConnectOptions::new().connection_timeout(per_server).connect(addrs),
            )
            .await
            .map_err(|_| Error::Timeout(format!("connecting to {urls}")))?
            .map_err(|e| Error::Connect { url: urls.clone(), reason: e.to_string() })?;
            let mut js = jetstream::new(client);
            js.set_timeout(timeout);
            let cfg = stream::Config {
                name: names2.stream.clone(),
                subjects: vec![names2.subject.clone()],
                num_replicas: replicas,
                storage: stream::StorageType::File,
                duplicate_window: Duration::from_secs(120),
                allow_direct: true,
                ..Default::default()
            };
            let stream = retry(timeout, || js.get_or_create_stream(cfg.clone()))
                .await
                .map_err(|e| Error::JetStream { op: "create stream", reason: e })?;
            let kv = match js.get_key_value(&names2.lease_bucket).await {
                Ok(kv) => kv,
                Err(_) => {
                    let cfg = kv::Config {
                        bucket: names2.lease_bucket.clone(),
                        history: 1,
                        num_replicas: replicas,
                        storage: stream::StorageType::File,
                        ..Default::default()
                    };
                    match retry(timeout, || js.create_key_value(cfg.clone())).await {
                        Ok(kv) => kv,
                        // Another process created it meanwhile.
                        Err(e) => js
                            .get_key_value(&names2.lease_bucket)
                            .await
                            .map_err(|_| Error::JetStream { op: "create lease bucket", reason: e })?,
                    }
                }
            };
            Ok::<_, Error>((js, stream, kv))
        })?;
        Ok(Link { rt, js, stream, kv, names, timeout })
    }

    /// Run `f` on this link's runtime, bounded by the link's timeout.
    ///
    /// # Errors
    /// [`Error::Timeout`] naming `what`, or `f`'s error.
    pub(crate) fn run<T>(&self, what: &str, f: impl Future<Output = Result<T>>) -> Result<T> {
        let t = self.timeout;
        self.rt
            .block_on(async move { tokio::time::timeout(t, f).await })
            .map_err(|_| Error::Timeout(what.to_string()))?
    }

    /// The stream's first and last sequence numbers (0, 0 when empty).
    ///
    /// # Errors
    /// [`Error::JetStream`], [`Error::Timeout`].
    pub fn bounds(&self) -> Result<(u64, u64)> {
        self.run("reading the stream's state", async {
            let info = self.stream.get_info().await.map_err(|e| js_err("stream info")(&e))?;
            Ok((info.state.first_sequence, info.state.last_sequence))
        })
    }

    /// The message at stream sequence `seq`; `None` when there is none
    /// (trimmed or never written).
    ///
    /// # Errors
    /// [`Error::JetStream`], [`Error::Timeout`].
    pub fn get(&self, seq: u64) -> Result<Option<jetstream::message::StreamMessage>> {
        self.run("reading a message", async {
            match self.stream.get_raw_message(seq).await {
                Ok(m) => Ok(Some(m)),
                Err(e) if e.kind() == stream::RawMessageErrorKind::NoMessageFound => Ok(None),
                Err(e) => Err(js_err("get message")(&e)),
            }
        })
    }

    /// The names of this state's stream and bucket.
    pub fn names(&self) -> &Names {
        &self.names
    }
}

/// Retry `f` (a JetStream administrative call, refused while the cluster
/// has no meta leader yet) until it succeeds or `within` passes.
pub(crate) async fn retry<T, E: std::fmt::Display, F: Future<Output = std::result::Result<T, E>>>(
    within: Duration,
    mut f: impl FnMut() -> F,
) -> std::result::Result<T, String> {
    // A cluster that has just started drops requests until it has a
    // meta leader: each try gets a second, the whole at most `within`.
    let t0 = tokio::time::Instant::now();
    loop {
        let e = match tokio::time::timeout(Duration::from_secs(1).min(within), f()).await {
            Ok(Ok(v)) => return Ok(v),
            Ok(Err(e)) => e.to_string(),
            Err(_) => "no answer within a second".to_string(),
        };
        if t0.elapsed() >= within {
            return Err(e);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
