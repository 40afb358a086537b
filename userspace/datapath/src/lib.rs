//! ferry-datapath
