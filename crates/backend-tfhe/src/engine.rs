//! The server: runs a verified circuit on ciphertexts with evaluation keys only.

use rayon::prelude::*;
use tfhe::core_crypto::fft_impl::fft64::math::fft::Fft;
use tfhe::core_crypto::prelude::*;

use fhec_ir::{Circuit, CircuitInfo, IntOp};

use crate::keys::{delta_shift, Ciphertext, ServerKey};
use crate::BackendError;

/// Evaluation state prepared once per (circuit, key): Fourier bootstrap key, FFT plan,
/// and every lookup table already encoded as a GLWE accumulator.
pub struct Evaluator<'a> {
    circuit: &'a Circuit,
    info: &'a CircuitInfo,
    keyswitch: Option<LweKeyswitchKeyOwned<u64>>,
    bootstrap: Option<FourierLweBootstrapKeyOwned>,
    fft: Option<Fft>,
    /// Per Lut node index: one accumulator per table.
    luts: Vec<Vec<GlweCiphertextOwned<u64>>>,
    /// Per Round node index: its chunks with their accumulators.
    rounds: Vec<Vec<RoundStep>>,
    big_size: LweSize,
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

struct Scratch {
    buffers: ComputationBuffers,
    scaled: Ciphertext,
    small: Ciphertext,
}

impl<'a> Evaluator<'a> {
    pub fn new(
        circuit: &'a Circuit,
        info: &'a CircuitInfo,
        key: &ServerKey,
    ) -> Result<Self, BackendError> {
        let p = key.params;
        let needs = info.pbs_per_sample > 0;
        let (keyswitch, bootstrap, fft) = match (&key.keyswitch, &key.bootstrap, needs) {
            (_, _, false) => (None, None, None),
            (Some(ksk), Some(bsk), true) => {
                let ksk = ksk.clone().decompress_into_lwe_keyswitch_key();
                let std = bsk.clone().decompress_into_lwe_bootstrap_key();
                let mut fourier = FourierLweBootstrapKey::new(
                    std.input_lwe_dimension(),
                    std.glwe_size(),
                    std.polynomial_size(),
                    std.decomposition_base_log(),
                    std.decomposition_level_count(),
                );
                par_convert_standard_lwe_bootstrap_key_to_fourier(&std, &mut fourier);
                (
                    Some(ksk),
                    Some(fourier),
                    Some(Fft::new(PolynomialSize(p.polynomial_size))),
                )
            }
            _ => {
                return Err(BackendError::Keys(
                    "the circuit bootstraps but the server key has no evaluation keys".into(),
                ))
            }
        };
        let w = info.encoding_bits;
        let glwe_size = GlweDimension(p.glwe_dimension).to_glwe_size();
        let luts = circuit
            .ids()
            .map(|id| match &circuit.node(id).op {
                IntOp::Lut {
                    precision, tables, ..
                } => tables
                    .iter()
                    .map(|t| lut_accumulator(t, *precision, w, glwe_size, p.polynomial_size))
                    .collect(),
                _ => Vec::new(),
            })
            .collect();
        let rounds = circuit
            .ids()
            .map(|id| match circuit.node(id).op {
                IntOp::Round { drop_bits } => round_steps(
                    drop_bits,
                    info.rounding_chunk_bits,
                    w,
                    glwe_size,
                    p.polynomial_size,
                ),
                _ => Vec::new(),
            })
            .collect();
        Ok(Evaluator {
            circuit,
            info,
            keyswitch,
            bootstrap,
            fft,
            luts,
            rounds,
            big_size: LweSize(p.big_dimension() + 1),
        })
    }

    /// Runs the circuit on one sample's encrypted inputs; returns the encrypted outputs.
    /// `progress` is called with the number of bootstraps done after each node.
    pub fn run(
        &self,
        inputs: Vec<Vec<Ciphertext>>,
        progress: &(dyn Fn(usize) + Sync),
    ) -> Result<Vec<Vec<Ciphertext>>, BackendError> {
        let c = self.circuit;
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
        for id in c.ids() {
            let node = c.node(id);
            let ops = c.operands(id);
            let x = ops.first().map(|o| &values[o.index()]);
            let v = match &node.op {
                IntOp::Input { index, .. } => {
                    let v = inputs[*index].take().unwrap_or_default();
                    if v.len() != node.numel() || v.iter().any(|ct| ct.lwe_size() != self.big_size)
                    {
                        return Err(BackendError::Input(format!(
                            "input #{index}: expected {} ciphertexts of size {}",
                            node.numel(),
                            self.big_size.0
                        )));
                    }
                    v
                }
                IntOp::Linear {
                    inputs,
                    outputs,
                    weight,
                    bias,
                } => self.linear(x.unwrap(), *inputs, *outputs, weight, bias, w),
                IntOp::Round { drop_bits } => {
                    self.round(x.unwrap(), &self.rounds[id.index()], *drop_bits, w)
                }
                IntOp::Lut {
                    precision,
                    table_of,
                    ..
                } => {
                    let shift = self.info.nodes[ops[0].index()].shift;
                    self.lut(
                        x.unwrap(),
                        &self.luts[id.index()],
                        table_of,
                        w - precision - shift,
                    )
                }
                IntOp::Reshape => x.unwrap().clone(),
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
        let size = self.big_size.0;
        (0..rows * n)
            .into_par_iter()
            .map(|e| {
                let (r, j) = (e / n, e % n);
                let mut acc = vec![0u64; size];
                for i in 0..k {
                    let wi = weight[j * k + i] as u64;
                    if wi != 0 {
                        for (a, &c) in acc.iter_mut().zip(x[r * k + i].as_ref()) {
                            *a = a.wrapping_add(c.wrapping_mul(wi));
                        }
                    }
                }
                acc[size - 1] = acc[size - 1].wrapping_add((bias[j] as u64) << delta_shift(w));
                LweCiphertext::from_container(acc, CiphertextModulus::new_native())
            })
            .collect()
    }

    fn scratch(&self) -> Scratch {
        let p = self
            .bootstrap
            .as_ref()
            .expect("bootstrap key present when the circuit bootstraps");
        let fft = self.fft.as_ref().unwrap().as_view();
        let mut buffers = ComputationBuffers::new();
        buffers.resize(
            programmable_bootstrap_lwe_ciphertext_mem_optimized_requirement::<u64>(
                p.glwe_size(),
                p.polynomial_size(),
                fft,
            )
            .unaligned_bytes_required(),
        );
        let small_size = self.keyswitch.as_ref().unwrap().output_lwe_size();
        Scratch {
            buffers,
            scaled: LweCiphertext::new(0u64, self.big_size, CiphertextModulus::new_native()),
            small: LweCiphertext::new(0u64, small_size, CiphertextModulus::new_native()),
        }
    }

    /// `out = PBS(KS(x · 2^scale_log2 + offset), acc)`.
    fn bootstrap_one(
        &self,
        s: &mut Scratch,
        x: &Ciphertext,
        scale_log2: u32,
        offset: u64,
        acc: &GlweCiphertextOwned<u64>,
        out: &mut Ciphertext,
    ) {
        for (d, &c) in s.scaled.as_mut().iter_mut().zip(x.as_ref()) {
            *d = c.wrapping_shl(scale_log2);
        }
        let body = s.scaled.get_mut_body();
        *body.data = body.data.wrapping_add(offset);
        keyswitch_lwe_ciphertext(self.keyswitch.as_ref().unwrap(), &s.scaled, &mut s.small);
        let fft = self.fft.as_ref().unwrap().as_view();
        programmable_bootstrap_lwe_ciphertext_mem_optimized(
            &s.small,
            out,
            acc,
            self.bootstrap.as_ref().unwrap(),
            fft,
            s.buffers.stack(),
        );
    }

    fn lut(
        &self,
        x: &[Ciphertext],
        accs: &[GlweCiphertextOwned<u64>],
        table_of: &[u32],
        scale_log2: u32,
    ) -> Vec<Ciphertext> {
        x.par_iter()
            .zip(table_of)
            .map_init(
                || self.scratch(),
                |s, (ct, &t)| {
                    let mut out =
                        LweCiphertext::new(0u64, self.big_size, CiphertextModulus::new_native());
                    self.bootstrap_one(s, ct, scale_log2, 0, &accs[t as usize], &mut out);
                    out
                },
            )
            .collect()
    }

    /// Exact rounding: clears the `drop` low bits of `x + 2^(drop−1)`, a chunk of c bits
    /// at a time from the LSB (lower bits already zero). Scaled by 2^(W+1−i−c), the chunk
    /// L fills the torus as L/2^c: a constant-table bootstrap on L/2^c + 2^-(c+1) gives
    /// ±C with the sign of L's top bit, which is subtracted; the remaining c − 1 bits
    /// sit in the padding-protected half and a (c−1)-bit table returns them, scaled to
    /// their place, for subtraction. See docs/NOISE.md.
    fn round(&self, x: &[Ciphertext], steps: &[RoundStep], drop: u32, w: u32) -> Vec<Ciphertext> {
        let shift = delta_shift(w);
        x.par_iter()
            .map_init(
                || {
                    (
                        self.scratch(),
                        LweCiphertext::new(0u64, self.big_size, CiphertextModulus::new_native()),
                    )
                },
                |(s, out), ct| {
                    let mut y = ct.clone();
                    let body = y.get_mut_body();
                    *body.data = body.data.wrapping_add(1u64 << (shift + drop - 1));
                    for RoundStep {
                        first_bit: bit,
                        bits: c,
                        sign,
                        low,
                    } in steps
                    {
                        let scale = w + 1 - bit - c;
                        // top bit: y += ±C − C, i.e. y −= b·2C
                        self.bootstrap_one(s, &y, scale, 1u64 << (63 - c), sign, out);
                        lwe_ciphertext_add_assign(&mut y, out);
                        let body = y.get_mut_body();
                        *body.data = body.data.wrapping_sub(1u64 << (shift + bit + c - 2));
                        if let Some(low) = low {
                            self.bootstrap_one(s, &y, scale, 0, low, out);
                            lwe_ciphertext_sub_assign(&mut y, out);
                        }
                    }
                    y
                },
            )
            .collect()
    }
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
