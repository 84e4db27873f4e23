//! Timing one key switch + bootstrap on real keys, for the cost model's calibration
//! (`fhec bench-params`) and `fhec bench`'s per-partition figures.

use fhec_ir::{Circuit, IntOp, Node, Range, Status};

use crate::{generate_keys, BackendError, CryptoParams, Evaluator, KeyParams, PartitionKeyParams};

/// Single-core time of one key switch (from a key of `ks_dim`) + bootstrap for `params`,
/// measured on `count` bootstraps of an identity table (real keys). Returns the keygen
/// time in seconds and the milliseconds per bootstrap.
pub fn time_bootstrap(
    params: &CryptoParams,
    ks_dim: usize,
    count: usize,
) -> Result<(f64, f64), BackendError> {
    let count = count.max(1);
    let mut c = Circuit::default();
    let x = c.add(
        Node {
            name: "x".into(),
            op: IntOp::Input { index: 0, bits: 2 },
            shape: vec![1, count],
            status: Status::Encrypted,
            range: Range::new(0, 3),
        },
        &[],
    );
    let t = c.add(
        Node {
            name: "id".into(),
            op: IntOp::Lut {
                precision: 2,
                tables: vec![vec![0, 1, 2, 3]],
                table_of: vec![0; count],
            },
            shape: vec![1, count],
            status: Status::Encrypted,
            range: Range::new(0, 3),
        },
        &[x],
    );
    c.inputs = vec![x];
    c.outputs = vec![t];
    let info = fhec_ir::verify(&c).map_err(|e| BackendError::Input(e.to_string()))?;
    let start = std::time::Instant::now();
    let keys = KeyParams {
        input_dimension: ks_dim,
        partitions: vec![PartitionKeyParams {
            precision: 2,
            params: *params,
            ks_input_dimension: ks_dim,
        }],
    };
    keys.check().map_err(BackendError::Keys)?;
    let (client, server) = generate_keys(&keys);
    let keygen = start.elapsed().as_secs_f64();
    let ev = Evaluator::new(&c, &info, &server)?;
    let values: Vec<i64> = (0..count as i64).map(|i| i % 4).collect();
    let input = client.encrypt(&values, info.encoding_bits);
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(1)
        .build()
        .map_err(|e| BackendError::Input(e.to_string()))?;
    let start = std::time::Instant::now();
    let out = pool.install(|| ev.run(vec![input], &|_| {}))?;
    let ms = start.elapsed().as_secs_f64() * 1e3 / count as f64;
    if client.decrypt(&out[0], info.encoding_bits)? != values {
        return Err(BackendError::Input(
            "identity bootstraps decoded wrong values".into(),
        ));
    }
    Ok((keygen, ms))
}

/// One blind rotation (modulus switch, rotation, sample extraction), classic and
/// multi-bit, at the same `n`, `k`, `N` and decomposition: milliseconds per bootstrap.
#[derive(Clone, Debug)]
pub struct MultiBitTimes {
    /// `n` rounded up to a multiple of 6 (both grouping factors divide it).
    pub lwe_dimension: usize,
    /// Classic, one thread.
    pub classic_ms: f64,
    /// (grouping factor, threads, ms) for factors 2 and 3 on 1 and `threads` threads.
    pub multi_bit_ms: Vec<(usize, usize, f64)>,
}

/// Times classic and multi-bit bootstraps for `params` (keys made here for timing only,
/// `count` bootstraps each): what multi-bit bootstrapping would buy on this machine.
pub fn time_multi_bit(
    params: &CryptoParams,
    threads: usize,
    count: usize,
) -> Result<MultiBitTimes, BackendError> {
    use tfhe::core_crypto::prelude::*;
    let count = count.max(1);
    let n = params.lwe_dimension.next_multiple_of(6);
    let (k, big_n) = (params.glwe_dimension, params.polynomial_size);
    let (base, level) = (
        DecompositionBaseLog(params.pbs_base_log),
        DecompositionLevelCount(params.pbs_level),
    );
    let modulus = CiphertextModulus::<u64>::new_native();
    let mut boxed_seeder = new_seeder();
    let seeder = boxed_seeder.as_mut();
    let mut secret_gen = SecretRandomGenerator::<DefaultRandomGenerator>::new(seeder.seed());
    let mut enc_gen =
        EncryptionRandomGenerator::<DefaultRandomGenerator>::new(seeder.seed(), seeder);
    let lwe_sk = LweSecretKey::generate_new_binary(LweDimension(n), &mut secret_gen);
    let glwe_sk = GlweSecretKey::generate_new_binary(
        GlweDimension(k),
        PolynomialSize(big_n),
        &mut secret_gen,
    );
    let glwe_noise = Gaussian::from_dispersion_parameter(
        StandardDev(crate::noise::security_std_dev(k * big_n)),
        0.0,
    );
    let lwe_noise =
        Gaussian::from_dispersion_parameter(StandardDev(crate::noise::security_std_dev(n)), 0.0);
    let input = allocate_and_encrypt_new_lwe_ciphertext(
        &lwe_sk,
        Plaintext(1u64 << 60),
        lwe_noise,
        modulus,
        &mut enc_gen,
    );
    let accumulator = GlweCiphertext::new(0u64, GlweSize(k + 1), PolynomialSize(big_n), modulus);
    let mut output = LweCiphertext::new(0u64, LweSize(k * big_n + 1), modulus);
    let time = |f: &mut dyn FnMut()| {
        f(); // warm-up: buffers, FFT plans
        let start = std::time::Instant::now();
        for _ in 0..count {
            f();
        }
        start.elapsed().as_secs_f64() * 1e3 / count as f64
    };

    let bsk = par_allocate_and_generate_new_lwe_bootstrap_key(
        &lwe_sk,
        &glwe_sk,
        base,
        level,
        glwe_noise,
        modulus,
        &mut enc_gen,
    );
    let mut fourier = FourierLweBootstrapKey::new(
        LweDimension(n),
        GlweSize(k + 1),
        PolynomialSize(big_n),
        base,
        level,
    );
    par_convert_standard_lwe_bootstrap_key_to_fourier(&bsk, &mut fourier);
    drop(bsk);
    let classic_ms = time(&mut || {
        programmable_bootstrap_lwe_ciphertext(&input, &mut output, &accumulator, &fourier)
    });
    drop(fourier);

    let mut multi_bit_ms = Vec::new();
    for g in [2usize, 3] {
        let mut mb = LweMultiBitBootstrapKey::new(
            0u64,
            GlweSize(k + 1),
            PolynomialSize(big_n),
            base,
            level,
            LweDimension(n),
            LweBskGroupingFactor(g),
            modulus,
        );
        par_generate_lwe_multi_bit_bootstrap_key(
            &lwe_sk,
            &glwe_sk,
            &mut mb,
            glwe_noise,
            &mut enc_gen,
        );
        let mut fmb = FourierLweMultiBitBootstrapKey::new(
            LweDimension(n),
            GlweSize(k + 1),
            PolynomialSize(big_n),
            base,
            level,
            LweBskGroupingFactor(g),
        );
        par_convert_standard_lwe_multi_bit_bootstrap_key_to_fourier(&mb, &mut fmb);
        drop(mb);
        let mut counts = vec![1];
        if threads > 1 {
            counts.push(threads);
        }
        for t in counts {
            let ms = time(&mut || {
                multi_bit_programmable_bootstrap_lwe_ciphertext(
                    &input,
                    &mut output,
                    &accumulator,
                    &fmb,
                    ThreadCount(t),
                    true,
                )
            });
            multi_bit_ms.push((g, t, ms));
        }
    }
    Ok(MultiBitTimes {
        lwe_dimension: n,
        classic_ms,
        multi_bit_ms,
    })
}
