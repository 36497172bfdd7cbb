//! `mmsb serve` over a real state directory, spoken to with raw HTTP/1.1:
//! the API's answers, byte ranges, refused paths, the live tail while
//! this process writes the directory, the stream limit, clients that go
//! away mid-stream, oversized requests and a missing viewer bundle.

use mmsb::{Config, Mmsb, PageSpec, Payload};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

type R<T = ()> = Result<T, Box<dyn std::error::Error>>;

fn bin() -> String {
    std::env::var("NEXTEST_BIN_EXE_mmsb").unwrap_or_else(|_| env!("CARGO_BIN_EXE_mmsb").to_string())
}

/// A server on an ephemeral loopback port, killed on drop.
struct Server {
    child: Child,
    addr: String,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn fake_assets(dir: &Path) -> R {
    for (n, body) in [
        ("index.html", "<!doctype html><title>viewer</title>"),
        ("viewer.js", "// js"),
        ("viewer.css", "/* css */"),
        ("mmsb_web.js", "// glue"),
        ("mmsb_web_bg.wasm", "\0asm"),
    ] {
        std::fs::write(dir.join(n), body)?;
    }
    Ok(())
}

fn serve(state: &Path, assets: &Path, extra: &[&str]) -> R<Server> {
    let mut child = Command::new(bin())
        .args(["serve"])
        .arg(state)
        .args(["--addr", "127.0.0.1:0", "--assets"])
        .arg(assets)
        .args(extra)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()?;
    let mut line = String::new();
    BufReader::new(child.stdout.take().ok_or("no stdout")?).read_line(&mut line)?;
    let addr = line
        .split("http://")
        .nth(1)
        .and_then(|r| r.split('/').next())
        .ok_or_else(|| format!("no address in {line:?}"))?
        .to_string();
    Ok(Server { child, addr })
}

struct Reply {
    status: u16,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Reply {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(k, _)| k.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }
}

fn request(addr: &str, path: &str, extra: &str) -> R<Reply> {
    let mut s = TcpStream::connect(addr)?;
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    write!(s, "GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n{extra}\r\n")?;
    let mut raw = Vec::new();
    s.read_to_end(&mut raw)?;
    let split = raw.windows(4).position(|w| w == b"\r\n\r\n").ok_or("no end of headers")?;
    let head = String::from_utf8_lossy(&raw[..split]).to_string();
    let mut lines = head.lines();
    let status = lines.next().and_then(|l| l.split(' ').nth(1)).ok_or("no status")?.parse()?;
    let headers = lines
        .filter_map(|l| l.split_once(':').map(|(k, v)| (k.trim().to_string(), v.trim().to_string())))
        .collect();
    Ok(Reply { status, headers, body: raw[split + 4..].to_vec() })
}

/// A stream of the live tail: its socket, and the `data:` lines read so far.
struct Tail {
    s: TcpStream,
    buf: Vec<u8>,
}

fn open_tail(addr: &str) -> R<(u16, Tail)> {
    let mut s = TcpStream::connect(addr)?;
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    write!(s, "GET /api/tail HTTP/1.1\r\nHost: x\r\nAccept: text/event-stream\r\n\r\n")?;
    let mut t = Tail { s, buf: Vec::new() };
    while !t.buf.windows(4).any(|w| w == b"\r\n\r\n") {
        let mut b = [0u8; 4096];
        let n = t.s.read(&mut b)?;
        if n == 0 {
            break;
        }
        t.buf.extend_from_slice(&b[..n]);
    }
    let status = String::from_utf8_lossy(&t.buf).split(' ').nth(1).unwrap_or("0").parse()?;
    Ok((status, t))
}

impl Tail {
    /// The next `log` event's LSN whose LSN is above `after`.
    fn lsn_above(&mut self, after: u64, within: Duration) -> R<u64> {
        let end = Instant::now() + within;
        let mut seen = 0;
        loop {
            let text = String::from_utf8_lossy(&self.buf).to_string();
            for line in text.lines().filter_map(|l| l.strip_prefix("data: ")).skip(seen) {
                seen += 1;
                let v: serde_json::Value = serde_json::from_str(line)?;
                let lsn = v["lsn"].as_u64().ok_or("no lsn")?;
                if lsn > after {
                    return Ok(lsn);
                }
            }
            if Instant::now() > end {
                return Err(format!("no event above LSN {after}: {text}").into());
            }
            let mut b = [0u8; 4096];
            let n = self.s.read(&mut b)?;
            if n == 0 {
                return Err("the stream ended".into());
            }
            self.buf.extend_from_slice(&b[..n]);
        }
    }
}

fn state_with_commits(dir: &Path, n: u8) -> R<u64> {
    let s = Mmsb::start(Config::at(dir))?;
    let p = s.create_page(PageSpec::new(64).named("p"))?;
    for i in 0..n {
        s.update_page(p, Payload::Full(vec![i; 64]))?;
    }
    let lsn = s.lsn().0;
    s.stop()?;
    Ok(lsn)
}

fn segment(dir: &Path) -> R<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir.join("log"))?
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .filter(|n| n.starts_with("wal-") && n.ends_with(".log"))
        .collect();
    names.sort();
    names.into_iter().next().ok_or_else(|| "no segment".into())
}

#[test]
fn api_ranges_and_refused_paths() -> R {
    let state = tempfile::tempdir()?;
    let assets = tempfile::tempdir()?;
    fake_assets(assets.path())?;
    let lsn = state_with_commits(state.path(), 5)?;
    let srv = serve(state.path(), assets.path(), &[])?;

    let r = request(&srv.addr, "/", "")?;
    assert_eq!(r.status, 200);
    assert!(String::from_utf8_lossy(&r.body).contains("<title>viewer</title>"));
    assert_eq!(request(&srv.addr, "/mmsb_web_bg.wasm", "")?.header("content-type"), Some("application/wasm"));

    let r = request(&srv.addr, "/api/summary", "")?;
    assert_eq!(r.status, 200);
    let v: serde_json::Value = serde_json::from_slice(&r.body)?;
    assert_eq!(v["lsn"].as_u64(), Some(lsn));
    let seg = segment(state.path())?;
    let on_disk = std::fs::read(state.path().join("log").join(&seg))?;
    let listed = v["files"].as_array().ok_or("no files")?;
    assert!(listed
        .iter()
        .any(|f| f["name"] == seg.as_str() && f["bytes"].as_u64() == Some(on_disk.len() as u64)));
    assert!(!listed.iter().any(|f| f["name"] == "LOCK"));

    // Whole file, a range, a suffix range, unsatisfiable ranges.
    let r = request(&srv.addr, &format!("/api/log/{seg}"), "")?;
    assert_eq!((r.status, &r.body), (200, &on_disk));
    let r = request(&srv.addr, &format!("/api/log/{seg}"), "Range: bytes=3-9\r\n")?;
    assert_eq!(r.status, 206);
    assert_eq!(r.body, on_disk[3..10]);
    assert_eq!(r.header("content-range"), Some(format!("bytes 3-9/{}", on_disk.len()).as_str()));
    let r = request(&srv.addr, &format!("/api/log/{seg}"), "Range: bytes=-4\r\n")?;
    assert_eq!(r.body, on_disk[on_disk.len() - 4..]);
    for bad in [format!("bytes={}-", on_disk.len()), "bytes=0-1,4-5".into(), "lines=1-2".into()] {
        let r = request(&srv.addr, &format!("/api/log/{seg}"), &format!("Range: {bad}\r\n"))?;
        assert_eq!(r.status, 416, "{bad}");
    }

    // Nothing but listed segments and checkpoints, by name.
    let outside = tempfile::tempdir()?;
    std::fs::write(outside.path().join("secret"), b"secret")?;
    #[cfg(unix)]
    std::os::unix::fs::symlink(
        outside.path().join("secret"),
        state.path().join("log/wal-00000000000000ff.log"),
    )?;
    for path in [
        "/api/log/LOCK",
        "/api/log/..%2F..%2Fetc%2Fpasswd",
        "/api/log/%2Fetc%2Fpasswd",
        "/api/log/wal-00000000000000ff.log",
        "/api/log/wal-0000000000000099.log",
        "/../../etc/passwd",
        "/api/log/",
        "/index.html/../../Cargo.toml",
        "/Cargo.toml",
    ] {
        let r = request(&srv.addr, path, "")?;
        assert_eq!(r.status, 404, "{path}: {}", String::from_utf8_lossy(&r.body));
        assert!(!String::from_utf8_lossy(&r.body).contains("secret"));
    }
    // Only GET (and HEAD).
    let mut s = TcpStream::connect(&srv.addr)?;
    write!(s, "POST /api/summary HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Length: 2\r\n\r\nhi")?;
    let mut raw = String::new();
    s.read_to_string(&mut raw)?;
    assert!(raw.starts_with("HTTP/1.1 405"), "{raw}");
    Ok(())
}

#[test]
fn live_tail_streams_limits_and_disconnects() -> R {
    let state = tempfile::tempdir()?;
    let assets = tempfile::tempdir()?;
    fake_assets(assets.path())?;
    let lsn = state_with_commits(state.path(), 2)?;
    let srv = serve(state.path(), assets.path(), &["--max-streams", "2"])?;

    let (st, mut a) = open_tail(&srv.addr)?;
    assert_eq!(st, 200);
    assert_eq!(a.lsn_above(0, Duration::from_secs(5))?, lsn);
    let (st, b) = open_tail(&srv.addr)?;
    assert_eq!(st, 200);
    // A third stream is refused while two are open.
    let (st, _c) = open_tail(&srv.addr)?;
    assert_eq!(st, 503);

    // A commit made by another writer reaches the open stream.
    let s = Mmsb::start(Config::existing(state.path()))?;
    let p = s.page_named("p").ok_or("no page")?;
    s.update_page(p, Payload::Full(vec![9; 64]))?;
    let now = s.lsn().0;
    s.stop()?;
    assert!(a.lsn_above(lsn, Duration::from_secs(5))? >= now);

    // Both clients go away mid-stream; their slots come back.
    drop(a);
    drop(b);
    let end = Instant::now() + Duration::from_secs(10);
    loop {
        let (st, t) = open_tail(&srv.addr)?;
        if st == 200 {
            drop(t);
            break;
        }
        assert!(Instant::now() < end, "the slots of closed streams were not freed");
        std::thread::sleep(Duration::from_millis(200));
    }
    // A client that sends half a request and leaves.
    let mut half = TcpStream::connect(&srv.addr)?;
    write!(half, "GET /api/tail HTTP/1.1\r\nHo")?;
    drop(half);
    // Oversized request headers are refused; the server carries on.
    let mut big = TcpStream::connect(&srv.addr)?;
    big.set_read_timeout(Some(Duration::from_secs(10)))?;
    let pad = "a".repeat(1 << 20);
    let _ = write!(big, "GET /api/summary HTTP/1.1\r\nHost: x\r\nX-Pad: {pad}\r\n\r\n");
    let mut raw = Vec::new();
    let _ = big.read_to_end(&mut raw);
    assert!(!raw.starts_with(b"HTTP/1.1 200"), "{}", String::from_utf8_lossy(&raw[..raw.len().min(100)]));
    let r = request(&srv.addr, "/api/summary", "")?;
    assert_eq!(r.status, 200);
    Ok(())
}

#[test]
fn missing_viewer_and_missing_state_are_clear_errors() -> R {
    let state = tempfile::tempdir()?;
    state_with_commits(state.path(), 1)?;
    let empty = tempfile::tempdir()?;
    let out = Command::new(bin())
        .args(["serve"])
        .arg(state.path())
        .args(["--addr", "127.0.0.1:0", "--assets"])
        .arg(empty.path())
        .output()?;
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("scripts/build-viewer.sh"), "{err}");
    let out =
        Command::new(bin()).args(["serve"]).arg(empty.path()).args(["--addr", "127.0.0.1:0"]).output()?;
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("no log/ directory"));
    // Loopback unless told otherwise.
    let help = Command::new(bin()).args(["serve", "--help"]).output()?;
    assert!(String::from_utf8_lossy(&help.stdout).contains("[default: 127.0.0.1:8417]"));
    Ok(())
}
