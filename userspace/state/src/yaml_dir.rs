//! The directory source: every `*.yaml`, `*.yml` and `*.json` file directly
//! in a directory (hidden files excluded), watched with inotify.
//!
//! Policy on bad input:
//! - an invalid object (bad IP, port out of range, missing label...) is
//!   reported and skipped; the rest of its file loads;
//! - a file that does not parse at all (YAML/JSON syntax error, not UTF-8,
//!   unreadable) keeps the objects of its last good version until it parses
//!   again: an editor saving half a file, or a typo, must not make every
//!   Service in it vanish from the data path and DNS;
//! - a removed file removes its objects.
//!
//! Change detection: an inotify event names the file; only that file is
//! re-read and re-parsed (and only if its bytes changed). Events that cannot
//! be tied to one file (queue overflow, a ConfigMap volume swapping its
//! `..data` symlink) trigger a rescan that still re-parses only files whose
//! contents changed.

use std::collections::{HashMap, HashSet};
use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};
use std::time::Duration;

use notify::event::{AccessKind, AccessMode, EventKind, ModifyKind};
use notify::{RecursiveMode, Watcher};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tracing::{debug, info, warn};

use crate::error::{ObjectError, SourceError};
use crate::model::{Catalog, Snapshot};
use crate::parse::{parse_text, Format};
use crate::store::Store;

/// A file still open for writing (MODIFY seen, CLOSE_WRITE not yet) is given
/// this long to be closed, so a truncate-then-write save is not read half-way.
/// It also bounds every batch: a directory that never settles (a writer
/// keeping a file open) is still read and published at least this often.
/// Complete saves (CLOSE_WRITE, a rename into place, a removal) never wait.
const WRITE_GRACE: Duration = Duration::from_millis(40);
/// Below this many files a rescan reads them on one thread.
const PARALLEL_READ_MIN: usize = 64;

/// Load a directory once: the catalog and every object/file error. For tools
/// and tests; the agent and DNS use [`watch_dir`].
pub fn load_dir(dir: impl AsRef<Path>) -> Result<(Catalog, Vec<ObjectError>), SourceError> {
    let mut src = DirSource::new(dir.as_ref())?;
    let errors = src.rescan()?;
    Ok((src.store.into_catalog(), errors))
}

/// Load `dir`, then follow it. The returned receiver already holds a ready
/// snapshot of the full directory; each later change publishes a new one.
/// The task ends when every receiver is dropped.
pub async fn watch_dir(dir: impl AsRef<Path>) -> Result<(watch::Receiver<Snapshot>, JoinHandle<()>), SourceError> {
    let mut src = DirSource::new(dir.as_ref())?;
    let dir = src.dir.clone();

    // Watch before the first scan, so a file written during the scan is
    // seen again afterwards rather than missed.
    let (tx, rx) = mpsc::unbounded_channel();
    let mut watcher = notify::recommended_watcher(move |ev: notify::Result<notify::Event>| {
        // The receiver is gone only when the task ended; nothing to do then.
        let _ = tx.send(ev);
    })
    .map_err(|source| SourceError::Watch { path: dir.clone(), source })?;
    watcher
        .watch(&dir, RecursiveMode::NonRecursive)
        .map_err(|source| SourceError::Watch { path: dir.clone(), source })?;

    // The first load of a large directory takes a few hundred ms of CPU:
    // off the runtime's threads, so the caller's other tasks (a metrics
    // server, health probes) keep running meanwhile.
    let (mut src, scanned) = tokio::task::spawn_blocking(move || {
        let scanned = src.rescan().map(|errors| {
            src.store.set_ready();
            (errors, src.store.publish())
        });
        (src, scanned)
    })
    .await
    .unwrap_or_else(|e| std::panic::resume_unwind(e.into_panic()));
    let (errors, generation) = scanned?;
    report(&errors);
    info!(
        dir = %dir.display(),
        files = src.files.len(),
        services = src.store.catalog().services.len(),
        errors = errors.len(),
        generation,
        "directory loaded"
    );
    let snapshots = src.store.subscribe();
    let task = tokio::spawn(async move {
        // The watcher lives as long as the task.
        let _watcher = watcher;
        // The store's working copy of what was just published (every map
        // node copied) is made now, while consumers start on
        // the snapshot, rather than before they get it; a change arriving
        // meanwhile waits for it.
        if src.working_copy().await {
            src.follow(rx).await;
        }
    });
    Ok((snapshots, task))
}

/// What is known of one file: a hash of the bytes last parsed, so a rescan or
/// a touch without change costs no parse and publishes nothing.
struct FileState {
    hash: u64,
}

/// What reading one file found; computed without the store, so files can be
/// read in parallel.
enum FileRead {
    /// Not there (or a directory now): its objects go.
    Gone,
    /// The same bytes as last parsed.
    Unchanged,
    Parsed {
        hash: u64,
        objects: Vec<crate::convert::Object>,
        errors: Vec<ObjectError>,
    },
    /// Unreadable or not parseable at all.
    Failed(ObjectError),
}

/// Read and parse `path`, unless its bytes hash to `known`.
fn read_file(path: &Path, known: Option<u64>) -> FileRead {
    let origin = path.display().to_string();
    let bytes = match std::fs::read(path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound || e.kind() == std::io::ErrorKind::IsADirectory => {
            return FileRead::Gone
        }
        Err(e) => return FileRead::Failed(file_error(&origin, format!("cannot read: {e}"))),
    };
    let hash = {
        let mut h = std::collections::hash_map::DefaultHasher::new();
        bytes.hash(&mut h);
        h.finish()
    };
    if known == Some(hash) {
        return FileRead::Unchanged;
    }
    let Ok(text) = std::str::from_utf8(&bytes) else {
        return FileRead::Failed(file_error(&origin, "not UTF-8 text".into()));
    };
    let format = Format::from_path(path).unwrap_or(Format::Yaml);
    match parse_text(text, format, &origin) {
        Ok((objects, errors)) => FileRead::Parsed { hash, objects, errors },
        Err(e) => FileRead::Failed(e),
    }
}

struct DirSource {
    dir: PathBuf,
    files: HashMap<PathBuf, FileState>,
    store: Store,
}

impl DirSource {
    fn new(dir: &Path) -> Result<Self, SourceError> {
        let meta = std::fs::metadata(dir).map_err(|source| SourceError::ReadDir { path: dir.into(), source })?;
        if !meta.is_dir() {
            return Err(SourceError::NotADirectory { path: dir.into() });
        }
        // One spelling for every file: scans join this path, and inotify
        // events join the watched one, which must be the same or a file would
        // be two origins (and never removed).
        let dir = std::fs::canonicalize(dir).map_err(|source| SourceError::ReadDir { path: dir.into(), source })?;
        Ok(Self { dir, files: HashMap::new(), store: Store::new() })
    }

    /// Re-read every catalog file of the directory (those whose bytes
    /// changed are re-parsed), and forget files that are gone. Files are read
    /// and parsed on every core (a first load of 10,000 files is ~0.5 s of
    /// parsing on one); the store takes them in name order, as one would.
    fn rescan(&mut self) -> Result<Vec<ObjectError>, SourceError> {
        let entries =
            std::fs::read_dir(&self.dir).map_err(|source| SourceError::ReadDir { path: self.dir.clone(), source })?;
        let mut paths: Vec<PathBuf> =
            entries.filter_map(|e| e.ok()).map(|e| e.path()).filter(|p| is_catalog_file(p)).collect();
        paths.sort();
        let present: HashSet<&PathBuf> = paths.iter().collect();
        let gone: Vec<PathBuf> = self.files.keys().filter(|p| !present.contains(p)).cloned().collect();
        let reads = self.read_all(&paths);
        let mut errors = Vec::new();
        for (path, read) in paths.iter().zip(reads) {
            errors.extend(self.apply(path, read));
        }
        for path in gone {
            errors.extend(self.sync_file(&path));
        }
        Ok(errors)
    }

    /// [`read_file`] for each path, in order, spread over the available cores
    /// when there are enough files for threads to pay.
    fn read_all(&self, paths: &[PathBuf]) -> Vec<FileRead> {
        let known = |p: &PathBuf| self.files.get(p).map(|f| f.hash);
        let threads = std::thread::available_parallelism().map_or(1, |n| n.get()).min(8);
        if threads < 2 || paths.len() < PARALLEL_READ_MIN {
            return paths.iter().map(|p| read_file(p, known(p))).collect();
        }
        let chunk = paths.len().div_ceil(threads);
        std::thread::scope(|s| {
            let parts: Vec<_> = paths
                .chunks(chunk)
                .map(|part| s.spawn(move || part.iter().map(|p| read_file(p, known(p))).collect::<Vec<_>>()))
                .collect();
            parts.into_iter().flat_map(|h| h.join().unwrap_or_else(|e| std::panic::resume_unwind(e))).collect()
        })
    }

    /// Bring the store in line with `path` as it is on disk now.
    fn sync_file(&mut self, path: &Path) -> Vec<ObjectError> {
        let read = read_file(path, self.files.get(path).map(|f| f.hash));
        self.apply(path, read)
    }

    /// Fold what [`read_file`] found into the store.
    fn apply(&mut self, path: &Path, read: FileRead) -> Vec<ObjectError> {
        let origin = path.display().to_string();
        match read {
            FileRead::Gone => {
                if self.files.remove(path).is_some() {
                    self.store.remove_origin(&origin);
                    debug!(file = %origin, "file removed");
                }
                Vec::new()
            }
            FileRead::Unchanged => Vec::new(),
            FileRead::Parsed { hash, objects, errors } => {
                debug!(file = %origin, objects = objects.len(), errors = errors.len(), "file parsed");
                self.store.replace_origin(&origin, objects);
                self.files.insert(path.to_path_buf(), FileState { hash });
                errors
            }
            // Keep the last good objects (module docs); the hash is not
            // recorded, so the same broken bytes are reported again on the
            // next event rather than silently accepted.
            FileRead::Failed(e) => vec![e],
        }
    }

    async fn follow(&mut self, mut events: mpsc::UnboundedReceiver<notify::Result<notify::Event>>) {
        loop {
            let mut dirty: HashSet<PathBuf> = HashSet::new();
            let mut open: HashSet<PathBuf> = HashSet::new();
            let mut rescan = false;
            // Wait for the first event and take every one already queued.
            // A save that is complete (closed after writing, renamed into
            // place, removed) is acted on at once; a file still open for
            // writing is given until its close, at most WRITE_GRACE.
            let Some(first) = self.recv_or_closed(&mut events).await else {
                return;
            };
            let mut next = Some(first);
            let started = tokio::time::Instant::now();
            while let Some(ev) = next.take() {
                classify(&self.dir, ev, &mut dirty, &mut open, &mut rescan);
                if let Ok(ev) = events.try_recv() {
                    next = Some(ev);
                    continue;
                }
                let left = WRITE_GRACE.saturating_sub(started.elapsed());
                if open.is_empty() || left.is_zero() {
                    break;
                }
                match tokio::time::timeout(left, events.recv()).await {
                    Ok(Some(ev)) => next = Some(ev),
                    Ok(None) => return,
                    Err(_) => {}
                }
            }
            if (rescan || !dirty.is_empty()) && !self.working_copy().await {
                return;
            }
            let mut errors = Vec::new();
            if rescan {
                match self.rescan() {
                    Ok(e) => errors = e,
                    Err(e) => warn!(error = %e, "rescan failed; keeping the current catalog"),
                }
            } else {
                let mut paths: Vec<PathBuf> = dirty.into_iter().collect();
                paths.sort();
                for path in paths {
                    errors.extend(self.sync_file(&path));
                }
            }
            report(&errors);
            // Not inside the log macro: its arguments are only evaluated
            // when the level is enabled.
            let generation = self.store.publish();
            debug!(generation, "directory change applied");
        }
    }

    async fn working_copy(&mut self) -> bool {
        self.store.working_copy().await
    }

    /// Next watcher event, or `None` when the watcher or every snapshot
    /// receiver is gone (nobody left to publish to).
    async fn recv_or_closed(
        &self,
        events: &mut mpsc::UnboundedReceiver<notify::Result<notify::Event>>,
    ) -> Option<notify::Result<notify::Event>> {
        tokio::select! {
            ev = events.recv() => ev,
            () = self.store.closed() => None,
        }
    }
}

/// Sort one watcher event into "re-read these files" or "rescan".
fn classify(
    dir: &Path,
    ev: notify::Result<notify::Event>,
    dirty: &mut HashSet<PathBuf>,
    open: &mut HashSet<PathBuf>,
    rescan: &mut bool,
) {
    let ev = match ev {
        Ok(ev) => ev,
        Err(e) => {
            warn!(error = %e, "directory watch error; rescanning");
            *rescan = true;
            return;
        }
    };
    if ev.need_rescan() {
        *rescan = true;
        return;
    }
    // Opening and reading change nothing, and our own reads (of the
    // directory too) make these: acting on them would loop.
    if matches!(ev.kind, EventKind::Access(_)) && ev.kind != EventKind::Access(AccessKind::Close(AccessMode::Write)) {
        return;
    }
    for path in &ev.paths {
        if path == dir {
            // The directory itself changed (moved, deleted, mounted over):
            // find out what is there now.
            *rescan = true;
            continue;
        }
        if !is_catalog_file(path) {
            // Not a file we load: a temporary file of an editor (its rename
            // into place names the real file), or a ConfigMap volume's
            // `..data` symlink swap, which changes what every file points at.
            if path.file_name().and_then(|n| n.to_str()).is_some_and(|n| n == "..data") {
                *rescan = true;
            }
            continue;
        }
        match ev.kind {
            EventKind::Access(AccessKind::Close(AccessMode::Write)) => {
                open.remove(path);
                dirty.insert(path.clone());
            }
            EventKind::Create(_) | EventKind::Modify(ModifyKind::Data(_)) => {
                open.insert(path.clone());
                dirty.insert(path.clone());
            }
            EventKind::Access(_) => {}
            // Rename in or out, removal, attribute change (a symlink
            // retargeted, permissions): re-read to find out.
            _ => {
                open.remove(path);
                dirty.insert(path.clone());
            }
        }
    }
}

fn is_catalog_file(path: &Path) -> bool {
    let hidden = path.file_name().and_then(|n| n.to_str()).is_none_or(|n| n.starts_with('.'));
    !hidden && Format::from_path(path).is_some()
}

fn file_error(origin: &str, reason: String) -> ObjectError {
    ObjectError {
        origin: origin.to_string(),
        kind: "document".into(),
        key: None,
        error: crate::error::ConvertError::Syntax(reason),
    }
}

fn report(errors: &[ObjectError]) {
    for e in errors {
        warn!(file = %e.origin, kind = %e.kind, object = ?e.key.as_ref().map(|k| k.to_string()), reason = %e.error, "skipped invalid input");
    }
}
