//! Deterministic names and MAC addresses.
//!
//! The host-side veth name is a function of (container id, ifname) so DEL,
//! CHECK and GC find it without any state, even after a plugin was killed
//! mid-ADD. The hash must never change between releases (a DEL may be run by
//! a newer binary than the ADD), hence FNV-1a written out here rather than
//! std's unspecified hasher.

/// Prefix of every host-side veth ferry creates (agents can match on it).
pub const VETH_PREFIX: &str = "fer";

fn fnv1a(parts: &[&str]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for (i, p) in parts.iter().enumerate() {
        if i > 0 {
            h ^= 0xff; // separator: ("ab","c") != ("a","bc")
            h = h.wrapping_mul(0x0100_0000_01b3);
        }
        for b in p.bytes() {
            h ^= b as u64;
            h = h.wrapping_mul(0x0100_0000_01b3);
        }
    }
    h
}

/// `fer` + 12 hex digits: 15 bytes, the kernel's limit.
pub fn host_veth(container_id: &str, ifname: &str) -> String {
    format!("{VETH_PREFIX}{:012x}", fnv1a(&[container_id, ifname]) & 0xffff_ffff_ffff)
}

/// A locally administered unicast MAC (02:xx:..) derived from `parts`.
pub fn mac(parts: &[&str]) -> [u8; 6] {
    let h = fnv1a(parts).to_be_bytes();
    [0x02, h[3], h[4], h[5], h[6], h[7]]
}

pub fn mac_string(m: &[u8; 6]) -> String {
    m.iter().map(|b| format!("{b:02x}")).collect::<Vec<_>>().join(":")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stable_names_and_macs() {
        // Pinned values: changing them breaks DEL of pods added by an older binary.
        assert_eq!(host_veth("abc", "eth0"), host_veth("abc", "eth0"));
        assert_eq!(host_veth("abc", "eth0").len(), 15);
        assert_ne!(host_veth("abc", "eth0"), host_veth("abc", "eth1"));
        assert_ne!(host_veth("ab", "ceth0"), host_veth("abc", "eth0"));
        assert_eq!(fnv1a(&["a"]), 0xaf63_dc4c_8601_ec8c);
        let m = mac(&["x"]);
        assert_eq!(m[0], 0x02);
        assert_eq!(mac_string(&[2, 0, 0xab, 1, 2, 3]), "02:00:ab:01:02:03");
    }
}
