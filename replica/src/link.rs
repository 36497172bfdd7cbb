//! The connection to the cluster: one small runtime, the JetStream
//! context, the state's stream and its lease bucket.

use crate::{Error, Options, Result};
use async_nats::jetstream::{self, kv, object_store, stream};
use std::future::Future;
use std::path::Path;
use std::time::Duration;

/// Header: the first and last LSN of a commit message (`first-last`).
pub const HDR_LSN: &str = "Mmsb-Lsn";
/// Header: the epoch of the leader that published a message.
pub const HDR_EPOCH: &str = "Mmsb-Epoch";
/// Header: set on a fence message (no records), carrying the LSN the
/// new leader starts after.
pub const HDR_FENCE: &str = "Mmsb-Fence";
/// Header: set on a commit whose records are an object of the state's
/// object store (a commit over the message limit), naming the object; the
/// message's payload is empty.
pub const HDR_OBJECT: &str = "Mmsb-Object";
/// The lease key in the state's bucket.
pub const LEASE_KEY: &str = "leader";
/// Room left in a message for its headers: a commit whose records exceed
/// the server's `max_payload` less this goes to the object store.
pub const HEADER_ROOM: usize = 4096;

/// The JetStream names of one replicated state.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Names {
    /// The stream of commits: `MMSB_<state>`.
    pub stream: String,
    /// Its only subject: `mmsb.<state>.log`.
    pub subject: String,
    /// The key-value bucket holding the lease: `MMSB_LEASE_<state>`.
    pub lease_bucket: String,
    /// The object store of checkpoints and large commits:
    /// `MMSB_OBJ_<state>`.
    pub objects: String,
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
            objects: format!("MMSB_OBJ_{state}"),
        })
    }
}

/// A connection to the cluster for one state.
pub struct Link {
    rt: tokio::runtime::Runtime,
    pub(crate) js: jetstream::Context,
    pub(crate) stream: stream::Stream,
    pub(crate) kv: kv::Store,
    pub(crate) objects: object_store::ObjectStore,
    pub(crate) names: Names,
    pub(crate) timeout: Duration,
    /// The largest message payload the server accepts.
    pub(crate) max_payload: usize,
}

impl std::fmt::Debug for Link {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Link")
            .field("names", &self.names)
            .field("timeout", &self.timeout)
            .finish_non_exhaustive()
    }
}

fn js_err(op: &'static str) -> impl Fn(&dyn std::fmt::Display) -> Error {
    move |e| Error::JetStream { op, reason: e.to_string() }
}

impl Link {
    /// Connect to `opts.urls`, creating the state's stream (R`replicas`,
    /// file storage), lease bucket and object store when missing.
    ///
    /// # Errors
    /// [`Error::Connect`], [`Error::JetStream`], [`Error::Timeout`].
    pub fn connect(opts: &Options) -> Result<Link> {
        Self::connect_with(opts, true)
    }

    /// Connect to an existing replicated state: as [`Link::connect`], but a
    /// state whose stream does not exist is refused, not created (what the
    /// read-only commands use).
    ///
    /// # Errors
    /// [`Error::Config`] when the cluster holds no stream of that state; as
    /// [`Link::connect`].
    pub fn open(opts: &Options) -> Result<Link> {
        Self::connect_with(opts, false)
    }

    fn connect_with(opts: &Options, create: bool) -> Result<Link> {
        let names = Names::of(&opts.state)?;
        let state = opts.state.clone();
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
        let (js, stream, kv, objects, max_payload) = rt.block_on(async move {
            let client = tokio::time::timeout(
                timeout,
                async_nats::ConnectOptions::new().connection_timeout(per_server).connect(addrs),
            )
            .await
            .map_err(|_| Error::Timeout(format!("connecting to {urls}")))?
            .map_err(|e| Error::Connect { url: urls.clone(), reason: e.to_string() })?;
            let max_payload = client.server_info().max_payload;
            let mut js = jetstream::new(client);
            js.set_timeout(timeout);
            if !create {
                if let Err(e) = js.get_stream(&names2.stream).await {
                    return Err(Error::Config(format!(
                        "no replicated state {state:?} at {urls}: stream {} ({e})",
                        names2.stream
                    )));
                }
            }
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
            let kv_cfg = kv::Config {
                bucket: names2.lease_bucket.clone(),
                history: 1,
                num_replicas: replicas,
                storage: stream::StorageType::File,
                ..Default::default()
            };
            let kv = get_or_create(
                timeout,
                "create lease bucket",
                || js.get_key_value(&names2.lease_bucket),
                || js.create_key_value(kv_cfg.clone()),
            )
            .await?;
            let obj_cfg = object_store::Config {
                bucket: names2.objects.clone(),
                num_replicas: replicas,
                storage: stream::StorageType::File,
                ..Default::default()
            };
            let objects = get_or_create(
                timeout,
                "create object store",
                || js.get_object_store(&names2.objects),
                || js.create_object_store(obj_cfg.clone()),
            )
            .await?;
            Ok::<_, Error>((js, stream, kv, objects, max_payload))
        })?;
        Ok(Link { rt, js, stream, kv, objects, names, timeout, max_payload })
    }

    /// Run `f` on this link's runtime, bounded by the link's timeout.
    ///
    /// # Errors
    /// [`Error::Timeout`] naming `what`, or `f`'s error.
    pub(crate) fn run<T>(&self, what: &str, f: impl Future<Output = Result<T>>) -> Result<T> {
        self.run_for(self.timeout, what, f)
    }

    /// The time an object of `bytes` may take to move: the link's timeout
    /// plus a second per 16 MiB.
    pub(crate) fn transfer_time(&self, bytes: u64) -> Duration {
        self.timeout + Duration::from_secs(bytes >> 24)
    }

    /// [`Link::run`] bounded by `t`.
    ///
    /// # Errors
    /// As [`Link::run`].
    pub(crate) fn run_for<T>(
        &self,
        t: Duration,
        what: &str,
        f: impl Future<Output = Result<T>>,
    ) -> Result<T> {
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

    /// The names of this state's stream and buckets.
    pub fn names(&self) -> &Names {
        &self.names
    }

    /// The largest message payload the server accepts.
    pub fn max_payload(&self) -> usize {
        self.max_payload
    }

    /// Remove every stream message below sequence `seq` (those after it
    /// stay). Returns how many went.
    ///
    /// # Errors
    /// [`Error::JetStream`], [`Error::Timeout`].
    pub fn purge_below(&self, seq: u64) -> Result<u64> {
        self.run("trimming the stream", async {
            let r = self.stream.purge().sequence(seq).await.map_err(|e| js_err("purge")(&e))?;
            Ok(r.purged)
        })
    }

    /// Store `bytes` as object `name` with string `metadata`, replacing
    /// an object of that name.
    ///
    /// # Errors
    /// [`Error::JetStream`], [`Error::Timeout`].
    pub fn put_object(&self, name: &str, metadata: &[(&str, String)], bytes: &[u8]) -> Result<()> {
        self.run_for(self.transfer_time(bytes.len() as u64), "storing an object", async {
            self.put_from(name, metadata, &mut &*bytes).await
        })
    }

    /// Store the file at `path` as object `name` with string `metadata`,
    /// replacing an object of that name: read in chunks as they are sent,
    /// never whole in memory. Returns the file's size.
    ///
    /// # Errors
    /// [`Error::State`] when the file cannot be read; as
    /// [`Link::put_object`].
    pub fn put_object_file(&self, name: &str, metadata: &[(&str, String)], path: &Path) -> Result<u64> {
        let io = |e: std::io::Error| Error::State(mmsb::Error::from(e).in_file(path));
        let len = std::fs::metadata(path).map_err(io)?.len();
        self.run_for(self.transfer_time(len), "storing an object", async {
            let mut f = tokio::fs::File::open(path).await.map_err(io)?;
            self.put_from(name, metadata, &mut f).await
        })?;
        Ok(len)
    }

    async fn put_from(
        &self,
        name: &str,
        metadata: &[(&str, String)],
        data: &mut (impl tokio::io::AsyncRead + Unpin),
    ) -> Result<()> {
        let meta = object_store::ObjectMetadata {
            name: name.to_string(),
            metadata: metadata.iter().map(|(k, v)| ((*k).to_string(), v.clone())).collect(),
            ..Default::default()
        };
        self.objects.put(meta, data).await.map_err(|e| js_err("put object")(&e))?;
        Ok(())
    }

    /// The bytes of object `name` (their SHA-256 checked by the client
    /// against the object's digest); `None` when there is no such object.
    ///
    /// # Errors
    /// [`Error::JetStream`], [`Error::Timeout`].
    pub fn get_object(&self, name: &str) -> Result<Option<Vec<u8>>> {
        let size = match self.object_info(name)? {
            Some(i) => i.size as u64,
            None => return Ok(None),
        };
        self.run_for(self.transfer_time(size), "reading an object", async {
            use tokio::io::AsyncReadExt;
            let mut o = match self.objects.get(name).await {
                Ok(o) => o,
                Err(e) if e.kind() == object_store::GetErrorKind::NotFound => return Ok(None),
                Err(e) => return Err(js_err("get object")(&e)),
            };
            let mut v = Vec::with_capacity(usize::try_from(size).unwrap_or(0));
            o.read_to_end(&mut v).await.map_err(|e| js_err("read object")(&e))?;
            Ok(Some(v))
        })
    }

    /// What the object store says of object `name`; `None` when there is
    /// none.
    ///
    /// # Errors
    /// [`Error::JetStream`], [`Error::Timeout`].
    pub fn object_info(&self, name: &str) -> Result<Option<object_store::ObjectInfo>> {
        self.run("reading an object's info", async {
            match self.objects.info(name).await {
                Ok(i) => Ok(Some(i)),
                Err(e) if e.kind() == object_store::InfoErrorKind::NotFound => Ok(None),
                Err(e) => Err(js_err("object info")(&e)),
            }
        })
    }

    /// Every object of the state's object store (deleted ones left out).
    /// A refusal while the cluster has no meta leader is tried again
    /// within the link's timeout.
    ///
    /// # Errors
    /// [`Error::JetStream`], [`Error::Timeout`].
    pub fn list_objects(&self) -> Result<Vec<object_store::ObjectInfo>> {
        self.run("listing objects", async {
            // The listing is a read through a consumer, which the cluster
            // refuses (503, "temporarily unavailable") while it elects a
            // meta leader, as it does after a node was paused or
            // restarted: try again while the link's timeout allows, then
            // report the last refusal.
            let t0 = tokio::time::Instant::now();
            let pause = Duration::from_millis(100);
            loop {
                match self.list_objects_once().await {
                    Ok(out) => return Ok(out),
                    Err(e) if t0.elapsed() + 2 * pause < self.timeout => {
                        tracing::debug!(error = %e, "listing objects again");
                        tokio::time::sleep(pause).await;
                    }
                    Err(e) => return Err(e),
                }
            }
        })
    }

    async fn list_objects_once(&self) -> Result<Vec<object_store::ObjectInfo>> {
        use futures_util::StreamExt;
        let mut l = match self.objects.list().await {
            Ok(l) => l,
            Err(e) => return Err(js_err("list objects")(&e)),
        };
        let mut out = Vec::new();
        while let Some(i) = l.next().await {
            let i = i.map_err(|e| js_err("list objects")(&e))?;
            if !i.deleted {
                out.push(i);
            }
        }
        Ok(out)
    }

    /// Remove object `name` (nothing when there is none).
    ///
    /// # Errors
    /// [`Error::JetStream`], [`Error::Timeout`].
    pub fn delete_object(&self, name: &str) -> Result<()> {
        self.run("removing an object", async {
            match self.objects.delete(name).await {
                Ok(()) => Ok(()),
                Err(e) if e.kind() == object_store::DeleteErrorKind::NotFound => Ok(()),
                Err(e) => Err(js_err("delete object")(&e)),
            }
        })
    }
}

/// A bucket: `get` it, or `create` it (retried as [`retry`] does) when
/// there is none; when creating fails because another process created it
/// meanwhile, `get` it again. `op` names the request in the error.
async fn get_or_create<T, GE, CE, G, C>(
    within: Duration,
    op: &'static str,
    get: impl Fn() -> G,
    create: impl FnMut() -> C,
) -> Result<T>
where
    G: Future<Output = std::result::Result<T, GE>>,
    C: Future<Output = std::result::Result<T, CE>>,
    CE: std::fmt::Display,
{
    if let Ok(b) = get().await {
        return Ok(b);
    }
    match retry(within, create).await {
        Ok(b) => Ok(b),
        Err(reason) => get().await.map_err(|_| Error::JetStream { op, reason }),
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
