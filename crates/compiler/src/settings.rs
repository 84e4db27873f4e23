//! The settings a user gives (command-line flags, Python keyword arguments) and the
//! compile options they make: those left unset keep their defaults and stay adaptable.

use fhec_backend_tfhe::PErrorTarget;
use fhec_quant::QuantConfig;

use crate::{adapt, Limits, Options};

/// Every compile setting a user may give; `None` (or `false`) is the default.
#[derive(Clone, Debug, Default)]
pub struct Settings {
    /// Bits for inputs, weights and activations.
    pub n_bits: Option<u32>,
    pub input_bits: Option<u32>,
    pub weight_bits: Option<u32>,
    pub activation_bits: Option<u32>,
    /// Round accumulators to this many most significant bits before a lookup.
    pub rounding_threshold_bits: Option<u32>,
    /// Never round accumulators.
    pub no_rounding: bool,
    /// Round exactly (extra bootstraps) instead of approximately.
    pub exact_rounding: bool,
    pub comparison_bits: Option<u32>,
    /// Spread neurons before rounding only within the layer's noise (`--capped-spread`).
    pub capped_spread: bool,
    /// Linear parts of activations bypass their lookup (`--linear-bypass`).
    pub linear_bypass: bool,
    /// Output weights in two parts (`--split-output-weights`).
    pub split_output_weights: bool,
    pub range_margin: Option<f64>,
    /// Error probability per bootstrap.
    pub p_error: Option<f64>,
    /// Error probability per sample, split over its bootstraps and outputs.
    pub global_p_error: Option<f64>,
}

impl Settings {
    pub fn quant_config(&self) -> QuantConfig {
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
        c.rounding_approximate = !self.exact_rounding;
        if let Some(b) = self.comparison_bits {
            c.comparison_bits = Some(b);
        }
        if let Some(m) = self.range_margin {
            c.range_margin = m;
        }
        c.capped_spread = self.capped_spread;
        c.linear_bypass = self.linear_bypass;
        c.split_output_weights = self.split_output_weights;
        c
    }

    pub fn target(&self) -> PErrorTarget {
        match (self.global_p_error, self.p_error) {
            (Some(g), _) => PErrorTarget::Global(g),
            (None, p) => PErrorTarget::PerPbs(p.unwrap_or(2f64.powi(-40))),
        }
    }

    /// The compile options: these settings, the ones left unset adaptable (unless
    /// `strict`), within `limits`.
    pub fn options(&self, strict: bool, limits: Limits) -> Options {
        let default_bits = self.n_bits.is_none();
        Options {
            quant: self.quant_config(),
            target: self.target(),
            free: adapt::Knobs {
                input_bits: default_bits && self.input_bits.is_none(),
                weight_bits: default_bits && self.weight_bits.is_none(),
                activation_bits: default_bits && self.activation_bits.is_none(),
                rounding_bits: self.rounding_threshold_bits.is_none() && !self.no_rounding,
                spread: !self.capped_spread,
                bypass: !self.linear_bypass,
                split_output: !self.split_output_weights,
                comparison_bits: self.comparison_bits.is_none(),
            },
            strict,
            limits,
            model_dir: None,
        }
    }
}
