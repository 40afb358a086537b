//! Frontend id -> Kubernetes name, for ferryctl and metrics labels. The maps
//! only hold addresses and ids; the agent writes this small JSON file
//! (atomically: temp file + rename) whenever the set of frontends changes, so
//! ferryctl can name services while the agent is down.

use std::collections::BTreeMap;
use std::io;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// Where the file lives by default for a pin dir: bpffs holds only pins, so
/// it goes under /run/ferry, in a directory named after the pin dir (tests
/// with their own pin dirs do not collide).
pub fn default_state_dir(pin_dir: &Path) -> PathBuf {
    let flat: String =
        pin_dir.to_string_lossy().trim_matches('/').chars().map(|c| if c == '/' { '-' } else { c }).collect();
    PathBuf::from("/run/ferry").join(flat)
}

pub fn names_path(state_dir: &Path) -> PathBuf {
    state_dir.join("names.json")
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FrontendName {
    /// `namespace/name` of the Service.
    pub service: String,
    pub port_name: String,
}

/// Keyed by `ServiceValue::id`.
pub type Names = BTreeMap<u32, FrontendName>;

pub fn write(path: &Path, names: &Names) -> io::Result<()> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let tmp = path.with_extension(format!("tmp{}", std::process::id()));
    std::fs::write(&tmp, serde_json::to_vec(names)?)?;
    std::fs::rename(&tmp, path)
}

/// The names, or none if the agent never wrote them (ids are shown instead).
pub fn read(path: &Path) -> Names {
    std::fs::read(path).ok().and_then(|b| serde_json::from_slice(&b).ok()).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_default_dir() {
        assert_eq!(default_state_dir(Path::new("/sys/fs/bpf/ferry")), PathBuf::from("/run/ferry/sys-fs-bpf-ferry"));
        let dir = std::env::temp_dir().join(format!("ferry-names-{}", std::process::id()));
        let path = names_path(&dir);
        assert!(read(&path).is_empty());
        let names = Names::from([(3, FrontendName { service: "default/web".into(), port_name: "http".into() })]);
        write(&path, &names).unwrap();
        assert_eq!(read(&path), names);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
