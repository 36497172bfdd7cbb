//! The vocabulary every layer shares: the error type and what describes a
//! page (its location, metadata and creation spec).

pub mod error;
pub mod page;
