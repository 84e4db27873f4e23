//! The server: runs a verified circuit on ciphertexts with evaluation keys only.

use std::sync::Mutex;

use rayon::prelude::*;
use tfhe::core_crypto::fft_impl::fft64::math::fft::Fft;
use tfhe::core_crypto::prelude::*;

use fhec_ir::{Circuit, CircuitInfo, IntOp};

use crate::keys::{delta_shift, Ciphertext, ServerKey};
use crate::BackendError;

/// One partition's evaluation keys, ready to use: key-switching key (from the master-key
/// prefix its inputs span), Fourier bootstrap key and FFT plan.
pub(crate) struct PartitionEval {
    pub(crate) keyswitch: LweKeyswitchKeyOwned<u64>,
    pub(crate) bootstrap: FourierLweBootstrapKeyOwned,
    pub(crate) fft: Fft,
}

/// Evaluation state prepared once per (circuit, key): every partition's keys, and every
/// lookup table and rounding step already encoded as a GLWE accumulator of its partition.
pub struct Evaluator {
    // owned copies (small next to the keys), so an evaluator outlives its inputs
    circuit: Circuit,
    info: CircuitInfo,
    pub(crate) parts: Vec<PartitionEval>,
    /// Per Lut node index: its partition and one accumulator per table.
    luts: Vec<(usize, Vec<GlweCiphertextOwned<u64>>)>,
    /// Per Round node index: its partition and chunks with their accumulators.
    rounds: Vec<(usize, Vec<RoundStep>)>,
    input_size: LweSize,
    /// Per partition, one set of buffers per worker thread, allocated once.
    scratch: Vec<Vec<Mutex<Scratch>>>,
}

/// One chunk of an exact rounding: `bits` bits from `first_bit` up, cleared by a sign
/// bootstrap (`sign`) and, for chunks wider than one bit, a table (`low`).
struct RoundStep {
    first_bit: u32,
    bits: u32,
    sign: GlweCiphertextOwned<u64>,
    low: Option<GlweCiphertextOwned<u64>>,
}

fn round_steps(drop: u32, chunk_bits: u32, w: u32, glwe: GlweSize, n: usize) -> Vec<RoundStep> {
    let shift = delta_shift(w);
    fhec_ir::rounding_chunks(drop, chunk_bits)
        .into_iter()
        .map(|(bit, c)| RoundStep {
            first_bit: bit,
            bits: c,
            // C = half the weight of the chunk's top bit, in Δ_W units
            sign: constant_accumulator(1u64 << (shift + bit + c - 2), glwe, n),
            low: (c > 1).then(|| {
                let table: Vec<i64> = (0..1i64 << (c - 1)).map(|m| m << bit).collect();
                lut_accumulator(&table, c - 1, w, glwe, n)
            }),
        })
        .collect()
}

/// Per-thread buffers of one partition, sized once: nothing is allocated per bootstrap
/// except its output ciphertext.
struct Scratch {
    buffers: ComputationBuffers,
    scaled: Vec<u64>,
    small: Ciphertext,
}

/// `acc += w·ct` for ciphertexts under master-key prefixes (`acc` at least as long).
fn add_scaled_into(acc: &mut [u64], ct: &[u64], w: u64) {
    // LWE ciphertexts always hold a body (tfhe's LweSize is at least 1)
    let (Some((body, mask)), Some((acc_body, acc_mask))) = (ct.split_last(), acc.split_last_mut())
    else {
        return;
    };
    for (a, &c) in acc_mask.iter_mut().zip(mask) {
        *a = a.wrapping_add(c.wrapping_mul(w));
    }
    *acc_body = acc_body.wrapping_add(body.wrapping_mul(w));
}

impl Evaluator {
    pub fn new(
        circuit: &Circuit,
        info: &CircuitInfo,
        key: &ServerKey,
    ) -> Result<Self, BackendError> {
        Self::with_progress(circuit, info, key, &|_, _| {})
    }

    /// [`new`](Self::new), reporting `(bootstrap-key bits prepared, total)`.
    pub fn with_progress(
        circuit: &Circuit,
        info: &CircuitInfo,
        key: &ServerKey,
        report: &(dyn Fn(usize, usize) + Sync),
    ) -> Result<Self, BackendError> {
        let progress = crate::Progress::new(crate::keys::bootstrap_key_bits(&key.params), report);
        if key.params.partitions.len() != key.partitions.len() {
            return Err(BackendError::Keys("the server key is inconsistent".into()));
        }
        Self::check_precisions(circuit, info, &key.params)?;
        let parts: Vec<PartitionEval> = if info.pbs_per_sample > 0 {
            key.partitions
                .iter()
                .map(|k| {
                    let keyswitch = k.keyswitch.clone().par_decompress_into_lwe_keyswitch_key();
                    PartitionEval {
                        keyswitch,
                        fft: Fft::new(k.bootstrap.polynomial_size()),
                        bootstrap: crate::bsk::fourier_bootstrap_key(&k.bootstrap, &progress),
                    }
                })
                .collect()
        } else {
            Vec::new()
        };
        Ok(Self::assemble(circuit, info, &key.params, parts))
    }

    /// Refuses a key whose partitions do not reach the circuit's widest bootstrap.
    pub(crate) fn check_precisions(
        circuit: &Circuit,
        info: &CircuitInfo,
        params: &crate::KeyParams,
    ) -> Result<(), BackendError> {
        let widest = crate::noise::circuit_precisions(circuit, info)
            .last()
            .copied();
        let reach = params.partitions.last().map(|p| p.precision);
        if info.pbs_per_sample > 0 && widest.is_none_or(|w| reach.is_none_or(|k| k < w)) {
            return Err(BackendError::Keys(format!(
                "the circuit bootstraps at up to {} bits but the server key's partitions only reach {:?}",
                widest.unwrap_or(0),
                reach
            )));
        }
        Ok(())
    }

    /// The evaluator around prepared partition keys: every table and rounding step
    /// encoded as an accumulator of its partition, scratch buffers per thread.
    pub(crate) fn assemble(
        circuit: &Circuit,
        info: &CircuitInfo,
        params: &crate::KeyParams,
        parts: Vec<PartitionEval>,
    ) -> Self {
        let precisions: Vec<u32> = params.partitions.iter().map(|p| p.precision).collect();
        let w = info.encoding_bits;
        let accumulator_shape = |part: usize| {
            let b = &parts[part].bootstrap;
            (b.glwe_size(), b.polynomial_size().0)
        };
        let luts = circuit
            .ids()
            .map(|id| match &circuit.node(id).op {
                IntOp::Lut {
                    precision, tables, ..
                } => {
                    let part = crate::noise::partition_of(&precisions, *precision);
                    let (glwe, n) = accumulator_shape(part);
                    (
                        part,
                        tables
                            .iter()
                            .map(|t| lut_accumulator(t, *precision, w, glwe, n))
                            .collect(),
                    )
                }
                _ => (0, Vec::new()),
            })
            .collect();
        let rounds = circuit
            .ids()
            .map(|id| match circuit.node(id).op {
                IntOp::Round {
                    drop_bits,
                    approximate: false,
                } if drop_bits > 0 => {
                    let part = crate::noise::partition_of(
                        &precisions,
                        crate::noise::rounding_precision(drop_bits, info.rounding_chunk_bits),
                    );
                    let (glwe, n) = accumulator_shape(part);
                    (
                        part,
                        round_steps(drop_bits, info.rounding_chunk_bits, w, glwe, n),
                    )
                }
                _ => (0, Vec::new()),
            })
            .collect();
        let mut ev = Evaluator {
            circuit: circuit.clone(),
            info: info.clone(),
            parts,
            luts,
            rounds,
            input_size: LweSize(params.input_dimension + 1),
            scratch: Vec::new(),
        };
        let threads = rayon::current_num_threads();
        ev.scratch = (0..ev.parts.len())
            .map(|p| {
                (0..threads)
                    .map(|_| Mutex::new(ev.new_scratch(p)))
                    .collect()
            })
            .collect();
        ev
    }

    /// Runs the circuit on one sample's encrypted inputs; returns the encrypted outputs.
    /// `progress` is called with the number of bootstraps done after each node.
    pub fn run(
        &self,
        inputs: Vec<Vec<Ciphertext>>,
        progress: &(dyn Fn(usize) + Sync),
    ) -> Result<Vec<Vec<Ciphertext>>, BackendError> {
        let c = &self.circuit;
        if inputs.len() != c.inputs.len() {
            return Err(BackendError::Input(format!(
                "{} encrypted inputs for {} circuit inputs",
                inputs.len(),
                c.inputs.len()
            )));
        }
        let mut inputs: Vec<Option<Vec<Ciphertext>>> = inputs.into_iter().map(Some).collect();
        let w = self.info.encoding_bits;
        let mut values: Vec<Vec<Ciphertext>> = Vec::with_capacity(c.len());
        let mut done = 0;
        let none = Vec::new();
        for id in c.ids() {
            let node = c.node(id);
            let ops = c.operands(id);
            let missing = || BackendError::Circuit(node.name.clone());
            let x: &Vec<Ciphertext> = match ops.first() {
                Some(o) => values.get(o.index()).ok_or_else(missing)?,
                None if matches!(node.op, IntOp::Input { .. } | IntOp::Affine { .. }) => &none,
                None => return Err(missing()),
            };
            let v = match &node.op {
                IntOp::Input { index, .. } => {
                    let v = inputs[*index].take().unwrap_or_default();
                    if v.len() != node.numel()
                        || v.iter().any(|ct| ct.lwe_size() != self.input_size)
                    {
                        return Err(BackendError::Input(format!(
                            "input #{index}: expected {} ciphertexts of size {}",
                            node.numel(),
                            self.input_size.0
                        )));
                    }
                    v
                }
                IntOp::Linear {
                    inputs,
                    outputs,
                    weight,
                    bias,
                } => self.linear(x, *inputs, *outputs, weight, bias, w),
                IntOp::Affine {
                    row_start,
                    terms,
                    bias,
                } => {
                    let xs: Vec<&Vec<Ciphertext>> = ops
                        .iter()
                        .map(|o| values.get(o.index()))
                        .collect::<Option<_>>()
                        .ok_or_else(missing)?;
                    affine(&xs, row_start, terms, bias, w)
                }
                IntOp::Conv(conv) => convolve(x, conv, w),
                // the consumer's bootstrap reads the top bits through its modulus switch
                IntOp::Round {
                    approximate: true, ..
                } => x.clone(),
                IntOp::Round { drop_bits, .. } => {
                    let (part, steps) = &self.rounds[id.index()];
                    self.round(x, *part, steps, *drop_bits, w)
                }
                IntOp::Lut {
                    precision,
                    table_of,
                    ..
                } => {
                    let shift = self.info.nodes[ops[0].index()].shift;
                    let (part, accs) = &self.luts[id.index()];
                    self.lut(x, *part, accs, table_of, w - precision - shift)
                }
                IntOp::Reshape => x.clone(),
            };
            done += self.info.nodes[id.index()].pbs;
            progress(done);
            values.push(v);
        }
        Ok(c.outputs
            .iter()
            .map(|o| values[o.index()].clone())
            .collect())
    }

    /// `y = W·x + b`, each output as long as the longest ciphertext of its row.
    fn linear(
        &self,
        x: &[Ciphertext],
        k: usize,
        n: usize,
        weight: &[i64],
        bias: &[i64],
        w: u32,
    ) -> Vec<Ciphertext> {
        let rows = x.len() / k;
        (0..rows * n)
            .into_par_iter()
            .map(|e| {
                let (r, j) = (e / n, e % n);
                let row = &x[r * k..(r + 1) * k];
                let size = row.iter().map(|c| c.lwe_size().0).max().unwrap_or(1);
                let mut acc = vec![0u64; size];
                for (i, ct) in row.iter().enumerate() {
                    let wi = weight[j * k + i] as u64;
                    if wi != 0 {
                        add_scaled_into(&mut acc, ct.as_ref(), wi);
                    }
                }
                acc[size - 1] = acc[size - 1].wrapping_add((bias[j] as u64) << delta_shift(w));
                LweCiphertext::from_container(acc, CiphertextModulus::new_native())
            })
            .collect()
    }

    fn new_scratch(&self, part: usize) -> Scratch {
        let p = &self.parts[part];
        let ksk = &p.keyswitch;
        let mut buffers = ComputationBuffers::new();
        buffers.resize(
            programmable_bootstrap_lwe_ciphertext_mem_optimized_requirement::<u64>(
                p.bootstrap.glwe_size(),
                p.bootstrap.polynomial_size(),
                p.fft.as_view(),
            )
            .unaligned_bytes_required(),
        );
        Scratch {
            buffers,
            scaled: vec![0u64; ksk.input_key_lwe_dimension().to_lwe_size().0],
            small: LweCiphertext::new(0u64, ksk.output_lwe_size(), CiphertextModulus::new_native()),
        }
    }

    /// Runs `f` with this worker thread's buffers for partition `part` (buffers made
    /// for another thread count are created on the spot).
    fn with_scratch<R>(&self, part: usize, f: impl FnOnce(&mut Scratch) -> R) -> R {
        match rayon::current_thread_index().and_then(|i| self.scratch[part].get(i)) {
            Some(m) => f(&mut m.lock().unwrap_or_else(|e| e.into_inner())),
            None => f(&mut self.new_scratch(part)),
        }
    }

    fn output_size(&self, part: usize) -> LweSize {
        self.parts[part]
            .bootstrap
            .output_lwe_dimension()
            .to_lwe_size()
    }

    /// `s.small = KS(x · 2^scale_log2 + offset)` with partition `part`'s key; the key
    /// switch reads only the rows of its key for the master-key prefix `x` is under.
    fn keyswitch_scaled(
        &self,
        part: usize,
        s: &mut Scratch,
        x: &[u64],
        scale_log2: u32,
        offset: u64,
    ) {
        let scaled = &mut s.scaled[..x.len()];
        for (d, &c) in scaled.iter_mut().zip(x) {
            *d = c.wrapping_shl(scale_log2);
        }
        let last = scaled.len() - 1;
        scaled[last] = scaled[last].wrapping_add(offset);
        let ksk = &self.parts[part].keyswitch;
        let rows = (x.len() - 1) * ksk.decomposition_level_count().0 * ksk.output_lwe_size().0;
        let ksk_prefix = LweKeyswitchKey::from_container(
            &ksk.as_ref()[..rows],
            ksk.decomposition_base_log(),
            ksk.decomposition_level_count(),
            ksk.output_lwe_size(),
            ksk.ciphertext_modulus(),
        );
        let scaled = LweCiphertext::from_container(&*scaled, CiphertextModulus::new_native());
        keyswitch_lwe_ciphertext(&ksk_prefix, &scaled, &mut s.small);
    }

    /// `out = PBS(KS(x · 2^scale_log2 + offset), acc)` in partition `part`.
    #[allow(clippy::too_many_arguments)]
    fn bootstrap_one(
        &self,
        part: usize,
        s: &mut Scratch,
        x: &[u64],
        scale_log2: u32,
        offset: u64,
        acc: &GlweCiphertextOwned<u64>,
        out: &mut Ciphertext,
    ) {
        self.keyswitch_scaled(part, s, x, scale_log2, offset);
        let p = &self.parts[part];
        programmable_bootstrap_lwe_ciphertext_mem_optimized(
            &s.small,
            out,
            acc,
            &p.bootstrap,
            p.fft.as_view(),
            s.buffers.stack(),
        );
    }

    /// What partition `part`'s blind rotation starts from, for noise measurements: `x`
    /// scaled by `2^scale_log2`, key-switched to the partition's small key, then each
    /// coefficient modulus-switched to `[0, 2N)` as the bootstrap does.
    pub fn bootstrap_input(&self, part: usize, x: &Ciphertext, scale_log2: u32) -> Vec<u64> {
        let mut s = self.new_scratch(part);
        self.keyswitch_scaled(part, &mut s, x.as_ref(), scale_log2, 0);
        let p = &self.parts[part];
        let log_2n = p.bootstrap.polynomial_size().log2().0 + 1;
        s.small
            .as_ref()
            .iter()
            .map(|&c| c.wrapping_add(1u64 << (63 - log_2n)) >> (64 - log_2n))
            .collect()
    }

    /// Number of partitions (parameter sets) this evaluator bootstraps with.
    pub fn partitions(&self) -> usize {
        self.parts.len()
    }

    fn lut(
        &self,
        x: &[Ciphertext],
        part: usize,
        accs: &[GlweCiphertextOwned<u64>],
        table_of: &[u32],
        scale_log2: u32,
    ) -> Vec<Ciphertext> {
        let size = self.output_size(part);
        x.par_iter()
            .zip(table_of)
            .map(|(ct, &t)| {
                let mut out = LweCiphertext::new(0u64, size, CiphertextModulus::new_native());
                self.with_scratch(part, |s| {
                    self.bootstrap_one(
                        part,
                        s,
                        ct.as_ref(),
                        scale_log2,
                        0,
                        &accs[t as usize],
                        &mut out,
                    )
                });
                out
            })
            .collect()
    }

    /// Exact rounding: clears the `drop` low bits of `x + 2^(drop−1)`, a chunk of c bits
    /// at a time from the LSB (lower bits already zero). Scaled by 2^(W+1−i−c), the chunk
    /// L fills the torus as L/2^c: a constant-table bootstrap on L/2^c + 2^-(c+1) gives
    /// ±C with the sign of L's top bit, which is subtracted; the remaining c − 1 bits
    /// sit in the padding-protected half and a (c−1)-bit table returns them, scaled to
    /// their place, for subtraction. See docs/NOISE.md.
    fn round(
        &self,
        x: &[Ciphertext],
        part: usize,
        steps: &[RoundStep],
        drop: u32,
        w: u32,
    ) -> Vec<Ciphertext> {
        let shift = delta_shift(w);
        let out_size = self.output_size(part);
        x.par_iter()
            .map(|ct| {
                // y spans both x's key prefix and the bootstrap outputs'
                let size = ct.lwe_size().0.max(out_size.0);
                let mut y = vec![0u64; size];
                add_scaled_into(&mut y, ct.as_ref(), 1);
                y[size - 1] = y[size - 1].wrapping_add(1u64 << (shift + drop - 1));
                let mut out = LweCiphertext::new(0u64, out_size, CiphertextModulus::new_native());
                self.with_scratch(part, |s| {
                    for RoundStep {
                        first_bit: bit,
                        bits: c,
                        sign,
                        low,
                    } in steps
                    {
                        let scale = w + 1 - bit - c;
                        // top bit: y += ±C − C, i.e. y −= b·2C
                        self.bootstrap_one(part, s, &y, scale, 1u64 << (63 - c), sign, &mut out);
                        add_scaled_into(&mut y, out.as_ref(), 1);
                        y[size - 1] = y[size - 1].wrapping_sub(1u64 << (shift + bit + c - 2));
                        if let Some(low) = low {
                            self.bootstrap_one(part, s, &y, scale, 0, low, &mut out);
                            add_scaled_into(&mut y, out.as_ref(), u64::MAX);
                        }
                    }
                });
                LweCiphertext::from_container(y, CiphertextModulus::new_native())
            })
            .collect()
    }
}

/// `IntOp::Affine` on ciphertexts: each output as long as the longest ciphertext its
/// row reads (zero-weight terms included, as the noise model assumes).
fn affine(
    xs: &[&Vec<Ciphertext>],
    row_start: &[u32],
    terms: &[fhec_ir::Term],
    bias: &[i64],
    w: u32,
) -> Vec<Ciphertext> {
    (0..bias.len())
        .into_par_iter()
        .map(|j| {
            let row = fhec_ir::affine_row(row_start, terms, j);
            let size = row
                .iter()
                .map(|t| xs[t.operand as usize][t.index as usize].lwe_size().0)
                .max()
                .unwrap_or(1);
            let mut acc = vec![0u64; size];
            for t in row {
                if t.weight != 0 {
                    let ct = &xs[t.operand as usize][t.index as usize];
                    add_scaled_into(&mut acc, ct.as_ref(), t.weight as u64);
                }
            }
            acc[size - 1] = acc[size - 1].wrapping_add((bias[j] as u64) << delta_shift(w));
            LweCiphertext::from_container(acc, CiphertextModulus::new_native())
        })
        .collect()
}

/// `IntOp::Conv` on ciphertexts: each output as long as the longest ciphertext of the
/// operand (the noise model sums every tap inside the input).
fn convolve(x: &[Ciphertext], conv: &fhec_ir::Conv, w: u32) -> Vec<Ciphertext> {
    let size = x.iter().map(|c| c.lwe_size().0).max().unwrap_or(1);
    (0..conv.bias.len())
        .into_par_iter()
        .map(|e| {
            let mut acc = vec![0u64; size];
            conv.for_each_tap(e, |i, k| {
                let weight = conv.weight[k];
                if weight != 0 {
                    add_scaled_into(&mut acc, x[i].as_ref(), weight as u64);
                }
            });
            acc[size - 1] = acc[size - 1].wrapping_add((conv.bias[e] as u64) << delta_shift(w));
            LweCiphertext::from_container(acc, CiphertextModulus::new_native())
        })
        .collect()
}

/// The accumulator whose blind rotation by a p-bit message m returns `table[m]·Δ`
/// (and `−table[m − 2^p]·Δ` in the negacyclic half).
fn lut_accumulator(
    table: &[i64],
    precision: u32,
    w: u32,
    glwe_size: GlweSize,
    n: usize,
) -> GlweCiphertextOwned<u64> {
    let boxes = 1usize << precision;
    let box_size = n / boxes;
    let shift = delta_shift(w);
    let mut body = vec![0u64; n];
    for (m, &t) in table.iter().enumerate() {
        body[m * box_size..(m + 1) * box_size].fill((t as u64).wrapping_shl(shift));
    }
    // centre each box on its message: rotate by half a box, negacyclically
    let half = box_size / 2;
    for v in &mut body[..half] {
        *v = v.wrapping_neg();
    }
    body.rotate_left(half);
    trivial_accumulator(&body, glwe_size)
}

fn constant_accumulator(c: u64, glwe_size: GlweSize, n: usize) -> GlweCiphertextOwned<u64> {
    trivial_accumulator(&vec![c; n], glwe_size)
}

fn trivial_accumulator(body: &[u64], glwe_size: GlweSize) -> GlweCiphertextOwned<u64> {
    let n = body.len();
    let mut acc = GlweCiphertext::new(
        0u64,
        glwe_size,
        PolynomialSize(n),
        CiphertextModulus::new_native(),
    );
    acc.get_mut_body().as_mut().copy_from_slice(body);
    acc
}
