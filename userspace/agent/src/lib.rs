//! ferry-agent: the node agent's logic. `main.rs` only parses flags and calls
//! [`run`]; everything that decides what goes into the maps is pure and
//! table-tested here (maglev, desired, diff), and the side effects (map I/O,
//! attach, HTTP) sit at the edges.

pub mod desired;
pub mod diff;
pub mod maglev;
