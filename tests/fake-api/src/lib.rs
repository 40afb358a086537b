//! ferry-fake-api: an in-process fake Kubernetes API server.
//!
//! It speaks the list/watch protocol of the API Concepts page
//! (<https://kubernetes.io/docs/reference/using-api/api-concepts/>) over
//! plain HTTP/1.1 and JSON, so kube-rs (and kubectl-like clients) talk to it
//! unchanged; the end-to-end tests point `ferry-agent` and `ferry-dns` at it
//! and the benchmark loads 100,000 Services and EndpointSlices into it.
//!
//! ```no_run
//! use ferry_fake_api::FakeApi;
//! let api = FakeApi::start().unwrap();
//! api.apply(serde_json::json!({
//!     "apiVersion": "v1", "kind": "Service",
//!     "metadata": {"name": "web", "namespace": "default"},
//!     "spec": {"clusterIP": "10.96.0.10", "ports": [{"port": 80}]},
//! }));
//! api.write_kubeconfig(std::path::Path::new("/tmp/kubeconfig")).unwrap();
//! // ... run a client against api.url(), then break things:
//! api.compact();
//! api.drop_watches();
//! ```
//!
//! Served: core `v1` services, endpoints, pods, configmaps, nodes and
//! namespaces, and `discovery.k8s.io/v1` endpointslices; list (`limit` and
//! `continue` from a consistent snapshot, `resourceVersion` with
//! `resourceVersionMatch`, label and field selectors), watch (history
//! replay, 410 `Expired` as an `ERROR` event, bookmarks, `sendInitialEvents`
//! streaming lists, `timeoutSeconds`), get, and create, update, merge patch
//! and delete over HTTP; `/version`, `/api`, `/apis` discovery. Objects are
//! kept as their JSON bytes (see `object`), so 200,000 of them cost little
//! more than their text. The server runs on its own
//! tokio runtime, so the API below is synchronous and callable from sync
//! test code and from inside another runtime alike.

use std::collections::HashMap;
use std::io;
use std::net::{SocketAddr, TcpListener as StdListener};
use std::path::Path;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{mpsc, Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use serde_json::Value;
use tokio::sync::{oneshot, watch};

pub mod generate;
mod object;
mod patch;
mod resource;
mod select;
mod server;
mod status;
mod store;
mod watch_stream;

use store::{Store, WriteMode};

/// Server settings; `Options::default()` is what [`FakeApi::start`] uses.
#[derive(Debug, Clone)]
pub struct Options {
    /// Where to listen (`127.0.0.1:0` picks a free port).
    pub addr: SocketAddr,
    /// How often a watch with `allowWatchBookmarks=true` gets a BOOKMARK
    /// (the real server: about once a minute).
    pub bookmark_interval: Duration,
    /// The longest a watch without `timeoutSeconds` stays open; like the
    /// real server's `--min-request-timeout`, each watch gets a random
    /// duration between this and twice this.
    pub watch_timeout: Duration,
    /// Events kept per kind; older ones are compacted away (watches from
    /// before them get 410), as a real server's history is bounded.
    pub history_limit: usize,
    /// How long an unused paged list's snapshot is kept for its continue
    /// token (etcd compacts every 5 minutes). An evicted snapshot is rebuilt
    /// from history while it lasts; [`FakeApi::compact`] voids them all.
    pub continue_ttl: Duration,
    /// Worker threads of the server's runtime.
    pub worker_threads: usize,
}

impl Default for Options {
    fn default() -> Options {
        Options {
            addr: SocketAddr::from(([127, 0, 0, 1], 0)),
            bookmark_interval: Duration::from_secs(1),
            watch_timeout: Duration::from_secs(30 * 60),
            history_limit: 1_000_000,
            continue_ttl: Duration::from_secs(5 * 60),
            worker_threads: 2,
        }
    }
}

/// One request the server answered, for assertions on what clients did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    /// `GET`, `POST`, ...
    pub method: String,
    /// The path without the query.
    pub path: String,
    /// The raw query string (without `?`), "" if none.
    pub query: String,
    /// The Kubernetes authorization verb: `get`, `list`, `watch`, `create`,
    /// `update`, `patch`, `delete`, `deletecollection`; for non-resource
    /// paths (`/version`, `/api`) the lower-case HTTP method.
    pub verb: String,
    /// "" for the core group.
    pub api_group: String,
    /// The resource (plural) the path names, "" for non-resource paths.
    pub resource: String,
    pub namespace: Option<String>,
    pub name: Option<String>,
    /// The HTTP status code answered (200 for a watch that started).
    pub status: u16,
}

impl Request {
    /// The first value of a query parameter, decoded.
    pub fn param(&self, key: &str) -> Option<String> {
        form_urlencoded::parse(self.query.as_bytes()).find(|(k, _)| k == key).map(|(_, v)| v.into_owned())
    }
}

/// What the server tasks and the sync handle share.
pub(crate) struct Shared {
    pub opts: Options,
    pub store: Mutex<Store>,
    /// The latest resourceVersion; watchers wait on it.
    pub rv_tx: watch::Sender<u64>,
    pub stall_tx: watch::Sender<bool>,
    /// Bumped by `drop_watches`: watches started before end abruptly.
    pub drop_tx: watch::Sender<u64>,
    /// Bumped by `set_reachable(false)`: every connection is closed.
    pub close_tx: watch::Sender<u64>,
    /// (requests left to fail, their status code)
    pub fault: Mutex<(usize, u16)>,
    pub requests: Mutex<Vec<Request>>,
    /// Open watches: id -> the `drop_tx` generation they started in.
    pub watches: Mutex<HashMap<u64, u64>>,
    pub next_watch: AtomicU64,
    pub connections: AtomicUsize,
}

/// Locks, ignoring poisoning: a panicked holder leaves plain data behind.
pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Shared {
    /// Takes one failure off `fail_next`'s budget.
    pub fn take_fault(&self) -> Option<u16> {
        let mut fault = lock(&self.fault);
        if fault.0 == 0 {
            return None;
        }
        fault.0 -= 1;
        Some(fault.1)
    }

    pub fn notify(&self, rv: u64) {
        self.rv_tx.send_replace(rv);
    }
}

/// The accept loop of the moment (none while unreachable).
struct Listening {
    stop: oneshot::Sender<()>,
    stopped: mpsc::Receiver<()>,
}

/// A running fake API server; dropping it stops the server.
pub struct FakeApi {
    shared: Arc<Shared>,
    addr: SocketAddr,
    runtime: Option<tokio::runtime::Runtime>,
    listening: Mutex<Option<Listening>>,
}

impl FakeApi {
    /// Starts a server on `127.0.0.1` at a free port.
    pub fn start() -> io::Result<FakeApi> {
        FakeApi::start_with(Options::default())
    }

    pub fn start_on(addr: SocketAddr) -> io::Result<FakeApi> {
        FakeApi::start_with(Options { addr, ..Options::default() })
    }

    pub fn start_with(opts: Options) -> io::Result<FakeApi> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(opts.worker_threads.max(1))
            .thread_name("ferry-fake-api")
            .enable_all()
            .build()?;
        let listener = StdListener::bind(opts.addr)?;
        let addr = listener.local_addr()?;
        let seed = {
            use std::hash::{BuildHasher, Hasher};
            let mut h = std::collections::hash_map::RandomState::new().build_hasher();
            h.write_u16(addr.port());
            h.finish()
        };
        let shared = Arc::new(Shared {
            store: Mutex::new(Store::new(opts.history_limit, opts.continue_ttl, seed)),
            opts,
            rv_tx: watch::Sender::new(0),
            stall_tx: watch::Sender::new(false),
            drop_tx: watch::Sender::new(0),
            close_tx: watch::Sender::new(0),
            fault: Mutex::new((0, 500)),
            requests: Mutex::new(Vec::new()),
            watches: Mutex::new(HashMap::new()),
            next_watch: AtomicU64::new(1),
            connections: AtomicUsize::new(0),
        });
        let api = FakeApi { shared, addr, runtime: Some(runtime), listening: Mutex::new(None) };
        api.listen(listener)?;
        Ok(api)
    }

    fn runtime(&self) -> &tokio::runtime::Runtime {
        self.runtime.as_ref().expect("the runtime lives until drop")
    }

    fn listen(&self, listener: StdListener) -> io::Result<()> {
        listener.set_nonblocking(true)?;
        let _entered = self.runtime().enter();
        let listener = tokio::net::TcpListener::from_std(listener)?;
        let (stop, stop_rx) = oneshot::channel();
        let (stopped_tx, stopped) = mpsc::channel();
        self.runtime().spawn(server::accept_loop(listener, self.shared.clone(), stop_rx, stopped_tx));
        *lock(&self.listening) = Some(Listening { stop, stopped });
        Ok(())
    }

    /// Binds the server's address again, on one of the server's own
    /// threads: they were made by the thread that started the server, so
    /// they are in its network namespace even if the caller is not.
    fn bind_again(&self) -> io::Result<StdListener> {
        let (tx, rx) = mpsc::channel();
        let addr = self.addr;
        self.runtime().spawn(async move {
            // The port was ours a moment ago; a just-closed connection's
            // TIME_WAIT does not block the bind (std sets SO_REUSEADDR), but
            // retry briefly in case the old socket is still being torn down.
            let deadline = Instant::now() + Duration::from_secs(5);
            let bound = loop {
                match StdListener::bind(addr) {
                    Err(e) if e.kind() == io::ErrorKind::AddrInUse && Instant::now() < deadline => {
                        tokio::time::sleep(Duration::from_millis(20)).await;
                    }
                    result => break result,
                }
            };
            let _ = tx.send(bound);
        });
        rx.recv_timeout(Duration::from_secs(10))
            .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "the server's runtime did not answer"))?
    }

    /// `http://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Writes a kubeconfig whose current context points at this server with
    /// a dummy bearer token (the server accepts any credentials).
    pub fn write_kubeconfig(&self, path: &Path) -> io::Result<()> {
        let text = format!(
            "apiVersion: v1\n\
             kind: Config\n\
             clusters:\n\
             - name: ferry-fake\n  cluster:\n    server: {url}\n\
             users:\n\
             - name: ferry-fake\n  user:\n    token: ferry-fake-token\n\
             contexts:\n\
             - name: ferry-fake\n  context:\n    cluster: ferry-fake\n    user: ferry-fake\n    namespace: default\n\
             current-context: ferry-fake\n\
             preferences: {{}}\n",
            url = self.url()
        );
        std::fs::write(path, text)
    }

    /// Creates or replaces the object named by its `apiVersion`, `kind`,
    /// namespace (`default` if unset, for namespaced kinds) and name; emits
    /// ADDED or MODIFIED and returns the new resourceVersion. Unlike the
    /// real server, replacing with identical content still writes (and
    /// emits MODIFIED), so tests can force an event.
    ///
    /// Panics on an object the server cannot store (unknown kind, no name):
    /// that is a bug in the test that wrote it.
    pub fn apply(&self, obj: Value) -> u64 {
        let rv = {
            let mut store = lock(&self.shared.store);
            match store.write(obj, WriteMode::Apply) {
                Ok((obj, _)) => obj.rv,
                Err(e) => panic!("FakeApi::apply: {}", e.message),
            }
        };
        self.shared.notify(rv);
        rv
    }

    /// Applies each document of a multi-document YAML stream (empty
    /// documents skipped; a `kind: List` applies its items).
    ///
    /// Panics on text that is not YAML, as [`FakeApi::apply`] does on bad
    /// objects.
    pub fn apply_yaml(&self, text: &str) -> Vec<u64> {
        use serde::Deserialize;
        let mut rvs = Vec::new();
        for doc in serde_yaml::Deserializer::from_str(text) {
            let value = Value::deserialize(doc).unwrap_or_else(|e| panic!("FakeApi::apply_yaml: {e}"));
            match value {
                Value::Null => {}
                Value::Object(ref m) if m.get("kind").and_then(Value::as_str) == Some("List") => {
                    for item in m.get("items").and_then(Value::as_array).into_iter().flatten() {
                        rvs.push(self.apply(item.clone()));
                    }
                }
                value => rvs.push(self.apply(value)),
            }
        }
        rvs
    }

    /// Applies many objects at once: one lock and one notification per
    /// few thousand objects (200,000 objects load in about a second).
    pub fn apply_many(&self, objs: impl IntoIterator<Item = Value>) {
        let mut objs = objs.into_iter().peekable();
        while objs.peek().is_some() {
            let rv = {
                let mut store = lock(&self.shared.store);
                for obj in objs.by_ref().take(4096) {
                    if let Err(e) = store.write(obj, WriteMode::Apply) {
                        panic!("FakeApi::apply_many: {}", e.message);
                    }
                }
                store.rv
            };
            self.shared.notify(rv);
        }
    }

    /// Deletes an object; `kind` is a kind (`Service`) or a plural
    /// (`services`), `namespace` None for cluster-scoped kinds (and
    /// `default` assumed for namespaced ones). Emits DELETED with the last
    /// state at a new resourceVersion; false if there was no such object.
    pub fn delete(&self, kind: &str, namespace: Option<&str>, name: &str) -> bool {
        let ty = resource::by_kind_name(kind).unwrap_or_else(|| panic!("FakeApi::delete: unknown kind {kind:?}"));
        let namespace = resource::TYPES[ty].namespaced.then(|| namespace.unwrap_or("default"));
        let key = object::key_of(namespace, name);
        let rv = {
            let mut store = lock(&self.shared.store);
            match store.delete(ty, &key) {
                Some(gone) => gone.rv,
                None => return false,
            }
        };
        self.shared.notify(rv);
        true
    }

    /// The stored object, as a client would get it.
    pub fn get(&self, kind: &str, namespace: Option<&str>, name: &str) -> Option<Value> {
        let ty = resource::by_kind_name(kind)?;
        let namespace = resource::TYPES[ty].namespaced.then(|| namespace.unwrap_or("default"));
        let obj = lock(&self.shared.store).get(ty, &object::key_of(namespace, name))?;
        Some(obj.to_value())
    }

    /// The resourceVersion of the latest write.
    pub fn resource_version(&self) -> u64 {
        lock(&self.shared.store).rv
    }

    /// Ends every open watch abruptly: the connection is closed mid-stream
    /// with no ERROR event and no final chunk. Returns once they are gone
    /// (at most a second or two); later watches are not affected.
    pub fn drop_watches(&self) {
        let mut generation = 0;
        self.shared.drop_tx.send_modify(|g| {
            *g += 1;
            generation = *g;
        });
        wait_until(Duration::from_secs(2), || lock(&self.shared.watches).values().all(|&g| g >= generation));
    }

    /// The next `n` requests (any path) are answered with this HTTP status
    /// and a `Status` body; 429 and 503 carry `Retry-After: 1`.
    pub fn fail_next(&self, n: usize, code: u16) {
        *lock(&self.shared.fault) = (n, code);
    }

    /// While stalled, watch streams (open and new) deliver nothing, not even
    /// bookmarks, but stay open; un-stalling delivers the backlog.
    pub fn stall_watches(&self, stalled: bool) {
        self.shared.stall_tx.send_replace(stalled);
    }

    /// Forgets all history up to now: a watch from an older resourceVersion
    /// gets a 410 Expired ERROR event, an older continue token 410 Gone.
    pub fn compact(&self) {
        lock(&self.shared.store).compact();
    }

    /// Down: stops listening and closes every connection, so clients get
    /// "connection refused"; returns once the port is closed. Up: listens
    /// again on the same address (in the network namespace the server was
    /// started in, whichever thread calls this).
    pub fn set_reachable(&self, up: bool) {
        if up {
            if lock(&self.listening).is_some() {
                return;
            }
            let listener =
                self.bind_again().unwrap_or_else(|e| panic!("FakeApi::set_reachable(true): bind {}: {e}", self.addr));
            self.listen(listener).unwrap_or_else(|e| panic!("FakeApi::set_reachable(true): {e}"));
        } else {
            if let Some(listening) = lock(&self.listening).take() {
                let _ = listening.stop.send(());
                let _ = listening.stopped.recv_timeout(Duration::from_secs(5));
            }
            self.shared.close_tx.send_modify(|g| *g += 1);
            wait_until(Duration::from_secs(2), || self.shared.connections.load(Ordering::SeqCst) == 0);
        }
    }

    /// Every request answered so far, in order.
    pub fn requests(&self) -> Vec<Request> {
        lock(&self.shared.requests).clone()
    }

    /// Watch streams open now.
    pub fn open_watches(&self) -> usize {
        lock(&self.shared.watches).len()
    }
}

impl Drop for FakeApi {
    fn drop(&mut self) {
        self.shared.close_tx.send_modify(|g| *g += 1);
        if let Some(runtime) = self.runtime.take() {
            // Safe inside another runtime too, unlike a blocking shutdown.
            runtime.shutdown_background();
        }
    }
}

fn wait_until(limit: Duration, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while !done() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(1));
    }
}

#[cfg(test)]
mod tests {
    /// Tests share one server between threads (`Arc<FakeApi>`).
    #[test]
    fn the_handle_is_send_and_sync() {
        fn send_sync<T: Send + Sync>() {}
        send_sync::<super::FakeApi>();
    }
}
