//! Times a full and an incremental zone build for a fixture (dev tool).
fn main() {
    let p = std::path::PathBuf::from(std::env::args().nth(1).expect("fixture path"));
    let (mut cat, _) = ferry_state::load_fixture(&p).unwrap();
    let mut cache = ferry_dns::zone::ZoneCache::new(Default::default());
    let t = std::time::Instant::now();
    let z = cache.build(&cat).unwrap();
    println!("full build: {:?} ({} names)", t.elapsed(), z.len());
    drop(z);
    let (k, mut s) = cat.services.iter().next().map(|(k, s)| (k.clone(), (**s).clone())).unwrap();
    s.key.name = "changed".into();
    cat.services.insert(ferry_state::ObjectKey::new(k.namespace, "changed"), std::sync::Arc::new(s));
    let t = std::time::Instant::now();
    let z = cache.build(&cat).unwrap();
    println!("incremental build: {:?} ({} names)", t.elapsed(), z.len());
}
