//! Table tests of the planner: each row is a desired state applied to the
//! previous row's result, with the ops expected, rendered compactly.

use super::*;
use ferry_state::ObjectKey;

const LIMITS: Limits = Limits { maglev_size: 7, max_tables: 8, max_services: 8, max_backends: 32 };

fn fe(vip: &str, port: u16) -> Frontend {
    Frontend { vip: vip.parse().unwrap(), port, proto: Protocol::Tcp }
}

/// `"10.0.0.1:80=A"` style backends.
fn want(backends: &[&str]) -> DesiredFrontend {
    DesiredFrontend {
        service: ObjectKey::new("default", "web"),
        port_name: String::new(),
        backends: backends
            .iter()
            .map(|s| {
                let (addr, st) = s.split_once('=').unwrap();
                let (ip, port) = addr.rsplit_once(':').unwrap();
                let state = if st == "A" { BackendState::Active } else { BackendState::Terminating };
                (BackendAddr { ip: ip.parse().unwrap(), port: port.parse().unwrap() }, state)
            })
            .collect(),
        affinity_timeout_s: None,
        local_only: false,
    }
}

/// One line per op: `put-backend 2 10.0.0.3:80 A`, `table 1`, `service 0 n=3 t=1`...
fn render(ops: &[Op]) -> Vec<String> {
    ops.iter()
        .map(|op| match op {
            Op::PutBackend { id, value } => format!(
                "put-backend {id} {} {}",
                backend_addr(value).unwrap(),
                if value.state == backend_state::ACTIVE { "A" } else { "T" }
            ),
            Op::WriteTable { table, .. } => format!("table {table}"),
            Op::ResetCounters { service_id } => format!("reset {service_id}"),
            Op::PutService { key, value } => {
                let t = if value.maglev_table == NO_TABLE { "-".to_string() } else { value.maglev_table.to_string() };
                format!("service {} {} n={} t={t}", value.id, frontend_of(key).unwrap().vip, value.backend_count)
            }
            Op::DeleteService { key } => format!("delete-service {}", frontend_of(key).unwrap().vip),
            Op::DeleteBackend { id } => format!("delete-backend {id}"),
            Op::PutVip { key, frontends } => format!("vip {} n={frontends}", ip_of(&key.addr, key.family).unwrap()),
            Op::DeleteVip { key } => format!("delete-vip {}", ip_of(&key.addr, key.family).unwrap()),
        })
        .collect()
}

/// The invariant every plan keeps: phase numbers never decrease.
fn phase(op: &Op) -> u8 {
    match op {
        Op::PutBackend { value, .. } if value.state == backend_state::ACTIVE => 1,
        Op::PutBackend { .. } => 5,
        Op::WriteTable { .. } => 2,
        Op::ResetCounters { .. } => 6,
        Op::PutService { .. } | Op::DeleteService { .. } => 4,
        Op::DeleteBackend { .. } => 6,
        Op::PutVip { .. } => 1,
        Op::DeleteVip { .. } => 6,
    }
}

type Row<'a> = (&'a str, Vec<(Frontend, DesiredFrontend)>, Vec<&'a str>);

fn run_rows(p: &mut Programmed, rows: Vec<Row<'_>>) {
    for (what, desired, expected) in rows {
        let desired: BTreeMap<Frontend, DesiredFrontend> = desired.into_iter().collect();
        let live: BTreeSet<u32> = p.frontends.values().map(|f| f.value.maglev_table).collect();
        let plan = plan(p, &desired, Scope::All);
        assert!(plan.errors.is_empty(), "{what}: {:?}", plan.errors);
        assert_eq!(render(&plan.ops), expected, "row: {what}");
        let phases: Vec<u8> = plan.ops.iter().map(phase).collect();
        assert!(phases.windows(2).all(|w| w[0] <= w[1]), "{what}: ops out of order {phases:?}");
        // Every table written is one no live service points at.
        for op in &plan.ops {
            if let Op::WriteTable { table, backends } = op {
                assert_eq!(table_slots(backends, LIMITS.maglev_size).len(), LIMITS.maglev_size as usize);
                assert!(!live.contains(table), "{what}: wrote table {table} in use");
            }
        }
    }
}

#[test]
fn lifecycle_of_one_frontend() {
    let a = fe("10.96.0.10", 80);
    let mut p = Programmed::new(LIMITS);
    run_rows(
        &mut p,
        vec![
            // New frontend: backends, table, counters, then the service entry.
            (
                "create",
                vec![(a, want(&["10.0.0.1:80=A", "10.0.0.2:80=A"]))],
                vec![
                    "put-backend 0 10.0.0.1:80 A",
                    "put-backend 1 10.0.0.2:80 A",
                    "vip 10.96.0.10 n=1",
                    "table 0",
                    "service 0 10.96.0.10 n=2 t=0",
                ],
            ),
            // Same desired state: nothing to write.
            ("unchanged", vec![(a, want(&["10.0.0.1:80=A", "10.0.0.2:80=A"]))], vec![]),
            // Add a backend: new id, new table in a FREE slot (1, not 0), switch.
            (
                "add backend",
                vec![(a, want(&["10.0.0.1:80=A", "10.0.0.2:80=A", "10.0.0.3:80=A"]))],
                vec!["put-backend 2 10.0.0.3:80 A", "table 1", "service 0 10.96.0.10 n=3 t=1"],
            ),
            // Demote one to terminating: new table without it, switch, and only
            // then mark it TERMINATING (its flows keep it). Slot 0 is free again.
            (
                "terminating",
                vec![(a, want(&["10.0.0.1:80=A", "10.0.0.2:80=T", "10.0.0.3:80=A"]))],
                vec!["table 0", "service 0 10.96.0.10 n=2 t=0", "put-backend 1 10.0.0.2:80 T"],
            ),
            // Remove it: no table change (it was not in the table), just delete.
            ("remove terminating", vec![(a, want(&["10.0.0.1:80=A", "10.0.0.3:80=A"]))], vec!["delete-backend 1"]),
            // Its id is reused by the next new backend (released last plan).
            (
                "reuse id",
                vec![(a, want(&["10.0.0.1:80=A", "10.0.0.3:80=A", "10.0.0.4:80=A"]))],
                vec!["put-backend 1 10.0.0.4:80 A", "table 1", "service 0 10.96.0.10 n=3 t=1"],
            ),
            // Nothing ready and nothing serving: the service stays with count 0
            // (reject), the table is dropped, backends deleted after the switch.
            (
                "no endpoints",
                vec![(a, want(&[]))],
                vec!["service 0 10.96.0.10 n=0 t=-", "delete-backend 0", "delete-backend 2", "delete-backend 1"],
            ),
            // Only terminating endpoints, none active: no new-flow population.
            ("terminating only", vec![(a, want(&["10.0.0.9:80=T"]))], vec!["put-backend 0 10.0.0.9:80 T"]),
            // Promoted: the backend is ACTIVE before the table points at it.
            (
                "promote",
                vec![(a, want(&["10.0.0.9:80=A"]))],
                vec!["put-backend 0 10.0.0.9:80 A", "table 0", "service 0 10.96.0.10 n=1 t=0"],
            ),
            // Service gone: entry first, then its backends.
            (
                "delete",
                vec![],
                vec!["delete-service 10.96.0.10", "delete-backend 0", "reset 0", "delete-vip 10.96.0.10"],
            ),
        ],
    );
    assert!(p.frontends.is_empty());
}

#[test]
fn ids_released_in_a_plan_are_not_reused_by_it() {
    let a = fe("10.96.0.10", 80);
    let b = fe("10.96.0.11", 80);
    let mut p = Programmed::new(LIMITS);
    run_rows(
        &mut p,
        vec![
            (
                "a",
                vec![(a, want(&["10.0.0.1:80=A"]))],
                vec!["put-backend 0 10.0.0.1:80 A", "vip 10.96.0.10 n=1", "table 0", "service 0 10.96.0.10 n=1 t=0"],
            ),
            // Replacing a by b in one plan: b must not get service id 0, backend
            // id 0 or table 0, which a still uses until its entry is deleted.
            (
                "swap",
                vec![(b, want(&["10.0.0.2:80=A"]))],
                vec![
                    "put-backend 1 10.0.0.2:80 A",
                    "vip 10.96.0.11 n=1",
                    "table 1",
                    "delete-service 10.96.0.10",
                    "service 1 10.96.0.11 n=1 t=1",
                    "delete-backend 0",
                    "reset 0",
                    "delete-vip 10.96.0.10",
                ],
            ),
        ],
    );
}

#[test]
fn flags_and_table_contents() {
    let a = fe("10.96.0.10", 80);
    let mut d = want(&["10.0.0.1:80=A", "10.0.0.2:80=A"]);
    d.affinity_timeout_s = Some(30);
    d.local_only = true;
    let mut p = Programmed::new(LIMITS);
    let plan = plan(&mut p, &BTreeMap::from([(a, d)]), Scope::All);
    let svc = plan.ops.iter().find_map(|op| match op {
        Op::PutService { value, .. } => Some(*value),
        _ => None,
    });
    let svc = svc.unwrap();
    assert_eq!(svc.flags, service_flags::AFFINITY | service_flags::LOCAL_ONLY);
    assert_eq!(svc.affinity_timeout_s, 30);
    // The table holds exactly the two backend ids, every slot filled.
    let slots = plan.ops.iter().find_map(|op| match op {
        Op::WriteTable { backends, .. } => Some(table_slots(backends, LIMITS.maglev_size)),
        _ => None,
    });
    let slots = slots.unwrap();
    assert!(slots.iter().all(|s| *s == 0 || *s == 1));
    assert!(slots.contains(&0) && slots.contains(&1));
    // The key is in wire order.
    let key = service_key(&a);
    assert_eq!(key.port, 80u16.to_be());
    assert_eq!(key.addr[0].to_ne_bytes(), [10, 96, 0, 10]);
    assert_eq!(frontend_of(&key), Some(a));
    let v6 = fe("fd00::10", 443);
    assert_eq!(frontend_of(&service_key(&v6)), Some(v6));
}

/// `FERRY_VIPS` counts the frontends of each address: put when the first
/// appears, rewritten as the count changes, deleted after the last, also
/// when only some frontends are in scope.
#[test]
fn frontend_addresses_follow_their_frontends() {
    let (a80, a53, b) = (fe("10.96.0.10", 80), fe("10.96.0.10", 53), fe("fd00::10", 80));
    let mut p = Programmed::new(LIMITS);
    let vip_ops = |plan: Plan| -> Vec<String> { render(&plan.ops).into_iter().filter(|o| o.contains("vip")).collect() };
    let d = BTreeMap::from([(a80, want(&["10.0.0.1:80=A"])), (b, want(&["fd00::1:80=A"]))]);
    assert_eq!(vip_ops(plan(&mut p, &d, Scope::All)), ["vip 10.96.0.10 n=1", "vip fd00::10 n=1"]);
    let d = BTreeMap::from([(a80, want(&["10.0.0.1:80=A"])), (a53, want(&[])), (b, want(&["fd00::1:80=A"]))]);
    let only = BTreeSet::from([a53]);
    assert_eq!(vip_ops(plan(&mut p, &d, Scope::Only(&only))), ["vip 10.96.0.10 n=2"]);
    let d = BTreeMap::from([(a53, want(&[])), (b, want(&["fd00::1:80=A"]))]);
    let only = BTreeSet::from([a80]);
    assert_eq!(vip_ops(plan(&mut p, &d, Scope::Only(&only))), ["vip 10.96.0.10 n=1"]);
    let only = BTreeSet::from([a53, b]);
    assert_eq!(
        vip_ops(plan(&mut p, &BTreeMap::new(), Scope::Only(&only))),
        ["delete-vip 10.96.0.10", "delete-vip fd00::10"]
    );
    assert!(plan(&mut p, &BTreeMap::new(), Scope::All).ops.is_empty());
}

#[test]
fn scope_limits_the_plan() {
    let (a, b) = (fe("10.96.0.10", 80), fe("10.96.0.11", 80));
    let mut p = Programmed::new(LIMITS);
    let d = BTreeMap::from([(a, want(&["10.0.0.1:80=A"])), (b, want(&["10.0.0.2:80=A"]))]);
    plan(&mut p, &d, Scope::All);
    // Both change, but only b is in scope: a is untouched.
    let d2 = BTreeMap::from([(a, want(&["10.0.0.5:80=A"])), (b, want(&["10.0.0.6:80=A"]))]);
    let only = BTreeSet::from([b]);
    let ops = render(&plan(&mut p, &d2, Scope::Only(&only)).ops);
    assert!(ops.iter().all(|o| !o.contains("10.96.0.10") && !o.contains("10.0.0.5")), "{ops:?}");
    assert!(ops.iter().any(|o| o.contains("10.0.0.6")));
}

/// The maps as a plan's ops leave them (what a restarted agent reads back).
/// Services by key bytes, backends by id and frontend addresses, as the
/// maps would hold them.
type Replayed = (
    BTreeMap<Vec<u32>, (ServiceKey, ServiceValue)>,
    BTreeMap<u32, BackendValue>,
    BTreeMap<Vec<u32>, (EndpointKey, u32)>,
);

fn replay(ops: &[Op], maps: &mut Replayed) {
    let k = |key: &ServiceKey| key.addr.iter().copied().chain([u32::from(key.port)]).collect::<Vec<_>>();
    for op in ops {
        match op {
            Op::PutBackend { id, value } => {
                maps.1.insert(*id, *value);
            }
            Op::DeleteBackend { id } => {
                maps.1.remove(id);
            }
            Op::PutService { key, value } => {
                maps.0.insert(k(key), (*key, *value));
            }
            Op::DeleteService { key } => {
                maps.0.remove(&k(key));
            }
            Op::PutVip { key, frontends } => {
                maps.2.insert(key.addr.to_vec(), (*key, *frontends));
            }
            Op::DeleteVip { key } => {
                maps.2.remove(key.addr.as_slice());
            }
            Op::WriteTable { .. } | Op::ResetCounters { .. } => {}
        }
    }
}

#[test]
fn a_restarted_agent_adopts_ids_and_rebuilds_tables_in_place() {
    let (a, b) = (fe("10.96.0.10", 80), fe("10.96.0.11", 80));
    let d = BTreeMap::from([
        (a, want(&["10.0.0.1:80=A", "10.0.0.2:80=T"])),
        (b, want(&["10.0.0.3:80=A", "10.0.0.4:80=A"])),
    ]);
    let mut first = Programmed::new(LIMITS);
    let mut maps = Default::default();
    replay(&plan(&mut first, &d, Scope::All).ops, &mut maps);
    // A leftover backend of a service that no longer exists.
    maps.1.insert(20, BackendValue { service_id: 7, family: AF_INET, ..Default::default() });
    // The address of a Service deleted while no agent ran, and a count
    // that is wrong.
    let (gone, family) = addr_words(&"10.96.0.99".parse().unwrap());
    maps.2.insert(gone.to_vec(), (EndpointKey { addr: gone, family, _pad: [0; 3] }, 1));
    let (b_addr, _) = addr_words(&b.vip);
    maps.2.get_mut(b_addr.as_slice()).unwrap().1 = 5;

    let mut second = Programmed::adopt(
        LIMITS,
        maps.0.values().copied(),
        maps.1.iter().map(|(k, v)| (*k, *v)),
        maps.2.values().copied(),
    );
    for (fe, f) in &first.frontends {
        let adopted = &second.frontends[fe];
        assert_eq!(adopted.value, f.value, "service entry adopted as is");
        assert_eq!(adopted.backends, f.backends, "backend ids adopted as is");
    }
    // First sync after adoption: each table is rewritten into a free slot
    // and switched (the same backends give the same slots, so no flow
    // moves); no backend is rewritten; the orphan is deleted.
    let ops = render(&plan(&mut second, &d, Scope::All).ops);
    assert_eq!(
        ops,
        vec![
            "vip 10.96.0.11 n=1",
            "table 2",
            "table 3",
            "service 0 10.96.0.10 n=1 t=2",
            "service 1 10.96.0.11 n=2 t=3",
            "delete-backend 20",
            "delete-vip 10.96.0.99",
        ]
    );
    // And then it is steady.
    assert!(plan(&mut second, &d, Scope::All).ops.is_empty());
}

#[test]
fn exhaustion_leaves_the_frontend_untouched() {
    let limits = Limits { max_tables: 1, ..LIMITS };
    let (a, b) = (fe("10.96.0.10", 80), fe("10.96.0.11", 80));
    let mut p = Programmed::new(limits);
    let d = BTreeMap::from([(a, want(&["10.0.0.1:80=A"])), (b, want(&["10.0.0.2:80=A"]))]);
    let result = plan(&mut p, &d, Scope::All);
    assert_eq!(result.errors.len(), 1);
    assert!(matches!(result.errors[0], PlanError::Exhausted { frontend, what: "maglev tables", .. } if frontend == b));
    // Only a was written; nothing at all for b.
    assert!(render(&result.ops).iter().all(|o| !o.contains("10.0.0.2") && !o.contains("10.96.0.11")));
    assert!(!p.frontends.contains_key(&b));
    // More active backends than Maglev slots: reported, not half-written.
    let many: Vec<String> = (1..=8).map(|i| format!("10.0.1.{i}:80=A")).collect();
    let many: Vec<&str> = many.iter().map(String::as_str).collect();
    let d = BTreeMap::from([(a, want(&many))]);
    let result = plan(&mut p, &d, Scope::All);
    assert!(matches!(result.errors[..], [PlanError::Maglev { .. }]), "{:?}", result.errors);
    assert_eq!(p.frontends[&a].backends.len(), 1);
}
