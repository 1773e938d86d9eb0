//! Sinks: where captured rows go. `files` writes the rolling daily CSV files through the one
//! COPY-identical encoder `copy_csv`; `stdout` prints rows for people (`text`) or programs
//! (`json`). `seal` writes the manifest of a day whose files can receive no more rows.

pub mod copy_csv;
pub mod files;
pub mod seal;
pub mod stdout;
pub mod text;
