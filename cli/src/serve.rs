//! `mmsb serve DIR`: the viewer and a read-only HTTP API over a state
//! directory (docs/SERVE.md).
//!
//! The server never replays: it lists the log directory, hands out byte
//! ranges of its segments and checkpoints (the browser replays them with
//! the `mmsb` crate compiled to WebAssembly), and tells live-tail streams
//! when the log grows. Only fixed routes exist; a file is served only when
//! its name is a segment's or a checkpoint's and the directory lists it,
//! and it is read through [`Confined`] (no link followed, regular files
//! only).

use crate::confined::Confined;
use axum::extract::{Path as UrlPath, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use mmsb::internals::files;
use mmsb::internals::log::reader;
use mmsb::vfs::Vfs;
use mmsb::{Error, Limits, RecoveryMode, Result};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{watch, Semaphore};

/// Largest byte range one response carries; a longer request gets this
/// much (206, its `Content-Range` says what was sent).
pub const MAX_RANGE: u64 = 8 << 20;
/// How often the log directory is looked at for the live tail.
const POLL: Duration = Duration::from_millis(150);
/// Keep-alive comments on a live-tail stream: a client that went away is
/// noticed (and its slot freed) at the next one at the latest.
const KEEP_ALIVE: Duration = Duration::from_secs(2);
/// File reads served at once; more wait.
const MAX_READS: usize = 16;

#[derive(clap::Args, Debug)]
pub struct ServeArgs {
    /// The state directory (only read).
    dir: PathBuf,
    /// Address to listen on. The default is loopback only; any other
    /// address lets whoever reaches it read the whole state.
    #[arg(long, default_value = "127.0.0.1:8417")]
    addr: SocketAddr,
    /// The viewer's files (index.html, viewer.js, viewer.css, mmsb_web.js,
    /// mmsb_web_bg.wasm), as `bash scripts/build-viewer.sh` writes them.
    /// Default: `viewer/` in the target directory of this binary
    /// (target/viewer for target/release/mmsb).
    #[arg(long, value_name = "DIR")]
    assets: Option<PathBuf>,
    /// Live-tail streams served at once; one more is refused with 503.
    #[arg(long, default_value_t = 8)]
    max_streams: usize,
}

/// The viewer's files, read once at start (a fixed set: nothing else is
/// served from the assets directory).
const ASSETS: [(&str, &str, &str); 5] = [
    ("/", "index.html", "text/html; charset=utf-8"),
    ("/viewer.js", "viewer.js", "text/javascript; charset=utf-8"),
    ("/viewer.css", "viewer.css", "text/css; charset=utf-8"),
    ("/mmsb_web.js", "mmsb_web.js", "text/javascript; charset=utf-8"),
    ("/mmsb_web_bg.wasm", "mmsb_web_bg.wasm", "application/wasm"),
];

/// What the live tail knows of the log directory.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
struct Snapshot {
    /// Segments and checkpoints, `(name, bytes)`, sorted by name.
    files: Vec<(String, u64)>,
    /// LSN of the last committed record.
    lsn: u64,
    /// Why the log could not be read to its end, if it could not.
    error: Option<String>,
}

impl Snapshot {
    fn json(&self) -> String {
        let files: Vec<serde_json::Value> = self
            .files
            .iter()
            .map(|(n, b)| {
                let kind = if files::parse_segment_name(n).is_some() { "segment" } else { "checkpoint" };
                serde_json::json!({ "name": n, "kind": kind, "bytes": b })
            })
            .collect();
        serde_json::json!({ "lsn": self.lsn, "files": files, "error": self.error }).to_string()
    }
}

struct App {
    dir: PathBuf,
    vfs: Confined,
    assets: Vec<(&'static str, &'static str, Vec<u8>)>,
    snapshot: watch::Receiver<Arc<Snapshot>>,
    streams: AtomicUsize,
    max_streams: usize,
    reads: Semaphore,
}

fn log_files(vfs: &Confined, dir: &Path) -> Result<Vec<(String, u64)>> {
    let log = files::log_dir(dir);
    let mut out = Vec::new();
    for n in vfs.list(&log).map_err(|e| Error::from(e).in_file(&log))? {
        if files::parse_segment_name(&n).is_none() && files::parse_checkpoint_name(&n).is_none() {
            continue;
        }
        // A link, directory or pipe with such a name is not served.
        if let Ok(f) = vfs.open_read(&log.join(&n)) {
            out.push((n, f.len()));
        }
    }
    Ok(out)
}

/// The LSN of the log's last commit (0 for an empty log).
fn end_lsn(vfs: &Confined, dir: &Path) -> Result<u64> {
    let log = files::log_dir(dir);
    let r = reader::scan(vfs, &log, 0, RecoveryMode::Strict, &Limits::default(), &mut |_| Ok(true))?;
    Ok(r.last_lsn)
}

fn snapshot(vfs: &Confined, dir: &Path, prev: &Snapshot) -> Snapshot {
    match log_files(vfs, dir) {
        Ok(files) if files == prev.files && prev.error.is_none() => prev.clone(),
        Ok(files) => match end_lsn(vfs, dir) {
            Ok(lsn) => Snapshot { files, lsn, error: None },
            Err(e) => Snapshot { files, lsn: prev.lsn, error: Some(e.to_string()) },
        },
        Err(e) => Snapshot { files: prev.files.clone(), lsn: prev.lsn, error: Some(e.to_string()) },
    }
}

fn load_assets(dir: &Path) -> Result<Vec<(&'static str, &'static str, Vec<u8>)>> {
    let mut out = Vec::new();
    for (route, name, ty) in ASSETS {
        let path = dir.join(name);
        match std::fs::read(&path) {
            Ok(b) => out.push((route, ty, b)),
            Err(e) => {
                return Err(Error::Config(format!(
                    "the viewer is not built ({}: {e}); build it with `bash scripts/build-viewer.sh` \
                     (it writes target/viewer), or give --assets DIR",
                    path.display()
                )))
            }
        }
    }
    Ok(out)
}

fn default_assets() -> PathBuf {
    std::env::current_exe()
        .ok()
        .and_then(|exe| exe.parent().and_then(Path::parent).map(|t| t.join("viewer")))
        .unwrap_or_else(|| PathBuf::from("target/viewer"))
}

pub fn run(args: &ServeArgs) -> Result<()> {
    let vfs = crate::offline::open(&args.dir)?;
    let assets = load_assets(&args.assets.clone().unwrap_or_else(default_assets))?;
    if args.max_streams == 0 {
        return Err(Error::Config("--max-streams must be at least 1".into()));
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(Error::from)?;
    rt.block_on(async move {
        let listener = tokio::net::TcpListener::bind(args.addr).await.map_err(|e| {
            Error::Config(format!("cannot listen on {}: {e}", args.addr))
        })?;
        let addr = listener.local_addr().map_err(Error::from)?;
        let first = snapshot(&vfs, &args.dir, &Snapshot::default());
        let (tx, rx) = watch::channel(Arc::new(first));
        let app = Arc::new(App {
            dir: args.dir.clone(),
            vfs,
            assets,
            snapshot: rx,
            streams: AtomicUsize::new(0),
            max_streams: args.max_streams,
            reads: Semaphore::new(MAX_READS),
        });
        tokio::spawn(watch_log(Arc::clone(&app), tx));
        if !addr.ip().is_loopback() {
            eprintln!(
                "mmsb serve: warning: listening on {addr}, not loopback: anyone who can reach it can read the state"
            );
        }
        outln!("mmsb serve: {} at http://{addr}/ (read-only; Ctrl-C stops)", args.dir.display());
        axum::serve(listener, router(app)).await.map_err(Error::from)
    })
}

/// Look at the log directory every [`POLL`] and publish what changed.
async fn watch_log(app: Arc<App>, tx: watch::Sender<Arc<Snapshot>>) {
    loop {
        tokio::time::sleep(POLL).await;
        let prev = Arc::clone(&tx.borrow());
        let a = Arc::clone(&app);
        let next = tokio::task::spawn_blocking(move || snapshot(&a.vfs, &a.dir, &prev)).await;
        if let Ok(next) = next {
            tx.send_if_modified(|cur| {
                if **cur == next {
                    false
                } else {
                    *cur = Arc::new(next);
                    true
                }
            });
        }
        if tx.is_closed() {
            return;
        }
    }
}

fn router(app: Arc<App>) -> Router {
    let mut r = Router::new()
        .route("/api/summary", get(summary))
        .route("/api/log/{name}", get(log_file))
        .route("/api/tail", get(tail));
    for (i, (route, _, _)) in app.assets.iter().enumerate() {
        r = r.route(route, get(move |State(app): State<Arc<App>>| async move { asset(&app, i) }));
    }
    r.fallback(|| async { plain(StatusCode::NOT_FOUND, "no such route (docs/SERVE.md lists them)") })
        .with_state(app)
}

fn plain(status: StatusCode, msg: &str) -> Response {
    (status, [(header::CONTENT_TYPE, "text/plain; charset=utf-8")], format!("{msg}\n")).into_response()
}

fn asset(app: &App, i: usize) -> Response {
    let (_, ty, bytes) = &app.assets[i];
    ([(header::CONTENT_TYPE, *ty), (header::CACHE_CONTROL, "no-cache")], bytes.clone()).into_response()
}

async fn summary(State(app): State<Arc<App>>) -> Response {
    let s = Arc::clone(&app.snapshot.borrow());
    let mut v: serde_json::Value = serde_json::from_str(&s.json()).unwrap_or_default();
    v["dir"] = serde_json::Value::from(app.dir.display().to_string());
    v["version"] = serde_json::Value::from(env!("CARGO_PKG_VERSION"));
    v["max_range"] = serde_json::Value::from(MAX_RANGE);
    ([(header::CONTENT_TYPE, "application/json"), (header::CACHE_CONTROL, "no-store")], v.to_string())
        .into_response()
}

/// A `Range: bytes=A-B` / `bytes=A-` header: the first and one-past-last
/// byte wanted (the end capped at `len`), `Err` when it cannot be met.
fn parse_range(h: &str, len: u64) -> std::result::Result<(u64, u64), ()> {
    let spec = h.trim().strip_prefix("bytes=").ok_or(())?;
    if spec.contains(',') {
        return Err(()); // one range per request
    }
    let (a, b) = spec.split_once('-').ok_or(())?;
    let (start, end) = if a.is_empty() {
        // bytes=-N: the last N bytes.
        let n: u64 = b.parse().map_err(|_| ())?;
        (len.saturating_sub(n), len)
    } else {
        let s: u64 = a.parse().map_err(|_| ())?;
        let e = if b.is_empty() { len } else { b.parse::<u64>().map_err(|_| ())?.saturating_add(1).min(len) };
        (s, e)
    };
    if start >= len || end <= start {
        return Err(());
    }
    Ok((start, end))
}

async fn log_file(
    State(app): State<Arc<App>>,
    UrlPath(name): UrlPath<String>,
    headers: HeaderMap,
) -> Response {
    // Only names the directory lists as segments or checkpoints: never a path.
    let listed = app.snapshot.borrow().files.iter().any(|(n, _)| *n == name);
    let Ok(_permit) = app.reads.acquire().await else {
        return plain(StatusCode::SERVICE_UNAVAILABLE, "shutting down");
    };
    let range = headers.get(header::RANGE).map(|v| v.to_str().unwrap_or("").to_string());
    let a = Arc::clone(&app);
    let res = tokio::task::spawn_blocking(move || -> std::result::Result<Response, Response> {
        // The listing may be up to one poll behind a new segment: look again.
        if !listed && !log_files(&a.vfs, &a.dir).is_ok_and(|f| f.iter().any(|(n, _)| *n == name)) {
            return Err(plain(StatusCode::NOT_FOUND, "no such log file (GET /api/summary lists them)"));
        }
        let path = files::log_dir(&a.dir).join(&name);
        let mut f =
            a.vfs.open_read(&path).map_err(|e| plain(StatusCode::NOT_FOUND, &format!("{name}: {e}")))?;
        let len = f.len();
        let (start, end, partial) = match &range {
            Some(h) => match parse_range(h, len) {
                Ok((s, e)) => (s, e, true),
                Err(()) => {
                    let mut r =
                        plain(StatusCode::RANGE_NOT_SATISFIABLE, "one satisfiable byte range, please");
                    if let Ok(v) = HeaderValue::from_str(&format!("bytes */{len}")) {
                        r.headers_mut().insert(header::CONTENT_RANGE, v);
                    }
                    return Err(r);
                }
            },
            None => (0, len, false),
        };
        let end = end.min(start.saturating_add(MAX_RANGE));
        let partial = partial || end < len;
        let mut buf = vec![0u8; (end - start) as usize];
        f.read_exact_at(&mut buf, start)
            .map_err(|e| plain(StatusCode::INTERNAL_SERVER_ERROR, &format!("{name}: {e}")))?;
        let mut r = ([(header::CONTENT_TYPE, "application/octet-stream")], buf).into_response();
        let h = r.headers_mut();
        h.insert(header::ACCEPT_RANGES, HeaderValue::from_static("bytes"));
        h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
        if partial {
            *r.status_mut() = StatusCode::PARTIAL_CONTENT;
            if let Ok(v) = HeaderValue::from_str(&format!("bytes {start}-{}/{len}", end - 1)) {
                r.headers_mut().insert(header::CONTENT_RANGE, v);
            }
        }
        Ok(r)
    })
    .await;
    match res {
        Ok(Ok(r) | Err(r)) => r,
        Err(_) => plain(StatusCode::INTERNAL_SERVER_ERROR, "the read failed"),
    }
}

/// Holds one live-tail slot; dropping it (the stream ends or its client
/// went away) frees the slot.
struct Slot(Arc<App>);

impl Drop for Slot {
    fn drop(&mut self) {
        self.0.streams.fetch_sub(1, Ordering::AcqRel);
    }
}

async fn tail(State(app): State<Arc<App>>) -> Response {
    let taken = app
        .streams
        .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| (n < app.max_streams).then_some(n + 1));
    if taken.is_err() {
        let mut r = plain(StatusCode::SERVICE_UNAVAILABLE, "too many live-tail streams; try again later");
        r.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from_static("5"));
        return r;
    }
    let slot = Slot(Arc::clone(&app));
    let mut rx = app.snapshot.clone();
    rx.mark_changed(); // the current state first
    let stream = futures_util::stream::unfold((rx, slot), |(mut rx, slot)| async move {
        rx.changed().await.ok()?;
        let s = Arc::clone(&rx.borrow_and_update());
        let ev = Event::default().event("log").data(s.json());
        Some((Ok::<_, std::convert::Infallible>(ev), (rx, slot)))
    });
    let mut r = Sse::new(stream).keep_alive(KeepAlive::new().interval(KEEP_ALIVE)).into_response();
    r.headers_mut().insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    r
}

#[cfg(test)]
mod tests {
    use super::parse_range;

    #[test]
    fn ranges() {
        assert_eq!(parse_range("bytes=0-9", 100), Ok((0, 10)));
        assert_eq!(parse_range("bytes=90-", 100), Ok((90, 100)));
        assert_eq!(parse_range("bytes=90-1000", 100), Ok((90, 100)));
        assert_eq!(parse_range("bytes=-10", 100), Ok((90, 100)));
        for bad in
            ["bytes=100-", "bytes=5-4", "bytes=0-1,3-4", "items=0-1", "bytes=x-", "bytes=-", "bytes=0-1x"]
        {
            assert_eq!(parse_range(bad, 100), Err(()), "{bad}");
        }
        assert_eq!(parse_range("bytes=0-", 0), Err(()));
    }
}
