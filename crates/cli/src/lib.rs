//! The `fhec` command line: library half (so tests drive exactly what the binary runs).
//! Only this crate parses arguments, reads and writes files and prints to the terminal;
//! compiling and running live in `fhec-compiler` and `fhec-runtime`.

pub mod check;
pub mod files;
pub mod keydir;
pub mod npy;
pub mod progress;
