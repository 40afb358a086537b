//! Maglev consistent hashing (Eisenbud et al., "Maglev: A Fast and Reliable
//! Software Network Load Balancer", NSDI 2016, section 3.4).
//!
//! Each backend gets a permutation of the `m` table slots from two hashes of
//! its identity (`offset = h1 % m`, `skip = h2 % (m - 1) + 1`, slot j =
//! `(offset + j * skip) % m`); backends take turns claiming their next
//! unclaimed preferred slot until the table is full. Because a backend's
//! preferences depend only on its own identity (the endpoint address, not the
//! id the agent happened to allocate), removing or adding one backend moves
//! little more than the slots it loses or gains, and the same set of backends
//! always yields the same table — in this agent and in a restarted one.

use thiserror::Error;

#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum MaglevError {
    #[error("maglev table size {0} is not a prime (the permutation needs a prime to visit every slot)")]
    NotPrime(u32),
    #[error("maglev table size {size} is smaller than the {backends} backends it must hold")]
    TooSmall { size: u32, backends: usize },
}

/// Checks the table size once, at start-up: every later build trusts it.
pub fn validate_size(m: u32) -> Result<(), MaglevError> {
    if is_prime(m) {
        Ok(())
    } else {
        Err(MaglevError::NotPrime(m))
    }
}

pub fn is_prime(n: u32) -> bool {
    if n < 2 {
        return false;
    }
    let n = u64::from(n);
    let mut d = 2u64;
    while d * d <= n {
        if n % d == 0 {
            return false;
        }
        d += 1;
    }
    true
}

/// One table entry's candidate: the value stored in the slot (the backend
/// id) and the bytes its permutation is derived from (its identity).
#[derive(Debug, Clone, Copy)]
pub struct Entry<'a> {
    pub id: u32,
    pub identity: &'a [u8],
}

/// Builds the lookup table of size `m` (prime, checked by
/// [`validate_size`]). Returns an empty table when there are no backends.
/// Entries are sorted by identity first, so the caller's order does not
/// matter (ties in the turn order would otherwise change the table).
pub fn build(entries: &[Entry<'_>], m: u32) -> Result<Vec<u32>, MaglevError> {
    if entries.is_empty() {
        return Ok(Vec::new());
    }
    if entries.len() > m as usize {
        return Err(MaglevError::TooSmall { size: m, backends: entries.len() });
    }
    let mut sorted: Vec<&Entry<'_>> = entries.iter().collect();
    sorted.sort_by(|a, b| a.identity.cmp(b.identity));

    let m64 = u64::from(m);
    // (current slot, skip) per backend: the permutation's j-th slot
    // `(offset + j * skip) % m` is walked by adding `skip` and wrapping,
    // without materialising n * m entries or dividing per probe.
    let mut perms: Vec<(u32, u32)> = sorted
        .iter()
        .map(|e| {
            let offset = hash(e.identity, SEED_OFFSET) % m64;
            let skip = if m > 1 { hash(e.identity, SEED_SKIP) % (m64 - 1) + 1 } else { 1 };
            (offset as u32, skip as u32)
        })
        .collect();
    let advance = |cur: &mut u32, skip: u32| {
        // cur < m and skip < m, so one subtraction wraps (u64: no overflow).
        let next = u64::from(*cur) + u64::from(skip);
        *cur = if next >= m64 { (next - m64) as u32 } else { next as u32 };
    };

    const EMPTY: u32 = u32::MAX;
    let mut table = vec![EMPTY; m as usize];
    let mut filled = 0u32;
    'fill: loop {
        for (i, (cur, skip)) in perms.iter_mut().enumerate() {
            while table[*cur as usize] != EMPTY {
                advance(cur, *skip);
            }
            table[*cur as usize] = sorted[i].id;
            advance(cur, *skip);
            filled += 1;
            if filled == m {
                break 'fill;
            }
        }
    }
    Ok(table)
}

const SEED_OFFSET: u64 = 0x9e37_79b9_7f4a_7c15;
const SEED_SKIP: u64 = 0xc2b2_ae3d_27d4_eb4f;

/// FNV-1a over the identity, then the splitmix64 finaliser so that similar
/// identities (10.0.0.1:80 vs 10.0.0.2:80) spread over the whole range.
/// Written out rather than taken from `std::hash`, whose output may change
/// between Rust releases: tables must be identical across agent versions so
/// an upgrade does not move flows.
fn hash(bytes: &[u8], seed: u64) -> u64 {
    let mut h = 0xcbf2_9ce4_8422_2325u64 ^ seed;
    for &b in bytes {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h ^= h >> 30;
    h = h.wrapping_mul(0xbf58_476d_1ce4_e5b9);
    h ^= h >> 27;
    h = h.wrapping_mul(0x94d0_49bb_1331_11eb);
    h ^ (h >> 31)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn identities(n: usize) -> Vec<String> {
        (0..n).map(|i| format!("10.244.{}.{}:8080", i / 250, i % 250 + 2)).collect()
    }

    fn table(ids: &[String], m: u32) -> Vec<u32> {
        let entries: Vec<Entry<'_>> =
            ids.iter().enumerate().map(|(i, s)| Entry { id: i as u32 + 100, identity: s.as_bytes() }).collect();
        build(&entries, m).unwrap()
    }

    fn counts(t: &[u32]) -> std::collections::BTreeMap<u32, usize> {
        let mut c = std::collections::BTreeMap::new();
        for &id in t {
            *c.entry(id).or_default() += 1;
        }
        c
    }

    /// The table is the paper's (section 3.4, Pseudocode 1) computed with
    /// `(offset + j * skip) % m` per probe: the incremental walk must not
    /// change a single slot, or an agent upgrade would move flows.
    #[test]
    fn same_table_as_the_papers_formula() {
        fn reference(ids: &[String], m: u32) -> Vec<u32> {
            let mut sorted: Vec<(usize, &String)> = ids.iter().enumerate().collect();
            sorted.sort_by(|a, b| a.1.as_bytes().cmp(b.1.as_bytes()));
            let m64 = u64::from(m);
            let perm: Vec<(u64, u64)> = sorted
                .iter()
                .map(|(_, s)| (hash(s.as_bytes(), SEED_OFFSET) % m64, hash(s.as_bytes(), SEED_SKIP) % (m64 - 1) + 1))
                .collect();
            let mut next = vec![0u64; sorted.len()];
            let mut t = vec![u32::MAX; m as usize];
            let mut filled = 0;
            loop {
                for (i, &(offset, skip)) in perm.iter().enumerate() {
                    let mut c = (offset + next[i] * skip) % m64;
                    while t[c as usize] != u32::MAX {
                        next[i] += 1;
                        c = (offset + next[i] * skip) % m64;
                    }
                    t[c as usize] = sorted[i].0 as u32 + 100;
                    next[i] += 1;
                    filled += 1;
                    if filled == m {
                        return t;
                    }
                }
            }
        }
        for (n, m) in [(1, 2), (3, 7), (10, 251), (10, 1021), (100, 1021), (7, 65_537)] {
            let ids = identities(n);
            assert_eq!(table(&ids, m), reference(&ids, m), "{n} backends, m = {m}");
        }
    }

    #[test]
    fn sizes_are_checked() {
        let cases: &[(u32, bool)] = &[
            (0, false),
            (1, false),
            (2, true),
            (251, true),
            (1021, true),
            (1024, false),
            (16_381, true),
            (65_537, true),
            (65_536, false),
        ];
        for &(m, ok) in cases {
            assert_eq!(validate_size(m).is_ok(), ok, "m = {m}");
        }
        let ids = identities(3);
        let e: Vec<Entry<'_>> = ids.iter().map(|s| Entry { id: 1, identity: s.as_bytes() }).collect();
        assert_eq!(build(&e, 2), Err(MaglevError::TooSmall { size: 2, backends: 3 }));
        assert!(build(&[], 251).unwrap().is_empty());
    }

    #[test]
    fn every_slot_holds_a_backend_and_shares_are_even() {
        // (backends, table size, allowed deviation from m/n in % of m/n)
        let cases: &[(usize, u32, f64)] =
            &[(1, 251, 0.0), (2, 251, 1.0), (3, 1021, 1.0), (10, 1021, 2.0), (100, 16_381, 2.0)];
        for &(n, m, pct) in cases {
            let t = table(&identities(n), m);
            assert_eq!(t.len(), m as usize);
            let c = counts(&t);
            assert_eq!(c.len(), n, "every backend owns slots (n = {n})");
            let fair = f64::from(m) / n as f64;
            for (&id, &k) in &c {
                let dev = (k as f64 - fair).abs() / fair * 100.0;
                assert!(dev <= pct + 100.0 / fair, "n={n} m={m} id={id}: {k} slots vs {fair:.1}");
            }
        }
    }

    #[test]
    fn deterministic_and_order_independent() {
        let ids = identities(7);
        let a = table(&ids, 1021);
        let b = table(&ids, 1021);
        assert_eq!(a, b);
        // Same identities with the same ids, given in reverse order.
        let entries: Vec<Entry<'_>> =
            ids.iter().enumerate().rev().map(|(i, s)| Entry { id: i as u32 + 100, identity: s.as_bytes() }).collect();
        assert_eq!(build(&entries, 1021).unwrap(), a);
    }

    /// Fraction of slots whose backend changed, among slots whose old
    /// backend is still present (slots of a removed backend must move).
    fn moved(old: &[u32], new: &[u32], still_present: impl Fn(u32) -> bool) -> f64 {
        let candidates: Vec<usize> = (0..old.len()).filter(|&i| still_present(old[i])).collect();
        let moved = candidates.iter().filter(|&&i| old[i] != new[i]).count();
        moved as f64 / candidates.len() as f64
    }

    #[test]
    fn removing_or_adding_one_backend_moves_few_other_slots() {
        // (backends before, table size, max fraction of surviving slots that move)
        // Maglev trades a little disruption for balance; the paper reports a
        // few % for small tables, shrinking as m/n grows.
        let cases: &[(usize, u32, f64)] = &[(3, 1021, 0.05), (10, 1021, 0.08), (50, 16_381, 0.05)];
        for &(n, m, max) in cases {
            let ids = identities(n + 1);
            let full = table(&ids, m);
            // Remove the backend in the middle (id 100 + n/2).
            let removed = 100 + (n / 2) as u32;
            let entries: Vec<Entry<'_>> = ids
                .iter()
                .enumerate()
                .filter(|(i, _)| *i != n / 2)
                .map(|(i, s)| Entry { id: i as u32 + 100, identity: s.as_bytes() })
                .collect();
            let after = build(&entries, m).unwrap();
            assert!(!after.contains(&removed), "removed backend owns no slot");
            let f = moved(&full, &after, |id| id != removed);
            assert!(f <= max, "remove: n={n} m={m}: {:.1}% of surviving slots moved", f * 100.0);
            // Adding it back restores the original table exactly.
            assert_eq!(build(&entries_with_all(&ids), m).unwrap(), full);
            // Adding (the reverse direction): slots not taken by the new
            // backend mostly stay where they were.
            let f_add = moved(&after, &full, |_| true);
            let taken = full.iter().filter(|&&id| id == removed).count() as f64 / f64::from(m);
            assert!(f_add <= taken + max, "add: n={n} m={m}: moved {:.1}%", f_add * 100.0);
        }
    }

    fn entries_with_all(ids: &[String]) -> Vec<Entry<'_>> {
        ids.iter().enumerate().map(|(i, s)| Entry { id: i as u32 + 100, identity: s.as_bytes() }).collect()
    }
}
