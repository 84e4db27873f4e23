//! `fhec bench` and `fhec bench-params`: figures printed, nothing asserted.

use std::path::Path;
use std::process::ExitCode;
use std::time::Instant;

use anyhow::Result;
use fhec::files;
use fhec_backend_tfhe::CryptoParams;
use fhec_compiler::report::{naive_tree_pbs, params_text, DeploymentSizes};
use fhec_runtime::simulate::{differing, simulate, Simulator};
use fhec_runtime::{Client, Server};

/// Compile, keygen, key sizes, server preparation, per-sample FHE latency against the
/// prediction, FHE against simulate, and every file's size on the wire.
pub fn bench(
    model: &Path,
    inputset: &Path,
    input: &Path,
    n: usize,
    options: &fhec_compiler::Options,
) -> Result<ExitCode> {
    let (compiled, _) = files::compile(model, inputset, options)?;
    let (a, info) = (&compiled.artifact, &compiled.info);
    let samples: Vec<_> = files::load_samples(input, &a.graph)?
        .into_iter()
        .take(n.max(1))
        .collect();
    let client = Client::new(a.client().clone())?;
    let server = Server::new(a.server.clone())?;
    let t = Instant::now();
    let (secret, evaluation) = client.keygen();
    let keygen = t.elapsed().as_secs_f64();
    let t = Instant::now();
    let prepared = server.prepare(&evaluation)?;
    let prepare = t.elapsed().as_secs_f64();
    let mut latencies = Vec::new();
    let mut mismatches = 0;
    // approximate rounding: output elements off the expected value, in FHE and in the
    // simulated error model (averaged over DRAWS seeds)
    const DRAWS: usize = 16;
    let sim = Simulator::new(a, info, 0);
    let (mut elements, mut fhe_off, mut sim_off) = (0usize, 0usize, 0usize);
    let (mut input_bytes, mut output_bytes) = (0usize, 0usize);
    for (i, s) in samples.iter().enumerate() {
        let t = Instant::now();
        let encrypted = client.encrypt(&secret, std::slice::from_ref(s))?;
        let outputs = server.run(&prepared, &encrypted, &|_, _| {})?;
        let r = client.decrypt(&secret, &outputs)?.remove(0);
        latencies.push(t.elapsed().as_secs_f64());
        input_bytes += encrypted.to_bytes().len();
        output_bytes += outputs.to_bytes().len();
        let expected = simulate(a, info, s)?.circuit_outputs;
        if r.circuit_outputs != expected {
            mismatches += 1;
        }
        elements += expected.iter().map(Vec::len).sum::<usize>();
        fhe_off += differing(&r.circuit_outputs, &expected);
        if sim.is_statistical() {
            for d in 0..DRAWS {
                let noisy = sim.run_seeded(d as u64, i, s)?;
                sim_off += differing(&noisy.circuit_outputs, &expected);
            }
        }
    }
    let count = latencies.len();
    let mean = latencies.iter().sum::<f64>() / count as f64;
    let p = &a.server.params;
    let threads = rayon::current_num_threads();
    let predicted = fhec_backend_tfhe::predicted_latency_ms(&a.server.circuit, info, p, threads);
    let (bsk, ksk) = p.eval_key_bytes();
    let naive = naive_tree_pbs(&a.graph)
        .map(|n| format!(" (naive tree lowering {n})"))
        .unwrap_or_default();
    let evaluation_file = evaluation.to_bytes().len();
    println!(
        "{:<40} compile {:>6.2} s | keygen {:>6.2} s | eval key {:>7.1} MB seeded, {:>7.1} MiB in memory | prepare {:>5.2} s | FHE {:>8.1} ms/sample over {count} (predicted {:.0} ms on {threads} threads, {:.0} ms on 1 core) | PBS {:>4}{naive} | fhe!=simulate {}",
        model.display(),
        compiled.elapsed.as_secs_f64(),
        keygen,
        evaluation_file as f64 / 1e6,
        (bsk + ksk) as f64 / (1 << 20) as f64,
        prepare,
        mean * 1e3,
        predicted,
        p.predicted_ms_per_sample,
        info.pbs_per_sample,
        mismatches
    );
    let sizes = DeploymentSizes::of(&a.server.circuit, info, p);
    println!(
        "  wire (file sizes): input ciphertexts {:.0} B/sample (predicted {} + header), outputs {:.0} B/sample ({}-bit coefficients), evaluation key {:.2} MB, secret key {} B, client part {} B, server part {} B",
        input_bytes as f64 / count as f64,
        sizes.input_bytes_per_sample,
        output_bytes as f64 / count as f64,
        sizes.output_bits,
        evaluation_file as f64 / 1e6,
        secret.to_bytes().len(),
        a.client().to_bytes().len(),
        a.server.to_bytes().len(),
    );
    // Σ over bootstraps of one KS + PBS timed alone on one core, per partition
    let mut serial_sum = 0.0;
    for (i, part) in p.partitions.iter().enumerate() {
        let (_, single) =
            fhec_backend_tfhe::bench::time_bootstrap(&part.params, part.ks_input_dimension, 4)?;
        serial_sum += single * part.pbs_per_sample as f64;
        println!(
            "  partition {i}: {} PBS/sample, {} | KS from {} dims | one KS+PBS on 1 core: measured {:.1} ms, predicted {:.1} ms",
            part.pbs_per_sample,
            params_text(&part.params),
            part.ks_input_dimension,
            single,
            part.cost_ms
        );
    }
    if serial_sum > 0.0 {
        // the physical floor: every bootstrap at its measured single-core time, all
        // cores busy, nothing else
        let floor = serial_sum / threads as f64;
        println!(
            "  floor: Σ PBS × one KS+PBS on 1 core ÷ {threads} cores = {:.0} / {threads} = {floor:.0} ms; measured / floor = {:.2}",
            serial_sum,
            mean * 1e3 / floor
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
pub fn bench_params(count: usize) -> Result<ExitCode> {
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
    .map(|(n, k, big_n, pb, pl, kb, kl)| CryptoParams::new(n, k, big_n, (pb, pl), (kb, kl)));
    println!(
        "{:<44} {:>10} {:>12} {:>12} {:>7}",
        "parameters", "keygen s", "predicted ms", "measured ms", "ratio"
    );
    for p in sets {
        let (keygen, ms) = fhec_backend_tfhe::bench::time_bootstrap(&p, p.big_dimension(), count)?;
        let predicted = p.pbs_cost_ms() + p.ks_cost_ms(p.big_dimension());
        let name = params_text(&p);
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

/// Multi-bit against classic bootstrapping at the parameter sets the fixtures use
/// (docs/PARAMETERS.md, "Levers"): per bootstrap, and per bootstrap of a layer whose
/// bootstraps spread over every core (classic: one bootstrap per core at a time).
pub fn bench_multi_bit(count: usize) -> Result<ExitCode> {
    let threads = rayon::current_num_threads();
    // (n, k, N, PBS base log, levels): 6-bit tables of the MLPs and CNNs (3 and 4
    // levels), the trees' rounding and 4-bit comparison bootstraps
    let sets = [
        (826, 1, 8192, 12, 3),
        (826, 1, 8192, 9, 4),
        (730, 1, 2048, 16, 2),
        (858, 1, 2048, 23, 1),
    ]
    .map(|(n, k, big_n, pb, pl)| CryptoParams::new(n, k, big_n, (pb, pl), (2, 8)));
    println!(
        "{:<36} {:>12} {:>12} {:>12} {:>12} {:>12}   best for a layer on {threads} cores",
        "parameters (n rounded to 6)",
        "classic 1t",
        "mb g=2 1t",
        format!("mb g=2 {threads}t"),
        "mb g=3 1t",
        format!("mb g=3 {threads}t"),
    );
    for p in sets {
        let t = fhec_backend_tfhe::bench::time_multi_bit(&p, threads, count)?;
        let at = |g: usize, th: usize| {
            t.multi_bit_ms
                .iter()
                .find(|m| m.0 == g && m.1 == th)
                .map_or(f64::NAN, |m| m.2)
        };
        // a layer of many bootstraps: classic runs one per core, multi-bit one at a time
        // on every core
        let classic_layer = t.classic_ms / threads as f64;
        let multi_layer = at(2, threads).min(at(3, threads));
        let verdict = if multi_layer < classic_layer {
            "multi-bit"
        } else {
            "classic"
        };
        println!(
            "n={:<4} k={} N={:<5} 2^{}x{:<18} {:>12.1} {:>12.1} {:>12.1} {:>12.1} {:>12.1}   {verdict} ({:.1} vs {:.1} ms per bootstrap); one lone bootstrap: {}",
            t.lwe_dimension,
            p.glwe_dimension,
            p.polynomial_size,
            p.pbs_base_log,
            p.pbs_level,
            t.classic_ms,
            at(2, 1),
            at(2, threads),
            at(3, 1),
            at(3, threads),
            classic_layer,
            multi_layer,
            if multi_layer < t.classic_ms { "multi-bit" } else { "classic" }
        );
    }
    Ok(ExitCode::SUCCESS)
}
