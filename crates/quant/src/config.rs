/// Quantization settings. Defaults are documented in docs/QUANTIZATION.md.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct QuantConfig {
    /// Bits of each quantized model input (unsigned).
    pub input_bits: u32,
    /// Bits of each weight (signed, symmetric).
    pub weight_bits: u32,
    /// Bits of each activation produced by a table lookup (unsigned).
    pub activation_bits: u32,
    /// Accumulators wider than this are rounded to this many MSBs before their table
    /// lookup; `None` never rounds.
    pub rounding_bits: Option<u32>,
    /// Round approximately (the default): the table lookup reads the top `rounding_bits`
    /// bits through its own bootstrap (no extra bootstrap), occasionally off by one;
    /// `false` rounds exactly with extra bootstraps.
    #[serde(default)]
    pub rounding_approximate: bool,
    /// Tree comparisons (docs/TREES.md): with approximate rounding, a comparison reads
    /// this many most significant bits of its feature shifted so the threshold falls on
    /// a rounding boundary (cheaper bootstraps; noise flips comparisons of features
    /// within about a grid step of the threshold). `None` (the default), or exact
    /// rounding, reads the whole feature exactly.
    #[serde(default)]
    pub comparison_bits: Option<u32>,
    /// Threshold-aligned comparisons round their feature exactly (in chunks of small
    /// bootstraps, as exact rounding does) instead of approximately: the same result as
    /// comparing the whole feature, through cheaper bootstraps. `fhec compile` tries it
    /// at 2, 3 and 4 comparison bits when `comparison_bits` is left unset and keeps the
    /// cheapest lowering (docs/TREES.md).
    #[serde(default)]
    pub comparison_exact: bool,
    /// Tree ensembles with one independent score per leaf: two sibling leaves share one
    /// lookup (docs/TREES.md). `fhec compile` also tries without and keeps the cheaper.
    #[serde(default = "enabled")]
    pub sibling_leaves: bool,
    /// Spreading before rounding (docs/QUANTIZATION.md) lifts no neuron's weight norm
    /// above the layer's largest unscaled one: a nearly dead channel, whose tiny range
    /// asks for a multiplier in the thousands, then keeps fewer bits instead of taking
    /// the parameters out of reach. `fhec compile` turns it on when the settings find no
    /// parameters, before giving up any bit (`--capped-spread`).
    #[serde(default)]
    pub capped_spread: bool,
    /// A dense layer reading another's activations takes each activation's straight
    /// line (least squares on the inputset) directly from the earlier layer's operand,
    /// with no lookup on the way; the lookup computes only what the activation adds to
    /// that line (docs/QUANTIZATION.md, "Linear parts past the lookup"). `fhec compile`
    /// turns it on when the settings lose the float model (`--linear-bypass`).
    #[serde(default)]
    pub linear_bypass: bool,
    /// A dense layer whose result goes straight to the client (no lookup reads it)
    /// also computes, at a finer step, what rounding its weights lost; the client adds
    /// the two (docs/QUANTIZATION.md, "Output weights in two parts"): the output layer's
    /// weights twice as precise for no bootstrap. `fhec compile` turns it on when the
    /// settings lose the float model (`--split-output-weights`).
    #[serde(default)]
    pub split_output_weights: bool,
    /// Accumulators are built for their calibrated range widened by this fraction of its
    /// width on each side (clipped to the sound range), so held-out data slightly beyond
    /// the inputset does not wrap around.
    pub range_margin: f64,
}

impl Default for QuantConfig {
    fn default() -> Self {
        QuantConfig {
            input_bits: 6,
            weight_bits: 6,
            activation_bits: 6,
            rounding_bits: Some(6),
            rounding_approximate: true,
            comparison_bits: None,
            comparison_exact: false,
            sibling_leaves: true,
            capped_spread: false,
            linear_bypass: false,
            split_output_weights: false,
            range_margin: 0.25,
        }
    }
}

fn enabled() -> bool {
    true
}

impl QuantConfig {
    /// Sets inputs, weights and activations to `n` bits (the `--n-bits` option).
    pub fn with_n_bits(mut self, n: u32) -> Self {
        self.input_bits = n;
        self.weight_bits = n;
        self.activation_bits = n;
        self
    }

    pub(crate) fn check(&self) -> Result<(), crate::QuantError> {
        let ok = |b: u32| (2..=12).contains(&b);
        if !ok(self.input_bits) || !ok(self.weight_bits) || !ok(self.activation_bits) {
            return Err(crate::QuantError::Config(
                "bit counts must be between 2 and 12".into(),
            ));
        }
        if !(0.0..=4.0).contains(&self.range_margin) {
            return Err(crate::QuantError::Config(
                "the range margin must be between 0 and 4".into(),
            ));
        }
        if let Some(c) = self.comparison_bits {
            if !(2..=16).contains(&c) {
                return Err(crate::QuantError::Config(
                    "comparison bits must be between 2 and 16".into(),
                ));
            }
        }
        if let Some(r) = self.rounding_bits {
            if !(1..=16).contains(&r) {
                return Err(crate::QuantError::Config(
                    "rounding threshold bits must be between 1 and 16".into(),
                ));
            }
        }
        Ok(())
    }
}
