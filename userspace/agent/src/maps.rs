//! The edge where plans meet the kernel: applying [`Op`]s to the pinned maps
//! and reading them back for adoption.

use std::os::fd::{AsFd, AsRawFd};

use aya::maps::{IterableMap, MapError, PerCpuValues};
use ferry_common::{map_names, Counter};
use ferry_datapath::Maps;
use thiserror::Error;

use crate::desired::BackendAddr;
use crate::diff::{table_slots, Limits, Op, Programmed};

#[derive(Debug, Error)]
pub enum ApplyError {
    #[error("{op} in {map}: {source}")]
    Map {
        op: &'static str,
        map: &'static str,
        #[source]
        source: MapError,
    },
    #[error("batch update of {map}: {source}")]
    Batch {
        map: &'static str,
        #[source]
        source: std::io::Error,
    },
    #[error("writing Maglev table {table}: {source}")]
    Maglev {
        table: u32,
        #[source]
        source: ferry_datapath::Error,
    },
}

/// Where ops go: the pinned maps in production, a recorder in tests.
pub trait MapWriter {
    fn apply(&mut self, ops: &[Op], limits: &Limits) -> Result<(), ApplyError>;
}

/// The live maps.
pub struct PinnedMaps {
    pub maps: Maps,
    ncpus: usize,
}

impl PinnedMaps {
    pub fn new(maps: Maps) -> Self {
        let ncpus = aya::util::nr_cpus().unwrap_or(1);
        Self { maps, ncpus }
    }

    /// The maps' content as the planner models it: what a previous agent
    /// (or this one before a failed apply) left.
    pub fn read_programmed(&self, limits: Limits) -> Result<Programmed, ApplyError> {
        let read = |map, source| ApplyError::Map { op: "read", map, source };
        let services: Vec<_> =
            self.maps.services.iter().collect::<Result<_, _>>().map_err(|e| read(map_names::SERVICES, e))?;
        let backends: Vec<_> =
            self.maps.backends.iter().collect::<Result<_, _>>().map_err(|e| read(map_names::BACKENDS, e))?;
        let vips: Vec<_> = self.maps.vips.iter().collect::<Result<_, _>>().map_err(|e| read(map_names::VIPS, e))?;
        Ok(Programmed::adopt(limits, services, backends, vips))
    }

    /// Consecutive puts into one hash map go down in one batch syscall
    /// (a cold sync of 10,000 Services is ~100,000 backend entries); a
    /// kernel without batch support gets them one by one.
    fn put_many<K: aya::Pod, V: aya::Pod>(
        map: &mut aya::maps::HashMap<aya::maps::MapData, K, V>,
        name: &'static str,
        keys: &[K],
        values: &[V],
    ) -> Result<(), ApplyError> {
        if keys.is_empty() {
            return Ok(());
        }
        let fd = map.map().fd().as_fd().as_raw_fd();
        match update_batch(fd, keys, values) {
            Ok(()) => Ok(()),
            Err(e) if batch_unsupported(&e) => {
                for (k, v) in keys.iter().zip(values) {
                    map.insert(k, v, 0).map_err(|source| ApplyError::Map { op: "insert", map: name, source })?;
                }
                Ok(())
            }
            Err(source) => Err(ApplyError::Batch { map: name, source }),
        }
    }

    /// Builds and writes a run of Maglev tables through mappings of the
    /// array (a memcpy per table: 10,000 tables of 1021 slots are ~40 MB).
    /// Tables within a run are independent (all go to free slots before
    /// any service switches to them), so they are done in table order, a
    /// batch at a time: each batch is built across the cores, then written
    /// through one mapping per cluster of nearby tables. Batches bound what
    /// is held at once, built tables and mapped pages alike (pages of a
    /// shared mapping count in the RSS): a cold sync of 100,000 Services
    /// would otherwise build 200 MB of tables and map 400 MB of array.
    fn write_tables(&mut self, tables: &[(u32, &[(u32, BackendAddr)])], limits: &Limits) -> Result<(), ApplyError> {
        const BATCH: usize = 1024;
        const GAP: u32 = 8;
        let m = limits.maglev_size;
        let mut sorted = tables.to_vec();
        sorted.sort_unstable_by_key(|t| t.0);
        for batch in sorted.chunks(BATCH) {
            let built = build_tables(batch, m);
            for cluster in built.chunk_by(|a, b| b.0 - a.0 <= GAP) {
                let (first, last) = (cluster[0].0, cluster[cluster.len() - 1].0);
                let mut writer = self
                    .maps
                    .maglev
                    .writer(first..=last, m)
                    .map_err(|source| ApplyError::Maglev { table: first, source })?;
                for (table, slots) in cluster {
                    writer
                        .write_table(*table, m, slots)
                        .map_err(|source| ApplyError::Maglev { table: *table, source })?;
                }
            }
        }
        Ok(())
    }
}

/// Builds tables across the cores: 10,000 tables of 1021 slots take
/// ~250 ms on one.
fn build_tables(tables: &[(u32, &[(u32, BackendAddr)])], m: u32) -> Vec<(u32, Vec<u32>)> {
    let build = |(table, backends): &(u32, &[(u32, BackendAddr)])| (*table, table_slots(backends, m));
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get()).min(tables.len() / 64).max(1);
    if threads == 1 {
        return tables.iter().map(build).collect();
    }
    let chunk = tables.len().div_ceil(threads);
    std::thread::scope(|s| {
        let parts: Vec<_> =
            tables.chunks(chunk).map(|part| s.spawn(move || part.iter().map(build).collect::<Vec<_>>())).collect();
        parts.into_iter().flat_map(|h| h.join().expect("maglev builder panicked")).collect()
    })
}

/// `BPF_MAP_UPDATE_BATCH`: one syscall for a run of hash map puts (a cold
/// sync of 10,000 Services is ~100,000 backends). aya 0.14 has no batch
/// API, hence the raw call (layout: `union bpf_attr`, `batch`).
fn update_batch<K: Copy, V: Copy>(map_fd: i32, keys: &[K], values: &[V]) -> std::io::Result<()> {
    const BPF_MAP_UPDATE_BATCH: libc::c_long = 26;
    #[repr(C)]
    #[derive(Default)]
    struct BatchAttr {
        in_batch: u64,
        out_batch: u64,
        keys: u64,
        values: u64,
        count: u32,
        map_fd: u32,
        elem_flags: u64,
        flags: u64,
        // The kernel zero-checks the rest of bpf_attr up to the size passed.
    }
    let mut done = 0usize;
    while done < keys.len() {
        let mut attr = BatchAttr {
            keys: keys[done..].as_ptr() as u64,
            values: values[done..].as_ptr() as u64,
            count: (keys.len() - done) as u32,
            map_fd: map_fd as u32,
            ..Default::default()
        };
        // SAFETY: attr points at valid key/value arrays of `count` elements
        // that outlive the call; the kernel writes back only `count`.
        let rc = unsafe {
            libc::syscall(
                libc::SYS_bpf,
                BPF_MAP_UPDATE_BATCH,
                &mut attr as *mut BatchAttr,
                std::mem::size_of::<BatchAttr>() as u32,
            )
        };
        if rc < 0 {
            return Err(std::io::Error::last_os_error());
        }
        // A partial batch reports how far it got in `count`.
        if attr.count == 0 {
            return Err(std::io::Error::other("batch update made no progress"));
        }
        done += attr.count as usize;
    }
    Ok(())
}

/// EINVAL or ENOTSUPP (524, kernel-internal): no batch ops for this map.
fn batch_unsupported(e: &std::io::Error) -> bool {
    matches!(e.raw_os_error(), Some(libc::EINVAL) | Some(524))
}

fn not_found(e: &MapError) -> bool {
    matches!(e, MapError::KeyNotFound)
        || matches!(e, MapError::SyscallError(s) if s.io_error.raw_os_error() == Some(libc::ENOENT))
}

impl MapWriter for PinnedMaps {
    fn apply(&mut self, ops: &[Op], limits: &Limits) -> Result<(), ApplyError> {
        let err = |op, map| move |source| ApplyError::Map { op, map, source };
        let mut i = 0;
        while i < ops.len() {
            // A run of backend puts, or of service puts: batches of up to
            // BATCH (the keys and values are copied out for the syscall; a
            // cold sync's million backends at once would be 35 MB more).
            // Runs never cross a phase boundary, so the order is kept.
            const BATCH: usize = 65_536;
            let run_end = |pred: &dyn Fn(&Op) -> bool| i + ops[i..].iter().take(BATCH).take_while(|o| pred(o)).count();
            match &ops[i] {
                Op::PutBackend { .. } => {
                    let end = run_end(&|o| matches!(o, Op::PutBackend { .. }));
                    let (keys, values): (Vec<u32>, Vec<_>) = ops[i..end]
                        .iter()
                        .filter_map(|o| match o {
                            Op::PutBackend { id, value } => Some((*id, *value)),
                            _ => None,
                        })
                        .unzip();
                    Self::put_many(&mut self.maps.backends, map_names::BACKENDS, &keys, &values)?;
                    i = end;
                    continue;
                }
                Op::PutService { .. } => {
                    let end = run_end(&|o| matches!(o, Op::PutService { .. }));
                    let (keys, values): (Vec<_>, Vec<_>) = ops[i..end]
                        .iter()
                        .filter_map(|o| match o {
                            Op::PutService { key, value } => Some((*key, *value)),
                            _ => None,
                        })
                        .unzip();
                    Self::put_many(&mut self.maps.services, map_names::SERVICES, &keys, &values)?;
                    i = end;
                    continue;
                }
                Op::WriteTable { .. } => {
                    let end = run_end(&|o| matches!(o, Op::WriteTable { .. }));
                    let tables: Vec<(u32, &[(u32, BackendAddr)])> = ops[i..end]
                        .iter()
                        .filter_map(|o| match o {
                            Op::WriteTable { table, backends } => Some((*table, backends.as_slice())),
                            _ => None,
                        })
                        .collect();
                    self.write_tables(&tables, limits)?;
                    i = end;
                    continue;
                }
                Op::ResetCounters { service_id } => {
                    let zeros = PerCpuValues::try_from(vec![Counter::default(); self.ncpus]).map_err(|e| {
                        ApplyError::Map { op: "reset", map: map_names::SERVICE_STATS, source: MapError::from(e) }
                    })?;
                    self.maps
                        .service_stats
                        .set(*service_id, zeros, 0)
                        .map_err(err("reset", map_names::SERVICE_STATS))?
                }
                // Already gone is what we wanted (a predecessor got there).
                Op::DeleteService { key } => match self.maps.services.remove(key) {
                    Err(e) if !not_found(&e) => return Err(err("remove", map_names::SERVICES)(e)),
                    _ => {}
                },
                Op::DeleteBackend { id } => match self.maps.backends.remove(id) {
                    Err(e) if !not_found(&e) => return Err(err("remove", map_names::BACKENDS)(e)),
                    _ => {}
                },
                Op::PutVip { key, frontends } => {
                    self.maps.vips.insert(key, frontends, 0).map_err(err("put", map_names::VIPS))?
                }
                Op::DeleteVip { key } => match self.maps.vips.remove(key) {
                    Err(e) if !not_found(&e) => return Err(err("remove", map_names::VIPS)(e)),
                    _ => {}
                },
            }
            i += 1;
        }
        Ok(())
    }
}
