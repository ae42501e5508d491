//! Policy: decisions about who may open a tunnel and how fast it may talk.
//! Settings are plain data resolved by `config`; this module holds the
//! runtime state (limiters, per-IP counts) that enforces them.

pub mod cluster;
pub mod origin;
pub mod rate;
