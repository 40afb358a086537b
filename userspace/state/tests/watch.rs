//! The live directory source, as the agent and DNS see it: files added,
//! changed, removed and renamed into place show up in a new snapshot within
//! the 100 ms budget; broken files never take good objects down.

use std::io::Write;
use std::path::Path;
use std::time::{Duration, Instant};

use ferry_state::{watch_dir, Snapshot};
use tokio::sync::watch::Receiver;

/// The agent's and DNS's end-to-end budget is 100 ms from the file write;
/// the store's share must be well inside it.
const BUDGET: Duration = Duration::from_millis(100);

fn svc(name: &str, ip: &str) -> String {
    format!("apiVersion: v1\nkind: Service\nmetadata: {{name: {name}, namespace: w}}\nspec: {{clusterIP: {ip}, ports: [{{port: 80}}]}}\n---\n")
}

fn vip(snap: &Snapshot, name: &str) -> Option<String> {
    snap.catalog.service("w", name).and_then(|s| s.cluster_ips.first()).map(|ip| ip.to_string())
}

/// Wait (bounded) until `pred` holds for the latest snapshot; how long it took.
async fn eventually(
    rx: &mut Receiver<Snapshot>,
    within: Duration,
    what: &str,
    pred: impl Fn(&Snapshot) -> bool,
) -> Duration {
    let start = Instant::now();
    let res = tokio::time::timeout(within, rx.wait_for(|s| pred(s))).await.map(|r| r.is_ok());
    match res {
        Ok(true) => start.elapsed(),
        Ok(false) => panic!("{what}: the source stopped"),
        Err(_) => panic!(
            "{what}: not within {within:?}; last snapshot: gen {}, {:?}",
            rx.borrow().generation,
            rx.borrow().catalog.services.keys().collect::<Vec<_>>()
        ),
    }
}

fn write(path: &Path, text: &str) {
    std::fs::write(path, text).unwrap();
}

#[tokio::test]
async fn initial_load_is_ready_and_complete() {
    let dir = tempfile::tempdir().unwrap();
    write(&dir.path().join("a.yaml"), &svc("a", "10.96.0.1"));
    write(
        &dir.path().join("b.json"),
        r#"{"apiVersion":"v1","kind":"Service","metadata":{"name":"b","namespace":"w"},"spec":{"clusterIP":"10.96.0.2"}}"#,
    );
    write(&dir.path().join("c.yml"), &svc("c", "10.96.0.3"));
    // Not catalog files: ignored.
    write(&dir.path().join("README.md"), &svc("readme", "10.96.0.4"));
    write(&dir.path().join(".hidden.yaml"), &svc("hidden", "10.96.0.5"));
    let (rx, _task) = watch_dir(dir.path()).await.unwrap();
    let snap = rx.borrow().clone();
    assert!(snap.ready && snap.generation >= 1);
    let names: Vec<_> = snap.catalog.services.keys().map(|k| &*k.name).collect();
    assert_eq!(names, ["a", "b", "c"]);
}

#[tokio::test]
async fn add_change_remove_within_budget() {
    let dir = tempfile::tempdir().unwrap();
    let (mut rx, _task) = watch_dir(dir.path()).await.unwrap();
    let f = dir.path().join("web.yaml");
    let mut worst = Duration::ZERO;
    for round in 0..10 {
        write(&f, &svc("web", &format!("10.96.1.{round}")));
        let want = format!("10.96.1.{round}");
        worst = worst.max(eventually(&mut rx, BUDGET, "change", |s| vip(s, "web").as_deref() == Some(&want)).await);
    }
    std::fs::remove_file(&f).unwrap();
    worst = worst.max(eventually(&mut rx, BUDGET, "removal", |s| vip(s, "web").is_none()).await);
    eprintln!("worst file-to-snapshot latency over 11 changes: {worst:?}");
}

#[tokio::test]
async fn rename_into_place() {
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("web.yaml");
    write(&f, &svc("web", "10.96.2.1"));
    let (mut rx, _task) = watch_dir(dir.path()).await.unwrap();
    // How editors and `kubectl`-style tools save: write a temporary, rename over.
    for (i, tmp) in ["web.yaml.tmp", ".web.yaml.swp", "4913"].iter().enumerate() {
        let tmp = dir.path().join(tmp);
        let want = format!("10.96.2.{}", i + 2);
        write(&tmp, &svc("web", &want));
        std::fs::rename(&tmp, &f).unwrap();
        eventually(&mut rx, BUDGET, "rename over", |s| vip(s, "web").as_deref() == Some(&want)).await;
    }
    // A new file renamed in from elsewhere, and one renamed out.
    let outside = tempfile::tempdir().unwrap();
    let src = outside.path().join("api.yaml");
    write(&src, &svc("api", "10.96.2.9"));
    std::fs::rename(&src, dir.path().join("api.yaml")).unwrap();
    eventually(&mut rx, BUDGET, "rename in", |s| vip(s, "api").is_some()).await;
    std::fs::rename(dir.path().join("api.yaml"), outside.path().join("gone.yaml")).unwrap();
    eventually(&mut rx, BUDGET, "rename out", |s| vip(s, "api").is_none() && vip(s, "web").is_some()).await;
}

#[tokio::test]
async fn broken_file_keeps_its_objects_bad_object_is_skipped() {
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("app.yaml");
    write(&f, &(svc("a", "10.96.3.1") + &svc("b", "10.96.3.2")));
    write(&dir.path().join("other.yaml"), &svc("o", "10.96.3.9"));
    let (mut rx, _task) = watch_dir(dir.path()).await.unwrap();

    // Not YAML at all: the file's previous objects stay.
    let gen = rx.borrow().generation;
    write(&f, "kind: Service\n  metadata: [unclosed");
    // A change that does publish, to know the broken file has been processed.
    write(&dir.path().join("other.yaml"), &svc("o", "10.96.3.10"));
    eventually(&mut rx, BUDGET, "other file", |s| vip(s, "o").as_deref() == Some("10.96.3.10")).await;
    let snap = rx.borrow().clone();
    assert_eq!(vip(&snap, "a").as_deref(), Some("10.96.3.1"), "kept while the file does not parse");
    assert_eq!(vip(&snap, "b").as_deref(), Some("10.96.3.2"));
    assert_eq!(snap.generation, gen + 1, "the broken file published nothing");

    // Parses again with one invalid object: that object alone is skipped.
    write(&f, &(svc("a", "10.96.3.11") + &svc("b", "not-an-ip")));
    eventually(&mut rx, BUDGET, "fixed file", |s| {
        vip(s, "a").as_deref() == Some("10.96.3.11") && vip(s, "b").is_none()
    })
    .await;
    assert_eq!(vip(&rx.borrow(), "o").as_deref(), Some("10.96.3.10"));
}

// Multi-threaded: the writer below blocks its thread, the source must keep running.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_in_place_write_publishes_once() {
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("big.yaml");
    let text: String = (0..50).map(|i| svc(&format!("s{i}"), &format!("10.96.4.{i}"))).collect();
    write(&f, &text);
    let (mut rx, _task) = watch_dir(dir.path()).await.unwrap();
    let gen = rx.borrow().generation;
    // Truncate, write half, pause longer than the quiet period, write the
    // rest: a reader that reacts to the first MODIFY would see half a file.
    let changed = text.replace("10.96.4.49", "10.96.4.200");
    // Cut at a document boundary, so the first half alone is valid YAML
    // holding only 25 of the 50 Services.
    let cut = changed[changed.len() / 2..].find("---\n").unwrap() + changed.len() / 2 + 4;
    let (head, tail) = changed.split_at(cut);
    let mut file = std::fs::File::create(&f).unwrap();
    file.write_all(head.as_bytes()).unwrap();
    file.flush().unwrap();
    std::thread::sleep(Duration::from_millis(10));
    file.write_all(tail.as_bytes()).unwrap();
    drop(file);
    eventually(&mut rx, BUDGET, "slow write", |s| vip(s, "s49").as_deref() == Some("10.96.4.200")).await;
    let snap = rx.borrow().clone();
    assert_eq!(snap.catalog.services.len(), 50);
    assert_eq!(snap.generation, gen + 1, "no half-written version was published");
}

#[tokio::test]
async fn configmap_volume_symlink_swap() {
    // How the kubelet updates a ConfigMap volume: files are symlinks through
    // `..data`, which is atomically re-pointed at a new timestamped directory.
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let v1 = d.join("..2026_11_22_01");
    std::fs::create_dir(&v1).unwrap();
    write(&v1.join("svc.yaml"), &svc("cm", "10.96.5.1"));
    std::os::unix::fs::symlink("..2026_11_22_01", d.join("..data")).unwrap();
    std::os::unix::fs::symlink("..data/svc.yaml", d.join("svc.yaml")).unwrap();
    let (mut rx, _task) = watch_dir(d).await.unwrap();
    assert_eq!(vip(&rx.borrow(), "cm").as_deref(), Some("10.96.5.1"));

    let v2 = d.join("..2026_11_22_02");
    std::fs::create_dir(&v2).unwrap();
    write(&v2.join("svc.yaml"), &svc("cm", "10.96.5.2"));
    std::os::unix::fs::symlink("..2026_11_22_02", d.join("..data_tmp")).unwrap();
    std::fs::rename(d.join("..data_tmp"), d.join("..data")).unwrap();
    eventually(&mut rx, BUDGET, "configmap swap", |s| vip(s, "cm").as_deref() == Some("10.96.5.2")).await;
}

#[tokio::test]
async fn the_source_stops_when_nobody_listens() {
    let dir = tempfile::tempdir().unwrap();
    let (rx, task) = watch_dir(dir.path()).await.unwrap();
    drop(rx);
    tokio::time::timeout(Duration::from_secs(2), task).await.expect("task ends").unwrap();
}

#[tokio::test]
async fn missing_directory_is_a_clear_error() {
    let err = watch_dir("/nonexistent/ferry-state-test").await.unwrap_err();
    assert!(err.to_string().contains("/nonexistent/ferry-state-test"), "{err}");
    let file = tempfile::NamedTempFile::new().unwrap();
    let err = ferry_state::load_dir(file.path()).unwrap_err();
    assert!(err.to_string().contains("not a directory"), "{err}");
}

#[tokio::test]
async fn relative_directory_path_removes_what_it_added() {
    // Scans and inotify events must name a file the same way, or a removed
    // file's objects would linger under a second spelling.
    let dir = tempfile::tempdir().unwrap();
    let cwd = std::env::current_dir().unwrap().canonicalize().unwrap();
    let ups = "../".repeat(cwd.components().count() - 1);
    let rel = format!("{ups}{}", dir.path().canonicalize().unwrap().display().to_string().trim_start_matches('/'));
    write(&dir.path().join("a.yaml"), &svc("a", "10.96.6.1"));
    let (mut rx, _task) = watch_dir(&rel).await.unwrap();
    write(&dir.path().join("b.yaml"), &svc("b", "10.96.6.2"));
    eventually(&mut rx, BUDGET, "add", |s| vip(s, "b").is_some()).await;
    std::fs::remove_file(dir.path().join("a.yaml")).unwrap();
    std::fs::remove_file(dir.path().join("b.yaml")).unwrap();
    eventually(&mut rx, BUDGET, "remove", |s| s.catalog.services.is_empty()).await;
}

// Multi-threaded: the writer below blocks its thread, the source must keep running.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_directory_that_never_goes_quiet_still_publishes() {
    let dir = tempfile::tempdir().unwrap();
    let (mut rx, _task) = watch_dir(dir.path()).await.unwrap();
    // A writer saving files back to back for 300 ms: the quiet period never
    // elapses, yet the first Service must show up in time.
    let path = dir.path().to_path_buf();
    let writer = std::thread::spawn(move || {
        let start = Instant::now();
        let mut i = 0u32;
        while start.elapsed() < Duration::from_millis(300) {
            // Saved the way editors save: a temporary renamed into place.
            let tmp = path.join("save.tmp");
            write(&tmp, &svc(&format!("s{}", i % 20), &format!("10.96.7.{}", i % 250)));
            std::fs::rename(&tmp, path.join(format!("s{}.yaml", i % 20))).unwrap();
            i += 1;
        }
    });
    eventually(&mut rx, BUDGET, "busy directory", |s| vip(s, "s0").is_some()).await;
    writer.join().unwrap();
}
