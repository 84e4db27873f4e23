//! [`Conv`]: a convolution that keeps its geometry, so the circuit, the back end and
//! the MLIR grow with the weights, not with the product of input and output sizes.

use serde::{Deserialize, Serialize};

/// `y[o, p] = bias[o, p] + Σ_{c, k} weight[o, c, k] · x[g(o)·C/G + c, p·s + k·d − pad]`
/// over the taps inside the input: ONNX Conv on the operand's integers, its padding
/// reading 0 (a tap in the padding adds nothing). The operand is `[1, in_channels,
/// in_sp…]`, the result `[1, out_channels, out_sp…]`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "arbitrary", derive(arbitrary::Arbitrary))]
pub struct Conv {
    pub in_channels: usize,
    pub out_channels: usize,
    /// Groups: output channel `o` reads input channels of group `o / (out/groups)`.
    pub groups: usize,
    pub in_sp: Vec<usize>,
    pub out_sp: Vec<usize>,
    pub kernel: Vec<usize>,
    pub strides: Vec<usize>,
    pub dilations: Vec<usize>,
    pub pad_begin: Vec<usize>,
    pub pad_end: Vec<usize>,
    /// `[out_channels, in_channels / groups, kernel…]`, row-major.
    pub weight: Vec<i64>,
    /// One per output element (`[out_channels, out_sp…]`): padding makes the
    /// accumulators' ranges differ at the borders, and each starts at 0.
    pub bias: Vec<i64>,
}

/// Largest size (of a spatial extent, a channel count, a pad, or elements of a tensor or
/// kernel) a convolution may have: as a tensor's, 2^24.
const MAX_ELEMENTS: usize = crate::MAX_NODE_ELEMENTS;

impl Conv {
    pub fn kernel_count(&self) -> usize {
        self.kernel.iter().product()
    }
    pub fn out_count(&self) -> usize {
        self.out_sp.iter().product()
    }
    pub fn in_plane(&self) -> usize {
        self.in_sp.iter().product()
    }

    /// The geometry is consistent (sizes, ranks, the output size ONNX would give for
    /// these pads up to a ceil-mode window); returns what is wrong.
    pub fn check(&self) -> Result<(), String> {
        let n = self.in_sp.len();
        let ranks = [
            self.out_sp.len(),
            self.kernel.len(),
            self.strides.len(),
            self.dilations.len(),
            self.pad_begin.len(),
            self.pad_end.len(),
        ];
        if n == 0 || n > MAX_RANK || ranks.iter().any(|&r| r != n) {
            return Err(format!("geometry ranks disagree or exceed {MAX_RANK}"));
        }
        // every size bounded before any arithmetic on it
        let sizes = [
            &self.in_sp,
            &self.out_sp,
            &self.kernel,
            &self.strides,
            &self.dilations,
        ];
        let counts = sizes.map(|v| v.iter().try_fold(1usize, |n, &d| n.checked_mul(d)));
        if counts.iter().any(|c| c.is_none_or(|c| c > MAX_ELEMENTS))
            || [self.in_channels, self.out_channels, self.groups]
                .iter()
                .chain(&self.pad_begin)
                .chain(&self.pad_end)
                .any(|&v| v > MAX_ELEMENTS)
        {
            return Err(format!("a size over {MAX_ELEMENTS}"));
        }
        if self.groups == 0
            || !self.in_channels.is_multiple_of(self.groups)
            || !self.out_channels.is_multiple_of(self.groups)
        {
            return Err(format!(
                "{} groups do not divide {} input and {} output channels",
                self.groups, self.in_channels, self.out_channels
            ));
        }
        if [&self.kernel, &self.strides, &self.dilations]
            .iter()
            .any(|v| v.contains(&0))
        {
            return Err("a zero kernel size, stride or dilation".into());
        }
        for a in 0..n {
            let span = (self.kernel[a] - 1) * self.dilations[a] + 1;
            let padded = self.in_sp[a] + self.pad_begin[a] + self.pad_end[a];
            let floor = padded.checked_sub(span).map(|r| r / self.strides[a] + 1);
            let ceil = padded
                .checked_sub(span)
                .map(|r| r.div_ceil(self.strides[a]) + 1);
            if floor.is_none_or(|f| self.out_sp[a] < f) || ceil.is_none_or(|c| self.out_sp[a] > c) {
                return Err(format!(
                    "{} outputs on spatial axis {a} do not fit the input, kernel and pads",
                    self.out_sp[a]
                ));
            }
        }
        let per = (self.in_channels / self.groups).checked_mul(self.kernel_count());
        let weights = per.and_then(|p| p.checked_mul(self.out_channels));
        let biases = self.out_channels.checked_mul(self.out_count());
        if weights != Some(self.weight.len()) || biases != Some(self.bias.len()) {
            return Err("weight or bias sizes do not match the channels and kernel".into());
        }
        Ok(())
    }

    /// Calls `f(input flat index, weight flat index)` for every tap of output element
    /// `e` (flat over `[out_channels, out_sp…]`) that lies inside the input.
    pub fn for_each_tap(&self, e: usize, mut f: impl FnMut(usize, usize)) {
        let n = self.in_sp.len();
        let (oc, mut p) = (e / self.out_count(), e % self.out_count());
        let mut opos = [0usize; MAX_RANK];
        for a in (0..n).rev() {
            opos[a] = p % self.out_sp[a];
            p /= self.out_sp[a];
        }
        let cpg = self.in_channels / self.groups;
        let group = oc / (self.out_channels / self.groups);
        let kc = self.kernel_count();
        let in_plane = self.in_plane();
        for k in 0..kc {
            let mut r = k;
            let mut kpos = [0usize; MAX_RANK];
            for a in (0..n).rev() {
                kpos[a] = r % self.kernel[a];
                r /= self.kernel[a];
            }
            let mut flat = 0usize;
            let mut inside = true;
            for a in 0..n {
                let q = (opos[a] * self.strides[a] + kpos[a] * self.dilations[a]) as i64
                    - self.pad_begin[a] as i64;
                if q < 0 || q >= self.in_sp[a] as i64 {
                    inside = false;
                    break;
                }
                flat = flat * self.in_sp[a] + q as usize;
            }
            if inside {
                for ci in 0..cpg {
                    f(
                        (group * cpg + ci) * in_plane + flat,
                        (oc * cpg + ci) * kc + k,
                    );
                }
            }
        }
    }

    /// Every output element for the operand values `x`, in wrapping 64-bit arithmetic.
    pub fn eval(&self, x: &[i64]) -> Vec<i64> {
        let count = self.out_count();
        (0..self.out_channels * count)
            .map(|e| {
                let mut acc = self.bias[e];
                self.for_each_tap(e, |i, k| {
                    acc = acc.wrapping_add(self.weight[k].wrapping_mul(x[i]));
                });
                acc
            })
            .collect()
    }
}

/// The most spatial axes a convolution may have.
pub const MAX_RANK: usize = 3;
