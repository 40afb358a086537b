//! ferry-netlink
