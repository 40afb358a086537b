//! Loading whole directories: formats, Lists, the benchmark's large cluster.

use std::time::Instant;

#[test]
fn large_cluster_json_loads_fast() {
    let path = std::env::var("FERRY_LARGE_JSON").unwrap_or_default();
    if path.is_empty() { return; }
    let dir = tempfile::tempdir().unwrap();
    std::fs::copy(&path, dir.path().join("large_cluster.json")).unwrap();
    let t = Instant::now();
    let (cat, errors) = ferry_state::load_dir(dir.path()).unwrap();
    let took = t.elapsed();
    eprintln!("loaded {} services, {} slice groups in {:?}", cat.services.len(), cat.slices.len(), took);
    assert!(errors.is_empty(), "{errors:?}");
    assert_eq!(cat.services.len(), 10_500);
}
