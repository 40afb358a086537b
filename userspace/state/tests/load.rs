//! The benchmark-sized cluster (the shared DNS harness's `large_cluster.json`
//! shape: 10,000 ClusterIP Services with a 2-endpoint slice each, 500
//! headless Services with 5 endpoints, 100 Namespaces, one JSON `List`):
//! it must load well under a second, and a change beside it must still reach
//! consumers inside the 100 ms budget.

use std::time::{Duration, Instant};

use serde_json::json;

/// Same objects as /work/shared/bench/dns/gen_large_cluster.py.
fn large_cluster() -> serde_json::Value {
    let ports = json!([{"name": "http", "port": 80, "protocol": "TCP", "targetPort": 80},
                       {"name": "grpc", "port": 9090, "protocol": "TCP", "targetPort": 9090}]);
    let eports =
        json!([{"name": "http", "port": 80, "protocol": "TCP"}, {"name": "grpc", "port": 9090, "protocol": "TCP"}]);
    let mut items = Vec::new();
    for nsi in 0..100u32 {
        let ns = format!("ns-{nsi:02}");
        items.push(json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}}));
        for si in 0..100u32 {
            let k = nsi * 100 + si + 1;
            let ip = format!("10.96.{}.{}", k / 250, k % 250 + 1);
            let name = format!("svc-{si:03}");
            items.push(json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": name, "namespace": ns},
                "spec": {"type": "ClusterIP", "clusterIP": ip, "clusterIPs": [ip], "ports": ports, "selector": {"app": name}}}));
            let eps: Vec<_> = (0..2)
                .map(|j| {
                    let p = (nsi * 100 + si) * 2 + j;
                    json!({"addresses": [format!("10.245.{}.{}", p / 250, p % 250 + 1)], "conditions": {"ready": true}})
                })
                .collect();
            items.push(json!({"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
                "metadata": {"name": format!("{name}-a"), "namespace": ns, "labels": {"kubernetes.io/service-name": name}},
                "addressType": "IPv4", "ports": eports, "endpoints": eps}));
        }
        for hi in 0..5u32 {
            let name = format!("hl-{hi}");
            items.push(json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": name, "namespace": ns},
                "spec": {"type": "ClusterIP", "clusterIP": "None", "clusterIPs": ["None"], "ports": ports}}));
            let eps: Vec<_> = (0..5)
                .map(|pi| {
                    let p = (nsi * 5 + hi) * 5 + pi;
                    json!({"addresses": [format!("10.244.{}.{}", p / 250, p % 250 + 1)], "hostname": format!("pod-{pi}"), "conditions": {"ready": true}})
                })
                .collect();
            items.push(json!({"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
                "metadata": {"name": format!("{name}-a"), "namespace": ns, "labels": {"kubernetes.io/service-name": name}},
                "addressType": "IPv4", "ports": eports, "endpoints": eps}));
        }
    }
    json!({"apiVersion": "v1", "kind": "List", "items": items})
}

fn write_large(dir: &std::path::Path) {
    let list = large_cluster();
    assert_eq!(list["items"].as_array().unwrap().len(), 21_100);
    std::fs::write(dir.join("large_cluster.json"), serde_json::to_vec(&list).unwrap()).unwrap();
}

#[test]
fn large_cluster_json_loads_fast() {
    let dir = tempfile::tempdir().unwrap();
    write_large(dir.path());
    let start = Instant::now();
    let (cat, errors) = ferry_state::load_dir(dir.path()).unwrap();
    let took = start.elapsed();
    eprintln!("large cluster (21,100 items, {} services): loaded in {took:?}", cat.services.len());
    assert!(errors.is_empty(), "{errors:?}");
    assert_eq!(cat.services.len(), 10_500);
    assert_eq!(cat.services.values().filter(|s| s.headless).count(), 500);
    assert_eq!(cat.slices.values().flatten().map(|s| s.endpoints.len()).sum::<usize>(), 10_000 * 2 + 500 * 5);
    let svc = cat.service("ns-42", "svc-007").unwrap();
    assert_eq!(svc.cluster_ips[0].to_string(), "10.96.16.209"); // k = 4208
                                                                // Generous bound for a loaded CI machine; the figure printed above is
                                                                // the one to watch (~0.3-0.5 s on this 2-core box under load).
    assert!(took < Duration::from_secs(3), "took {took:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn change_beside_a_large_cluster_within_budget() {
    let dir = tempfile::tempdir().unwrap();
    write_large(dir.path());
    let (mut rx, _task) = ferry_state::watch_dir(dir.path()).await.unwrap();
    assert_eq!(rx.borrow().catalog.services.len(), 10_500);
    let mut worst = Duration::ZERO;
    for i in 0..5 {
        // Isolated changes, as a Service appearing is: the store's copy of
        // the previous change (done after publishing) has finished.
        tokio::time::sleep(Duration::from_millis(150)).await;
        let f = dir.path().join("new.yaml");
        std::fs::write(&f, format!("apiVersion: v1\nkind: Service\nmetadata: {{name: new, namespace: ns-00}}\nspec: {{clusterIP: 10.97.0.{i}}}\n")).unwrap();
        let start = Instant::now();
        let want = format!("10.97.0.{i}");
        tokio::time::timeout(
            Duration::from_secs(2),
            rx.wait_for(|s| s.catalog.service("ns-00", "new").is_some_and(|s| s.cluster_ips[0].to_string() == want)),
        )
        .await
        .expect("change published")
        .unwrap();
        worst = worst.max(start.elapsed());
    }
    eprintln!("large cluster: worst file-to-snapshot latency over 5 changes: {worst:?}");
    assert!(worst < Duration::from_millis(100), "worst {worst:?}");
}

/// A directory of many small files (one per Service, as `kubectl get -o yaml`
/// per object would leave) is read on several threads: every good object
/// arrives and each bad file or object is reported once, in name order.
#[test]
fn many_files_load_like_one_by_one() {
    let dir = tempfile::tempdir().unwrap();
    for i in 0..300u32 {
        let body = format!(
            "apiVersion: v1\nkind: Service\nmetadata: {{name: s{i}, namespace: ns}}\nspec: {{clusterIP: 10.96.{}.{}, ports: [{{port: 80}}]}}\n",
            i / 250,
            i % 250 + 1
        );
        std::fs::write(dir.path().join(format!("svc-{i:03}.yaml")), body).unwrap();
    }
    std::fs::write(dir.path().join("svc-100.yaml"), "kind: [unclosed\n").unwrap();
    std::fs::write(
        dir.path().join("svc-200.yaml"),
        "apiVersion: v1\nkind: Service\nmetadata: {name: s200, namespace: ns}\nspec: {clusterIP: 10.96.999.1}\n",
    )
    .unwrap();
    std::fs::write(dir.path().join("notes.txt"), "not a manifest").unwrap();
    let (cat, errors) = ferry_state::load_dir(dir.path()).unwrap();
    assert_eq!(cat.services.len(), 298, "{errors:?}");
    assert!(cat.service("ns", "s100").is_none() && cat.service("ns", "s200").is_none());
    assert_eq!(cat.service("ns", "s299").unwrap().cluster_ips[0].to_string(), "10.96.1.50");
    let origins: Vec<_> = errors.iter().map(|e| e.origin.rsplit('/').next().unwrap().to_string()).collect();
    assert_eq!(origins, ["svc-100.yaml", "svc-200.yaml"], "{errors:?}");
}
