//! The `fhec` command line: library half (so tests drive exactly what the binary runs).
//! Only this crate parses arguments and prints to the terminal.

pub mod artifact;
pub mod data;
pub mod keystore;
pub mod npy;
pub mod pipeline;
pub mod report;
pub mod run;
