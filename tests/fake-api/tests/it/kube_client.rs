//! kube-rs (kube 5, kube-runtime's watcher) against the fake, unchanged:
//! the client is built from a URL or the written kubeconfig, the watcher
//! from `watcher::Config` as the agent builds it.

use std::collections::BTreeSet;
use std::time::Duration;

use ferry_fake_api::{FakeApi, Options};
use futures::stream::BoxStream;
use futures::StreamExt;
use k8s_openapi::api::core::v1::{Node, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::api::{ListParams, PostParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::runtime::utils::Backoff;
use kube::runtime::watcher::{self, Event};
use kube::runtime::WatchStreamExt;
use kube::{Api, Client, Config, ResourceExt};

use crate::{endpoint_slice, node, service, STEP};

/// A watcher driven by its own task (so it runs while the test waits on
/// something else), its events forwarded here.
type Events = tokio::sync::mpsc::UnboundedReceiver<Result<Event<Service>, watcher::Error>>;

fn drive(mut stream: BoxStream<'static, Result<Event<Service>, watcher::Error>>) -> Events {
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Some(event) = stream.next().await {
            if tx.send(event).is_err() {
                return;
            }
        }
    });
    rx
}

fn client(api: &FakeApi) -> Client {
    Client::try_from(Config::new(api.url().parse().expect("a URL"))).expect("a client")
}

/// A short fixed backoff, so recovery tests take milliseconds; the
/// default backoff (800 ms and up) has its own test.
struct Quick;

impl Iterator for Quick {
    type Item = Duration;
    fn next(&mut self) -> Option<Duration> {
        Some(Duration::from_millis(20))
    }
}

impl Backoff for Quick {
    fn reset(&mut self) {}
}

fn services(client: Client, config: watcher::Config) -> Events {
    drive(watcher::watcher(Api::<Service>::all(client), config).backoff(Quick).boxed())
}

async fn next(events: &mut Events) -> Result<Event<Service>, watcher::Error> {
    tokio::time::timeout(STEP, events.recv()).await.expect("a watcher event in time").expect("the watcher never ends")
}

/// Reads to the end of the next initial list: the names it listed, and the
/// errors seen before it started.
async fn next_listing(events: &mut Events) -> (BTreeSet<String>, Vec<watcher::Error>) {
    let mut errors = Vec::new();
    loop {
        match next(events).await {
            Ok(Event::Init) => break,
            Ok(other) => panic!("expected Init, got {other:?}"),
            Err(e) => errors.push(e),
        }
    }
    let mut names = BTreeSet::new();
    loop {
        match next(events).await {
            Ok(Event::InitApply(s)) => {
                names.insert(s.name_any());
            }
            Ok(Event::InitDone) => return (names, errors),
            Ok(Event::Init) => names.clear(), // a failed page restarts the list
            Ok(other) => panic!("expected InitApply or InitDone, got {other:?}"),
            Err(e) => errors.push(e),
        }
    }
}

/// The next event that is not an error.
async fn next_ok(events: &mut Events) -> Event<Service> {
    loop {
        if let Ok(event) = next(events).await {
            return event;
        }
    }
}

/// Retries `check` until it holds or `STEP` passes, without blocking the
/// test's runtime (STYLE.md principle 12).
async fn eventually(what: &str, mut check: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + STEP;
    while !check() {
        assert!(tokio::time::Instant::now() < deadline, "not within {STEP:?}: {what}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

fn set(names: &[&str]) -> BTreeSet<String> {
    names.iter().map(|n| n.to_string()).collect()
}

#[tokio::test]
async fn watcher_lists_in_pages_then_follows_changes() {
    let api = FakeApi::start().unwrap();
    for name in ["a", "b", "c", "d", "e"] {
        api.apply(service("default", name, 80));
    }
    api.apply(service("other", "x", 80));
    let mut events = services(client(&api), watcher::Config::default().page_size(2));
    let (names, errors) = next_listing(&mut events).await;
    assert!(errors.is_empty(), "{errors:?}");
    assert_eq!(names, set(&["a", "b", "c", "d", "e", "x"]));

    // Three pages of two, then a watch from the list's revision.
    let listed_at = api.resource_version();
    let log = api.requests();
    let lists: Vec<_> = log.iter().filter(|r| r.verb == "list").collect();
    assert_eq!(lists.len(), 3, "{lists:#?}");
    assert!(lists.iter().all(|r| r.param("limit").as_deref() == Some("2")));
    assert!(lists[0].param("continue").is_none() && lists[1].param("continue").is_some());
    assert!(lists.iter().all(|r| (r.api_group.as_str(), r.resource.as_str()) == ("", "services")));
    // The fake logs a request once it has answered it, a moment after the
    // watch is registered: wait for both.
    let watched = || api.requests().into_iter().find(|r| r.verb == "watch");
    eventually("the watch starts", || api.open_watches() == 1 && watched().is_some()).await;
    let watch = watched().expect("a watch");
    assert_eq!(watch.param("resourceVersion"), Some(listed_at.to_string()));
    assert_eq!(watch.param("allowWatchBookmarks").as_deref(), Some("true"));

    // Create, update, delete arrive in order as Apply, Apply, Delete.
    let rv = api.apply(service("default", "f", 80));
    match next(&mut events).await.unwrap() {
        Event::Apply(s) => {
            assert_eq!(s.name_any(), "f");
            assert_eq!(s.resource_version(), Some(rv.to_string()));
            assert!(s.uid().is_some() && s.creation_timestamp().is_some());
        }
        other => panic!("{other:?}"),
    }
    api.apply(service("default", "a", 8080));
    match next(&mut events).await.unwrap() {
        Event::Apply(s) => {
            assert_eq!(s.name_any(), "a");
            assert_eq!(s.spec.unwrap().ports.unwrap()[0].port, 8080);
        }
        other => panic!("{other:?}"),
    }
    assert!(api.delete("Service", Some("default"), "b"));
    match next(&mut events).await.unwrap() {
        Event::Delete(s) => {
            assert_eq!(s.name_any(), "b");
            // the last state, at the deletion's revision
            assert_eq!(s.resource_version(), Some(api.resource_version().to_string()));
        }
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn kubeconfig_client_lists_gets_and_creates() {
    let api = FakeApi::start().unwrap();
    api.apply(node("n1"));
    api.apply(endpoint_slice("default", "web-abc", "web"));
    let path = std::env::temp_dir().join(format!("ferry-fake-api-kubeconfig-{}", std::process::id()));
    api.write_kubeconfig(&path).unwrap();
    let kubeconfig = Kubeconfig::read_from(&path).unwrap();
    std::fs::remove_file(&path).unwrap();
    let config = Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default()).await.unwrap();
    assert_eq!(config.cluster_url.to_string().trim_end_matches('/'), api.url());
    let client = Client::try_from(config).unwrap();

    let version = client.apiserver_version().await.unwrap();
    assert_eq!((version.major.as_str(), version.minor.as_str()), ("1", "33"));
    let n1 = Api::<Node>::all(client.clone()).get("n1").await.unwrap();
    assert_eq!(n1.name_any(), "n1");
    let missing = Api::<Node>::all(client.clone()).get("n2").await.unwrap_err();
    assert!(matches!(&missing, kube::Error::Api(s) if s.code == 404 && s.reason == "NotFound"), "{missing:?}");
    let slices =
        Api::<EndpointSlice>::namespaced(client.clone(), "default").list(&ListParams::default()).await.unwrap();
    assert_eq!(slices.items.len(), 1);
    assert_eq!(slices.items[0].endpoints[0].addresses, vec!["10.0.0.1".to_string()]);

    // Writes over HTTP land in the same store.
    let svc: Service = serde_json::from_value(service("default", "posted", 80)).unwrap();
    let created =
        Api::<Service>::default_namespaced(client.clone()).create(&PostParams::default(), &svc).await.unwrap();
    assert_eq!(created.resource_version(), Some(api.resource_version().to_string()));
    assert!(api.get("Service", Some("default"), "posted").is_some());
    let again = Api::<Service>::default_namespaced(client).create(&PostParams::default(), &svc).await.unwrap_err();
    assert!(matches!(&again, kube::Error::Api(s) if s.is_already_exists()), "{again:?}");
}

#[tokio::test]
async fn compaction_and_a_dropped_watch_force_a_relist() {
    let api = FakeApi::start().unwrap();
    for name in ["a", "b", "c"] {
        api.apply(service("default", name, 80));
    }
    let mut events = services(client(&api), watcher::Config::default());
    assert_eq!(next_listing(&mut events).await.0, set(&["a", "b", "c"]));
    eventually("the watch starts", || api.open_watches() == 1).await;

    // Changes the open watch never delivers, then history is forgotten and
    // the watch cut: resuming from the old revision gets 410.
    api.stall_watches(true);
    api.delete("Service", None, "a");
    api.apply(service("default", "d", 80));
    api.compact();
    api.drop_watches();
    api.stall_watches(false);

    let (names, errors) = next_listing(&mut events).await;
    assert_eq!(names, set(&["b", "c", "d"]), "the relist no longer has a");
    assert!(
        errors.iter().any(|e| matches!(e, watcher::Error::WatchError(s) if s.code == 410 && s.reason == "Expired")),
        "{errors:?}"
    );
    // ... and it follows from the relist.
    api.apply(service("default", "e", 80));
    match next_ok(&mut events).await {
        Event::Apply(s) => assert_eq!(s.name_any(), "e"),
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn injected_failures_surface_then_the_default_backoff_recovers() {
    let api = FakeApi::start().unwrap();
    api.apply(service("default", "a", 80));

    // A plain call sees the Status.
    api.fail_next(1, 500);
    let services = Api::<Service>::all(client(&api));
    let err = services.list(&ListParams::default()).await.unwrap_err();
    assert!(matches!(&err, kube::Error::Api(s) if s.code == 500 && s.reason == "InternalError"), "{err:?}");
    assert_eq!(services.list(&ListParams::default()).await.unwrap().items.len(), 1);
    // kube retries 429, 503 and 504 itself, after the server's Retry-After.
    api.fail_next(1, 429);
    let started = std::time::Instant::now();
    assert_eq!(services.list(&ListParams::default()).await.unwrap().items.len(), 1);
    assert!(started.elapsed() >= Duration::from_millis(900), "Retry-After: 1 was honoured");
    let last: Vec<u16> = api.requests().iter().rev().take(2).map(|r| r.status).collect();
    assert_eq!(last, [200, 429]);

    // The watcher reports the failed list, backs off, lists again.
    api.fail_next(1, 500);
    let mut events = drive(watcher::watcher(services, watcher::Config::default()).default_backoff().boxed());
    let (names, errors) = next_listing(&mut events).await;
    assert_eq!(names, set(&["a"]));
    // (Init, the failed list's error, Init again, the listing.)
    assert!(
        matches!(errors.as_slice(), [watcher::Error::InitialListFailed(kube::Error::Api(s))] if s.code == 500),
        "{errors:?}"
    );
    let failures: Vec<_> = api.requests().into_iter().filter(|r| r.status == 500).collect();
    assert_eq!(failures.len(), 2);
    assert!(failures.iter().all(|r| r.verb == "list"));
}

#[tokio::test]
async fn an_unreachable_server_comes_back_on_the_same_port() {
    let api = FakeApi::start().unwrap();
    api.apply(service("default", "a", 80));
    let mut events = services(client(&api), watcher::Config::default());
    assert_eq!(next_listing(&mut events).await.0, set(&["a"]));
    eventually("the watch starts", || api.open_watches() == 1).await;

    api.set_reachable(false);
    assert!(std::net::TcpStream::connect(api.addr()).is_err(), "connection refused while down");
    assert_eq!(api.open_watches(), 0);
    // The watcher fails to reconnect while down.
    let mut failed = 0;
    while failed < 2 {
        match next(&mut events).await {
            Err(_) => failed += 1,
            Ok(other) => panic!("nothing to deliver while down: {other:?}"),
        }
    }
    api.apply(service("default", "b", 80));
    api.set_reachable(true);
    // It resumes from its last revision: the change made while down is
    // replayed, with no relist.
    match next_ok(&mut events).await {
        Event::Apply(s) => assert_eq!(s.name_any(), "b"),
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn watches_resume_from_the_last_bookmark() {
    let api =
        FakeApi::start_with(Options { bookmark_interval: Duration::from_millis(50), ..Options::default() }).unwrap();
    api.apply(service("default", "a", 80));
    let mut events = services(client(&api), watcher::Config::default());
    next_listing(&mut events).await;
    let listed_at = api.resource_version();
    // Writes the Service watch never shows, but its bookmarks carry.
    for i in 0..3 {
        api.apply(node(&format!("n{i}")));
    }
    let bumped = api.resource_version();
    assert!(bumped > listed_at);
    // Give a bookmark time to arrive (several intervals), then cut.
    tokio::time::sleep(Duration::from_millis(300)).await;
    api.drop_watches();
    eventually("a second watch", || api.requests().iter().filter(|r| r.verb == "watch").count() == 2).await;
    let watches: Vec<_> = api.requests().into_iter().filter(|r| r.verb == "watch").collect();
    assert_eq!(watches[0].param("resourceVersion"), Some(listed_at.to_string()));
    assert_eq!(watches[1].param("resourceVersion"), Some(bumped.to_string()));
}

#[tokio::test]
async fn streaming_list_and_selectors_through_kube() {
    let api = FakeApi::start().unwrap();
    api.apply(service("default", "web", 80));
    api.apply(service("default", "db", 80));
    let config = watcher::Config::default().streaming_lists().labels("app=web");
    let mut events = services(client(&api), config);
    assert_eq!(next_listing(&mut events).await.0, set(&["web"]));
    let watch = api.requests().into_iter().find(|r| r.verb == "watch").expect("a streaming list");
    assert_eq!(watch.param("sendInitialEvents").as_deref(), Some("true"));
    assert!(api.requests().iter().all(|r| r.verb != "list"));
    // Relabelling web out of the selection is a delete for this watcher.
    let mut moved = service("default", "web", 80);
    moved["metadata"]["labels"]["app"] = "other".into();
    api.apply(moved);
    match next(&mut events).await.unwrap() {
        Event::Delete(s) => assert_eq!(s.name_any(), "web"),
        other => panic!("{other:?}"),
    }
}
