//! Test support: a real `nats-server` per test.
//!
//! [`NatsServer::start`] runs the pinned server that `just setup` installs in `.fleet/bin` (or
//! the one `FLEET_NATS_SERVER` names, or one on `PATH`) with JetStream on, on a free loopback
//! port, with a store dir of its own; it waits until the server accepts connections and kills
//! it on drop. [`NatsServer::stop`] and [`NatsServer::restart`] (same port, same store) inject
//! outages. [`wait_until`] polls a condition with a deadline; [`stream_messages`] reads what a
//! stream holds. [`TestFleet`] is one fleet under test: a server, folders, the typed
//! configuration and the worker processes of one test. [`turso::TursoDouble`] is the Turso
//! Platform API's double (from its OpenAPI document), [`sqld::Sqld`] the real libSQL server
//! whose namespaces are its databases. [`otlp::OtlpReceiver`] records the spans processes export
//! over OTLP/HTTP, as a collector would. [`NatsServer::start_with`] runs a server with a
//! configuration of its own (`authorization`, `tls`), and [`pki::TestPki`] makes the
//! certificates a TLS test needs.

#![deny(missing_docs)]

pub mod fleet;
pub mod jwt;
pub mod otlp;
pub mod pki;
pub mod sqld;
pub mod turso;

pub use fleet::TestFleet;

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A running nats-server owned by a test.
#[derive(Debug)]
pub struct NatsServer {
    binary: PathBuf,
    port: u16,
    store: tempfile::TempDir,
    child: Option<Child>,
    /// In a cluster: this node's name, its route port, and every node's route URL.
    cluster: Option<(String, u16, String)>,
    /// A configuration file given with `-c` (the flags above win over it).
    config: Option<PathBuf>,
}

/// The nats-server binary tests use.
pub fn nats_server_binary() -> PathBuf {
    if let Some(path) = std::env::var_os("FLEET_NATS_SERVER") {
        return PathBuf::from(path);
    }
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let pinned = root.join(".fleet/bin/nats-server");
    if pinned.exists() {
        return pinned;
    }
    PathBuf::from("nats-server")
}

fn free_port() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").expect("a free loopback port");
    listener.local_addr().expect("bound").port()
}

impl NatsServer {
    /// Starts a fresh server (JetStream on, empty store).
    pub fn start() -> Self {
        let mut server = Self {
            binary: nats_server_binary(),
            port: free_port(),
            store: tempfile::tempdir().expect("a temp store dir"),
            child: None,
            cluster: None,
            config: None,
        };
        server.spawn();
        server
    }

    /// Starts a fresh server (JetStream on, empty store) that also loads `config`, in
    /// nats-server's configuration syntax — an `authorization` block, a `tls` block — from a
    /// file beside its store. The address, port, JetStream and store flags still win over it.
    pub fn start_with(config: &str) -> Self {
        let store = tempfile::tempdir().expect("a temp store dir");
        let file = store.path().join("server.conf");
        std::fs::write(&file, config).expect("the server's configuration file");
        let mut server = Self {
            binary: nats_server_binary(),
            port: free_port(),
            store,
            child: None,
            cluster: None,
            config: Some(file),
        };
        server.spawn();
        server
    }

    /// Starts `nodes` servers on loopback as one JetStream cluster (`fleet`, nodes `n1`…),
    /// each with its own store; streams and buckets created with replicas up to `nodes` span
    /// them. Returns once every node answers (the meta leader is elected shortly after).
    pub fn cluster(nodes: usize) -> Vec<Self> {
        let routes: Vec<u16> = (0..nodes).map(|_| free_port()).collect();
        let all = routes
            .iter()
            .map(|p| format!("nats://127.0.0.1:{p}"))
            .collect::<Vec<_>>()
            .join(",");
        let mut servers: Vec<Self> = routes
            .iter()
            .enumerate()
            .map(|(i, route)| Self {
                binary: nats_server_binary(),
                port: free_port(),
                store: tempfile::tempdir().expect("a temp store dir"),
                child: None,
                cluster: Some((format!("n{}", i + 1), *route, all.clone())),
                config: None,
            })
            .collect();
        for server in &mut servers {
            server.spawn();
        }
        servers
    }

    fn spawn(&mut self) {
        let mut command = Command::new(&self.binary);
        if let Some(config) = &self.config {
            command.arg("-c").arg(config);
        }
        command
            .args([
                "-a",
                "127.0.0.1",
                "-p",
                &self.port.to_string(),
                "-js",
                "-sd",
            ])
            .arg(self.store.path())
            .args(self.cluster.iter().flat_map(|(name, route, routes)| {
                [
                    "-n".to_owned(),
                    name.clone(),
                    "--cluster_name".to_owned(),
                    "fleet".to_owned(),
                    "--cluster".to_owned(),
                    format!("nats://127.0.0.1:{route}"),
                    "--routes".to_owned(),
                    routes.clone(),
                ]
            }))
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        let child = command.spawn().unwrap_or_else(|e| {
            panic!(
                "cannot start {} ({e}); run `just setup` to install the pinned nats-server",
                self.binary.display()
            )
        });
        self.child = Some(child);
        let address = SocketAddr::from(([127, 0, 0, 1], self.port));
        let deadline = Instant::now() + Duration::from_secs(10);
        while TcpStream::connect_timeout(&address, Duration::from_millis(100)).is_err() {
            assert!(
                Instant::now() < deadline,
                "nats-server did not start on {address}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// `nats://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    /// The server's process id while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// The store dir.
    pub fn store_dir(&self) -> &Path {
        self.store.path()
    }

    /// Kills the server (its store stays).
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts it again on the same port with the same store.
    pub fn restart(&mut self) {
        self.stop();
        self.spawn();
    }
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Polls `check` every 50 ms until it holds (`true`) or `limit` passes (`false`).
pub async fn wait_until<F: AsyncFnMut() -> bool>(limit: Duration, mut check: F) -> bool {
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        if check().await {
            return true;
        }
        if tokio::time::Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Writes `text` to `dir/name` (a test's own file: a certificate, a credentials file) and
/// returns its path.
pub(crate) fn write_file(dir: &Path, name: &str, text: impl AsRef<[u8]>) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap_or_else(|e| panic!("writing {}: {e}", path.display()));
    path
}

/// Stream `name`'s state as its leader reports it (messages, consumers, sequences).
pub async fn stream_state(
    js: &async_nats::jetstream::Context,
    name: &str,
) -> async_nats::jetstream::stream::State {
    let mut stream = js.get_stream(name).await.expect("the stream");
    stream.info().await.expect("its info").state.clone()
}

/// Every message a stream holds, oldest first, optionally only those on `subject`.
pub async fn stream_messages(
    js: &async_nats::jetstream::Context,
    stream: &str,
    subject: Option<&str>,
) -> Vec<async_nats::jetstream::message::StreamMessage> {
    // A cluster electing a leader answers "timed out" for a moment: asked again, as a caller
    // would.
    let mut found = None;
    for _ in 0..50 {
        if let Ok(mut handle) = js.get_stream(stream).await
            && let Ok(state) = handle.info().await.map(|info| info.state.clone())
        {
            found = Some((handle, state));
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let (stream, state) = found.unwrap_or_else(|| panic!("the stream {stream} does not answer"));
    let mut out = Vec::new();
    for sequence in state.first_sequence..=state.last_sequence {
        if let Ok(message) = stream.get_raw_message(sequence).await
            && subject.is_none_or(|s| message.subject.as_str() == s)
        {
            out.push(message);
        }
    }
    out
}

/// Every lifecycle hook (CloudEvent, as JSON) on `subject` (`hooks.tenant.created`, …), oldest
/// first: the `FLEET_HOOKS` stream of an unprefixed topology.
pub async fn hooks(js: &async_nats::jetstream::Context, subject: &str) -> Vec<serde_json::Value> {
    stream_messages(js, "FLEET_HOOKS", Some(subject))
        .await
        .iter()
        .map(|m| serde_json::from_slice(&m.payload).expect("a hook is JSON"))
        .collect()
}

/// Every dead letter, as its JSON text (for `contains` checks), oldest first: the
/// `FLEET_DEAD_LETTERS` stream of an unprefixed topology.
pub async fn dead_letter_texts(js: &async_nats::jetstream::Context) -> Vec<String> {
    stream_messages(js, "FLEET_DEAD_LETTERS", None)
        .await
        .iter()
        .map(|m| String::from_utf8_lossy(&m.payload).into_owned())
        .collect()
}
