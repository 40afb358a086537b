//! The Maglev array written through its shared mapping (privileged: a real
//! pinned map). What the programs index is what the syscall reads back, at
//! page boundaries and at the array's end, and a write outside the mapped
//! tables is refused without touching anything.
use ferry_datapath::{load_or_adopt, testing::PinDir, DatapathConfig};

#[test]
fn tables_written_through_the_mapping_read_back_exactly() {
    let pin = PinDir::new();
    let cfg = DatapathConfig::small();
    let (m, tables) = (cfg.maglev_size, cfg.max_tables);
    let mut dp = load_or_adopt(pin.path(), &cfg).expect("load");
    let maglev = &mut dp.maps.maglev;
    assert!(maglev.slots() >= (m * tables) as usize);
    let table_of = |t: u32| -> Vec<u32> { (0..m).map(|s| t * 10_000 + s).collect() };

    // Every table in one mapping (a cold sync), then one table alone in a
    // mapping that starts mid-page (an endpoint change).
    {
        let mut w = maglev.writer(0..=tables - 1, m).expect("map all tables");
        for t in 0..tables {
            w.write_table(t, m, &table_of(t)).unwrap();
        }
    }
    maglev.write_table(17, m, &vec![7; m as usize]).unwrap();

    for t in 0..tables {
        let want = if t == 17 { vec![7; m as usize] } else { table_of(t) };
        let got: Vec<u32> = (0..m).map(|s| maglev.get(t * m + s).unwrap()).collect();
        assert_eq!(got, want, "table {t}");
    }

    // Outside the array, or outside what a writer mapped: an error, no write.
    assert!(maglev.writer(tables..=tables, m).is_err(), "past the array's end");
    let mut w = maglev.writer(3..=4, m).unwrap();
    assert!(w.write_table(9, m, &table_of(9)).is_err(), "table 9 is not in a 3..=4 mapping");
    assert!(w.write_table(3, m, &vec![1; m as usize + 1]).is_err(), "longer than a table");
    drop(w);
    let got: Vec<u32> = (0..m).map(|s| maglev.get(9 * m + s).unwrap()).collect();
    assert_eq!(got, table_of(9));
}
