//! `fhec`: compile ONNX models to TFHE circuits, inspect them, run them, deploy them as
//! a client and a server.

mod bench;
mod bench_serve;
mod deploy;
mod remote;

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Instant;

#[cfg(feature = "mlir-verify")]
use anyhow::Context;
use anyhow::{bail, Result};
use clap::{Args, CommandFactory, FromArgMatches, Parser, Subcommand, ValueEnum};
use fhec::files::{self, guard_fhec_file, guard_overwrite, part_paths};
use fhec::npy;
use fhec_backend_tfhe::PErrorTarget;
use fhec_compiler::report::{params_line, Report};
use fhec_quant::QuantConfig;
use fhec_runtime::{frame, Kind};

/// `fhec --version`: fhec's, the tfhe-rs it is built on, and its file format's.
static VERSION: std::sync::LazyLock<String> = std::sync::LazyLock::new(|| {
    format!(
        "{} (tfhe-rs {}, file format {})",
        env!("CARGO_PKG_VERSION"),
        fhec_backend_tfhe::TFHE_RS_VERSION,
        frame::FORMAT_VERSION
    )
});

#[derive(Parser)]
#[command(
    name = "fhec",
    version,
    about = "Compile ONNX models to circuits that run on TFHE-encrypted data"
)]
struct Cli {
    /// Memory a model, an input file or an inputset may take before fhec refuses it
    /// (counted at 8 bytes per value; e.g. 512MiB, 16GiB).
    #[arg(long, global = true, value_name = "SIZE", default_value = "8GiB", value_parser = files::parse_size)]
    memory_budget: u64,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Quantize, analyse, lower and pick crypto parameters; writes MODEL.fhe (developer
    /// artifact), MODEL.client.fhe and MODEL.server.fhe (the deployment parts) and MODEL.mlir.
    Compile {
        /// The ONNX model.
        model: PathBuf,
        /// Calibration samples: a .npy shaped [samples, ...] (or .npz keyed by input name).
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
        /// Keep the settings as given: when they give a value over 16 bits or no
        /// parameters, fail (naming settings that compile) instead of adapting them.
        #[arg(long)]
        strict: bool,
        /// Parse and verify the emitted MLIR with MLIR itself; fail with its message if it
        /// does not verify (builds with the `mlir-verify` feature only).
        #[cfg(feature = "mlir-verify")]
        #[arg(long)]
        verify_mlir: bool,
    },
    /// CI gate: compile, simulate a test set, compare with the float model and check
    /// budgets. Exit 0 when every budget holds, 1 when one is exceeded, 2 on an error.
    Check {
        /// The ONNX model.
        model: PathBuf,
        /// Calibration samples, as for compile.
        #[arg(long)]
        inputset: PathBuf,
        /// Test samples (.npy or .npz, as for predict).
        #[arg(long)]
        test: PathBuf,
        /// One label per test sample (.npy): score accuracy (classifiers) or R²
        /// (regressors) instead of agreement with the float model.
        #[arg(long)]
        labels: Option<PathBuf>,
        /// The model output to score (default: the first).
        #[arg(long, value_name = "NAME")]
        output: Option<String>,
        /// Largest drop in points from the float model's score (accuracy, R²×100, or
        /// agreement with the float model without --labels).
        #[arg(long, value_name = "POINTS")]
        max_accuracy_drop: Option<f64>,
        /// Largest number of bootstraps per sample.
        #[arg(long, value_name = "N")]
        max_pbs: Option<f64>,
        /// Largest predicted FHE latency per sample on this machine, in milliseconds.
        #[arg(long, value_name = "MS")]
        max_latency_ms: Option<f64>,
        /// Largest evaluation key, in MB (10^6 bytes).
        #[arg(long, value_name = "MB")]
        max_evaluation_key_mb: Option<f64>,
        /// Largest width of an encrypted value, in bits.
        #[arg(long, value_name = "BITS")]
        max_bits: Option<f64>,
        /// Write the JSON report here (docs/CHECK.md).
        #[arg(long, value_name = "FILE")]
        report: Option<PathBuf>,
        /// Seed of the approximate-rounding error model in simulation.
        #[arg(long, default_value_t = 0)]
        seed: u64,
        #[command(flatten)]
        q: QuantArgs,
        /// Overwrite a --report file that fhec did not write.
        #[arg(long)]
        force: bool,
    },
    /// List nodes, bit-widths, TLU and bootstrap counts; exit 1 if a value exceeds 16 bits.
    Inspect {
        /// A compiled model, a client or server part (.fhe), or an ONNX model with --inputset.
        path: PathBuf,
        /// Calibration samples, for an ONNX model.
        #[arg(long)]
        inputset: Option<PathBuf>,
        /// Output format.
        #[arg(long, value_enum, default_value_t = Format::Text)]
        format: Format,
        #[command(flatten)]
        q: QuantArgs,
    },
    /// Run a compiled model on samples.
    Predict {
        /// The compiled model (MODEL.fhe).
        model: PathBuf,
        /// Samples: a .npy shaped [samples, ...] (or .npz keyed by input name).
        #[arg(long)]
        input: PathBuf,
        /// clear: the float model; simulate: the integer circuit with the FHE error model; fhe: real encryption in this process.
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
        /// Overwrite an --output file that fhec did not write.
        #[arg(long)]
        force: bool,
    },
    /// Client: generate keys for a client part: DIR/client.key (secret, mode 0600) and
    /// DIR/evaluation.key (for the server).
    Keygen {
        /// The client part (MODEL.client.fhe).
        client: PathBuf,
        /// Key directory to create (refused if it already holds keys).
        #[arg(long)]
        keys: PathBuf,
    },
    /// Client: quantize and encrypt samples under the secret key in DIR.
    Encrypt {
        /// The client part (MODEL.client.fhe).
        client: PathBuf,
        /// Key directory made by keygen.
        #[arg(long)]
        keys: PathBuf,
        /// Samples: a .npy shaped [samples, ...] (or .npz keyed by input name).
        #[arg(long)]
        input: PathBuf,
        /// Encrypted inputs, for the server.
        #[arg(short, long)]
        output: PathBuf,
        /// Only the first N samples.
        #[arg(long)]
        limit: Option<usize>,
        /// Overwrite an --output file that fhec did not write.
        #[arg(long)]
        force: bool,
    },
    /// Server: evaluate encrypted inputs with an evaluation key (no secret key needed or accepted).
    Run {
        /// The server part (MODEL.server.fhe).
        server: PathBuf,
        /// The evaluation key the client sent (evaluation.key).
        #[arg(long)]
        evaluation_key: PathBuf,
        /// Encrypted inputs (from `fhec encrypt`).
        inputs: PathBuf,
        /// Encrypted outputs, for the client.
        #[arg(short, long)]
        output: PathBuf,
        /// Overwrite an --output file that fhec did not write.
        #[arg(long)]
        force: bool,
    },
    /// Client: decrypt a server's outputs, dequantize, post-process; writes outputs like `predict`.
    Decrypt {
        /// The client part (MODEL.client.fhe).
        client: PathBuf,
        /// Key directory holding the secret key the inputs were encrypted under.
        #[arg(long)]
        keys: PathBuf,
        /// Encrypted outputs (from `fhec run`).
        outputs: PathBuf,
        /// Outputs (keyed by ONNX output name) as .npz.
        #[arg(short, long)]
        output: Option<PathBuf>,
        /// Overwrite an --output file that fhec did not write.
        #[arg(long)]
        force: bool,
    },
    /// Server: serve a model over HTTP from its server part (docs/DEPLOYMENT.md).
    Serve {
        /// The server part (MODEL.server.fhe).
        server: PathBuf,
        /// Address to listen on (port 0: any free port, printed at start).
        #[arg(long, default_value = "127.0.0.1:8080")]
        addr: String,
        /// Where registered evaluation keys are stored (one subdirectory per model).
        #[arg(long, default_value = "fhec-keys")]
        key_dir: PathBuf,
        /// Memory for prepared evaluation keys, in MiB (least recently used evicted first).
        #[arg(long, default_value_t = 4096)]
        key_cache_mb: usize,
        /// Threads evaluating requests (default: one per core).
        #[arg(long)]
        workers: Option<usize>,
        /// Requests waiting beyond those running; more are answered 503.
        #[arg(long, default_value_t = 16)]
        queue: usize,
        /// Most samples in one predict request.
        #[arg(long, default_value_t = 256)]
        max_samples: usize,
        /// Most evaluation keys registered.
        #[arg(long, default_value_t = 256)]
        max_keys: usize,
    },
    /// Client: run samples on a server (`fhec serve`): fetch its client part, make keys
    /// in DIR if it has none, upload the evaluation key once, encrypt, evaluate, decrypt.
    Remote {
        /// Base URL of the server (e.g. http://127.0.0.1:8080).
        #[arg(long)]
        url: String,
        /// Key directory: used, or created with fresh keys when absent or empty.
        #[arg(long)]
        keys: PathBuf,
        /// Samples: a .npy shaped [samples, ...] (or .npz keyed by input name).
        #[arg(long)]
        input: PathBuf,
        /// Outputs (keyed by ONNX output name) as .npz.
        #[arg(short, long)]
        output: Option<PathBuf>,
        /// Only the first N samples.
        #[arg(long)]
        limit: Option<usize>,
        /// Overwrite an --output file that fhec did not write.
        #[arg(long)]
        force: bool,
    },
    /// Load-test the HTTP server on loopback with concurrent clients, next to the same
    /// evaluation in one process (prints figures).
    BenchServe {
        /// The server part (MODEL.server.fhe).
        server: PathBuf,
        /// Samples to send.
        #[arg(long)]
        input: PathBuf,
        /// Concurrent clients.
        #[arg(long, default_value_t = 8)]
        clients: usize,
        /// Requests per client.
        #[arg(long, default_value_t = 4)]
        requests: usize,
        /// Samples in each request.
        #[arg(long, default_value_t = 1)]
        samples_per_request: usize,
    },
    /// Developer tool: time one key switch + bootstrap on one core for several parameter
    /// sets, against the cost model the parameter search uses.
    BenchParams {
        /// Bootstraps timed per parameter set.
        #[arg(long, default_value_t = 16)]
        count: usize,
        /// Time multi-bit bootstrapping (grouping 2 and 3) against classic at the
        /// parameters the fixtures use, instead of the cost-model sets.
        #[arg(long)]
        multi_bit: bool,
    },
    /// Measure compile time, keygen time, key size, FHE latency and #PBS of a model.
    Bench {
        /// The ONNX model.
        model: PathBuf,
        /// Calibration samples, as for compile.
        #[arg(long)]
        inputset: PathBuf,
        /// Samples to time.
        #[arg(long)]
        input: PathBuf,
        /// Samples run in FHE.
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
    /// Spread neurons before rounding only as far as the layer's noisiest neuron's weight
    /// norm (compile turns it on by itself when the settings find no parameters).
    #[arg(long)]
    capped_spread: bool,
    /// A dense layer reading another's activations takes each activation's linear part
    /// straight from the earlier layer's input, past the lookup, which computes only the
    /// rest (compile turns it on by itself when the settings lose the float model)
    #[arg(long)]
    linear_bypass: bool,
    /// A dense layer whose result goes straight to the client also computes what
    /// rounding its weights lost, at a finer step, and the client adds the two (compile
    /// turns it on by itself when the settings lose the float model)
    #[arg(long)]
    split_output_weights: bool,
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
    fn settings(&self) -> fhec_compiler::settings::Settings {
        fhec_compiler::settings::Settings {
            n_bits: self.n_bits,
            input_bits: self.input_bits,
            weight_bits: self.weight_bits,
            activation_bits: self.activation_bits,
            rounding_threshold_bits: self.rounding_threshold_bits,
            no_rounding: self.no_rounding,
            exact_rounding: self.rounding == RoundingMode::Exact,
            comparison_bits: self.comparison_bits,
            capped_spread: self.capped_spread,
            linear_bypass: self.linear_bypass,
            split_output_weights: self.split_output_weights,
            range_margin: self.range_margin,
            p_error: self.p_error,
            global_p_error: self.global_p_error,
        }
    }

    /// The compile options: these settings, the ones left at their defaults adaptable.
    fn options(&self, strict: bool) -> fhec_compiler::Options {
        self.settings().options(strict, files::limits())
    }

    fn config(&self) -> QuantConfig {
        self.settings().quant_config()
    }

    fn target(&self) -> PErrorTarget {
        self.settings().target()
    }
}

#[derive(Clone, Copy, ValueEnum)]
enum Format {
    /// For people.
    Text,
    /// The versioned report of docs/REPORTS.md.
    Json,
    /// Graphviz: nodes coloured by bit-width, values over 16 bits marked.
    Dot,
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
    let cli = match Cli::command()
        .version(VERSION.as_str())
        .try_get_matches()
        .and_then(|m| Cli::from_arg_matches(&m))
    {
        Ok(cli) => cli,
        Err(e) => e.exit(),
    };
    files::set_memory_budget(cli.memory_budget);
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
            strict,
            #[cfg(feature = "mlir-verify")]
            verify_mlir,
        } => compile(
            &model,
            &inputset,
            output,
            &q.options(strict),
            force,
            #[cfg(feature = "mlir-verify")]
            verify_mlir,
        ),
        Command::Check {
            model,
            inputset,
            test,
            labels,
            output,
            max_accuracy_drop,
            max_pbs,
            max_latency_ms,
            max_evaluation_key_mb,
            max_bits,
            report,
            seed,
            q,
            force,
        } => fhec::check::check(
            &fhec::check::CheckArgs {
                model: &model,
                inputset: &inputset,
                test: &test,
                labels: labels.as_deref(),
                output: output.as_deref(),
                budgets: fhec::check::Budgets {
                    max_accuracy_drop,
                    max_pbs,
                    max_latency_ms,
                    max_evaluation_key_mb,
                    max_bits,
                },
                report: report.as_deref(),
                seed,
                force,
            },
            &q.options(false),
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
        Command::Keygen { client, keys } => deploy::keygen(&client, &keys),
        Command::Encrypt {
            client,
            keys,
            input,
            output,
            limit,
            force,
        } => deploy::encrypt(&client, &keys, &input, &output, limit, force),
        Command::Run {
            server,
            evaluation_key,
            inputs,
            output,
            force,
        } => deploy::run(&server, &evaluation_key, &inputs, &output, force),
        Command::Decrypt {
            client,
            keys,
            outputs,
            output,
            force,
        } => deploy::decrypt(&client, &keys, &outputs, output.as_deref(), force),
        Command::Serve {
            server,
            addr,
            key_dir,
            key_cache_mb,
            workers,
            queue,
            max_samples,
            max_keys,
        } => {
            let defaults = fhec_server::Config::default();
            remote::serve(
                &server,
                remote::ServeOptions {
                    addr: &addr,
                    key_dir: &key_dir,
                    config: fhec_server::Config {
                        workers: workers.unwrap_or(defaults.workers),
                        queue,
                        key_cache_bytes: key_cache_mb << 20,
                        max_keys,
                        max_samples,
                    },
                },
            )
        }
        Command::Remote {
            url,
            keys,
            input,
            output,
            limit,
            force,
        } => remote::remote(remote::RemoteOptions {
            url: &url,
            keys: &keys,
            input: &input,
            output: output.as_deref(),
            limit,
            force,
        }),
        Command::Bench {
            model,
            inputset,
            input,
            samples,
            q,
        } => bench::bench(&model, &inputset, &input, samples, &q.options(false)),
        Command::BenchParams { count, multi_bit } => {
            if multi_bit {
                bench::bench_multi_bit(count)
            } else {
                bench::bench_params(count)
            }
        }
        Command::BenchServe {
            server,
            input,
            clients,
            requests,
            samples_per_request,
        } => bench_serve::bench_serve(
            &server,
            &input,
            bench_serve::Options {
                clients,
                requests,
                samples_per_request,
            },
        ),
    }
}

fn compile(
    model: &Path,
    inputset: &Path,
    output: Option<PathBuf>,
    options: &fhec_compiler::Options,
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
    let vectors_path = out.with_extension("vectors.npz");
    let (client_path, server_path) = part_paths(&out);
    for p in [&out, &client_path, &server_path] {
        guard_fhec_file(p, force)?;
    }
    let mlir_ours = std::fs::read_to_string(&mlir_path)
        .map(|s| s.starts_with("// fhec"))
        .unwrap_or(false);
    guard_overwrite(&mlir_path, mlir_ours, force)?;
    guard_overwrite(&vectors_path, npy::is_fhec_npz(&vectors_path), force)?;
    let (compiled, samples) = files::compile(model, inputset, options)?;
    let a = &compiled.artifact;
    let mlir = fhec_mlir_emit::to_mlir(&a.server.circuit, &compiled.info, &a.source);
    #[cfg(feature = "mlir-verify")]
    if verify_mlir {
        fhec_mlir_emit::verify_with_mlir(&mlir)
            .with_context(|| format!("{}: MLIR verifier", mlir_path.display()))?;
    }
    let vectors = fhec_compiler::test_vectors(a, &compiled.info, &samples, 3)?;
    files::write_atomic(&out, &a.to_bytes(), false)?;
    files::write_atomic(&client_path, &a.client().to_bytes(), false)?;
    files::write_atomic(&server_path, &a.server.to_bytes(), false)?;
    files::write_atomic(&mlir_path, mlir.as_bytes(), false)?;
    npy::write_npz(&vectors_path, &vectors)?;
    let r = report_of(a, &compiled.info);
    let ops: Vec<String> = r
        .op_counts
        .iter()
        .map(|(k, v)| format!("{k} {v}"))
        .collect();
    println!(
        "compiled {} -> {} (+ {}, {}, {}, {})",
        model.display(),
        out.display(),
        client_path.display(),
        server_path.display(),
        mlir_path.display(),
        vectors_path.display()
    );
    if let Some(a) = &compiled.adaptation {
        println!("adapted: {}", a.text());
    }
    if let Some(f) = &compiled.neighbours_fidelity {
        println!(
            "k-nearest neighbours: {} (grid and distance clip chosen on the inputset for comparisons of at most {} bits)",
            f.text(),
            fhec_compiler::NEIGHBOUR_COMPARISON_BITS
        );
    }
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
    if let Some(d) = &r.deployment {
        print!("{}", d.text());
    }
    if let Some(c) = &r.client {
        print!("{}", c.text());
    }
    println!("compile time: {:.2} s", compiled.elapsed.as_secs_f64());
    Ok(ExitCode::SUCCESS)
}

/// The report of a compiled model: circuit, parameters, sizes, client part.
fn report_of(a: &fhec_runtime::Artifact, info: &fhec_ir::CircuitInfo) -> Report {
    Report::new(
        &a.source,
        &a.server.circuit,
        info,
        Some(a.server.params.clone()),
        a.quantization.clone(),
    )
    .with_trees_of(&a.graph)
    .with_client(a.client())
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
        let (graph, samples) = files::import_with_inputset(path, inputset)?;
        let (l, params, _) =
            fhec_compiler::lower_and_choose(&graph, &samples, &q.config(), q.target())
                .map_err(|e| files::compile_error(path, e))?;
        Report::new(
            &files::source_name(path),
            &l.quantized.circuit,
            &l.info,
            params,
            l.quantized.client.origins.clone(),
        )
        .with_trees_of(&graph)
    } else {
        let bytes = files::read_limited(
            path,
            files::MAX_PART_BYTES.min(files::memory_budget()),
            "a compiled model",
        )?;
        match frame::peek(&bytes).map_err(files::about(path))?.kind {
            Kind::Client => {
                let client =
                    fhec_runtime::Client::from_bytes(&bytes).map_err(files::about(path))?;
                return inspect_client(client.part(), format)
                    .map_err(|e| anyhow::anyhow!("{}: {e}", path.display()));
            }
            Kind::Server => {
                let server =
                    fhec_runtime::Server::from_bytes(&bytes).map_err(files::about(path))?;
                let p = server.part();
                Report::new(
                    &p.source,
                    &p.circuit,
                    server.info(),
                    Some(p.params.clone()),
                    Vec::new(),
                )
                .with_client(&p.client)
            }
            _ => {
                let (a, info) =
                    fhec_runtime::Artifact::from_bytes(&bytes).map_err(files::about(path))?;
                report_of(&a, &info)
            }
        }
    };
    match format {
        Format::Text => print!("{}", report.text()),
        Format::Json => println!("{}", serde_json::to_string_pretty(&report)?),
        Format::Dot => print!("{}", fhec_compiler::dot::dot(&report)),
    }
    Ok(if report.violations.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

/// What a client part holds: its keys' parameters and what it reveals of the model.
fn inspect_client(part: &fhec_runtime::ClientPart, format: Format) -> Result<ExitCode> {
    let summary = fhec_compiler::report::ClientSummary::of(part);
    match format {
        Format::Dot => {
            bail!("a client part holds no circuit to draw: inspect the server part or the artifact")
        }
        Format::Text => {
            println!("client part of {} (model {})", part.source, part.model_id);
            println!(
                "keys: master key of {} dimensions, inputs under its first {}, {} bootstrap partition(s); evaluation key {:.1} MB (seeded)",
                part.keys.master_dimension(),
                part.keys.input_dimension,
                part.keys.partitions.len(),
                fhec_runtime::EvaluationKey::body_bytes(&part.keys) as f64 / 1e6
            );
            println!(
                "encoding {} bits; outputs arrive with {}-bit coefficients",
                part.encoding_bits, part.output_bits
            );
            print!("{}", summary.text());
        }
        Format::Json => println!(
            "{}",
            serde_json::to_string_pretty(&serde_json::json!({
                "schema_version": fhec_compiler::report::INSPECT_SCHEMA_VERSION,
                "versions": fhec_compiler::report::Versions::current(),
                "kind": "client_part",
                "model_id": part.model_id.to_string(),
                "source": part.source,
                "keys": part.keys,
                "encoding_bits": part.encoding_bits,
                "output_bits": part.output_bits,
                "client": summary,
            }))?
        ),
    }
    Ok(ExitCode::SUCCESS)
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
    let (a, info) = files::load_artifact(model)?;
    let mut samples = files::load_samples(input, &a.graph)?;
    if let Some(n) = limit {
        if n == 0 {
            bail!("--limit must be at least 1");
        }
        samples.truncate(n);
    }
    let mut start = Instant::now();
    let outputs: Vec<_> = match mode {
        Mode::Clear => {
            fhec_runtime::samples::clear(&a.graph, &samples).map_err(files::about(model))?
        }
        Mode::Simulate => {
            let sim = fhec_runtime::simulate::Simulator::new(&a, &info, seed);
            if sim.is_statistical() {
                eprintln!("simulate: approximate roundings drawn from the parameters' error model (seed {seed})");
            }
            samples
                .iter()
                .enumerate()
                .map(|(i, s)| sim.run(i, s).map(|r| r.outputs))
                .collect::<Result<_, _>>()
                .map_err(files::about(model))?
        }
        Mode::Fhe => {
            let client =
                fhec_runtime::Client::new(a.client().clone()).map_err(files::about(model))?;
            let server =
                fhec_runtime::Server::new(a.server.clone()).map_err(files::about(model))?;
            let (secret, evaluation) = deploy::keys_for_predict(&client, &server, keys)?;
            let prepared = deploy::prepare(&server, &evaluation)?;
            start = Instant::now(); // per-sample figures exclude key setup
            let encrypted = client
                .encrypt(&secret, &samples)
                .map_err(files::about(input))?;
            let results = deploy::run_with_progress(&server, &prepared, &encrypted)?;
            client
                .decrypt(&secret, &results)
                .map_err(files::about(model))?
                .into_iter()
                .map(|r| r.outputs)
                .collect()
        }
    };
    let elapsed = start.elapsed().as_secs_f64();
    eprintln!(
        "{} samples in {:.2} s ({:.1} ms/sample)",
        samples.len(),
        elapsed,
        1e3 * elapsed / samples.len() as f64
    );
    deploy::emit_outputs(&a.graph, &outputs, output)?;
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_command_and_argument_has_help() {
        let cli = Cli::command();
        for cmd in cli.get_subcommands() {
            assert!(cmd.get_about().is_some(), "{} has no help", cmd.get_name());
            for arg in cmd.get_arguments() {
                let id = arg.get_id().as_str();
                if id == "help" || id == "version" {
                    continue;
                }
                assert!(
                    arg.get_help().is_some(),
                    "{} {id} has no help",
                    cmd.get_name()
                );
            }
        }
    }

    #[test]
    fn the_version_names_tfhe_rs_and_the_file_format() {
        assert!(VERSION.contains(fhec_backend_tfhe::TFHE_RS_VERSION));
        assert!(VERSION.contains(&format!("file format {}", frame::FORMAT_VERSION)));
    }
}
