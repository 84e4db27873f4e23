//! Defaults that adapt (docs/QUANTIZATION.md#defaults-that-adapt).
//!
//! When the settings a user left at their defaults give a value over 16 bits or no
//! feasible parameters, the compiler looks for nearby settings that compile: fewer
//! input, weight or activation bits, a lower rounding threshold, one knob at a time and
//! then two, and keeps the one whose simulation agrees best with the float model on the
//! inputset. A circuit without bootstrap gets more bits instead, up to 8, since they
//! cost it nothing. What changed, and what it costs in agreement, is reported.
//! `strict` keeps the settings: the failure is returned, with the working settings the
//! search found as its suggestion.

use std::cell::{Ref, RefCell};

use fhec_backend_tfhe::{PErrorTarget, ParamChoice};
use fhec_frontend_onnx::{interp, FloatGraph, Tensor};
use fhec_ir::interp::RoundingNoise;
use fhec_quant::QuantConfig;
use serde::Serialize;

use crate::{check_violations, lower_and_choose, CompileError, Lowered};

/// Which settings the compiler may change: those the user left at their defaults.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Knobs {
    pub input_bits: bool,
    pub weight_bits: bool,
    pub activation_bits: bool,
    pub rounding_bits: bool,
    /// Tree comparisons may read fewer bits (`--comparison-bits`).
    pub comparison_bits: bool,
    /// Spreading before rounding may be capped (`--capped-spread`).
    pub spread: bool,
    /// Linear parts of activations may bypass their lookups (`--linear-bypass`).
    pub bypass: bool,
    /// Output weights may be split in two parts (`--split-output-weights`).
    pub split_output: bool,
}

impl Knobs {
    pub fn all() -> Self {
        Knobs {
            input_bits: true,
            weight_bits: true,
            activation_bits: true,
            rounding_bits: true,
            comparison_bits: true,
            spread: true,
            bypass: true,
            split_output: true,
        }
    }
    fn any(self) -> bool {
        self.input_bits || self.weight_bits || self.activation_bits || self.rounding_bits
    }
    /// Every bit width and the rounding threshold are free.
    fn every_bit(self) -> bool {
        self.input_bits && self.weight_bits && self.activation_bits && self.rounding_bits
    }
}

/// How close the circuit's simulation is to the float model on calibration samples.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Fidelity {
    pub samples: usize,
    /// Share of samples whose first float output of several elements (a classifier's
    /// scores) has the same arg-max as the float model's, or whose Sigmoid probability
    /// falls on the same side of 0.5, when there is such an output.
    pub top1_agreement: Option<f64>,
    /// 1 − Σ(sim − float)² / Σ(float − mean)² over that output's (or the first output's)
    /// elements.
    pub r2: f64,
}

impl Fidelity {
    /// Higher is better: agreement first, then R².
    fn score(&self) -> (f64, f64) {
        (self.top1_agreement.unwrap_or(1.0), self.r2)
    }

    pub fn text(&self) -> String {
        match self.top1_agreement {
            Some(a) => format!(
                "top-1 agreement with the float model {:.1}% on {} inputset samples (R² {:.4})",
                100.0 * a,
                self.samples,
                self.r2
            ),
            None => format!(
                "R² against the float model {:.4} on {} inputset samples",
                self.r2, self.samples
            ),
        }
    }
}

/// What the compiler changed and why.
#[derive(Clone, Debug, Serialize)]
pub struct Adaptation {
    /// `setting: before → after`, one per change.
    pub changes: Vec<String>,
    /// Why: the failure of the settings as given, or "no bootstrap".
    pub reason: String,
    pub fidelity: Fidelity,
    /// The command-line flags that give the adapted settings.
    pub flags: String,
}

impl Adaptation {
    /// The settings `to` in place of `from`, for `reason`.
    fn new(from: &QuantConfig, to: &QuantConfig, reason: String, fidelity: Fidelity) -> Self {
        let (changes, flags) = describe(from, to);
        Adaptation {
            changes,
            reason,
            fidelity,
            flags,
        }
    }

    /// One line: what changed, why, how faithful the result is, and the flags that give it.
    pub fn text(&self) -> String {
        format!(
            "{} ({}); {}; the same as `{}`",
            self.changes.join(", "),
            self.reason,
            self.fidelity.text(),
            self.flags
        )
    }
}

/// Most calibration samples a candidate is simulated on.
const FIDELITY_SAMPLES: usize = 128;

/// Simulation against the float model on the first samples of the inputset.
pub fn fidelity(
    graph: &FloatGraph,
    l: &Lowered,
    samples: &[Vec<Tensor>],
) -> Result<Fidelity, CompileError> {
    Reference::new(graph, samples).fidelity(l, FIDELITY_SAMPLES, None)
}

/// The inputset and the float model's outputs on it, evaluated once (as far as a
/// comparison needs) and compared with every candidate.
struct Reference<'a> {
    graph: &'a FloatGraph,
    samples: &'a [Vec<Tensor>],
    /// The output compared: a classifier's scores (a float output of several elements)
    /// tell more than its label; else the first.
    output: usize,
    /// That output's float value for the first samples.
    floats: RefCell<Vec<Tensor>>,
    /// The output is one Sigmoid probability: its class (over 0.5) is the prediction.
    binary: bool,
}

impl<'a> Reference<'a> {
    fn new(graph: &'a FloatGraph, samples: &'a [Vec<Tensor>]) -> Self {
        let output = graph
            .outputs
            .iter()
            .position(|&o| {
                let v = graph.value(o);
                matches!(
                    v.dtype,
                    fhec_frontend_onnx::DType::F32 | fhec_frontend_onnx::DType::F64
                ) && v.shape.iter().product::<usize>() > 1
            })
            .unwrap_or(0);
        Reference {
            graph,
            samples,
            output,
            floats: RefCell::new(Vec::new()),
            binary: crate::score::binary_probability(graph, output),
        }
    }

    /// The float outputs of the first `n` samples, evaluating those not seen yet.
    fn floats(&self, n: usize) -> Result<Ref<'_, Vec<Tensor>>, CompileError> {
        {
            let mut floats = self.floats.borrow_mut();
            while floats.len() < n {
                let env = interp::evaluate(self.graph, &self.samples[floats.len()])?;
                let float = env[self.graph.outputs[self.output].0 as usize]
                    .clone()
                    .ok_or_else(|| {
                        CompileError::Internal("the float model computes no output".into())
                    })?;
                floats.push(float);
            }
        }
        Ok(self.floats.borrow())
    }

    /// `l`'s simulation against the float model on the first `n` samples (at most):
    /// exact, or with `noise` as FHE behaves (`seed`).
    fn fidelity(
        &self,
        l: &Lowered,
        n: usize,
        noise: Option<(&RoundingNoise, u64)>,
    ) -> Result<Fidelity, CompileError> {
        let (graph, spec) = (self.graph, &l.quantized.client);
        let take = &self.samples[..self.samples.len().min(n)];
        let floats = self.floats(take.len())?;
        let (mut agree, mut top1_known) = (0usize, true);
        let mut sse = 0.0f64;
        for (i, (s, float)) in take.iter().zip(floats.iter()).enumerate() {
            let q = spec.quantize_inputs(graph, s)?;
            let out = match noise {
                Some((model, seed)) => fhec_ir::interp::simulate_noisy(
                    &l.quantized.circuit,
                    &l.info,
                    &q,
                    model,
                    // one stream per (seed, sample)
                    seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) ^ i as u64,
                ),
                None => fhec_ir::interp::simulate(&l.quantized.circuit, &l.info, &q),
            }
            .map_err(|e| CompileError::Internal(e.to_string()))?;
            let sim = spec.finish(graph, &out)?.swap_remove(self.output);
            if float.data.len() > 1 {
                let argmax = |d: &[f64]| {
                    d.iter()
                        .enumerate()
                        .fold(
                            (0, f64::NEG_INFINITY),
                            |b, (i, &v)| if v > b.1 { (i, v) } else { b },
                        )
                        .0
                };
                agree += (argmax(&float.data) == argmax(&sim.data)) as usize;
            } else if self.binary && !sim.data.is_empty() {
                agree += ((float.data[0] > 0.5) == (sim.data[0] > 0.5)) as usize;
            } else {
                top1_known = false;
            }
            for (a, b) in sim.data.iter().zip(&float.data) {
                sse += (a - b).powi(2);
            }
        }
        let count = floats[..take.len()]
            .iter()
            .map(|f| f.data.len())
            .sum::<usize>();
        let mean = floats[..take.len()]
            .iter()
            .flat_map(|f| f.data.iter())
            .sum::<f64>()
            / count.max(1) as f64;
        let sst: f64 = floats[..take.len()]
            .iter()
            .flat_map(|f| f.data.iter())
            .map(|f| (f - mean).powi(2))
            .sum();
        let r2 = if sst > 0.0 {
            1.0 - sse / sst
        } else if sse == 0.0 {
            1.0
        } else {
            0.0
        };
        Ok(Fidelity {
            samples: take.len(),
            top1_agreement: top1_known.then(|| agree as f64 / take.len().max(1) as f64),
            r2,
        })
    }
}

/// A compiled candidate: lowered, its parameters, the settings kept.
pub(crate) type Candidate = (Lowered, ParamChoice, QuantConfig);

fn attempt(
    graph: &FloatGraph,
    samples: &[Vec<Tensor>],
    cfg: &QuantConfig,
    target: PErrorTarget,
) -> Result<Candidate, CompileError> {
    let (l, params, cfg) = lower_and_choose(graph, samples, cfg, target)?;
    check_violations(&l.info)?;
    let params =
        params.ok_or_else(|| CompileError::Internal("no parameters for a valid circuit".into()))?;
    Ok((l, params, cfg))
}

/// The settings that differ, as `name: a → b`, and as flags.
fn describe(from: &QuantConfig, to: &QuantConfig) -> (Vec<String>, String) {
    let mut changes = Vec::new();
    let mut flags = Vec::new();
    for (name, flag, a, b) in [
        ("input bits", "--input-bits", from.input_bits, to.input_bits),
        (
            "weight bits",
            "--weight-bits",
            from.weight_bits,
            to.weight_bits,
        ),
        (
            "activation bits",
            "--activation-bits",
            from.activation_bits,
            to.activation_bits,
        ),
    ] {
        if a != b {
            changes.push(format!("{name} {a} → {b}"));
            flags.push(format!("{flag} {b}"));
        }
    }
    // exactly rounded comparisons are a lowering choice with the same results
    let approximate_comparisons =
        |c: &QuantConfig| c.comparison_bits.filter(|_| !c.comparison_exact);
    if approximate_comparisons(from) != approximate_comparisons(to) {
        if let Some(c) = approximate_comparisons(to) {
            changes.push(format!(
                "tree comparisons read {c} bits aligned on their thresholds"
            ));
            flags.push(format!("--comparison-bits {c}"));
        }
    }
    if to.capped_spread && !from.capped_spread {
        changes.push("neurons spread before rounding only within the layer's noise".into());
        flags.push("--capped-spread".into());
    }
    if to.linear_bypass && !from.linear_bypass {
        changes.push("activations' linear parts bypass their lookups".into());
        flags.push("--linear-bypass".into());
    }
    if to.split_output_weights && !from.split_output_weights {
        changes.push("output weights in two parts".into());
        flags.push("--split-output-weights".into());
    }
    if from.rounding_bits != to.rounding_bits {
        let show = |r: Option<u32>| r.map_or("none".to_string(), |r| r.to_string());
        changes.push(format!(
            "rounding threshold {} → {}",
            show(from.rounding_bits),
            show(to.rounding_bits)
        ));
        if let Some(r) = to.rounding_bits {
            flags.push(format!("--rounding-threshold-bits {r}"));
        }
    }
    (changes, flags.join(" "))
}

/// Settings `d` steps below `cfg` on the free knobs (bits stay at 2 or more, the
/// rounding threshold at 3 or more).
fn below(cfg: &QuantConfig, knobs: Knobs, d: u32) -> Vec<QuantConfig> {
    let steps = |free: bool| if free { 0..=d } else { 0..=0 };
    let mut out = Vec::new();
    for di in steps(knobs.input_bits) {
        for dw in steps(knobs.weight_bits) {
            for da in steps(knobs.activation_bits) {
                for dr in steps(knobs.rounding_bits && cfg.rounding_bits.is_some()) {
                    if di + dw + da + dr != d {
                        continue;
                    }
                    let ok = cfg.input_bits >= di + 2
                        && cfg.weight_bits >= dw + 2
                        && cfg.activation_bits >= da + 2
                        && cfg.rounding_bits.is_none_or(|r| r >= dr + 3);
                    if ok {
                        out.push(QuantConfig {
                            input_bits: cfg.input_bits - di,
                            weight_bits: cfg.weight_bits - dw,
                            activation_bits: cfg.activation_bits - da,
                            rounding_bits: cfg.rounding_bits.map(|r| r - dr),
                            ..cfg.clone()
                        });
                    }
                }
            }
        }
    }
    out
}

/// The most accurate candidate among `cfgs` that compiles, with its fidelity.
fn best_of(
    r: &Reference,
    cfgs: &[QuantConfig],
    target: PErrorTarget,
) -> Result<Option<(Candidate, Fidelity)>, CompileError> {
    let mut best: Option<(Candidate, Fidelity)> = None;
    for cfg in cfgs {
        let Ok(c) = attempt(r.graph, r.samples, cfg, target) else {
            continue;
        };
        let f = r.fidelity(&c.0, FIDELITY_SAMPLES, None)?;
        let better = best.as_ref().is_none_or(|(b, bf)| {
            f.score() > bf.score()
                || (f.score() == bf.score()
                    && c.1.predicted_ms_per_sample < b.1.predicted_ms_per_sample)
        });
        if better {
            best = Some((c, f));
        }
    }
    Ok(best)
}

/// The first level of reductions (1 to 4 steps in all) at which some setting compiles,
/// and its most accurate setting there.
fn search(
    r: &Reference,
    cfg: &QuantConfig,
    knobs: Knobs,
    target: PErrorTarget,
) -> Result<Option<(Candidate, Fidelity)>, CompileError> {
    for d in 1..=4 {
        if let Some(found) = best_of(r, &below(cfg, knobs, d), target)? {
            return Ok(Some(found));
        }
    }
    Ok(None)
}

/// Most inputset samples the speed choice simulates: it must see rare disagreements.
const SPEED_SAMPLES: usize = 512;

/// Seeds of the noisy simulations a speed choice averages.
const SPEED_SEEDS: u64 = 4;

/// Agreement with the float model as FHE would give it: the mean over
/// [`SPEED_SEEDS`] noisy simulations of the first [`SPEED_SAMPLES`] samples.
fn noisy_fidelity(r: &Reference, c: &Candidate) -> Result<Fidelity, CompileError> {
    let noise = fhec_backend_tfhe::noise::error_model(&c.0.quantized.circuit, &c.0.info, &c.1);
    let mut sum = Fidelity {
        samples: r.samples.len().min(SPEED_SAMPLES),
        top1_agreement: None,
        r2: 0.0,
    };
    for seed in 0..SPEED_SEEDS {
        let f = r.fidelity(&c.0, SPEED_SAMPLES, Some((&noise, seed)))?;
        sum.r2 += f.r2 / SPEED_SEEDS as f64;
        if let Some(a) = f.top1_agreement {
            *sum.top1_agreement.get_or_insert(0.0) += a / SPEED_SEEDS as f64;
        }
    }
    Ok(sum)
}

/// Faster settings than `cfg`'s where the user left them free and the inputset shows
/// they cost nothing: tree comparisons that read 4 bits of their feature aligned on the
/// threshold, or a rounding threshold one lower. Each is kept only if its predicted
/// latency is at least a fifth lower and its noisy simulation (as FHE would decrypt)
/// agrees with the float model on the inputset as well as the settings before it.
fn faster(
    r: &Reference,
    cfg: &QuantConfig,
    knobs: Knobs,
    target: PErrorTarget,
    base: Candidate,
    base_fidelity: Option<Fidelity>,
) -> Result<(Candidate, Option<Adaptation>), CompileError> {
    // each step applies to the settings kept so far, lowering choices included (sibling
    // leaves, exactly rounded comparisons), so it is one lowering, not a new search
    type Step = fn(&QuantConfig) -> Option<QuantConfig>;
    let comparisons: Step = |u| {
        let exact = u.comparison_bits.is_none() || u.comparison_exact;
        (exact && u.rounding_approximate).then(|| QuantConfig {
            comparison_bits: Some(4),
            comparison_exact: false,
            ..u.clone()
        })
    };
    let rounding: Step = |u| {
        let r = u.rounding_bits.filter(|&r| r > 3)?;
        Some(QuantConfig {
            rounding_bits: Some(r - 1),
            ..u.clone()
        })
    };
    let mut steps: Vec<Step> = Vec::new();
    if knobs.comparison_bits {
        steps.push(comparisons);
    }
    if knobs.rounding_bits {
        steps.push(rounding);
    }
    let mut kept = base;
    let mut kept_fidelity: Option<Fidelity> = base_fidelity;
    let mut changed = false;
    let was = kept.1.predicted_ms_per_sample;
    for next in steps {
        let Some(step) = next(&kept.2) else {
            continue;
        };
        let Ok(c) = attempt(r.graph, r.samples, &step, target) else {
            continue;
        };
        if c.1.predicted_ms_per_sample > 0.8 * kept.1.predicted_ms_per_sample {
            continue;
        }
        let before = match &kept_fidelity {
            Some(f) => f.clone(),
            None => noisy_fidelity(r, &kept)?,
        };
        let after = noisy_fidelity(r, &c)?;
        // faster, but never below the agreement the defaults are held to
        if as_good(&before, &after) && (faithful(&after) || !faithful(&before)) {
            kept = c;
            kept_fidelity = Some(after);
            changed = true;
        } else {
            kept_fidelity = Some(before);
        }
    }
    let Some(fidelity) = kept_fidelity.filter(|_| changed) else {
        return Ok((kept, None));
    };
    let reason = format!(
        "{:.0} ms per sample predicted instead of {was:.0}, agreeing with the float model as often on the inputset",
        kept.1.predicted_ms_per_sample
    );
    let adaptation = Adaptation::new(cfg, &kept.2, reason, fidelity);
    Ok((kept, Some(adaptation)))
}

/// The agreement a default must reach on the inputset: a classifier's top-1 agreement,
/// or a regressor's R² against the float outputs. A compiled model loses at most the
/// share of predictions it changes (in points of accuracy), and about its unexplained
/// share of the float model's variance (in points of R²): at 0.98, within the 2 points a
/// user expects of the defaults.
const FAITHFUL: f64 = 0.98;

fn faithful(f: &Fidelity) -> bool {
    match f.top1_agreement {
        Some(a) => a >= FAITHFUL,
        None => f.r2 >= FAITHFUL,
    }
}

/// Whether `a` agrees with the float model at least a point better than `b`.
fn clearly_better(a: &Fidelity, b: &Fidelity) -> bool {
    match (a.top1_agreement, b.top1_agreement) {
        (Some(x), Some(y)) => x - y >= 0.01,
        _ => a.r2 - b.r2 >= 0.01,
    }
}

/// Settings one or two steps above `cfg` on each free knob alone, up to 8 bits (a
/// rounding threshold only where rounding is on).
fn above(cfg: &QuantConfig, knobs: Knobs) -> Vec<QuantConfig> {
    let mut out = Vec::new();
    for d in 1..=2 {
        let up = |b: u32| (b + d <= 8).then_some(b + d);
        if let Some(r) = cfg
            .rounding_bits
            .filter(|_| knobs.rounding_bits)
            .and_then(up)
        {
            out.push(QuantConfig {
                rounding_bits: Some(r),
                ..cfg.clone()
            });
        }
        if let Some(b) = up(cfg.input_bits).filter(|_| knobs.input_bits) {
            out.push(QuantConfig {
                input_bits: b,
                ..cfg.clone()
            });
        }
        if let Some(b) = up(cfg.activation_bits).filter(|_| knobs.activation_bits) {
            out.push(QuantConfig {
                activation_bits: b,
                ..cfg.clone()
            });
        }
        if let Some(b) = up(cfg.weight_bits).filter(|_| knobs.weight_bits) {
            out.push(QuantConfig {
                weight_bits: b,
                ..cfg.clone()
            });
        }
    }
    out
}

/// When the settings as given lose the float model's predictions on the inputset as FHE
/// would decrypt them (see [`FAITHFUL`], [`noisy_fidelity`]), more bits, one free knob
/// a step at a time (see [`more_precise_step`]), from each kept result again while it
/// is not faithful and a step still gains: a model that needs two knobs raised (wide
/// raw inputs and fine weights) gets both. The same climb also starts from the same
/// bits with activations' linear parts past their lookups, with output weights in two
/// parts, and with both, where they agree better: of the results, the fastest faithful
/// one, else the one that agrees best.
fn more_precise(
    r: &Reference,
    cfg: &QuantConfig,
    knobs: Knobs,
    target: PErrorTarget,
    base: Candidate,
) -> Result<(Candidate, Option<Adaptation>, Fidelity), CompileError> {
    let before = noisy_fidelity(r, &base)?;
    if faithful(&before) {
        return Ok((base, None, before));
    }
    // what a nearly linear network loses is the rounding before each lookup (the
    // bypass); what its output layer loses is its weights' rounding (two parts)
    let mut best = climb(r, knobs, target, base, before.clone())?;
    let mut starts: Vec<(Candidate, Fidelity)> = Vec::new();
    for (bypass, split) in [(true, false), (false, true), (true, true)] {
        if (bypass && !knobs.bypass) || (split && !knobs.split_output) {
            continue;
        }
        let same_bits = QuantConfig {
            linear_bypass: cfg.linear_bypass || bypass,
            split_output_weights: cfg.split_output_weights || split,
            ..cfg.clone()
        };
        if same_bits == *cfg || starts.iter().any(|(c, _)| c.2 == same_bits) {
            continue;
        }
        if let Ok(c) = attempt(r.graph, r.samples, &same_bits, target) {
            let f = noisy_fidelity(r, &c)?;
            // strictly: a model with no such layer is unchanged
            if f.score() > before.score() {
                starts.push((c, f));
            }
        }
    }
    for (start, fidelity) in starts {
        let climbed = climb(r, knobs, target, start, fidelity)?;
        best = preferred(best, climbed);
    }
    let (kept, fidelity) = best;
    if kept.2 == *cfg {
        return Ok((kept, None, fidelity));
    }
    let reason = format!(
        "the settings as given agreed less with the float model on the inputset: {}",
        before.text()
    );
    let adaptation = Adaptation::new(cfg, &kept.2, reason, fidelity.clone());
    Ok((kept, Some(adaptation), fidelity))
}

/// From `kept`, one-knob steps up while it is not faithful and a step gains; then, if
/// still not faithful, the settings from the top where they agree clearly better; then
/// cheaper settings that agree as well ([`faster`]).
fn climb(
    r: &Reference,
    knobs: Knobs,
    target: PErrorTarget,
    mut kept: Candidate,
    mut fidelity: Fidelity,
) -> Result<(Candidate, Fidelity), CompileError> {
    // each step raises a knob, at most to 8 bits: the loop ends
    while !faithful(&fidelity) {
        let Some((c, f)) = more_precise_step(r, knobs, target, &kept.2, &fidelity)? else {
            break;
        };
        (kept, fidelity) = (c, f);
    }
    // knobs that only help together (finer weights need finer activations to show):
    // from every free knob at 8 down to the first settings that compile
    if !faithful(&fidelity) {
        if let Some((c, f)) = from_the_top(r, &kept.2, knobs, target)? {
            if clearly_better(&f, &fidelity) {
                (kept, fidelity) = (c, f);
            }
        }
    }
    // compared with the other climbs at the cost it ends at
    let from = kept.2.clone();
    let (kept, fast) = faster(r, &from, knobs, target, kept, Some(fidelity.clone()))?;
    let fidelity = fast.map_or(fidelity, |a| a.fidelity);
    Ok((kept, fidelity))
}

/// Of two results, the faster if both are faithful, the faithful one if one is, else
/// the one that agrees better (the faster on a tie).
fn preferred(a: (Candidate, Fidelity), b: (Candidate, Fidelity)) -> (Candidate, Fidelity) {
    let faster = |x: &(Candidate, Fidelity), y: &(Candidate, Fidelity)| {
        x.0 .1.predicted_ms_per_sample < y.0 .1.predicted_ms_per_sample
    };
    let b_wins = match (faithful(&a.1), faithful(&b.1)) {
        (true, true) => faster(&b, &a),
        (true, false) => false,
        (false, true) => true,
        (false, false) => match b.1.score().partial_cmp(&a.1.score()) {
            Some(std::cmp::Ordering::Greater) => true,
            Some(std::cmp::Ordering::Equal) => faster(&b, &a),
            _ => false,
        },
    };
    if b_wins {
        b
    } else {
        a
    }
}

/// Every free knob of `cfg` at 8 bits (the rounding threshold too, where rounding is
/// on), or the nearest settings below that compile and agree best with the float model
/// ([`search`]); with its agreement as FHE would decrypt it.
fn from_the_top(
    r: &Reference,
    cfg: &QuantConfig,
    knobs: Knobs,
    target: PErrorTarget,
) -> Result<Option<(Candidate, Fidelity)>, CompileError> {
    let top = |free: bool, b: u32| if free { b.max(8) } else { b };
    let top = QuantConfig {
        input_bits: top(knobs.input_bits, cfg.input_bits),
        weight_bits: top(knobs.weight_bits, cfg.weight_bits),
        activation_bits: top(knobs.activation_bits, cfg.activation_bits),
        rounding_bits: cfg.rounding_bits.map(|b| top(knobs.rounding_bits, b)),
        ..cfg.clone()
    };
    let found = match attempt(r.graph, r.samples, &top, target) {
        Ok(c) => Some(c),
        Err(_) => search(r, &top, knobs, target)?.map(|(c, _)| c),
    };
    let Some(c) = found else {
        return Ok(None);
    };
    let f = noisy_fidelity(r, &c)?;
    Ok(Some((c, f)))
}

/// Settings one or two steps above `from` on one free knob: of those that compile,
/// tried from the fastest predicted, the first faithful one, else the most faithful if
/// it agrees at least a point better than `now`; `None` when none does.
fn more_precise_step(
    r: &Reference,
    knobs: Knobs,
    target: PErrorTarget,
    from: &QuantConfig,
    now: &Fidelity,
) -> Result<Option<(Candidate, Fidelity)>, CompileError> {
    let mut candidates: Vec<Candidate> = above(from, knobs)
        .iter()
        .filter_map(|up| attempt(r.graph, r.samples, up, target).ok())
        .collect();
    candidates.sort_by(|a, b| {
        a.1.predicted_ms_per_sample
            .total_cmp(&b.1.predicted_ms_per_sample)
    });
    let mut closest: Option<(Candidate, Fidelity)> = None;
    for c in candidates {
        let f = noisy_fidelity(r, &c)?;
        if faithful(&f) {
            return Ok(Some((c, f)));
        }
        if closest
            .as_ref()
            .is_none_or(|(_, bf)| f.score() > bf.score())
        {
            closest = Some((c, f));
        }
    }
    Ok(closest.filter(|(_, f)| clearly_better(f, now)))
}

/// One adaptation from two made in turn: the changes from the settings as given are
/// the later one's (it starts from the earlier one's result), the reasons both.
fn merge(first: Option<Adaptation>, then: Option<Adaptation>) -> Option<Adaptation> {
    match (first, then) {
        (Some(a), Some(b)) => Some(Adaptation {
            reason: format!("{}; then {}", a.reason, b.reason),
            ..b
        }),
        (a, b) => b.or(a),
    }
}

/// Whether `after` agrees with the float model as well as `before`: top-1 agreement
/// at most a fifth of a point lower (noisy draws differ by chance), and at most a tenth
/// more unexplained variance.
fn as_good(before: &Fidelity, after: &Fidelity) -> bool {
    let top1 = match (before.top1_agreement, after.top1_agreement) {
        (Some(b), Some(a)) => a >= b - 0.002,
        _ => true,
    };
    top1 && (1.0 - after.r2) <= 1.1 * (1.0 - before.r2) + 1e-9
}

/// Compiles with `cfg`, adapting the free `knobs` as the module doc says. Returns the
/// candidate and what was adapted (`None`: the settings as given).
pub(crate) fn compile_adaptive(
    graph: &FloatGraph,
    samples: &[Vec<Tensor>],
    cfg: &QuantConfig,
    target: PErrorTarget,
    knobs: Knobs,
    strict: bool,
) -> Result<(Candidate, Option<Adaptation>), CompileError> {
    let r = Reference::new(graph, samples);
    let first = attempt(graph, samples, cfg, target);
    match first {
        Ok(c) => {
            if strict {
                return Ok((c, None));
            }
            if c.0.info.pbs_per_sample > 0 {
                let (c, precise, measured) = more_precise(&r, cfg, knobs, target, c)?;
                let (c, fast) = faster(&r, cfg, knobs, target, c, Some(measured))?;
                return Ok((c, merge(precise, fast)));
            }
            if !knobs.input_bits || !knobs.weight_bits {
                return Ok((c, None));
            }
            // no bootstrap: bits cost no bootstrap, only the 16-bit accumulator limit and output bytes
            let base = r.fidelity(&c.0, FIDELITY_SAMPLES, None)?;
            let more: Vec<QuantConfig> = (cfg.input_bits.max(cfg.weight_bits) + 1..=8)
                .rev()
                .map(|b| QuantConfig {
                    input_bits: b.max(cfg.input_bits),
                    weight_bits: b.max(cfg.weight_bits),
                    ..cfg.clone()
                })
                .collect();
            for m in more {
                if let Ok(better) = attempt(graph, samples, &m, target) {
                    if better.0.info.pbs_per_sample == 0 {
                        let f = r.fidelity(&better.0, FIDELITY_SAMPLES, None)?;
                        if f.score() >= base.score() {
                            let reason = "the circuit has no bootstrap, so more bits cost only a few output bytes";
                            let adaptation = Adaptation::new(cfg, &better.2, reason.into(), f);
                            return Ok((better, Some(adaptation)));
                        }
                    }
                }
            }
            Ok((c, None))
        }
        Err(e @ (CompileError::TooWide(_) | CompileError::Params(_))) => {
            // no parameters: first the same bits with the spreading capped (a nearly
            // dead neuron's multiplier can be what is out of reach), before any bit is
            // given up
            if matches!(e, CompileError::Params(_)) && knobs.spread && !cfg.capped_spread {
                let capped = QuantConfig {
                    capped_spread: true,
                    ..cfg.clone()
                };
                if let Ok(c) = attempt(graph, samples, &capped, target) {
                    let f = r.fidelity(&c.0, FIDELITY_SAMPLES, None)?;
                    if strict {
                        return Err(CompileError::Suggestion {
                            failure: Box::new(e),
                            flags: describe(cfg, &c.2).1,
                            fidelity: f.text(),
                        });
                    }
                    let adaptation = Adaptation::new(cfg, &c.2, e.to_string(), f);
                    return Ok((c, Some(adaptation)));
                }
            }
            // adapt the free knobs; failing that (or in strict mode), find settings over
            // every knob to suggest
            if !strict && knobs.any() {
                if let Some((c, f)) = search(&r, cfg, knobs, target)? {
                    // what the settings the user pinned allow loses the float model:
                    // kept only when freeing them would not do clearly better
                    let freed = if faithful(&f) || knobs.every_bit() {
                        None
                    } else {
                        search(&r, cfg, Knobs::all(), target)?
                            .filter(|(_, bf)| clearly_better(bf, &f))
                    };
                    return match freed {
                        Some((better, bf)) => Err(CompileError::Pinned {
                            failure: Box::new(e),
                            kept_flags: describe(cfg, &c.2).1,
                            kept_fidelity: f.text(),
                            flags: describe(cfg, &better.2).1,
                            fidelity: bf.text(),
                        }),
                        None => {
                            let adaptation = Adaptation::new(cfg, &c.2, e.to_string(), f);
                            Ok((c, Some(adaptation)))
                        }
                    };
                }
            }
            match search(&r, cfg, Knobs::all(), target)? {
                Some((c, f)) => Err(CompileError::Suggestion {
                    failure: Box::new(e),
                    flags: describe(cfg, &c.2).1,
                    fidelity: f.text(),
                }),
                None => Err(e),
            }
        }
        Err(e) => Err(e),
    }
}
