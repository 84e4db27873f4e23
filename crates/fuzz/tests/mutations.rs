//! Every fuzz target on its seed corpus, on every input a fuzzer once crashed
//! (`crates/fuzz/regressions/<target>/`), and on deterministic mutations of the seeds for
//! a bounded time per target (`FHEC_FUZZ_SECONDS`, default 8): stable Rust, under
//! `cargo test`, so CI catches a regression without libFuzzer. A panic fails the test
//! and leaves the input under the test's temporary directory for reproduction.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// xorshift64*: deterministic, so a failure reproduces from its iteration number.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
}

/// Values that cross boundaries: lengths, counts, widths and sizes near their limits.
const INTERESTING: [u64; 12] = [
    0,
    1,
    0x7f,
    0x80,
    0xff,
    0x7fff_ffff,
    0x8000_0000,
    0xffff_ffff,
    1 << 31,
    1 << 40,
    1 << 62,
    u64::MAX,
];

/// One to four random edits of a seed: bit flips, interesting integers of 1/4/8 bytes,
/// inserted, deleted and duplicated runs, truncation, and splices with another seed.
fn mutate(rng: &mut Rng, seed: &[u8], others: &[Vec<u8>]) -> Vec<u8> {
    let mut d = seed.to_vec();
    for _ in 0..1 + rng.below(4) {
        let len = d.len();
        match rng.below(8) {
            0 if len > 0 => {
                let i = rng.below(len);
                d[i] ^= 1 << rng.below(8);
            }
            1 if len > 0 => {
                let i = rng.below(len);
                let width = [1, 4, 8][rng.below(3)];
                let v = INTERESTING[rng.below(INTERESTING.len())].to_le_bytes();
                for (k, b) in v.iter().take(width).enumerate() {
                    if i + k < len {
                        d[i + k] = *b;
                    }
                }
            }
            2 => {
                let i = rng.below(len + 1);
                let n = 1 + rng.below(16);
                let bytes: Vec<u8> = (0..n).map(|_| rng.next() as u8).collect();
                d.splice(i..i, bytes);
            }
            3 if len > 0 => {
                let i = rng.below(len);
                let n = 1 + rng.below((len - i).min(64));
                d.drain(i..i + n);
            }
            4 if len > 0 => {
                let i = rng.below(len);
                let n = 1 + rng.below((len - i).min(64));
                let run = d[i..i + n].to_vec();
                let at = rng.below(len + 1);
                d.splice(at..at, run);
            }
            5 if len > 0 => d.truncate(rng.below(len)),
            6 if !others.is_empty() => {
                let other = &others[rng.below(others.len())];
                let cut = rng.below(len + 1);
                let from = rng.below(other.len() + 1);
                d.truncate(cut);
                d.extend_from_slice(&other[from..]);
            }
            _ => {
                if len > 0 {
                    let i = rng.below(len);
                    d[i] = rng.next() as u8;
                }
            }
        }
    }
    d
}

fn failures() -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("fuzz-failures");
    let _ = std::fs::create_dir_all(&dir);
    dir
}

/// Runs `target` on `input`; on a panic, saves the input and fails naming the file. The
/// input is written first to `<target>-last.bin`, so one that aborts the process (out
/// of memory) can be found too.
fn run_one(target: &str, input: &[u8], label: &str) {
    let _ = std::fs::write(failures().join(format!("{target}-last.bin")), input);
    let start = Instant::now();
    let result = std::panic::catch_unwind(|| fhec_fuzz::run(target, input));
    let took = start.elapsed();
    if took > Duration::from_secs(2) {
        let path = failures().join(format!("{target}-slow-{label}.bin"));
        let _ = std::fs::write(&path, input);
        panic!(
            "fuzz target '{target}' took {took:?} on {label}; input saved to {}",
            path.display()
        );
    }
    if result.is_err() {
        let path = failures().join(format!("{target}-{label}.bin"));
        let _ = std::fs::write(&path, input);
        panic!(
            "fuzz target '{target}' panicked on {label}; input saved to {}",
            path.display()
        );
    }
}

fn regression_inputs(target: &str) -> Vec<(String, Vec<u8>)> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("regressions")
        .join(target);
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .map(|d| d.filter_map(|e| e.ok().map(|e| e.path())).collect())
        .unwrap_or_default();
    files.sort();
    files
        .into_iter()
        .map(|p| {
            let bytes = std::fs::read(&p).unwrap();
            (p.display().to_string(), bytes)
        })
        .collect()
}

fn fuzz(target: &str) {
    let seeds = fhec_fuzz::seeds(target);
    assert!(!seeds.is_empty(), "{target}: no seed corpus");
    for (i, s) in seeds.iter().enumerate() {
        run_one(target, s, &format!("seed-{i}"));
    }
    for (name, bytes) in regression_inputs(target) {
        run_one(target, &bytes, &name.replace('/', "_"));
    }
    let seconds: u64 = std::env::var("FHEC_FUZZ_SECONDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(8);
    let start = Instant::now();
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15 ^ target.len() as u64);
    let mut runs = 0u64;
    while start.elapsed() < Duration::from_secs(seconds) {
        let seed = &seeds[rng.below(seeds.len())];
        let input = mutate(&mut rng, seed, &seeds);
        run_one(target, &input, &format!("mutation-{runs}"));
        runs += 1;
    }
    println!(
        "{target}: {} seeds, {runs} mutated inputs, no panic",
        seeds.len()
    );
    assert!(runs > 0, "{target}: no mutated input ran");
}

#[test]
fn onnx_import_survives_mutated_models() {
    fuzz("onnx");
}

#[test]
fn artifact_loading_survives_mutated_parts() {
    fuzz("artifact");
}

#[test]
fn key_and_ciphertext_decoding_survives_mutated_files() {
    fuzz("keys");
}

#[test]
fn npy_reading_survives_mutated_arrays() {
    fuzz("npy");
}

#[test]
fn the_verifier_survives_arbitrary_circuits() {
    fuzz("circuit");
}

/// Triage: prints the circuit the last `circuit` input built
/// (`cargo test -p fhec-fuzz --test mutations describe_last_circuit -- --ignored --nocapture`).
#[test]
#[ignore]
fn describe_last_circuit() {
    let data = std::fs::read(failures().join("circuit-last.bin")).unwrap();
    println!("{}", fhec_fuzz::describe_circuit(&data).unwrap_or_default());
}

/// Triage: runs one target on one file, e.g. an input libFuzzer saved
/// (`FHEC_FUZZ_TARGET=onnx FHEC_FUZZ_INPUT=crash-… cargo test -p fhec-fuzz --test mutations replay -- --ignored`).
#[test]
#[ignore]
fn replay() {
    let target = std::env::var("FHEC_FUZZ_TARGET").unwrap();
    let data = std::fs::read(std::env::var("FHEC_FUZZ_INPUT").unwrap()).unwrap();
    fhec_fuzz::run(&target, &data);
}

/// Writes each target's seed corpus to `fuzz/corpus/<target>/` for libFuzzer
/// (`cargo test -p fhec-fuzz --test mutations write_seed_corpus -- --ignored`).
#[test]
#[ignore]
fn write_seed_corpus() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fuzz/corpus");
    for target in fhec_fuzz::TARGETS {
        let dir = root.join(target);
        std::fs::create_dir_all(&dir).unwrap();
        for (i, s) in fhec_fuzz::seeds(target).iter().enumerate() {
            std::fs::write(dir.join(format!("seed-{i}")), s).unwrap();
        }
    }
}
