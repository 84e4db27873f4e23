//! `fhec`: compile ONNX models to TFHE circuits, inspect them, run them.

use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use clap::{Args, Parser, Subcommand, ValueEnum};
use fhec::artifact::Artifact;
use fhec::report::{params_line, Report};
use fhec::{data, keystore, npy, pipeline, run};
use fhec_backend_tfhe::PErrorTarget;
use fhec_quant::QuantConfig;

#[derive(Parser)]
#[command(
    name = "fhec",
    version,
    about = "Compile ONNX models to circuits that run on TFHE-encrypted data"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Quantize, analyse, lower and pick crypto parameters; writes MODEL.fhe and MODEL.mlir.
    Compile {
        model: PathBuf,
        #[arg(long)]
        inputset: PathBuf,
        /// Output artifact (default: the model's name with .fhe, in the current directory).
        #[arg(short, long)]
        output: Option<PathBuf>,
        #[command(flatten)]
        q: QuantArgs,
        /// Overwrite output files that fhec did not write.
        #[arg(long)]
        force: bool,
        /// Parse and verify the emitted MLIR with MLIR itself; fail with its message if it
        /// does not verify (builds with the `mlir-verify` feature only).
        #[cfg(feature = "mlir-verify")]
        #[arg(long)]
        verify_mlir: bool,
    },
    /// List nodes, bit-widths, TLU and bootstrap counts; exit 1 if a value exceeds 16 bits.
    Inspect {
        /// A compiled artifact (.fhe), or an ONNX model together with --inputset.
        path: PathBuf,
        #[arg(long)]
        inputset: Option<PathBuf>,
        #[arg(long, value_enum, default_value_t = Format::Text)]
        format: Format,
        #[command(flatten)]
        q: QuantArgs,
    },
    /// Run a compiled model on samples.
    Predict {
        model: PathBuf,
        #[arg(long)]
        input: PathBuf,
        #[arg(long, value_enum, default_value_t = Mode::Simulate)]
        mode: Mode,
        /// Write outputs (keyed by ONNX output name) to this .npz.
        #[arg(short, long)]
        output: Option<PathBuf>,
        /// Key directory: loaded, or generated and saved there when absent or empty.
        #[arg(long)]
        keys: Option<PathBuf>,
        /// Only the first N samples.
        #[arg(long)]
        limit: Option<usize>,
        /// Seed of the approximate-rounding error model in `--mode simulate`.
        #[arg(long, default_value_t = 0)]
        seed: u64,
        #[arg(long)]
        force: bool,
    },
    /// Time one key switch + bootstrap on one core for several parameter sets, against the cost model.
    BenchParams {
        /// Bootstraps timed per parameter set.
        #[arg(long, default_value_t = 16)]
        count: usize,
    },
    /// Measure compile time, keygen time, key size, FHE latency and #PBS of a model.
    Bench {
        model: PathBuf,
        #[arg(long)]
        inputset: PathBuf,
        #[arg(long)]
        input: PathBuf,
        #[arg(long, default_value_t = 3)]
        samples: usize,
        #[command(flatten)]
        q: QuantArgs,
    },
}

#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum RoundingMode {
    Exact,
    Approximate,
}

#[derive(Args, Clone)]
struct QuantArgs {
    /// Bits for inputs, weights and activations (default 6).
    #[arg(long)]
    n_bits: Option<u32>,
    /// Bits of the model inputs, overriding --n-bits for them.
    #[arg(long)]
    input_bits: Option<u32>,
    /// Bits of weights (per output channel grid), overriding --n-bits for them.
    #[arg(long)]
    weight_bits: Option<u32>,
    /// Bits of activations (the output of each table lookup), overriding --n-bits.
    #[arg(long)]
    activation_bits: Option<u32>,
    /// Round accumulators to this many most significant bits before a TLU (default 6).
    #[arg(long, conflicts_with = "no_rounding")]
    rounding_threshold_bits: Option<u32>,
    /// Never round accumulators (TLUs read the full accumulator).
    #[arg(long)]
    no_rounding: bool,
    /// How accumulators are rounded: `approximate` (no extra bootstrap; the TLU may be
    /// off by one near a boundary, simulate draws that error) or `exact` (extra
    /// bootstraps, bit-exact).
    #[arg(long, value_enum, default_value_t = RoundingMode::Approximate)]
    rounding: RoundingMode,
    /// Tree comparisons read this many most significant bits of their feature, shifted
    /// so the threshold falls on a rounding boundary (with approximate rounding; default:
    /// the whole feature, exactly). Cheaper bootstraps, but noise flips comparisons of
    /// features within about a grid step of the threshold; simulate draws them
    /// (docs/TREES.md).
    #[arg(long)]
    comparison_bits: Option<u32>,
    /// Headroom of accumulator ranges beyond the inputset, as a fraction of their width (default 0.25).
    #[arg(long)]
    range_margin: Option<f64>,
    /// Error probability allowed per bootstrap (default 2^-40).
    #[arg(long)]
    p_error: Option<f64>,
    /// Error probability allowed for a whole sample instead, split evenly over its
    /// bootstraps and decrypted outputs.
    #[arg(long, conflicts_with = "p_error")]
    global_p_error: Option<f64>,
}

impl QuantArgs {
    fn target(&self) -> PErrorTarget {
        match (self.global_p_error, self.p_error) {
            (Some(g), _) => PErrorTarget::Global(g),
            (None, p) => PErrorTarget::PerPbs(p.unwrap_or(2f64.powi(-40))),
        }
    }
    fn config(&self) -> QuantConfig {
        let mut c = QuantConfig::default();
        if let Some(n) = self.n_bits {
            c = c.with_n_bits(n);
        }
        c.input_bits = self.input_bits.unwrap_or(c.input_bits);
        c.weight_bits = self.weight_bits.unwrap_or(c.weight_bits);
        c.activation_bits = self.activation_bits.unwrap_or(c.activation_bits);
        if let Some(r) = self.rounding_threshold_bits {
            c.rounding_bits = Some(r);
        }
        if self.no_rounding {
            c.rounding_bits = None;
        }
        c.rounding_approximate = self.rounding == RoundingMode::Approximate;
        if let Some(b) = self.comparison_bits {
            c.comparison_bits = Some(b);
        }
        if let Some(m) = self.range_margin {
            c.range_margin = m;
        }
        c
    }
}

#[derive(Clone, Copy, ValueEnum)]
enum Format {
    Text,
    Json,
}

#[derive(Clone, Copy, PartialEq, ValueEnum)]
enum Mode {
    Clear,
    Simulate,
    Fhe,
}

fn main() -> ExitCode {
    // Like other command-line tools, stop quietly when the reader of stdout goes away
    // (`fhec inspect … | head`) instead of panicking on the failed write.
    #[cfg(unix)]
    // SAFETY: restoring the default action of SIGPIPE before any thread is started.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
    let cli = Cli::parse();
    match dispatch(cli.command) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(2)
        }
    }
}

fn dispatch(cmd: Command) -> Result<ExitCode> {
    match cmd {
        Command::Compile {
            model,
            inputset,
            output,
            q,
            force,
            #[cfg(feature = "mlir-verify")]
            verify_mlir,
        } => compile(
            &model,
            &inputset,
            output,
            &q,
            force,
            #[cfg(feature = "mlir-verify")]
            verify_mlir,
        ),
        Command::Inspect {
            path,
            inputset,
            format,
            q,
        } => inspect(&path, inputset.as_deref(), format, &q),
        Command::Predict {
            model,
            input,
            mode,
            output,
            keys,
            limit,
            seed,
            force,
        } => predict(
            &model,
            &input,
            mode,
            output.as_deref(),
            keys.as_deref(),
            limit,
            seed,
            force,
        ),
        Command::Bench {
            model,
            inputset,
            input,
            samples,
            q,
        } => bench(&model, &inputset, &input, samples, &q),
        Command::BenchParams { count } => bench_params(count),
    }
}

/// Refuses to replace a file fhec did not write, unless forced.
fn guard_overwrite(path: &Path, ours: bool, force: bool) -> Result<()> {
    if path.exists() && !ours && !force {
        bail!(
            "{}: exists and was not written by fhec; refusing to overwrite (use --force)",
            path.display()
        );
    }
    Ok(())
}

fn compile(
    model: &Path,
    inputset: &Path,
    output: Option<PathBuf>,
    q: &QuantArgs,
    force: bool,
    #[cfg(feature = "mlir-verify")] verify_mlir: bool,
) -> Result<ExitCode> {
    let out = output.unwrap_or_else(|| {
        PathBuf::from(model.file_stem().unwrap_or_default()).with_extension("fhe")
    });
    if out.extension().is_some_and(|e| e == "mlir") {
        bail!(
            "{}: the artifact needs another extension than .mlir (the MLIR is written beside it)",
            out.display()
        );
    }
    let mlir_path = out.with_extension("mlir");
    guard_overwrite(&out, Artifact::is_artifact_file(&out), force)?;
    let mlir_ours = std::fs::read_to_string(&mlir_path)
        .map(|s| s.starts_with("// fhec"))
        .unwrap_or(false);
    guard_overwrite(&mlir_path, mlir_ours, force)?;
    let vectors_path = out.with_extension("vectors.npz");
    guard_overwrite(&vectors_path, npy::is_fhec_npz(&vectors_path), force)?;
    let compiled = pipeline::compile(model, inputset, &q.config(), q.target())?;
    let a = &compiled.artifact;
    let mlir = fhec_mlir_emit::to_mlir(&a.server.circuit, &compiled.info, &a.source);
    #[cfg(feature = "mlir-verify")]
    if verify_mlir {
        fhec_mlir_emit::verify_with_mlir(&mlir)
            .with_context(|| format!("{}: MLIR verifier", mlir_path.display()))?;
    }
    let samples = data::load_samples(inputset, &a.client.graph)?;
    let vectors = pipeline::test_vectors(a, &compiled.info, &samples, 3)?;
    std::fs::write(&out, a.to_bytes()?)
        .with_context(|| format!("{}: cannot write", out.display()))?;
    std::fs::write(&mlir_path, mlir)
        .with_context(|| format!("{}: cannot write", mlir_path.display()))?;
    npy::write_npz(&vectors_path, &vectors)?;
    let r = Report::new(
        &a.source,
        &a.server.circuit,
        &compiled.info,
        Some(a.server.params.clone()),
        a.client.spec.origins.clone(),
    )
    .with_trees_of(&a.client.graph);
    let ops: Vec<String> = r
        .op_counts
        .iter()
        .map(|(k, v)| format!("{k} {v}"))
        .collect();
    println!(
        "compiled {} -> {} (+ {}, {})",
        model.display(),
        out.display(),
        mlir_path.display(),
        vectors_path.display()
    );
    println!("ops: {}", ops.join(", "));
    println!("TLUs {} + rounding PBS {} = {} PBS per sample; max TLU precision {} bits; max accumulator {} bits", r.tlu_count, r.rounding_pbs, r.pbs_per_sample, r.max_tlu_bits, r.max_bits);
    if let Some(naive) = r.naive_tree_pbs {
        println!(
            "tree ensembles: {} PBS, naive lowering {naive} (one per internal node and leaf)",
            r.pbs_per_sample
        );
    }
    print!(
        "{}",
        params_line(&a.server.params, r.predicted_latency.as_ref())
    );
    println!("compile time: {:.2} s", compiled.elapsed.as_secs_f64());
    Ok(ExitCode::SUCCESS)
}

fn inspect(
    path: &Path,
    inputset: Option<&Path>,
    format: Format,
    q: &QuantArgs,
) -> Result<ExitCode> {
    let report = if path
        .extension()
        .is_some_and(|e| e.eq_ignore_ascii_case("onnx"))
    {
        let Some(inputset) = inputset else {
            bail!(
                "{}: inspecting an ONNX model needs --inputset",
                path.display()
            )
        };
        let (l, params, _) = pipeline::lower_and_choose(path, inputset, &q.config(), q.target())?;
        Report::new(
            &l.source,
            &l.quantized.circuit,
            &l.info,
            params,
            l.quantized.client.origins.clone(),
        )
        .with_trees_of(&l.graph)
    } else {
        let (a, info) = Artifact::load(path)?;
        Report::new(
            &a.source,
            &a.server.circuit,
            &info,
            Some(a.server.params.clone()),
            a.client.spec.origins.clone(),
        )
        .with_trees_of(&a.client.graph)
    };
    match format {
        Format::Text => print!("{}", report.text()),
        Format::Json => println!("{}", serde_json::to_string_pretty(&report)?),
    }
    Ok(if report.violations.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

#[allow(clippy::too_many_arguments)]
fn predict(
    model: &Path,
    input: &Path,
    mode: Mode,
    output: Option<&Path>,
    keys: Option<&Path>,
    limit: Option<usize>,
    seed: u64,
    force: bool,
) -> Result<ExitCode> {
    if let Some(o) = output {
        guard_overwrite(o, npy::is_fhec_npz(o), force)?;
    }
    let (a, info) = Artifact::load(model)?;
    let mut samples = data::load_samples(input, &a.client.graph)?;
    if let Some(n) = limit {
        if n == 0 {
            bail!("--limit must be at least 1");
        }
        samples.truncate(n);
    }
    let mut start = Instant::now();
    let outputs: Vec<_> = match mode {
        Mode::Clear => run::clear(&a.client.graph, &samples)?,
        Mode::Simulate => {
            let sim = run::Simulator::new(&a, &info, seed);
            if sim.is_statistical() {
                eprintln!("simulate: approximate roundings drawn from the parameters' error model (seed {seed})");
            }
            samples
                .iter()
                .enumerate()
                .map(|(i, s)| sim.run(i, s).map(|r| r.outputs))
                .collect::<Result<_>>()?
        }
        Mode::Fhe => {
            let t = Instant::now();
            let (client, server) = match keys {
                Some(dir) => {
                    let (c, s, generated) = keystore::load_or_generate(dir, &a.client.params.keys)?;
                    eprintln!(
                        "keys: {} {} in {:.1} s",
                        if generated {
                            "generated and saved to"
                        } else {
                            "loaded from"
                        },
                        dir.display(),
                        t.elapsed().as_secs_f64()
                    );
                    (c, s)
                }
                None => {
                    let k = run::keys(&a);
                    eprintln!("keys: generated in {:.1} s", t.elapsed().as_secs_f64());
                    k
                }
            };
            let evaluator = run::evaluator(&a, &info, &server)?;
            start = Instant::now(); // per-sample figures exclude key setup
            let total = samples.len();
            let tty = std::io::stderr().is_terminal();
            let mut outs = Vec::with_capacity(total);
            for (i, s) in samples.iter().enumerate() {
                let t = Instant::now();
                let progress = |done: usize| {
                    if tty && info.pbs_per_sample > 0 {
                        eprint!(
                            "\rfhe: sample {}/{total}: {done}/{} PBS",
                            i + 1,
                            info.pbs_per_sample
                        );
                    }
                };
                outs.push(run::fhe(&a, &info, &client, &evaluator, s, &progress)?.outputs);
                eprintln!(
                    "{}fhe: sample {}/{total} done in {:.2} s ({} PBS)",
                    if tty { "\r" } else { "" },
                    i + 1,
                    t.elapsed().as_secs_f64(),
                    info.pbs_per_sample
                );
            }
            outs
        }
    };
    let elapsed = start.elapsed().as_secs_f64();
    let stacked = data::stack_outputs(&a.client.graph, &outputs);
    eprintln!(
        "{} samples in {:.2} s ({:.1} ms/sample)",
        samples.len(),
        elapsed,
        1e3 * elapsed / samples.len() as f64
    );
    for (name, arr) in &stacked {
        let preview: Vec<String> = arr.data.iter().take(8).map(|v| format!("{v:.4}")).collect();
        println!(
            "{name} {:?} {}: {}{}",
            arr.shape,
            arr.dtype,
            preview.join(" "),
            if arr.data.len() > 8 { " …" } else { "" }
        );
    }
    if let Some(o) = output {
        npy::write_npz(o, &stacked)?;
        eprintln!("wrote {}", o.display());
    }
    Ok(ExitCode::SUCCESS)
}

fn bench(model: &Path, inputset: &Path, input: &Path, n: usize, q: &QuantArgs) -> Result<ExitCode> {
    let compiled = pipeline::compile(model, inputset, &q.config(), q.target())?;
    let (a, info) = (&compiled.artifact, &compiled.info);
    let samples: Vec<_> = data::load_samples(input, &a.client.graph)?
        .into_iter()
        .take(n)
        .collect();
    let t = Instant::now();
    let (client, server) = run::keys(a);
    let keygen = t.elapsed().as_secs_f64();
    let t = Instant::now();
    let evaluator = run::evaluator(a, info, &server)?;
    let prepare = t.elapsed().as_secs_f64();
    let mut latencies = Vec::new();
    let mut mismatches = 0;
    // approximate rounding: output elements off the expected value, in FHE and in the
    // simulated error model (averaged over DRAWS seeds)
    const DRAWS: usize = 16;
    let sim = run::Simulator::new(a, info, 0);
    let (mut elements, mut fhe_off, mut sim_off) = (0usize, 0usize, 0usize);
    for (i, s) in samples.iter().enumerate() {
        let t = Instant::now();
        let r = run::fhe(a, info, &client, &evaluator, s, &|_| {})?;
        latencies.push(t.elapsed().as_secs_f64());
        let expected = run::simulate(a, info, s)?.circuit_outputs;
        if r.circuit_outputs != expected {
            mismatches += 1;
        }
        elements += expected.iter().map(Vec::len).sum::<usize>();
        fhe_off += run::differing(&r.circuit_outputs, &expected);
        if sim.is_statistical() {
            for d in 0..DRAWS {
                let noisy = sim.run_seeded(d as u64, i, s)?;
                sim_off += run::differing(&noisy.circuit_outputs, &expected);
            }
        }
    }
    let mean = latencies.iter().sum::<f64>() / latencies.len().max(1) as f64;
    let p = &a.server.params;
    let threads = rayon::current_num_threads();
    let predicted = fhec_backend_tfhe::predicted_latency_ms(&a.server.circuit, info, p, threads);
    let (bsk, ksk) = p.eval_key_bytes();
    let naive = fhec::report::naive_tree_pbs(&a.client.graph)
        .map(|n| format!(" (naive tree lowering {n})"))
        .unwrap_or_default();
    println!(
        "{:<40} compile {:>6.2} s | keygen {:>6.2} s | eval key {:>7.1} MiB seeded, {:>7.1} MiB in memory | prepare {:>5.2} s | FHE {:>8.1} ms/sample over {} (predicted {:.0} ms on {threads} threads, {:.0} ms on 1 core) | PBS {:>4}{naive} | fhe!=simulate {}",
        model.display(),
        compiled.elapsed.as_secs_f64(),
        keygen,
        server.size_bytes() as f64 / (1 << 20) as f64,
        (bsk + ksk) as f64 / (1 << 20) as f64,
        prepare,
        mean * 1e3,
        latencies.len(),
        predicted,
        p.predicted_ms_per_sample,
        info.pbs_per_sample,
        mismatches
    );
    // Σ over bootstraps of one KS + PBS timed alone on one core, per partition
    let mut serial_sum = 0.0;
    for (i, part) in p.partitions.iter().enumerate() {
        let (_, single) = run::time_bootstrap(&part.params, part.ks_input_dimension, 4)?;
        serial_sum += single * part.pbs_per_sample as f64;
        println!(
            "  partition {i}: {} PBS/sample, {} | KS from {} dims | one KS+PBS on 1 core: measured {:.1} ms, predicted {:.1} ms",
            part.pbs_per_sample,
            fhec::report::params_text(&part.params),
            part.ks_input_dimension,
            single,
            part.cost_ms
        );
    }
    if serial_sum > 0.0 {
        println!(
            "  measured latency / Σ single-bootstrap times = {:.0} / {:.0} ms = {:.2} ({threads} threads)",
            mean * 1e3,
            serial_sum,
            mean * 1e3 / serial_sum
        );
    }
    if sim.is_statistical() && elements > 0 {
        println!(
            "  approximate rounding: output elements off the expected value: FHE {fhe_off}/{elements} ({:.1}%), simulate {:.1}% (mean of {DRAWS} seeds)",
            100.0 * fhe_off as f64 / elements as f64,
            100.0 * sim_off as f64 / (DRAWS * elements) as f64
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// Parameter sets spanning what the search picks: the rounding partitions (N = 2048,
/// two levels) and table partitions (N = 8192, four levels) of the fixture MLPs, and
/// neighbours in N and ℓ.
fn bench_params(count: usize) -> Result<ExitCode> {
    use fhec_backend_tfhe::CryptoParams;
    // (n, k, N, PBS base log, levels, KS base log, levels)
    let sets = [
        (742, 1, 2048, 23, 1, 3, 5),
        (730, 1, 2048, 16, 2, 3, 5),
        (810, 2, 1024, 16, 2, 5, 3),
        (810, 2, 2048, 12, 3, 5, 3),
        (900, 1, 2048, 11, 3, 3, 6),
        (900, 1, 4096, 15, 2, 3, 6),
        (850, 1, 8192, 23, 1, 2, 9),
        (850, 1, 8192, 9, 4, 2, 9),
        (914, 1, 8192, 9, 4, 3, 6),
    ]
    .map(|(n, k, big_n, pb, pl, kb, kl)| CryptoParams {
        lwe_dimension: n,
        glwe_dimension: k,
        polynomial_size: big_n,
        pbs_base_log: pb,
        pbs_level: pl,
        ks_base_log: kb,
        ks_level: kl,
    });
    println!(
        "{:<44} {:>10} {:>12} {:>12} {:>7}",
        "parameters", "keygen s", "predicted ms", "measured ms", "ratio"
    );
    for p in sets {
        let (keygen, ms) = run::time_bootstrap(&p, p.big_dimension(), count)?;
        let predicted = p.pbs_cost_ms() + p.ks_cost_ms(p.big_dimension());
        let name = fhec::report::params_text(&p);
        println!(
            "{:<44} {:>10.1} {:>12.1} {:>12.1} {:>7.2}",
            name.split(" (").next().unwrap_or_default(),
            keygen,
            predicted,
            ms,
            ms / predicted
        );
    }
    Ok(ExitCode::SUCCESS)
}
