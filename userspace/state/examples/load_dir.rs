//! Load a directory once and print what it holds and how long it took:
//! `cargo run --release -p ferry-state --example load_dir -- DIR`.
fn main() {
    let dir = std::env::args().nth(1).expect("usage: load_dir DIR");
    let start = std::time::Instant::now();
    let (cat, errors) = ferry_state::load_dir(&dir).expect("load");
    eprintln!(
        "{} services, {} slices, {} errors in {:?}",
        cat.services.len(),
        cat.slices.values().map(|g| g.len()).sum::<usize>(),
        errors.len(),
        start.elapsed()
    );
    for e in errors.iter().take(10) {
        eprintln!("  {e}");
    }
}
