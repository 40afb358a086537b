//! Shared copies of the strings every object repeats: namespaces, node
//! names, zones. At 100,000 Services × 10 endpoints the catalog would
//! otherwise hold a million copies of a handful of node names.
//!
//! The table only ever holds strings some catalog value still uses, give or
//! take one sweep: when it has doubled since the last sweep, entries nobody
//! else holds are dropped, so names of deleted nodes and namespaces (or
//! garbage a source rejected after interning) do not accumulate.

use std::collections::HashSet;
use std::sync::{Arc, LazyLock, Mutex};

struct Table {
    names: HashSet<Arc<str>>,
    /// Size after the last sweep: the next one runs at twice that.
    swept_at: usize,
}

static TABLE: LazyLock<Mutex<Table>> = LazyLock::new(|| Mutex::new(Table { names: HashSet::new(), swept_at: 0 }));

/// Sweeps are not worth running below this many entries.
const MIN_SWEEP: usize = 1024;

/// The shared copy of `s`.
pub fn intern(s: &str) -> Arc<str> {
    // A poisoned lock only means another thread panicked mid-insert; the
    // set itself is still a valid set.
    let mut t = TABLE.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(found) = t.names.get(s) {
        return found.clone();
    }
    if t.names.len() >= MIN_SWEEP.max(2 * t.swept_at) {
        t.names.retain(|n| Arc::strong_count(n) > 1);
        t.swept_at = t.names.len();
    }
    let new: Arc<str> = Arc::from(s);
    t.names.insert(new.clone());
    new
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_copy_per_name_and_unused_names_are_swept() {
        let a = intern("node-a");
        let b = intern("node-a");
        assert!(Arc::ptr_eq(&a, &b));
        // Far more distinct names than any sweep threshold, none kept: the
        // table must not hold them all.
        for i in 0..50_000 {
            intern(&format!("gone-{i}"));
        }
        let len = TABLE.lock().unwrap().names.len();
        assert!(len < 10_000, "{len} names held");
        // A name still in use survived the sweeps.
        assert!(Arc::ptr_eq(&a, &intern("node-a")));
    }
}
