//! A real libSQL server (`sqld`, pinned, installed by `just setup` into `.fleet/bin`) for tests
//! of the turso backend: one process per test on random ports with a temp data dir, namespaces
//! enabled (each Turso database is a namespace, created through the admin API by the
//! [`crate::turso::TursoDouble`]), and a small proxy in front of it.
//!
//! sqld picks a request's namespace from the first label of its `Host` header, as Turso Cloud
//! does from `<database>-<org>.turso.io`. Without wildcard DNS on the test machine, the proxy
//! carries the namespace in the path instead: a client opens `http://127.0.0.1:<proxy>/<database>`
//! (the backend's `url_template`, [`Sqld::url_template`]), the libSQL client appends
//! `/v3/pipeline` or `/v3/cursor`, and the proxy forwards `/v3/…` to sqld with
//! `Host: <database>.sqld`.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::{Path as UrlPath, State};
use axum::http::{HeaderMap, Method, StatusCode};
use axum::response::IntoResponse;

/// The sqld binary tests use: `FLEET_SQLD`, or the pinned one in `.fleet/bin` (`None` when
/// neither exists — `just setup` installs it on linux-x64).
pub fn sqld_binary() -> Option<PathBuf> {
    if let Some(path) = std::env::var_os("FLEET_SQLD") {
        return Some(PathBuf::from(path));
    }
    let pinned = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../.fleet/bin/sqld");
    pinned.exists().then_some(pinned)
}

fn free_port() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").expect("a free loopback port");
    listener.local_addr().expect("bound").port()
}

/// A running sqld and its proxy; both stop when dropped.
#[derive(Debug)]
pub struct Sqld {
    child: Child,
    http_port: u16,
    admin_port: u16,
    proxy_port: u16,
    proxy: tokio::task::JoinHandle<()>,
    _dir: tempfile::TempDir,
}

#[derive(Clone)]
struct Upstream {
    client: reqwest::Client,
    base: String,
}

async fn forward(
    State(upstream): State<Upstream>,
    UrlPath((namespace, rest)): UrlPath<(String, String)>,
    method: Method,
    headers: HeaderMap,
    body: Bytes,
) -> impl IntoResponse {
    let mut request = upstream
        .client
        .request(method, format!("{}/{rest}", upstream.base))
        .header("host", format!("{namespace}.sqld"))
        .body(body);
    for name in ["content-type", "authorization"] {
        if let Some(value) = headers.get(name) {
            request = request.header(name, value.as_bytes());
        }
    }
    match request.send().await {
        Ok(answer) => {
            let status =
                StatusCode::from_u16(answer.status().as_u16()).unwrap_or(StatusCode::BAD_GATEWAY);
            let content_type = answer
                .headers()
                .get("content-type")
                .and_then(|v| v.to_str().ok())
                .unwrap_or("application/json")
                .to_owned();
            let bytes = answer.bytes().await.unwrap_or_default();
            (status, [("content-type", content_type)], bytes).into_response()
        }
        Err(e) => (StatusCode::BAD_GATEWAY, e.to_string()).into_response(),
    }
}

impl Sqld {
    /// Starts sqld and its proxy; `None` when there is no sqld binary.
    pub async fn start() -> Option<Self> {
        let binary = sqld_binary()?;
        let dir = tempfile::tempdir().expect("a temp dir");
        let (http_port, admin_port) = (free_port(), free_port());
        let log = std::fs::File::create(dir.path().join("sqld.log")).expect("a log file");
        let child = Command::new(binary)
            .arg("--db-path")
            .arg(dir.path().join("data"))
            .args(["--http-listen-addr", &format!("127.0.0.1:{http_port}")])
            .args(["--admin-listen-addr", &format!("127.0.0.1:{admin_port}")])
            .args(["--enable-namespaces", "--disable-default-namespace"])
            // One server holds every tenant's database open, as Turso Cloud's fleet does
            // (sqld's default of 100 evicts and reopens namespaces under load).
            .args(["--max-active-namespaces", "100000"])
            .current_dir(dir.path())
            .stdout(log.try_clone().expect("the log file"))
            .stderr(log)
            .stdin(Stdio::null())
            .spawn()
            .expect("sqld starts");
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("a proxy port");
        let proxy_port = listener.local_addr().expect("bound").port();
        let upstream = Upstream {
            client: reqwest::Client::new(),
            base: format!("http://127.0.0.1:{http_port}"),
        };
        let app = axum::Router::new()
            .route("/{namespace}/{*rest}", axum::routing::any(forward))
            .with_state(upstream);
        let proxy = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        let this = Self {
            child,
            http_port,
            admin_port,
            proxy_port,
            proxy,
            _dir: dir,
        };
        for _ in 0..100 {
            if std::net::TcpStream::connect(("127.0.0.1", this.admin_port)).is_ok()
                && std::net::TcpStream::connect(("127.0.0.1", this.http_port)).is_ok()
            {
                return Some(this);
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!("sqld did not start listening within 10 s");
    }

    /// The admin API's address (`127.0.0.1:port`).
    pub fn admin_addr(&self) -> String {
        format!("127.0.0.1:{}", self.admin_port)
    }

    /// The turso backend's `url_template` for databases behind the proxy.
    pub fn url_template(&self) -> String {
        format!("http://127.0.0.1:{}/{{tenant_id}}", self.proxy_port)
    }
}

impl Drop for Sqld {
    fn drop(&mut self) {
        self.proxy.abort();
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
