//! Replication control: pre-flight checks and the slot (over ordinary SQL), and the commands and
//! CopyBoth messages of streaming (`messages`, no I/O). The loop that drives them is
//! `crate::stream`.

pub mod messages;
pub mod slot;
