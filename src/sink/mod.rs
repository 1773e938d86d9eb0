//! Sinks: where captured rows go. `files` writes the rolling daily CSV files through the one
//! COPY-identical encoder `copy_csv`; `stdout` prints rows for people (`text`) or programs
//! (`json`).

pub mod copy_csv;
pub mod files;
pub mod stdout;
pub mod text;
