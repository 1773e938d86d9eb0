//! Sinks: where captured rows go. `text` is the readable stdout form.

pub mod text;
