//! Watch: a chunked stream of newline-delimited JSON events, per "Efficient
//! detection of changes" and "Watch bookmarks" in API Concepts
//! (<https://kubernetes.io/docs/reference/using-api/api-concepts/#efficient-detection-of-changes>).
//!
//! - `resourceVersion` N: every event after N, replayed from history, then
//!   live. N older than the kind's compaction point: HTTP 200, one `ERROR`
//!   event with a 410 `Expired` Status, end of stream (the watch cache's
//!   answer).
//! - `resourceVersion` unset or "0": synthetic ADDED events for every
//!   current object first ("Get State and Start at Most Recent/Any").
//! - `sendInitialEvents=true` (with `resourceVersionMatch=NotOlderThan` and
//!   `allowWatchBookmarks=true`, as the server demands): the same ADDED
//!   events, then a BOOKMARK annotated `k8s.io/initial-events-end: "true"`
//!   (a streaming list); `sendInitialEvents=false` skips the initial state.
//! - Selectors apply as the watch cache applies them: an update that moves
//!   an object into the selection is ADDED, out of it DELETED (the old
//!   state at the new resourceVersion).
//! - `allowWatchBookmarks=true`: a BOOKMARK every `bookmark_interval`,
//!   carrying only the kind and the revision the stream has caught up to.
//! - `timeoutSeconds` (or the server's jittered maximum) ends the stream
//!   cleanly; `FakeApi::drop_watches` ends it abruptly.

use std::collections::VecDeque;
use std::io;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, StreamBody};
use hyper::body::Frame;
use hyper::header::{HeaderValue, CONTENT_TYPE};
use hyper::Response;
use serde_json::json;
use tokio::sync::watch;
use tokio::time::Instant;

use crate::object::Obj;
use crate::resource::TYPES;
use crate::select::Selector;
use crate::server::{Body, Params, View};
use crate::status::ApiError;
use crate::store::EventType;
use crate::{lock, Shared};

/// Events read from history per lock, and objects per chunk of the initial
/// state: big enough for throughput, small enough to keep the lock short.
const BATCH: usize = 1000;

pub(crate) fn start(
    shared: &Arc<Shared>,
    ty: usize,
    namespace: Option<String>,
    params: &Params,
    view: View,
) -> Result<Response<Body>, ApiError> {
    let selector = params.selector()?;
    // Validation of watch parameters (apimachinery's ValidateListOptions).
    match (params.send_initial_events, params.resource_version_match.as_deref()) {
        (None, Some(_)) => {
            return Err(ApiError::invalid(
                "resourceVersionMatch: Forbidden: resourceVersionMatch is forbidden for watch unless sendInitialEvents is provided",
            ))
        }
        (Some(_), m) if m != Some("NotOlderThan") => {
            return Err(ApiError::invalid(
                "sendInitialEvents: Forbidden: sendInitialEvents is forbidden for watch unless resourceVersionMatch is set to NotOlderThan",
            ))
        }
        (Some(true), _) if !params.allow_bookmarks => {
            return Err(ApiError::invalid(
                "allowWatchBookmarks: Required value: allowWatchBookmarks must be set to true when sendInitialEvents is true",
            ))
        }
        _ => {}
    }
    let rv = match params.rv() {
        "" | "0" => None,
        rv => Some(rv.parse::<u64>().map_err(|_| ApiError::bad_request(format!("invalid resource version: {rv:?}")))?),
    };
    let initial_state = params.send_initial_events.unwrap_or(rv.is_none());

    let opts = &shared.opts;
    let now = Instant::now();
    let timeout = match params.timeout_seconds {
        Some(secs) if secs > 0 => Duration::from_secs(secs),
        // As the real server's --min-request-timeout: a random duration
        // between it and twice it, so watches do not all end together.
        _ => opts.watch_timeout.mul_f64(1.0 + lock(&shared.store).rng.unit()),
    };
    let (initial, cursor) = {
        let store = lock(&shared.store);
        if initial_state {
            (store.current(ty, namespace.as_deref()), store.rv)
        } else {
            (Vec::new(), rv.unwrap_or(store.rv))
        }
    };
    let id = shared.next_watch.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
    let drop_rx = shared.drop_tx.subscribe();
    let drop_generation = *drop_rx.borrow();
    lock(&shared.watches).insert(id, drop_generation);
    let stream = WatchStream {
        guard: WatchGuard { shared: shared.clone(), id },
        ty,
        namespace,
        selector,
        view,
        cursor,
        initial: initial.into(),
        initial_end: params.send_initial_events == Some(true),
        bookmarks: params.allow_bookmarks,
        bookmark_interval: opts.bookmark_interval,
        next_bookmark: now + opts.bookmark_interval,
        deadline: now + timeout,
        rv_rx: shared.rv_tx.subscribe(),
        stall_rx: shared.stall_tx.subscribe(),
        drop_rx,
        drop_generation,
        done: false,
    };
    let frames = futures::stream::unfold(stream, |mut s| async move {
        let next = s.next().await?;
        Some((next.map(Frame::data), s))
    });
    let mut response = Response::new(StreamBody::new(frames).boxed_unsync());
    response.headers_mut().insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    Ok(response)
}

/// Keeps the watch in `Shared::watches` while its stream lives.
struct WatchGuard {
    shared: Arc<Shared>,
    id: u64,
}

impl Drop for WatchGuard {
    fn drop(&mut self) {
        lock(&self.shared.watches).remove(&self.id);
    }
}

struct WatchStream {
    guard: WatchGuard,
    ty: usize,
    namespace: Option<String>,
    selector: Selector,
    view: View,
    /// Every event up to here has been sent (or filtered out).
    cursor: u64,
    initial: VecDeque<Arc<Obj>>,
    /// A streaming list's closing bookmark is still to send.
    initial_end: bool,
    bookmarks: bool,
    bookmark_interval: Duration,
    next_bookmark: Instant,
    deadline: Instant,
    rv_rx: watch::Receiver<u64>,
    stall_rx: watch::Receiver<bool>,
    drop_rx: watch::Receiver<u64>,
    drop_generation: u64,
    done: bool,
}

impl WatchStream {
    /// The next chunk; `None` ends the stream cleanly, an error aborts the
    /// connection.
    async fn next(&mut self) -> Option<io::Result<Bytes>> {
        loop {
            if self.done {
                return None;
            }
            if *self.drop_rx.borrow_and_update() != self.drop_generation {
                self.done = true;
                return Some(Err(io::Error::new(
                    io::ErrorKind::ConnectionAborted,
                    "watch dropped (FakeApi::drop_watches)",
                )));
            }
            if Instant::now() >= self.deadline {
                self.done = true;
                return None;
            }
            if *self.stall_rx.borrow_and_update() {
                tokio::select! {
                    _ = self.stall_rx.changed() => {}
                    _ = self.drop_rx.changed() => {}
                    _ = tokio::time::sleep_until(self.deadline) => {}
                }
                continue;
            }
            if !self.initial.is_empty() {
                let mut out = Vec::new();
                let n = self.initial.len().min(BATCH);
                let batch: Vec<Arc<Obj>> = self.initial.drain(..n).collect();
                for obj in batch {
                    if self.selector.matches(&obj) {
                        self.push_event(&mut out, "ADDED", &obj);
                    }
                }
                if !out.is_empty() {
                    return Some(Ok(out.into()));
                }
                continue;
            }
            if self.initial_end {
                self.initial_end = false;
                return Some(Ok(self.bookmark(true)));
            }
            self.rv_rx.borrow_and_update();
            let pulled = lock(&self.guard.shared.store).events_after(self.ty, self.cursor, BATCH);
            match pulled {
                Err(expired) => {
                    self.done = true;
                    let event = json!({"type": "ERROR", "object": expired.to_json()});
                    let mut out = serde_json::to_vec(&event).expect("serializes");
                    out.push(b'\n');
                    return Some(Ok(out.into()));
                }
                Ok((events, seen)) => {
                    self.cursor = seen;
                    let mut out = Vec::new();
                    for event in &events {
                        self.push_change(&mut out, event);
                    }
                    if !out.is_empty() {
                        return Some(Ok(out.into()));
                    }
                    if events.len() == BATCH {
                        continue;
                    }
                }
            }
            let now = Instant::now();
            if self.bookmarks && now >= self.next_bookmark {
                self.next_bookmark = now + self.bookmark_interval;
                return Some(Ok(self.bookmark(false)));
            }
            let wake = if self.bookmarks { self.next_bookmark.min(self.deadline) } else { self.deadline };
            tokio::select! {
                _ = self.rv_rx.changed() => {}
                _ = self.drop_rx.changed() => {}
                _ = self.stall_rx.changed() => {}
                _ = tokio::time::sleep_until(wake) => {}
            }
        }
    }

    fn selected(&self, obj: &Obj) -> bool {
        (self.namespace.is_none() || obj.namespace.as_deref() == self.namespace.as_deref())
            && self.selector.matches(obj)
    }

    fn push_change(&self, out: &mut Vec<u8>, event: &crate::store::Event) {
        match event.ty {
            EventType::Added => {
                if self.selected(&event.obj) {
                    self.push_event(out, "ADDED", &event.obj);
                }
            }
            EventType::Deleted => {
                if self.selected(&event.obj) {
                    self.push_event(out, "DELETED", &event.obj);
                }
            }
            EventType::Modified => {
                let was = event.prev.as_deref().is_some_and(|p| self.selected(p));
                match (was, self.selected(&event.obj)) {
                    (true, true) => self.push_event(out, "MODIFIED", &event.obj),
                    (false, true) => self.push_event(out, "ADDED", &event.obj),
                    (true, false) => {
                        let prev = event.prev.as_deref().expect("was selected");
                        self.push_event(out, "DELETED", &prev.with_rv(event.rv));
                    }
                    (false, false) => {}
                }
            }
        }
    }

    fn push_event(&self, out: &mut Vec<u8>, ty: &str, obj: &Obj) {
        out.extend_from_slice(br#"{"type":""#);
        out.extend_from_slice(ty.as_bytes());
        out.extend_from_slice(br#"","object":"#);
        match self.view {
            View::Full => out.extend_from_slice(obj.json()),
            View::Partial => obj.write_partial(out),
        }
        out.extend_from_slice(b"}\n");
    }

    /// A BOOKMARK: an object of the watched kind with only
    /// `metadata.resourceVersion` (and the initial-events-end annotation
    /// closing a streaming list).
    fn bookmark(&self, initial_end: bool) -> Bytes {
        let t = &TYPES[self.ty];
        let (kind, api_version) = match self.view {
            View::Full => (t.kind.to_string(), t.api_version()),
            View::Partial => ("PartialObjectMetadata".to_string(), "meta.k8s.io/v1".to_string()),
        };
        let mut meta = json!({"resourceVersion": self.cursor.to_string()});
        if initial_end {
            meta["annotations"] = json!({"k8s.io/initial-events-end": "true"});
        }
        let event = json!({
            "type": "BOOKMARK",
            "object": {"kind": kind, "apiVersion": api_version, "metadata": meta},
        });
        let mut out = serde_json::to_vec(&event).expect("serializes");
        out.push(b'\n');
        out.into()
    }
}
