//! The protocol on the wire, with a bare HTTP/1.1 client: what kube-rs
//! hides (continue tokens, ERROR events, bookmarks, Status bodies).

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use bytes::Bytes;
use ferry_fake_api::{generate, FakeApi, Options};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::header::{HeaderMap, ACCEPT, CONTENT_TYPE, HOST};
use hyper_util::rt::TokioIo;
use serde_json::{json, Value};

use crate::{endpoint_slice, node, service, STEP};

async fn send(
    addr: SocketAddr,
    method: &str,
    target: &str,
    headers: &[(&str, &str)],
    body: Option<Value>,
) -> hyper::Response<Incoming> {
    let stream = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let (mut sender, connection) =
        hyper::client::conn::http1::handshake(TokioIo::new(stream)).await.expect("handshake");
    tokio::spawn(async move {
        let _ = connection.await;
    });
    let mut req = hyper::Request::builder().method(method).uri(target).header(HOST, addr.to_string());
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let body = body.map_or_else(Bytes::new, |b| serde_json::to_vec(&b).unwrap().into());
    let req = req.body(Full::new(body)).unwrap();
    tokio::time::timeout(STEP, sender.send_request(req)).await.expect("response headers in time").expect("a response")
}

/// One whole request: status, headers, the body as JSON (or a string).
async fn call_with(
    addr: SocketAddr,
    method: &str,
    target: &str,
    headers: &[(&str, &str)],
    body: Option<Value>,
) -> (u16, HeaderMap, Value) {
    let response = send(addr, method, target, headers, body).await;
    let status = response.status().as_u16();
    let headers = response.headers().clone();
    let bytes = tokio::time::timeout(STEP, response.into_body().collect())
        .await
        .expect("the body in time")
        .expect("a body")
        .to_bytes();
    let value =
        serde_json::from_slice(&bytes).unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&bytes).into()));
    (status, headers, value)
}

async fn get(addr: SocketAddr, target: &str) -> (u16, Value) {
    let (status, _, body) = call_with(addr, "GET", target, &[], None).await;
    (status, body)
}

/// A watch response read line by line.
struct Watch {
    body: Incoming,
    buf: Vec<u8>,
}

/// What reading a watch gave.
#[derive(Debug)]
enum Read {
    Event(Value),
    /// The stream ended cleanly (final chunk).
    End,
    /// The connection broke mid-stream.
    Broken,
    /// Nothing within the wait.
    Quiet,
}

impl Watch {
    async fn open(addr: SocketAddr, target: &str) -> Watch {
        let response = send(addr, "GET", target, &[], None).await;
        assert_eq!(response.status(), 200, "{target}");
        Watch { body: response.into_body(), buf: Vec::new() }
    }

    async fn read(&mut self, wait: Duration) -> Read {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            if let Some(end) = self.buf.iter().position(|&b| b == b'\n') {
                let line: Vec<u8> = self.buf.drain(..=end).collect();
                return Read::Event(serde_json::from_slice(&line).expect("each line is one JSON event"));
            }
            match tokio::time::timeout_at(deadline, self.body.frame()).await {
                Err(_) => return Read::Quiet,
                Ok(None) => {
                    assert!(self.buf.is_empty(), "a partial line at the end");
                    return Read::End;
                }
                Ok(Some(Err(_))) => return Read::Broken,
                Ok(Some(Ok(frame))) => {
                    if let Ok(data) = frame.into_data() {
                        self.buf.extend_from_slice(&data);
                    }
                }
            }
        }
    }

    /// The next event, which must come within `STEP`.
    async fn event(&mut self) -> Value {
        match self.read(STEP).await {
            Read::Event(e) => e,
            other => panic!("expected an event, got {other:?}"),
        }
    }

    /// The next event that is not a BOOKMARK.
    async fn change(&mut self) -> Value {
        loop {
            let event = self.event().await;
            if event["type"] != "BOOKMARK" {
                return event;
            }
        }
    }
}

fn names(list: &Value) -> Vec<String> {
    list["items"]
        .as_array()
        .expect("items")
        .iter()
        .map(|i| i["metadata"]["name"].as_str().unwrap().to_string())
        .collect()
}

fn summary(event: &Value) -> (String, String) {
    (
        event["type"].as_str().unwrap().to_string(),
        event["object"]["metadata"]["name"].as_str().unwrap_or("").to_string(),
    )
}

fn rv_of(obj: &Value) -> u64 {
    obj["metadata"]["resourceVersion"].as_str().unwrap().parse().unwrap()
}

fn encode(s: &str) -> String {
    form_urlencoded::byte_serialize(s.as_bytes()).collect()
}

#[tokio::test]
async fn pages_come_from_one_consistent_snapshot() {
    let api = FakeApi::start().unwrap();
    for name in ["a", "b", "c", "d", "e"] {
        api.apply(service("ns", name, 80));
    }
    let addr = api.addr();
    let (status, page1) = get(addr, "/api/v1/namespaces/ns/services?limit=2").await;
    assert_eq!(status, 200);
    assert_eq!((page1["kind"].as_str(), page1["apiVersion"].as_str()), (Some("ServiceList"), Some("v1")));
    assert_eq!(names(&page1), ["a", "b"]);
    assert_eq!(page1["metadata"]["remainingItemCount"], 3);
    let listed_rv = page1["metadata"]["resourceVersion"].as_str().unwrap().to_string();
    assert_eq!(listed_rv, "5");
    // Items leave out kind and apiVersion, as the real server's do.
    assert!(page1["items"][0].get("kind").is_none());
    let c_before = api.get("Service", Some("ns"), "c").unwrap();

    // Writes between pages: a new object sorting into the rest, a change
    // and a delete of objects still to come.
    api.apply(service("ns", "bb", 80));
    api.apply(service("ns", "c", 9999));
    api.delete("Service", Some("ns"), "d");

    let token = page1["metadata"]["continue"].as_str().unwrap();
    let (status, page2) =
        get(addr, &format!("/api/v1/namespaces/ns/services?limit=2&continue={}", encode(token))).await;
    assert_eq!(status, 200);
    assert_eq!(names(&page2), ["c", "d"], "the snapshot's objects, not bb");
    assert_eq!(page2["items"][0]["metadata"]["resourceVersion"], c_before["metadata"]["resourceVersion"]);
    assert_eq!(page2["metadata"]["resourceVersion"], listed_rv.as_str());
    let token = page2["metadata"]["continue"].as_str().unwrap();
    let (_, page3) = get(addr, &format!("/api/v1/namespaces/ns/services?limit=2&continue={}", encode(token))).await;
    assert_eq!(names(&page3), ["e"]);
    assert!(page3["metadata"].get("continue").is_none());

    // A new list sees the writes.
    let (_, now) = get(addr, "/api/v1/namespaces/ns/services").await;
    assert_eq!(names(&now), ["a", "b", "bb", "c", "e"]);
    assert_eq!(now["metadata"]["resourceVersion"], "8");
}

#[tokio::test]
async fn a_continue_token_expires_with_compaction() {
    let api = FakeApi::start().unwrap();
    for name in ["a", "b", "c"] {
        api.apply(service("ns", name, 80));
    }
    let addr = api.addr();
    let (_, page1) = get(addr, "/api/v1/services?limit=1").await;
    let token = encode(page1["metadata"]["continue"].as_str().unwrap());
    api.apply(service("ns", "d", 80));
    api.compact();
    let (status, body) = get(addr, &format!("/api/v1/services?limit=1&continue={token}")).await;
    assert_eq!(status, 410);
    assert_eq!(body["kind"], "Status");
    assert_eq!(body["reason"], "Expired");
    assert_eq!(body["code"], 410);
    assert!(body["message"].as_str().unwrap().contains("continue parameter is too old"), "{body}");
    // A token that is not one is a bad request.
    let (status, _) = get(addr, "/api/v1/services?limit=1&continue=bm9wZQ==").await;
    assert_eq!(status, 400);
}

#[tokio::test]
async fn lists_at_exact_and_future_revisions() {
    let api = FakeApi::start().unwrap();
    let addr = api.addr();
    let first = api.apply(service("ns", "a", 80));
    api.apply(service("ns", "a", 81));
    api.apply(service("ns", "b", 80));
    let (status, then) =
        get(addr, &format!("/api/v1/services?resourceVersion={first}&resourceVersionMatch=Exact")).await;
    assert_eq!(status, 200);
    assert_eq!(names(&then), ["a"]);
    assert_eq!(then["items"][0]["spec"]["ports"][0]["port"], 80);
    assert_eq!(then["metadata"]["resourceVersion"], first.to_string());

    // NotOlderThan a revision not yet written waits for it.
    let future = api.resource_version() + 1;
    let request = tokio::spawn(async move {
        get(addr, &format!("/api/v1/services?resourceVersion={future}&resourceVersionMatch=NotOlderThan")).await
    });
    tokio::time::sleep(Duration::from_millis(100)).await;
    api.apply(service("ns", "c", 80));
    let (status, list) = tokio::time::timeout(STEP, request).await.unwrap().unwrap();
    assert_eq!(status, 200);
    assert_eq!(names(&list), ["a", "b", "c"]);

    api.compact();
    let (status, body) =
        get(addr, &format!("/api/v1/services?resourceVersion={first}&resourceVersionMatch=Exact")).await;
    assert_eq!((status, body["reason"].as_str()), (410, Some("Expired")));
}

#[tokio::test]
async fn watch_replays_history_then_sends_bookmarks() {
    let api =
        FakeApi::start_with(Options { bookmark_interval: Duration::from_millis(100), ..Options::default() }).unwrap();
    let from = api.apply(service("ns", "a", 80));
    api.apply(service("ns", "b", 80));
    api.apply(service("ns", "a", 81));
    api.delete("Service", Some("ns"), "b");
    api.apply(node("n1")); // another kind: not in this watch
    let mut watch = Watch::open(
        api.addr(),
        &format!("/api/v1/services?watch=true&allowWatchBookmarks=true&resourceVersion={from}"),
    )
    .await;
    let mut seen = Vec::new();
    for _ in 0..3 {
        let event = watch.event().await;
        assert_eq!(event["object"]["kind"], "Service", "events carry kind and apiVersion");
        seen.push(summary(&event));
    }
    let want = [("ADDED", "b"), ("MODIFIED", "a"), ("DELETED", "b")];
    assert_eq!(seen, want.map(|(t, n)| (t.to_string(), n.to_string())));

    // A bookmark: the kind, and only the revision it has caught up to.
    let started = Instant::now();
    let bookmark = watch.event().await;
    assert_eq!(bookmark["type"], "BOOKMARK");
    assert!(started.elapsed() < Duration::from_secs(1));
    assert_eq!(
        bookmark["object"],
        json!({"kind": "Service", "apiVersion": "v1", "metadata": {"resourceVersion": api.resource_version().to_string()}})
    );
    // And it follows live.
    api.apply(service("ns", "c", 80));
    assert_eq!(summary(&watch.change().await), ("ADDED".into(), "c".into()));
    assert_eq!(api.open_watches(), 1);
}

#[tokio::test]
async fn watch_from_a_compacted_revision_is_one_error_event() {
    let api = FakeApi::start().unwrap();
    let old = api.apply(service("ns", "a", 80));
    api.apply(service("ns", "a", 81));
    api.compact();
    let mut watch = Watch::open(api.addr(), &format!("/api/v1/services?watch=1&resourceVersion={old}")).await;
    let event = watch.event().await;
    assert_eq!(event["type"], "ERROR");
    let status = &event["object"];
    assert_eq!(
        (status["kind"].as_str(), status["code"].as_u64(), status["reason"].as_str()),
        (Some("Status"), Some(410), Some("Expired"))
    );
    assert!(status["message"].as_str().unwrap().starts_with("too old resource version"));
    assert!(matches!(watch.read(STEP).await, Read::End));
    // From the compaction point on is fine.
    let now = api.resource_version();
    let mut watch = Watch::open(api.addr(), &format!("/api/v1/services?watch=1&resourceVersion={now}")).await;
    api.apply(service("ns", "b", 80));
    assert_eq!(summary(&watch.event().await), ("ADDED".into(), "b".into()));
}

#[tokio::test]
async fn watch_without_a_revision_starts_with_the_current_state() {
    let api = FakeApi::start().unwrap();
    api.apply(service("ns", "a", 80));
    api.apply(service("ns", "b", 80));
    api.apply(service("other", "c", 80));
    let addr = api.addr();
    for rv in ["", "&resourceVersion=0"] {
        let mut watch = Watch::open(addr, &format!("/api/v1/namespaces/ns/services?watch=true{rv}")).await;
        let first = [summary(&watch.event().await), summary(&watch.event().await)];
        assert_eq!(first, [("ADDED".into(), "a".into()), ("ADDED".into(), "b".into())], "{rv:?}");
        assert!(matches!(watch.read(Duration::from_millis(50)).await, Read::Quiet));
    }

    // A streaming list: the state, then a bookmark marking its end.
    let mut watch = Watch::open(
        addr,
        "/api/v1/services?watch=true&sendInitialEvents=true&resourceVersionMatch=NotOlderThan&allowWatchBookmarks=true&resourceVersion=",
    )
    .await;
    for name in ["a", "b", "c"] {
        assert_eq!(summary(&watch.event().await), ("ADDED".into(), name.into()));
    }
    let end = watch.event().await;
    assert_eq!(end["type"], "BOOKMARK");
    assert_eq!(end["object"]["metadata"]["annotations"]["k8s.io/initial-events-end"], "true");
    assert_eq!(end["object"]["metadata"]["resourceVersion"], api.resource_version().to_string());

    // sendInitialEvents=false: no state, just what comes next.
    let mut watch =
        Watch::open(addr, "/api/v1/services?watch=true&sendInitialEvents=false&resourceVersionMatch=NotOlderThan")
            .await;
    api.delete("Service", Some("ns"), "a");
    assert_eq!(summary(&watch.event().await), ("DELETED".into(), "a".into()));

    // Parameter combinations the real server refuses.
    for bad in [
        "resourceVersionMatch=NotOlderThan",
        "sendInitialEvents=true&allowWatchBookmarks=true",
        "sendInitialEvents=true&resourceVersionMatch=NotOlderThan",
    ] {
        let (status, body) = get(addr, &format!("/api/v1/services?watch=true&{bad}")).await;
        assert_eq!((status, body["reason"].as_str()), (422, Some("Invalid")), "{bad}");
    }
}

#[tokio::test]
async fn selectors_filter_lists_and_watches() {
    let api = FakeApi::start().unwrap();
    api.apply(service("ns", "web", 80));
    api.apply(service("ns", "db", 80));
    let addr = api.addr();
    let (_, list) = get(addr, &format!("/api/v1/services?labelSelector={}", encode("app in (web,cache)"))).await;
    assert_eq!(names(&list), ["web"]);
    let (_, list) = get(addr, "/api/v1/services?fieldSelector=metadata.name%3Ddb").await;
    assert_eq!(names(&list), ["db"]);
    let (_, list) = get(addr, &format!("/api/v1/services?labelSelector={}&limit=1", encode("app!=nothing"))).await;
    assert_eq!(names(&list), ["db"]);
    assert!(list["metadata"]["continue"].is_string());
    assert!(list["metadata"].get("remainingItemCount").is_none(), "not counted under a selector");

    let from = api.resource_version();
    let mut watch =
        Watch::open(addr, &format!("/api/v1/services?watch=1&resourceVersion={from}&labelSelector=app%3Dweb")).await;
    api.apply(service("ns", "db", 81)); // not selected
    let mut web = service("ns", "web", 80);
    web["metadata"]["labels"]["app"] = "gone".into();
    api.apply(web.clone()); // leaves the selection: DELETED, at the new revision
    let event = watch.event().await;
    assert_eq!(summary(&event), ("DELETED".into(), "web".into()));
    assert_eq!(rv_of(&event["object"]), api.resource_version());
    assert_eq!(event["object"]["metadata"]["labels"]["app"], "web", "the last selected state");
    web["metadata"]["labels"]["app"] = "web".into();
    api.apply(web); // back in: ADDED
    assert_eq!(summary(&watch.event().await), ("ADDED".into(), "web".into()));

    let (status, body) = get(addr, "/api/v1/services?fieldSelector=spec.clusterIP%3D1.2.3.4").await;
    assert_eq!((status, body["reason"].as_str()), (400, Some("BadRequest")));
}

#[tokio::test]
async fn stalled_watches_deliver_the_backlog_on_resume() {
    let api =
        FakeApi::start_with(Options { bookmark_interval: Duration::from_millis(20), ..Options::default() }).unwrap();
    let now = api.resource_version();
    let mut watch =
        Watch::open(api.addr(), &format!("/api/v1/services?watch=1&allowWatchBookmarks=true&resourceVersion={now}"))
            .await;
    api.stall_watches(true);
    // Let a bookmark already on its way arrive, then there must be silence.
    while let Read::Event(e) = watch.read(Duration::from_millis(100)).await {
        assert_eq!(e["type"], "BOOKMARK");
    }
    api.apply(service("ns", "a", 80));
    api.apply(service("ns", "b", 80));
    assert!(matches!(watch.read(Duration::from_millis(200)).await, Read::Quiet), "no events, no bookmarks");
    assert_eq!(api.open_watches(), 1, "the connection stays open");
    api.stall_watches(false);
    assert_eq!(summary(&watch.change().await), ("ADDED".into(), "a".into()));
    assert_eq!(summary(&watch.change().await), ("ADDED".into(), "b".into()));
}

#[tokio::test]
async fn dropped_watches_break_and_timeouts_end_cleanly() {
    let api = FakeApi::start().unwrap();
    let addr = api.addr();
    let mut watch = Watch::open(addr, "/api/v1/services?watch=1&resourceVersion=0").await;
    assert_eq!(api.open_watches(), 1);
    api.drop_watches();
    assert_eq!(api.open_watches(), 0);
    assert!(matches!(watch.read(STEP).await, Read::Broken), "cut mid-stream, no final chunk");

    let started = Instant::now();
    let mut watch = Watch::open(addr, "/api/v1/services?watch=1&resourceVersion=0&timeoutSeconds=1").await;
    assert!(matches!(watch.read(STEP).await, Read::End));
    let took = started.elapsed();
    assert!(took >= Duration::from_millis(900) && took < Duration::from_secs(3), "{took:?}");

    // A client that goes away closes its watch, events or not.
    let watch = Watch::open(addr, "/api/v1/services?watch=1&resourceVersion=0").await;
    assert_eq!(api.open_watches(), 1);
    drop(watch);
    let deadline = Instant::now() + STEP;
    while api.open_watches() > 0 {
        assert!(Instant::now() < deadline, "the server noticed the client leave");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

#[tokio::test]
async fn failures_are_status_objects() {
    let api = FakeApi::start().unwrap();
    let addr = api.addr();
    let rows: &[(&str, u16, &str)] = &[
        ("/nope", 404, "NotFound"),
        ("/apis/apps/v1/deployments", 404, "NotFound"),
        // a namespaced kind has no cluster-scoped object path
        ("/api/v1/services/web", 404, "NotFound"),
        ("/api/v1/namespaces/ns/services/missing", 404, "NotFound"),
        ("/api/v1/services?labelSelector=a%20b", 400, "BadRequest"),
        ("/api/v1/services?resourceVersionMatch=Exact", 422, "Invalid"),
        ("/api/v1/services?limit=x", 400, "BadRequest"),
    ];
    for (target, code, reason) in rows {
        let (status, body) = get(addr, target).await;
        assert_eq!(status, *code, "{target}");
        assert_eq!(
            (body["kind"].as_str(), body["status"].as_str(), body["reason"].as_str(), body["code"].as_u64()),
            (Some("Status"), Some("Failure"), Some(*reason), Some(u64::from(*code))),
            "{target}: {body}"
        );
    }
    let (_, body) = get(addr, "/api/v1/namespaces/ns/services/missing").await;
    assert_eq!(body["message"], "services \"missing\" not found");

    api.fail_next(2, 429);
    for _ in 0..2 {
        let (status, headers, body) = call_with(addr, "GET", "/api/v1/nodes", &[], None).await;
        assert_eq!((status, body["reason"].as_str()), (429, Some("TooManyRequests")));
        assert_eq!(headers.get("retry-after").unwrap(), "1");
    }
    assert_eq!(get(addr, "/api/v1/nodes").await.0, 200);
    let statuses: Vec<u16> = api.requests().iter().rev().take(3).map(|r| r.status).collect();
    assert_eq!(statuses, [200, 429, 429]);
}

#[tokio::test]
async fn writes_over_http_and_their_verbs() {
    let api = FakeApi::start().unwrap();
    let addr = api.addr();
    let base = "/api/v1/namespaces/ns/services";
    let json_body = [(CONTENT_TYPE.as_str(), "application/json")];
    let (status, _, created) = call_with(addr, "POST", base, &json_body, Some(service("", "web", 80))).await;
    assert_eq!(status, 201);
    assert_eq!(created["metadata"]["namespace"], "ns", "the path's namespace");
    assert!(created["metadata"]["uid"].is_string());
    let (status, _, body) = call_with(addr, "POST", base, &json_body, Some(service("ns", "web", 80))).await;
    assert_eq!((status, body["reason"].as_str()), (409, Some("AlreadyExists")));
    let (status, _, _) = call_with(addr, "POST", base, &json_body, Some(service("elsewhere", "x", 80))).await;
    assert_eq!(status, 400, "a body in another namespace");

    // PUT with a stale resourceVersion conflicts; with the current one, replaces.
    let mut update = created.clone();
    update["spec"]["ports"][0]["port"] = 81.into();
    update["metadata"]["resourceVersion"] = "999".into();
    let (status, _, body) = call_with(addr, "PUT", &format!("{base}/web"), &json_body, Some(update.clone())).await;
    assert_eq!((status, body["reason"].as_str()), (409, Some("Conflict")));
    update["metadata"]["resourceVersion"] = created["metadata"]["resourceVersion"].clone();
    let (status, _, updated) = call_with(addr, "PUT", &format!("{base}/web"), &json_body, Some(update)).await;
    assert_eq!(status, 200);
    assert_eq!(updated["metadata"]["uid"], created["metadata"]["uid"], "an update keeps the uid");
    assert_eq!(updated["metadata"]["creationTimestamp"], created["metadata"]["creationTimestamp"]);

    let merge = [(CONTENT_TYPE.as_str(), "application/merge-patch+json")];
    let patch = json!({"metadata": {"labels": {"tier": "front"}}, "spec": {"clusterIP": "10.96.0.99"}});
    let (status, _, patched) = call_with(addr, "PATCH", &format!("{base}/web"), &merge, Some(patch)).await;
    assert_eq!(status, 200);
    assert_eq!(patched["metadata"]["labels"], json!({"app": "web", "tier": "front"}));
    assert_eq!(patched["spec"]["ports"][0]["port"], 81);
    assert_eq!(patched["spec"]["clusterIP"], "10.96.0.99");
    let json_patch = [(CONTENT_TYPE.as_str(), "application/json-patch+json")];
    let (status, _, _) = call_with(addr, "PATCH", &format!("{base}/web"), &json_patch, Some(json!([]))).await;
    assert_eq!(status, 415);

    let (status, _, body) = call_with(addr, "DELETE", &format!("{base}/web"), &[], None).await;
    assert_eq!((status, body["status"].as_str()), (200, Some("Success")));
    let (status, _, _) = call_with(addr, "DELETE", &format!("{base}/web"), &[], None).await;
    assert_eq!(status, 404);
    api.apply(service("ns", "x", 80));
    api.apply(service("ns", "y", 80));
    let (status, _, gone) = call_with(addr, "DELETE", &format!("{base}?labelSelector=app%3Dx"), &[], None).await;
    assert_eq!(status, 200);
    assert_eq!(names(&gone), ["x"]);
    assert!(api.get("Service", Some("ns"), "y").is_some());

    let verbs: Vec<String> = api.requests().into_iter().map(|r| r.verb).collect();
    let want =
        ["create", "create", "create", "update", "update", "patch", "patch", "delete", "delete", "deletecollection"];
    assert_eq!(verbs, want);
    let last = api.requests().pop().unwrap();
    assert_eq!(
        (last.resource.as_str(), last.namespace.as_deref(), last.name.as_deref()),
        ("services", Some("ns"), None)
    );
}

#[tokio::test]
async fn discovery_and_metadata_only_views() {
    let api = FakeApi::start().unwrap();
    api.apply(endpoint_slice("ns", "web-1", "web"));
    let addr = api.addr();
    let (_, version) = get(addr, "/version").await;
    assert_eq!(version["gitVersion"], "v1.33.0-ferry-fake");
    let (_, core) = get(addr, "/api").await;
    assert_eq!(core["versions"], json!(["v1"]));
    let (_, groups) = get(addr, "/apis").await;
    assert_eq!(groups["groups"][0]["name"], "discovery.k8s.io");
    let (_, resources) = get(addr, "/apis/discovery.k8s.io/v1").await;
    assert_eq!(resources["resources"][0]["name"], "endpointslices");
    let (_, core_resources) = get(addr, "/api/v1").await;
    let plurals: Vec<&str> =
        core_resources["resources"].as_array().unwrap().iter().map(|r| r["name"].as_str().unwrap()).collect();
    assert!(plurals.contains(&"services") && plurals.contains(&"nodes"), "{plurals:?}");

    let partial = [(ACCEPT.as_str(), "application/json;as=PartialObjectMetadataList;g=meta.k8s.io;v=v1")];
    let (status, _, list) = call_with(addr, "GET", "/apis/discovery.k8s.io/v1/endpointslices", &partial, None).await;
    assert_eq!(status, 200);
    assert_eq!(list["kind"], "PartialObjectMetadataList");
    assert_eq!(list["items"][0]["metadata"]["labels"]["kubernetes.io/service-name"], "web");
    assert!(list["items"][0].get("endpoints").is_none());
    let protobuf = [(ACCEPT.as_str(), "application/vnd.kubernetes.protobuf")];
    let (status, _, _) = call_with(addr, "GET", "/apis/discovery.k8s.io/v1/endpointslices", &protobuf, None).await;
    assert_eq!(status, 406);
}

#[tokio::test]
async fn bulk_load_and_list_of_many_objects() {
    // 100,000 of each in release builds (the benchmark's size); fewer in
    // debug builds, where serde is many times slower.
    let n: usize = if cfg!(debug_assertions) { 5_000 } else { 100_000 };
    let api = FakeApi::start().unwrap();
    let started = Instant::now();
    api.apply_many(generate::services(n, 100));
    api.apply_many(generate::endpoint_slices(n, n, 100));
    let loaded = started.elapsed();
    assert_eq!(api.resource_version(), 2 * n as u64);
    if !cfg!(debug_assertions) {
        assert!(loaded < Duration::from_secs(4), "loading {} objects took {loaded:?}", 2 * n);
    }

    let addr = api.addr();
    let (status, page) = get(addr, "/apis/discovery.k8s.io/v1/endpointslices?limit=500").await;
    assert_eq!(status, 200);
    assert_eq!(page["items"].as_array().unwrap().len(), 500);
    assert_eq!(page["metadata"]["remainingItemCount"], n - 500);
    let started = Instant::now();
    let response = send(addr, "GET", "/api/v1/services", &[], None).await;
    let bytes = response.into_body().collect().await.unwrap().to_bytes();
    // Counted without building a tree of 100,000 objects.
    #[derive(serde::Deserialize)]
    struct Items {
        items: Vec<serde::de::IgnoredAny>,
    }
    let all: Items = serde_json::from_slice(&bytes).unwrap();
    assert_eq!(all.items.len(), n);
    if !cfg!(debug_assertions) {
        assert!(started.elapsed() < Duration::from_secs(3), "listing took {:?}", started.elapsed());
    }
    let (_, one_ns) = get(addr, "/api/v1/namespaces/ns-7/services").await;
    assert_eq!(one_ns["items"].as_array().unwrap().len(), n / 100);
}
