use std::time::Instant;
fn main() {
    let path = std::env::args().nth(1).unwrap();
    let text = std::fs::read_to_string(&path).unwrap();
    let t = Instant::now();
    let v: serde_json::Value = serde_json::from_str(&text).unwrap();
    eprintln!("value parse {:?}", t.elapsed());
    let t = Instant::now();
    let items = v["items"].as_array().unwrap();
    let mut n = 0;
    for it in items {
        if it["kind"] == "Service" {
            let s: k8s_openapi::api::core::v1::Service =
                serde::Deserialize::deserialize(it).unwrap();
            n += s.metadata.name.is_some() as usize;
        }
        if it["kind"] == "EndpointSlice" {
            let s: k8s_openapi::api::discovery::v1::EndpointSlice =
                serde::Deserialize::deserialize(it).unwrap();
            n += s.metadata.name.is_some() as usize;
        }
    }
    eprintln!("typed {:?} {n}", t.elapsed());
    let t = Instant::now();
    let (objs, errs) =
        ferry_state::parse::parse_text(&text, ferry_state::Format::Json, "x").unwrap();
    eprintln!("parse_text {:?} {} {}", t.elapsed(), objs.len(), errs.len());
    let t = Instant::now();
    let cat = ferry_state::catalog_from_objects(objs);
    eprintln!("store {:?} {}", t.elapsed(), cat.services.len());
    let t = Instant::now();
    let c2 = cat.clone();
    eprintln!("clone {:?} {}", t.elapsed(), c2.services.len());
    for _ in 0..3 {
        let t = Instant::now();
        let c3 = cat.clone();
        let a = t.elapsed();
        drop(c3);
        eprintln!("clone {:?} +drop {:?}", a, t.elapsed());
    }
}
