//! One shard of the zone laid out for the lookup on the hot path: an
//! open-addressing table of (hash tag, record offset) and the records back
//! to back in one buffer, each the name followed by its pre-encoded answers.
//!
//! Why: the answer to a query is a handful of dependent memory reads, and on
//! a server whose cache the kernel's socket work keeps cold each is a miss.
//! Through the patchable shard (`HashMap<Arc<[u8]>, Arc<Entry>>`) a found
//! name costs six (map header, control bytes, bucket, key, entry, answer
//! bytes); here three (header, slot, record), the record's lines adjacent.
//! A shard is recompiled from its patchable twin whenever a change touches
//! it (a few hundred names: tens of microseconds).

use std::sync::Arc;

use super::{Entry, Shard};
use crate::wire::PreRef;

/// Slot bits: the high half of the name's hash as a tag, the low half the
/// record's offset + 1 (0 is an empty slot).
const TAG: u64 = 0xffff_ffff_0000_0000;
/// Per answer: type u16, glue records u16, prefix length u32, length u32.
const HDR: usize = 12;

/// Held by value in the zone (the contents are shared), so the zone's 256
/// headers sit in a few contiguous lines that every query touches and that
/// stay cached.
#[derive(Default, Clone)]
pub struct Compact {
    mask: usize,
    slots: Arc<[u64]>,
    arena: Arc<[u8]>,
    /// The entries themselves, for what the hot path does not answer
    /// (CNAME targets).
    entries: Arc<[Arc<Entry>]>,
}

fn slot_of(hash: u64, mask: usize) -> usize {
    // Bits below the tag and above the shard's (which are the top 8).
    (hash >> 24) as usize & mask
}

impl Compact {
    pub fn build(shard: &Shard, hash: impl Fn(&[u8]) -> u64) -> Compact {
        if shard.is_empty() {
            return Compact::default();
        }
        // At most half full: probes stay short.
        let cap = (shard.len() * 2).next_power_of_two();
        let mask = cap - 1;
        let mut slots = vec![0u64; cap];
        let size: usize = shard
            .iter()
            .map(|(k, e)| 7 + k.len() + e.rrsets.iter().map(|(_, p)| HDR + p.bytes.len()).sum::<usize>())
            .sum();
        let mut arena = Vec::with_capacity(size);
        let mut entries = Vec::with_capacity(shard.len());
        for (key, entry) in shard {
            let off = arena.len();
            // Names are at most 255 bytes, and a name has one RRset per type
            // it holds (a handful): both fit a byte.
            arena.push(key.len() as u8);
            arena.extend_from_slice(key);
            arena.extend_from_slice(&(entries.len() as u32).to_le_bytes());
            arena.push(entry.cname.is_some() as u8);
            arena.push(entry.rrsets.len() as u8);
            for (t, p) in &entry.rrsets {
                arena.extend_from_slice(&t.to_le_bytes());
                arena.extend_from_slice(&p.additionals.to_le_bytes());
                arena.extend_from_slice(&(p.prefix_len as u32).to_le_bytes());
                arena.extend_from_slice(&(p.bytes.len() as u32).to_le_bytes());
            }
            for (_, p) in &entry.rrsets {
                arena.extend_from_slice(&p.bytes);
            }
            entries.push(entry.clone());
            let h = hash(key);
            let mut i = slot_of(h, mask);
            while slots[i] != 0 {
                i = (i + 1) & mask;
            }
            slots[i] = (h & TAG) | (off as u64 + 1);
        }
        Compact { mask, slots: slots.into(), arena: arena.into(), entries: entries.into() }
    }

    /// Start loading the slot `hash` probes first, for a lookup soon.
    #[inline]
    pub fn prefetch_slot(&self, hash: u64) {
        if let Some(s) = self.slots.get(slot_of(hash, self.mask)) {
            prefetch(s as *const u64 as *const u8);
        }
    }

    /// Start loading the record in the slot `hash` probes first (its
    /// slot already loaded by [`Self::prefetch_slot`]).
    #[inline]
    pub fn prefetch_record(&self, hash: u64) {
        if let Some(&s) = self.slots.get(slot_of(hash, self.mask)) {
            if s != 0 && s & TAG == hash & TAG {
                // A record (name, headers, an answer or two) spans a few
                // lines; the answer copied out is among them.
                let off = (s & !TAG) as usize - 1;
                for line in (off..(off + 192).min(self.arena.len())).step_by(64) {
                    prefetch(&self.arena[line]);
                }
            }
        }
    }

    /// The record of `key` (lowercased wire name) whose hash is `hash`.
    #[inline]
    pub fn get(&self, hash: u64, key: &[u8]) -> Option<Hit<'_>> {
        if self.slots.is_empty() {
            return None;
        }
        let tag = hash & TAG;
        let mut i = slot_of(hash, self.mask);
        loop {
            let s = self.slots[i];
            if s == 0 {
                return None;
            }
            if s & TAG == tag {
                let off = (s & !TAG) as usize - 1;
                let len = self.arena[off] as usize;
                let at = off + 1 + len;
                if self.arena[off + 1..at] == *key {
                    return Some(Hit { c: self, at });
                }
            }
            i = (i + 1) & self.mask;
        }
    }
}

/// A name found: its answers by type, read in place.
#[derive(Clone, Copy)]
pub struct Hit<'a> {
    c: &'a Compact,
    /// Offset of the record's fields after the name.
    at: usize,
}

impl<'a> Hit<'a> {
    fn u16_at(&self, i: usize) -> u16 {
        u16::from_le_bytes([self.c.arena[i], self.c.arena[i + 1]])
    }
    fn u32_at(&self, i: usize) -> u32 {
        u32::from_le_bytes(self.c.arena[i..i + 4].try_into().expect("4 bytes"))
    }

    pub fn entry(&self) -> &'a Entry {
        &self.c.entries[self.u32_at(self.at) as usize]
    }

    /// An ExternalName alias (the answers are then in [`Self::entry`]).
    pub fn is_alias(&self) -> bool {
        self.c.arena[self.at + 4] != 0
    }

    /// The answer for type `t`, or the first RRset with `None` (for ANY).
    pub fn rrset(&self, t: Option<u16>) -> Option<PreRef<'a>> {
        let n = self.c.arena[self.at + 5] as usize;
        let headers = self.at + 6;
        let mut data = headers + n * HDR;
        for k in 0..n {
            let h = headers + k * HDR;
            let len = self.u32_at(h + 8) as usize;
            if t.is_none_or(|t| t == self.u16_at(h)) {
                return Some(PreRef {
                    bytes: &self.c.arena[data..data + len],
                    prefix_len: self.u32_at(h + 4) as usize,
                    additionals: self.u16_at(h + 2),
                });
            }
            data += len;
        }
        None
    }
}

#[inline]
fn prefetch(p: *const u8) {
    #[cfg(target_arch = "x86_64")]
    // SAFETY: a prefetch is a hint; it never faults, whatever the address.
    unsafe {
        std::arch::x86_64::_mm_prefetch::<{ std::arch::x86_64::_MM_HINT_T0 }>(p.cast());
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = p;
}
