//! `FERRY_MAGLEV` seen from userspace: the flat slot space
//! `table * maglev_size + slot -> backend id`, written through a shared
//! mapping of the (mmappable) array.
//!
//! Why a mapping: the kernel copies array updates one element at a time,
//! batch or not; 10,000 tables x 1021 slots cost 1.3-2.3 s that way, a
//! memcpy into the map's own pages costs milliseconds. The mapping lives
//! only while a run of tables is written ([`MaglevTables::writer`]): pages
//! of a shared mapping count in the process's RSS, and the agent has no
//! reason to hold 40 MB of kernel memory in its address space between
//! syncs.
use std::{num::NonZeroUsize, os::fd::AsFd, path::PathBuf, ptr::NonNull};

use aya::maps::{Array, IterableMap, MapData};
use ferry_common::{map_names, MaglevPair, MAGLEV_SLOTS_PER_ENTRY};
use nix::sys::mman::{mmap, munmap, MapFlags, ProtFlags};

use crate::{Error, Result};

/// The Maglev array of a loaded data path.
pub struct MaglevTables {
    map: Array<MapData, MaglevPair>,
    path: PathBuf,
}

impl MaglevTables {
    pub(crate) fn new(map: Array<MapData, MaglevPair>, path: PathBuf) -> Self {
        Self { map, path }
    }

    /// Number of u32 slots (all tables).
    pub fn slots(&self) -> usize {
        self.map.len() as usize * MAGLEV_SLOTS_PER_ENTRY as usize
    }

    /// One slot, read through the syscall (for inspection and tests).
    pub fn get(&self, slot: u32) -> Result<u32> {
        let pair = self.map.get(&(slot / MAGLEV_SLOTS_PER_ENTRY), 0).map_err(|source| Error::Map {
            name: map_names::MAGLEV,
            path: self.path.clone(),
            source,
        })?;
        Ok(pair.ids[(slot % MAGLEV_SLOTS_PER_ENTRY) as usize])
    }

    /// Maps the pages holding tables `first..=last` for writing until the
    /// returned writer is dropped. Only those pages: setting up and tearing
    /// down a mapping costs per page (the whole default array is 16k pages,
    /// ~10 ms), and one endpoint change rewrites one table.
    pub fn writer(&mut self, tables: std::ops::RangeInclusive<u32>, maglev_size: u32) -> Result<MaglevWriter<'_>> {
        let (first, last) = (*tables.start() as usize, *tables.end() as usize);
        let size = maglev_size as usize;
        let (lo, hi) = (first * size, (last + 1) * size);
        if first > last || hi > self.slots() {
            return Err(Error::Config(format!(
                "Maglev tables {first}..={last} of {size} slots are outside the array ({} slots)",
                self.slots()
            )));
        }
        let page = page_size();
        let offset = lo * 4 / page * page;
        let len = (hi * 4).div_ceil(page) * page - offset;
        let fd = self.map.map().fd().as_fd();
        // SAFETY: a fresh shared mapping of the map's data pages; the kernel
        // refuses (EINVAL/EPERM) a range beyond the array or a map created
        // without BPF_F_MMAPABLE. Only u32 stores go through it; programs
        // read the same slots concurrently, which is what double-buffered
        // tables are for (a table being written is not yet referenced).
        let ptr = unsafe {
            mmap(
                None,
                NonZeroUsize::new(len).expect("at least one table"),
                ProtFlags::PROT_READ | ProtFlags::PROT_WRITE,
                MapFlags::MAP_SHARED,
                fd,
                offset as libc::off_t,
            )
        }
        .map_err(|e| Error::Io {
            op: "mmap (was the map created without BPF_F_MMAPABLE? remove the pin to recreate it)",
            path: self.path.clone(),
            source: e.into(),
        })?;
        Ok(MaglevWriter {
            ptr: ptr.cast(),
            len,
            first_slot: offset / 4,
            slots: ((offset + len) / 4).min(self.slots()),
            _tables: std::marker::PhantomData,
        })
    }

    /// Writes one table (convenience for tests and one-off writers).
    pub fn write_table(&mut self, table: u32, maglev_size: u32, ids: &[u32]) -> Result<()> {
        self.writer(table..=table, maglev_size)?.write_table(table, maglev_size, ids)
    }
}

fn page_size() -> usize {
    // SAFETY: sysconf has no preconditions.
    let n = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    if n > 0 {
        n as usize
    } else {
        4096
    }
}

/// A writable mapping of the Maglev array; unmapped on drop.
pub struct MaglevWriter<'a> {
    ptr: NonNull<u32>,
    /// Bytes mapped.
    len: usize,
    /// Slot at the start of the mapping, and one past the last slot it
    /// holds (the array's end may fall inside the last page).
    first_slot: usize,
    slots: usize,
    _tables: std::marker::PhantomData<&'a mut MaglevTables>,
}

// SAFETY: the mapping is plain shared memory owned by this value, so it
// may move to another thread. It is deliberately not Sync: writes take
// `&mut self`, so safe code cannot have two threads storing through it.
unsafe impl Send for MaglevWriter<'_> {}

impl MaglevWriter<'_> {
    /// Copies `ids` into table `table` (slots `table * maglev_size ..`).
    pub fn write_table(&mut self, table: u32, maglev_size: u32, ids: &[u32]) -> Result<()> {
        let start = table as usize * maglev_size as usize;
        if ids.len() > maglev_size as usize || start < self.first_slot || start + ids.len() > self.slots {
            return Err(Error::Config(format!(
                "Maglev table {table} ({} slots of {maglev_size}) is outside the mapped slots {}..{}",
                ids.len(),
                self.first_slot,
                self.slots
            )));
        }
        // SAFETY: the range is inside the mapping (checked above), and
        // `&mut self` makes this the only writer through it. Volatile
        // is not needed: the service entry that publishes the table is
        // written afterwards through a syscall, which orders the stores.
        unsafe {
            std::ptr::copy_nonoverlapping(ids.as_ptr(), self.ptr.as_ptr().add(start - self.first_slot), ids.len())
        };
        Ok(())
    }
}

impl Drop for MaglevWriter<'_> {
    fn drop(&mut self) {
        // SAFETY: unmapping exactly what `writer` mapped.
        let _ = unsafe { munmap(self.ptr.cast(), self.len) };
    }
}
