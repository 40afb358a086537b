//! The HTTP side: connections, routing, discovery, list, get and writes.
//! Watches are in `watch_stream`.

use std::convert::Infallible;
use std::io;
use std::sync::atomic::Ordering;
use std::sync::{mpsc, Arc};
use std::time::Duration;

use base64::Engine as _;
use bytes::Bytes;
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::header::{HeaderValue, ACCEPT, CONTENT_TYPE, RETRY_AFTER};
use hyper::{Method, Response, StatusCode};
use hyper_util::rt::TokioIo;
use serde_json::{json, Value};
use tokio::sync::oneshot;

use crate::object::{key_of, Obj};
use crate::resource::{named_groups, Route, TYPES};
use crate::select::Selector;
use crate::status::ApiError;
use crate::store::{Items, WriteMode};
use crate::{lock, watch_stream, Request, Shared};

pub(crate) type Body = UnsyncBoxBody<Bytes, io::Error>;

/// Accepts until told to stop, then closes the listening socket and says so.
pub(crate) async fn accept_loop(
    listener: tokio::net::TcpListener,
    shared: Arc<Shared>,
    mut stop: oneshot::Receiver<()>,
    stopped: mpsc::Sender<()>,
) {
    loop {
        tokio::select! {
            _ = &mut stop => break,
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => {
                    let _ = stream.set_nodelay(true);
                    tokio::spawn(serve_connection(stream, shared.clone()));
                }
                // Out of descriptors, most likely: let some close.
                Err(_) => tokio::time::sleep(Duration::from_millis(10)).await,
            },
        }
    }
    drop(listener);
    let _ = stopped.send(());
}

struct ConnectionGuard(Arc<Shared>);

impl Drop for ConnectionGuard {
    fn drop(&mut self) {
        self.0.connections.fetch_sub(1, Ordering::SeqCst);
    }
}

async fn serve_connection(stream: tokio::net::TcpStream, shared: Arc<Shared>) {
    let mut close = shared.close_tx.subscribe();
    shared.connections.fetch_add(1, Ordering::SeqCst);
    let _guard = ConnectionGuard(shared.clone());
    let service = hyper::service::service_fn(move |req| {
        let shared = shared.clone();
        async move { Ok::<_, Infallible>(handle(shared, req).await) }
    });
    let connection = hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(stream), service);
    tokio::select! {
        _ = connection => {}
        // Dropping the connection closes the socket under any open stream.
        _ = close.changed() => {}
    }
}

/// The query parameters the server reads.
#[derive(Debug, Default)]
pub(crate) struct Params {
    pub watch: bool,
    pub resource_version: Option<String>,
    pub resource_version_match: Option<String>,
    pub limit: Option<usize>,
    pub continue_token: Option<String>,
    pub label_selector: Option<String>,
    pub field_selector: Option<String>,
    pub timeout_seconds: Option<u64>,
    pub allow_bookmarks: bool,
    pub send_initial_events: Option<bool>,
}

/// Go's `strconv.ParseBool`, as the server parses boolean parameters.
fn parse_bool(name: &str, v: &str) -> Result<bool, ApiError> {
    match v {
        "1" | "t" | "T" | "true" | "TRUE" | "True" => Ok(true),
        "0" | "f" | "F" | "false" | "FALSE" | "False" | "" => Ok(false),
        _ => Err(ApiError::bad_request(format!("invalid value {v:?} for {name}"))),
    }
}

impl Params {
    pub fn parse(query: &str) -> Result<Params, ApiError> {
        let mut p = Params::default();
        for (k, v) in form_urlencoded::parse(query.as_bytes()) {
            let number =
                |v: &str| v.parse::<u64>().map_err(|_| ApiError::bad_request(format!("invalid value {v:?} for {k}")));
            match &*k {
                "watch" => p.watch = parse_bool(&k, &v)?,
                "resourceVersion" => p.resource_version = Some(v.into_owned()),
                "resourceVersionMatch" => p.resource_version_match = Some(v.into_owned()).filter(|m| !m.is_empty()),
                "limit" => p.limit = Some(number(&v)? as usize).filter(|&l| l > 0),
                "continue" => p.continue_token = Some(v.into_owned()).filter(|c| !c.is_empty()),
                "labelSelector" => p.label_selector = Some(v.into_owned()),
                "fieldSelector" => p.field_selector = Some(v.into_owned()),
                "timeoutSeconds" => p.timeout_seconds = Some(number(&v)?),
                "allowWatchBookmarks" => p.allow_bookmarks = parse_bool(&k, &v)?,
                "sendInitialEvents" => p.send_initial_events = Some(parse_bool(&k, &v)?),
                _ => {}
            }
        }
        Ok(p)
    }

    /// `resourceVersion`, "" when unset.
    pub fn rv(&self) -> &str {
        self.resource_version.as_deref().unwrap_or("")
    }

    pub fn selector(&self) -> Result<Selector, ApiError> {
        Selector::parse(self.label_selector.as_deref(), self.field_selector.as_deref())
    }
}

/// Full objects, or `PartialObjectMetadata` (kube's `metadata_watcher`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum View {
    Full,
    Partial,
}

/// Picks the first media range of `Accept` this server can produce: JSON,
/// as a full object or as `PartialObjectMetadata` (protobuf and `Table`
/// are not served; clients list JSON after them as a fallback).
fn view_of(accept: Option<&HeaderValue>) -> Result<View, ApiError> {
    let Some(accept) = accept.and_then(|a| a.to_str().ok()).filter(|a| !a.trim().is_empty()) else {
        return Ok(View::Full);
    };
    for range in accept.split(',') {
        let mut parts = range.split(';').map(str::trim);
        let media = parts.next().unwrap_or("");
        if !matches!(media, "application/json" | "application/*" | "*/*") {
            continue;
        }
        let params: Vec<(&str, &str)> = parts.filter_map(|p| p.split_once('=')).collect();
        match params.iter().find(|(k, _)| *k == "as").map(|(_, v)| *v) {
            None => return Ok(View::Full),
            Some("PartialObjectMetadata" | "PartialObjectMetadataList") => return Ok(View::Partial),
            Some(_) => continue,
        }
    }
    Err(ApiError::new(
        406,
        format!("only the following media types are accepted: application/json (asked for {accept})"),
    ))
}

/// The Kubernetes authorization verb of a request.
fn verb_of(method: &Method, route: &Route, watch: bool) -> String {
    let (resource, named) = match route {
        Route::Object { name, .. } => (true, name.is_some()),
        Route::NotFound { resource, name, .. } => (!resource.is_empty(), name.is_some()),
        _ => (false, false),
    };
    if !resource {
        return method.as_str().to_ascii_lowercase();
    }
    match (method, named) {
        (&Method::GET | &Method::HEAD, false) if watch => "watch",
        (&Method::GET | &Method::HEAD, false) => "list",
        (&Method::GET | &Method::HEAD, true) => "get",
        (&Method::POST, _) => "create",
        (&Method::PUT, _) => "update",
        (&Method::PATCH, _) => "patch",
        (&Method::DELETE, true) => "delete",
        (&Method::DELETE, false) => "deletecollection",
        (m, _) => return m.as_str().to_ascii_lowercase(),
    }
    .to_string()
}

fn record_of(method: &Method, path: &str, query: &str, route: &Route, watch: bool) -> Request {
    let (api_group, resource, namespace, name) = match route {
        Route::Object { ty, namespace, name } => {
            (TYPES[*ty].group.to_string(), TYPES[*ty].plural.to_string(), namespace.clone(), name.clone())
        }
        Route::NotFound { group, resource, namespace, name } => {
            (group.clone(), resource.clone(), namespace.clone(), name.clone())
        }
        _ => Default::default(),
    };
    Request {
        method: method.to_string(),
        path: path.to_string(),
        query: query.to_string(),
        verb: verb_of(method, route, watch),
        api_group,
        resource,
        namespace,
        name,
        status: 0,
    }
}

async fn handle(shared: Arc<Shared>, req: hyper::Request<Incoming>) -> Response<Body> {
    let path = req.uri().path().to_string();
    let query = req.uri().query().unwrap_or("").to_string();
    let route = Route::parse(&path);
    let params = Params::parse(&query);
    let watch = params.as_ref().is_ok_and(|p| p.watch);
    let mut record = record_of(req.method(), &path, &query, &route, watch);
    let response = match shared.take_fault() {
        Some(code) => {
            let err = ApiError::new(code, format!("injected failure (FakeApi::fail_next) with status {code}"));
            error_response(&err)
        }
        None => match params {
            Ok(params) => serve(&shared, route, params, req).await.unwrap_or_else(|e| error_response(&e)),
            Err(e) => error_response(&e),
        },
    };
    record.status = response.status().as_u16();
    lock(&shared.requests).push(record);
    response
}

pub(crate) fn full(bytes: impl Into<Bytes>) -> Body {
    Full::new(bytes.into()).map_err(|never| match never {}).boxed_unsync()
}

pub(crate) fn json_response(code: u16, body: impl Into<Bytes>) -> Response<Body> {
    let mut response = Response::new(full(body));
    *response.status_mut() = StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    response.headers_mut().insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    response
}

fn value_response(code: u16, value: &Value) -> Response<Body> {
    json_response(code, serde_json::to_vec(value).expect("JSON values serialize"))
}

pub(crate) fn error_response(err: &ApiError) -> Response<Body> {
    let mut response = value_response(err.code, &err.to_json());
    if matches!(err.code, 429 | 503) {
        response.headers_mut().insert(RETRY_AFTER, HeaderValue::from_static("1"));
    }
    response
}

async fn serve(
    shared: &Arc<Shared>,
    route: Route,
    params: Params,
    req: hyper::Request<Incoming>,
) -> Result<Response<Body>, ApiError> {
    let method = req.method().clone();
    let read_only = matches!(method, Method::GET | Method::HEAD);
    match route {
        Route::Version => Ok(value_response(
            200,
            &json!({
                "major": "1", "minor": "33", "gitVersion": "v1.33.0-ferry-fake",
                "gitCommit": "0000000000000000000000000000000000000000", "gitTreeState": "clean",
                "buildDate": "1970-01-01T00:00:00Z", "goVersion": "go1.24.0", "compiler": "gc",
                "platform": "linux/amd64",
            }),
        )),
        Route::Health => {
            let mut response = Response::new(full("ok"));
            response.headers_mut().insert(CONTENT_TYPE, HeaderValue::from_static("text/plain; charset=utf-8"));
            Ok(response)
        }
        Route::CoreVersions => Ok(value_response(
            200,
            &json!({
                "kind": "APIVersions", "versions": ["v1"],
                "serverAddressByClientCIDRs": [{"clientCIDR": "0.0.0.0/0", "serverAddress": req
                    .headers().get(hyper::header::HOST).and_then(|h| h.to_str().ok()).unwrap_or("")}],
            }),
        )),
        Route::Groups => {
            let groups: Vec<Value> = named_groups().iter().map(|(g, v)| group_json(g, v)).collect();
            Ok(value_response(200, &json!({"kind": "APIGroupList", "apiVersion": "v1", "groups": groups})))
        }
        Route::Group(group) => {
            let (g, v) = named_groups().into_iter().find(|(g, _)| *g == group).expect("routed");
            let mut body = group_json(g, v);
            body["kind"] = "APIGroup".into();
            body["apiVersion"] = "v1".into();
            Ok(value_response(200, &body))
        }
        Route::Resources { group, version } => {
            let resources: Vec<Value> = TYPES
                .iter()
                .filter(|t| t.group == group && t.version == version)
                .map(|t| {
                    json!({
                        "name": t.plural, "singularName": t.singular, "namespaced": t.namespaced,
                        "shortNames": t.short_names,
                        "kind": t.kind,
                        "verbs": ["create", "delete", "deletecollection", "get", "list", "patch", "update", "watch"],
                    })
                })
                .collect();
            let group_version = if group.is_empty() { version } else { format!("{group}/{version}") };
            Ok(value_response(
                200,
                &json!({
                    "kind": "APIResourceList", "apiVersion": "v1",
                    "groupVersion": group_version, "resources": resources,
                }),
            ))
        }
        Route::NotFound { .. } => Err(ApiError::new(404, "the server could not find the requested resource")),
        Route::Object { ty, namespace, name } => {
            let view = if read_only { view_of(req.headers().get(ACCEPT))? } else { View::Full };
            let ns = namespace.as_deref();
            match (&method, name) {
                (&Method::GET | &Method::HEAD, None) if params.watch => {
                    watch_stream::start(shared, ty, namespace, &params, view)
                }
                (&Method::GET | &Method::HEAD, None) => list(shared, ty, ns, &params, view).await,
                (&Method::GET | &Method::HEAD, Some(name)) => get(shared, ty, ns, &name, view),
                (&Method::POST, None) => {
                    let body = read_body(req).await?;
                    write(shared, ty, ns, None, body, WriteMode::Create)
                }
                (&Method::PUT, Some(name)) => {
                    let body = read_body(req).await?;
                    let expect_rv = body
                        .pointer("/metadata/resourceVersion")
                        .and_then(Value::as_str)
                        .filter(|rv| !rv.is_empty())
                        .map(|rv| {
                            rv.parse().map_err(|_| ApiError::bad_request(format!("invalid resourceVersion {rv:?}")))
                        })
                        .transpose()?;
                    write(shared, ty, ns, Some(&name), body, WriteMode::Update { expect_rv })
                }
                (&Method::PATCH, Some(name)) => patch(shared, ty, ns, &name, req).await,
                (&Method::DELETE, Some(name)) => delete(shared, ty, ns, &name),
                (&Method::DELETE, None) => delete_collection(shared, ty, ns, &params),
                _ => Err(ApiError::new(
                    405,
                    format!("the server does not allow this method on the requested resource ({method})"),
                )),
            }
        }
    }
}

fn group_json(group: &str, version: &str) -> Value {
    let gv = json!({"groupVersion": format!("{group}/{version}"), "version": version});
    json!({"name": group, "versions": [gv.clone()], "preferredVersion": gv})
}

fn get(shared: &Shared, ty: usize, ns: Option<&str>, name: &str, view: View) -> Result<Response<Body>, ApiError> {
    let obj =
        lock(&shared.store).get(ty, &key_of(ns, name)).ok_or_else(|| ApiError::not_found(TYPES[ty].plural, name))?;
    Ok(match view {
        View::Full => json_response(200, obj.json().clone()),
        View::Partial => {
            let mut out = Vec::new();
            obj.write_partial(&mut out);
            json_response(200, out)
        }
    })
}

/// The state a list reads, decided from `resourceVersion` and
/// `resourceVersionMatch` per "Semantics for get and list"
/// (<https://kubernetes.io/docs/reference/using-api/api-concepts/#semantics-for-get-and-list>).
enum ListFrom {
    /// Unset (most recent) and "0" (any: the newest is as good as any).
    Current,
    /// Not older than this revision: the newest, once the store has it.
    NotOlderThan(u64),
    /// Exactly this revision, rebuilt from history.
    Exact(u64),
}

fn list_from(params: &Params) -> Result<ListFrom, ApiError> {
    let rv = params.rv();
    let matching = params.resource_version_match.as_deref();
    match matching {
        None | Some("NotOlderThan" | "Exact") => {}
        Some(other) => {
            return Err(ApiError::invalid(format!(
                "resourceVersionMatch: Unsupported value: {other:?}: supported values: \"Exact\", \"NotOlderThan\""
            )))
        }
    }
    match (rv, matching) {
        ("", Some(_)) => Err(ApiError::invalid(
            "resourceVersionMatch: Forbidden: resourceVersionMatch is forbidden unless resourceVersion is provided",
        )),
        ("", None) => Ok(ListFrom::Current),
        ("0", Some("Exact")) => Err(ApiError::invalid(
            "resourceVersionMatch: Forbidden: resourceVersionMatch \"exact\" is forbidden for resourceVersion \"0\"",
        )),
        ("0", _) => Ok(ListFrom::Current),
        (rv, matching) => {
            let rv: u64 = rv.parse().map_err(|_| ApiError::bad_request(format!("invalid resource version: {rv:?}")))?;
            // Legacy semantics without resourceVersionMatch: a limit makes
            // the list exact, no limit makes it "not older than".
            let exact = matching == Some("Exact") || (matching.is_none() && params.limit.is_some());
            Ok(if exact { ListFrom::Exact(rv) } else { ListFrom::NotOlderThan(rv) })
        }
    }
}

/// A continue token: base64 of JSON, like the real server's
/// (`{"v":"meta.k8s.io/v1","rv":N,"start":"key\u0000"}`), plus the id of
/// the snapshot it pages through.
#[derive(serde::Serialize, serde::Deserialize)]
struct ContinueToken {
    v: String,
    rv: u64,
    start: String,
    snap: u64,
}

fn encode_token(rv: u64, start: String, snap: u64) -> String {
    let token = ContinueToken { v: "meta.k8s.io/v1".into(), rv, start, snap };
    base64::engine::general_purpose::URL_SAFE.encode(serde_json::to_vec(&token).expect("serializes"))
}

fn decode_token(text: &str) -> Result<ContinueToken, ApiError> {
    let bad = |why: String| ApiError::bad_request(format!("invalid continue token: {why}"));
    let bytes = base64::engine::general_purpose::URL_SAFE.decode(text).map_err(|e| bad(e.to_string()))?;
    serde_json::from_slice(&bytes).map_err(|e| bad(e.to_string()))
}

/// How long a `NotOlderThan` read waits for a revision the store has not
/// reached, as the watch cache does before answering 504.
const FUTURE_RV_WAIT: Duration = Duration::from_secs(3);

async fn wait_for_rv(shared: &Shared, rv: u64) -> Result<(), ApiError> {
    let mut rx = shared.rv_tx.subscribe();
    let reached = tokio::time::timeout(FUTURE_RV_WAIT, rx.wait_for(|&now| now >= rv)).await;
    if matches!(reached, Ok(Ok(_))) {
        return Ok(());
    }
    let now = lock(&shared.store).rv;
    Err(ApiError::new(504, format!("Too large resource version: {rv}, current: {now}")).with_details(json!({
        "causes": [{"reason": "ResourceVersionTooLarge", "message": "Too large resource version"}],
        "retryAfterSeconds": 1,
    })))
}

async fn list(
    shared: &Arc<Shared>,
    ty: usize,
    ns: Option<&str>,
    params: &Params,
    view: View,
) -> Result<Response<Body>, ApiError> {
    let selector = params.selector()?;
    // (items, the list's revision, the index to start at, the snapshot id)
    let (items, list_rv, start, snapshot): (Items, u64, usize, Option<u64>) =
        if let Some(token) = &params.continue_token {
            if !matches!(params.rv(), "" | "0") {
                return Err(ApiError::bad_request("specifying resource version is not allowed when using continue"));
            }
            if params.resource_version_match.is_some() {
                return Err(ApiError::invalid(
                    "resourceVersionMatch: Forbidden: resourceVersionMatch is forbidden when continue is provided",
                ));
            }
            let token = decode_token(token)?;
            let (id, items) = lock(&shared.store).snapshot(token.snap, ty, ns, token.rv)?;
            let start = items.partition_point(|o| *o.key < *token.start);
            (items, token.rv, start, Some(id))
        } else {
            let from = list_from(params)?;
            if let ListFrom::NotOlderThan(rv) | ListFrom::Exact(rv) = from {
                if rv > lock(&shared.store).rv {
                    wait_for_rv(shared, rv).await?;
                }
            }
            let store = lock(&shared.store);
            let (items, rv) = match from {
                ListFrom::Current | ListFrom::NotOlderThan(_) => (store.current(ty, ns), store.rv),
                ListFrom::Exact(rv) => (store.state_at(ty, ns, rv)?, rv),
            };
            (items.into(), rv, 0, None)
        };

    // One page: up to `limit` matching items; a token if any match remains.
    let limit = params.limit.unwrap_or(usize::MAX);
    let mut page: Vec<&Arc<Obj>> = Vec::new();
    let mut more = false;
    for obj in items[start..].iter().filter(|o| selector.matches(o)) {
        if page.len() == limit {
            more = true;
            break;
        }
        page.push(obj);
    }
    let mut continue_token = None;
    let mut remaining = None;
    if more {
        let last = page.last().expect("a limit is at least 1");
        let id = match snapshot {
            Some(id) => id,
            None => lock(&shared.store).keep_snapshot(ty, ns, list_rv, items.clone()),
        };
        continue_token = Some(encode_token(list_rv, format!("{}\u{0}", last.key), id));
        if selector.is_empty() {
            // As the real server: counted only when it costs no filtering.
            let next = items.partition_point(|o| o.key <= last.key);
            remaining = Some(items.len() - next);
        }
    } else if let Some(id) = snapshot {
        lock(&shared.store).forget_snapshot(id);
    }

    let t = &TYPES[ty];
    let size: usize = page.iter().map(|o| o.json().len()).sum();
    let mut out = Vec::with_capacity(size + 256);
    let (kind, api_version) = match view {
        View::Full => (t.list_kind.to_string(), t.api_version()),
        View::Partial => ("PartialObjectMetadataList".to_string(), "meta.k8s.io/v1".to_string()),
    };
    let mut meta = json!({"resourceVersion": list_rv.to_string()});
    if let Some(token) = continue_token {
        meta["continue"] = token.into();
    }
    if let Some(n) = remaining {
        meta["remainingItemCount"] = n.into();
    }
    serde_json::to_writer(&mut out, &json!({"kind": kind, "apiVersion": api_version, "metadata": meta}))
        .expect("serializes");
    out.pop(); // the closing brace: items follow
    out.extend_from_slice(br#","items":["#);
    for (i, obj) in page.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        match view {
            View::Full => obj.write_item(&mut out),
            View::Partial => obj.write_partial(&mut out),
        }
    }
    out.extend_from_slice(b"]}");
    Ok(json_response(200, out))
}

async fn read_body(req: hyper::Request<Incoming>) -> Result<Value, ApiError> {
    let yaml = req.headers().get(CONTENT_TYPE).and_then(|c| c.to_str().ok()).is_some_and(|c| c.contains("yaml"));
    let bytes = req
        .into_body()
        .collect()
        .await
        .map_err(|e| ApiError::bad_request(format!("reading the body: {e}")))?
        .to_bytes();
    let value: Value = if yaml {
        serde_yaml::from_slice(&bytes).map_err(|e| ApiError::bad_request(format!("the body is not YAML: {e}")))?
    } else {
        serde_json::from_slice(&bytes).map_err(|e| ApiError::bad_request(format!("the body is not JSON: {e}")))?
    };
    if !value.is_object() {
        return Err(ApiError::bad_request("the body is not an object"));
    }
    Ok(value)
}

/// Checks a body against the path it was sent to, filling in what the
/// path says and the body leaves out (kind, apiVersion, namespace).
fn check_body(ty: usize, ns: Option<&str>, name: Option<&str>, body: &mut Value) -> Result<(), ApiError> {
    let t = &TYPES[ty];
    let api_version = t.api_version();
    let obj = body.as_object_mut().expect("read_body checked");
    match obj.get("apiVersion").and_then(Value::as_str) {
        None | Some("") => {
            obj.insert("apiVersion".into(), api_version.clone().into());
        }
        Some(v) if v == api_version => {}
        Some(v) => {
            return Err(ApiError::bad_request(format!(
                "the API version in the data ({v}) does not match the expected API version ({api_version})"
            )))
        }
    }
    match obj.get("kind").and_then(Value::as_str) {
        None | Some("") => {
            obj.insert("kind".into(), t.kind.into());
        }
        Some(k) if k == t.kind => {}
        Some(k) => {
            return Err(ApiError::bad_request(format!(
                "the kind in the data ({k}) does not match the expected kind ({})",
                t.kind
            )))
        }
    }
    let meta = obj
        .entry("metadata")
        .or_insert_with(|| json!({}))
        .as_object_mut()
        .ok_or_else(|| ApiError::bad_request("metadata is not an object"))?;
    if let Some(ns) = ns {
        match meta.get("namespace").and_then(Value::as_str) {
            None | Some("") => {
                meta.insert("namespace".into(), ns.into());
            }
            Some(given) if given == ns => {}
            Some(_) => {
                return Err(ApiError::bad_request(
                    "the namespace of the provided object does not match the namespace sent on the request",
                ))
            }
        }
    } else if t.namespaced {
        // POST to the all-namespaces collection is not a thing.
        return Err(ApiError::new(404, "the server could not find the requested resource"));
    }
    if let Some(name) = name {
        match meta.get("name").and_then(Value::as_str) {
            None | Some("") => {
                meta.insert("name".into(), name.into());
            }
            Some(given) if given == name => {}
            Some(given) => {
                return Err(ApiError::bad_request(format!(
                    "the name of the object ({given}) does not match the name on the URL ({name})"
                )))
            }
        }
    }
    Ok(())
}

fn write(
    shared: &Shared,
    ty: usize,
    ns: Option<&str>,
    name: Option<&str>,
    mut body: Value,
    mode: WriteMode,
) -> Result<Response<Body>, ApiError> {
    check_body(ty, ns, name, &mut body)?;
    let (obj, _) = lock(&shared.store).write(body, mode)?;
    shared.notify(obj.rv);
    let code = if mode == WriteMode::Create { 201 } else { 200 };
    Ok(json_response(code, obj.json().clone()))
}

/// PATCH: JSON merge patches, strategic merge patches (see `patch`), and
/// server-side apply approximated by a merge patch that creates the object
/// when it is missing (no field ownership). JSON patch is refused.
async fn patch(
    shared: &Shared,
    ty: usize,
    ns: Option<&str>,
    name: &str,
    req: hyper::Request<Incoming>,
) -> Result<Response<Body>, ApiError> {
    let content_type = req.headers().get(CONTENT_TYPE).and_then(|c| c.to_str().ok()).unwrap_or("").to_string();
    let apply = content_type.starts_with("application/apply-patch");
    if !(apply
        || content_type.starts_with("application/merge-patch+json")
        || content_type.starts_with("application/strategic-merge-patch+json"))
    {
        return Err(ApiError::new(
            415,
            format!("the body of the request was in an unknown format ({content_type:?}); accepted: merge-patch, strategic-merge-patch, apply-patch"),
        ));
    }
    let patch = read_body(req).await?;
    let current = lock(&shared.store).get(ty, &key_of(ns, name));
    let (mut value, mode) = match current {
        Some(obj) => {
            let expect_rv =
                patch.pointer("/metadata/resourceVersion").and_then(Value::as_str).and_then(|rv| rv.parse().ok());
            (obj.to_value(), WriteMode::Update { expect_rv })
        }
        None if apply => (json!({}), WriteMode::Apply),
        None => return Err(ApiError::not_found(TYPES[ty].plural, name)),
    };
    if content_type.starts_with("application/strategic-merge-patch+json") {
        crate::patch::strategic(&mut value, &patch);
    } else {
        crate::patch::merge(&mut value, &patch);
    }
    if let Some(meta) = value.get_mut("metadata").and_then(Value::as_object_mut) {
        // The patch may not move the object; resourceVersion was a precondition.
        meta.insert("name".into(), name.into());
        meta.remove("resourceVersion");
        if let Some(ns) = ns {
            meta.insert("namespace".into(), ns.into());
        }
    }
    write(shared, ty, ns, Some(name), value, mode)
}

fn delete(shared: &Shared, ty: usize, ns: Option<&str>, name: &str) -> Result<Response<Body>, ApiError> {
    let gone =
        lock(&shared.store).delete(ty, &key_of(ns, name)).ok_or_else(|| ApiError::not_found(TYPES[ty].plural, name))?;
    shared.notify(gone.rv);
    Ok(value_response(
        200,
        &json!({
            "kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success",
            "details": {"name": name, "kind": TYPES[ty].plural, "uid": &*gone.uid},
        }),
    ))
}

/// DELETE on a collection: every selected object; answers the list of
/// what was deleted, as the real server does.
fn delete_collection(
    shared: &Shared,
    ty: usize,
    ns: Option<&str>,
    params: &Params,
) -> Result<Response<Body>, ApiError> {
    let selector = params.selector()?;
    let (gone, rv) = {
        let mut store = lock(&shared.store);
        let keys: Vec<Box<str>> =
            store.current(ty, ns).into_iter().filter(|o| selector.matches(o)).map(|o| o.key.clone()).collect();
        let gone: Vec<Arc<Obj>> = keys.iter().filter_map(|k| store.delete(ty, k)).collect();
        (gone, store.rv)
    };
    shared.notify(rv);
    let t = &TYPES[ty];
    let mut out = Vec::new();
    serde_json::to_writer(
        &mut out,
        &json!({
            "kind": t.list_kind, "apiVersion": t.api_version(),
            "metadata": {"resourceVersion": rv.to_string()},
        }),
    )
    .expect("serializes");
    out.pop();
    out.extend_from_slice(br#","items":["#);
    for (i, obj) in gone.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        obj.write_item(&mut out);
    }
    out.extend_from_slice(b"]}");
    Ok(json_response(200, out))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accept_negotiation() {
        let rows: &[(Option<&str>, Result<View, u16>)] = &[
            (None, Ok(View::Full)),
            (Some("application/json"), Ok(View::Full)),
            (Some("*/*"), Ok(View::Full)),
            // kube's metadata_watcher
            (Some("application/json;as=PartialObjectMetadataList;g=meta.k8s.io;v=v1"), Ok(View::Partial)),
            // kubectl: Table first, JSON as the fallback
            (Some("application/json;as=Table;v=v1;g=meta.k8s.io,application/json"), Ok(View::Full)),
            (Some("application/vnd.kubernetes.protobuf"), Err(406)),
        ];
        for (accept, want) in rows {
            let header = accept.map(|a| HeaderValue::from_str(a).unwrap());
            let got = view_of(header.as_ref()).map_err(|e| e.code);
            assert_eq!(&got, want, "{accept:?}");
        }
    }

    #[test]
    fn list_semantics() {
        let p = |q: &str| Params::parse(q).unwrap();
        let from = |q: &str| list_from(&p(q)).map_err(|e| e.code);
        assert!(matches!(from(""), Ok(ListFrom::Current)));
        assert!(matches!(from("resourceVersion=0"), Ok(ListFrom::Current)));
        assert!(matches!(from("resourceVersion=0&resourceVersionMatch=NotOlderThan"), Ok(ListFrom::Current)));
        assert!(matches!(from("resourceVersion=5"), Ok(ListFrom::NotOlderThan(5))));
        // legacy: a limit with a resourceVersion reads exactly that revision
        assert!(matches!(from("resourceVersion=5&limit=10"), Ok(ListFrom::Exact(5))));
        assert!(matches!(from("resourceVersion=5&resourceVersionMatch=Exact"), Ok(ListFrom::Exact(5))));
        assert!(matches!(
            from("resourceVersion=5&resourceVersionMatch=NotOlderThan&limit=3"),
            Ok(ListFrom::NotOlderThan(5))
        ));
        assert!(matches!(from("resourceVersionMatch=Exact"), Err(422)));
        assert!(matches!(from("resourceVersion=0&resourceVersionMatch=Exact"), Err(422)));
        assert!(matches!(from("resourceVersion=1&resourceVersionMatch=Sometime"), Err(422)));
        assert!(matches!(from("resourceVersion=abc"), Err(400)));
    }

    #[test]
    fn verbs() {
        let route = |p: &str| Route::parse(p);
        let rows = [
            (Method::GET, "/api/v1/services", false, "list"),
            (Method::GET, "/api/v1/services", true, "watch"),
            (Method::GET, "/api/v1/nodes/n1", false, "get"),
            (Method::POST, "/api/v1/namespaces/a/services", false, "create"),
            (Method::PUT, "/api/v1/namespaces/a/services/s", false, "update"),
            (Method::PATCH, "/api/v1/namespaces/a/services/s", false, "patch"),
            (Method::DELETE, "/api/v1/namespaces/a/services/s", false, "delete"),
            (Method::DELETE, "/api/v1/namespaces/a/services", false, "deletecollection"),
            // an unserved resource still has a verb
            (Method::GET, "/apis/apps/v1/deployments", false, "list"),
            (Method::GET, "/version", false, "get"),
        ];
        for (method, path, watch, want) in rows {
            assert_eq!(verb_of(&method, &route(path), watch), want, "{method} {path}");
        }
    }
}
