//! [`Conv`]: a convolution with constant weights that keeps its geometry (ONNX Conv, and
//! average pooling as a depthwise convolution), so nothing downstream grows with the
//! product of the input and output sizes.

use serde::{Deserialize, Serialize};

/// Window geometry along the spatial axes of one convolution or pooling node.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Geometry {
    pub in_sp: Vec<usize>,
    pub kernel: Vec<usize>,
    pub strides: Vec<usize>,
    pub dilations: Vec<usize>,
    pub pad_begin: Vec<usize>,
    pub pad_end: Vec<usize>,
    pub out_sp: Vec<usize>,
}

/// One output position's window: per kernel offset (flat), the input spatial position
/// it reads (flat) or `None` in the padding.
pub type Taps = Vec<(usize, Option<usize>)>;

impl Geometry {
    pub fn out_count(&self) -> usize {
        self.out_sp.iter().product()
    }
    pub fn kernel_count(&self) -> usize {
        self.kernel.iter().product()
    }
    pub fn in_plane(&self) -> usize {
        self.in_sp.iter().product()
    }

    /// The taps of output position `o` (flat), and the number of them inside the padded
    /// input (AveragePool's divisor with count_include_pad).
    pub fn window(&self, o: usize) -> (Taps, usize) {
        let n = self.in_sp.len();
        let mut opos = vec![0; n];
        let mut r = o;
        for a in (0..n).rev() {
            opos[a] = r % self.out_sp[a];
            r /= self.out_sp[a];
        }
        let mut taps = Vec::with_capacity(self.kernel_count());
        let mut padded_count = 0;
        let mut kpos = vec![0; n];
        for k in 0..self.kernel_count() {
            let mut r = k;
            for a in (0..n).rev() {
                kpos[a] = r % self.kernel[a];
                r /= self.kernel[a];
            }
            let mut flat = 0usize;
            let (mut inside, mut in_padded) = (true, true);
            for a in 0..n {
                let p = (opos[a] * self.strides[a] + kpos[a] * self.dilations[a]) as i64
                    - self.pad_begin[a] as i64;
                if p < 0 || p >= self.in_sp[a] as i64 {
                    inside = false;
                }
                if p >= (self.in_sp[a] + self.pad_end[a]) as i64 {
                    in_padded = false;
                }
                flat = flat * self.in_sp[a] + p.clamp(0, self.in_sp[a] as i64 - 1) as usize;
            }
            padded_count += usize::from(in_padded);
            taps.push((k, inside.then_some(flat)));
        }
        (taps, padded_count)
    }
}

/// `y[o, p] = bias[o] + Σ_{c, k} weight[o, c, k] · x[g(o)·C/G + c, window(p)[k]]` over
/// the taps inside the input (padding reads 0): ONNX Conv. The operand is
/// `[1, in_channels, in_sp…]`, the result `[1, out_channels, out_sp…]`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Conv {
    pub geometry: Geometry,
    pub in_channels: usize,
    pub out_channels: usize,
    pub groups: usize,
    /// `[out_channels, in_channels / groups, kernel…]`, row-major.
    pub weight: Vec<f64>,
    /// One per output channel.
    pub bias: Vec<f64>,
}

impl Conv {
    /// The convolution of one sample's values `x` (flat), flat over `[out_channels,
    /// out_sp…]`.
    pub fn eval(&self, x: &[f64]) -> Vec<f64> {
        let g = &self.geometry;
        let (kc, in_plane) = (g.kernel_count(), g.in_plane());
        let cpg = self.in_channels / self.groups;
        let mpg = self.out_channels / self.groups;
        let windows: Vec<Taps> = (0..g.out_count()).map(|o| g.window(o).0).collect();
        let mut y = Vec::with_capacity(self.out_channels * windows.len());
        for (oc, &b) in self.bias.iter().enumerate() {
            let group = oc / mpg;
            for win in &windows {
                let mut acc = b;
                for ci in 0..cpg {
                    let (ic, row) = (group * cpg + ci, (oc * cpg + ci) * kc);
                    for &(k, src) in win {
                        if let Some(s) = src {
                            acc += self.weight[row + k] * x[ic * in_plane + s];
                        }
                    }
                }
                y.push(acc);
            }
        }
        y
    }
}
