//! The offline side: what a state directory holds, read without starting
//! it. Replay to any point ([`replay`]), the provenance of a value
//! ([`provenance`]), and the inspect, verify and replay reports the CLI
//! prints ([`tools`]).

pub mod provenance;
pub mod replay;
pub mod tools;
