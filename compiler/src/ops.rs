//! Plain f64 NCHW operators shared by the reference executor and the graph evaluator.
//!
//! They are written to be obviously correct first: every output element is one fixed-order
//! sum, so results do not depend on the number of threads. Work is split across threads by
//! output planes only.

use std::sync::Mutex;

/// A dense NCHW tensor of f64 (rank 2 tensors use `[b, c, 1, 1]`).
#[derive(Clone, Debug, PartialEq)]
pub struct Tensor {
    pub shape: [usize; 4],
    pub data: Vec<f64>,
}

impl Tensor {
    pub fn zeros(shape: [usize; 4]) -> Self {
        Tensor { shape, data: vec![0.0; shape.iter().product()] }
    }

    pub fn from_f32(shape: [usize; 4], data: &[f32]) -> Self {
        assert_eq!(shape.iter().product::<usize>(), data.len(), "tensor shape and data disagree");
        Tensor { shape, data: data.iter().map(|&v| v as f64).collect() }
    }

    pub fn to_f32(&self) -> Vec<f32> {
        self.data.iter().map(|&v| v as f32).collect()
    }

    fn plane_len(&self) -> usize {
        self.shape[2] * self.shape[3]
    }

    /// Applies `f` to every element.
    pub fn map(&self, f: impl Fn(f64) -> f64) -> Tensor {
        Tensor { shape: self.shape, data: self.data.iter().map(|&v| f(v)).collect() }
    }
}

pub fn sigmoid(x: f64) -> f64 {
    1.0 / (1.0 + (-x).exp())
}

/// SiLU as timm (PyTorch) computes it: x * sigmoid(x).
pub fn silu(x: f64) -> f64 {
    x * sigmoid(x)
}

/// Runs `f(index, chunk)` over `data` split into `chunk`-sized pieces, on every available core.
pub fn par_chunks_mut(data: &mut [f64], chunk: usize, f: impl Fn(usize, &mut [f64]) + Sync) {
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    let work = Mutex::new(data.chunks_mut(chunk.max(1)).enumerate());
    std::thread::scope(|s| {
        for _ in 0..threads {
            s.spawn(|| {
                loop {
                    let next = work.lock().unwrap_or_else(|p| p.into_inner()).next();
                    let Some((i, c)) = next else { break };
                    f(i, c);
                }
            });
        }
    });
}

/// A 2-D convolution with symmetric zero padding (PyTorch `conv2d`).
pub struct Conv2d<'a> {
    /// `[cout, cin / groups, k, k]`
    pub weight: &'a [f64],
    pub bias: &'a [f64],
    pub cout: usize,
    pub k: usize,
    pub stride: usize,
    pub pad: usize,
    pub groups: usize,
}

impl Conv2d<'_> {
    pub fn out_extent(&self, x: usize) -> usize {
        (x + 2 * self.pad - self.k) / self.stride + 1
    }

    pub fn apply(&self, x: &Tensor) -> Tensor {
        let [b, cin, h, w] = x.shape;
        let (k, s, p) = (self.k, self.stride, self.pad);
        let (ho, wo) = (self.out_extent(h), self.out_extent(w));
        let cin_g = cin / self.groups;
        let cout_g = self.cout / self.groups;
        assert_eq!(self.weight.len(), self.cout * cin_g * k * k, "conv weight size");
        // Output channels are processed in blocks that share each input row while it is hot.
        let ob = [8, 4, 2, 1].into_iter().find(|d| cout_g.is_multiple_of(*d)).unwrap_or(1);
        let mut out = Tensor::zeros([b, self.cout, ho, wo]);
        let plane = ho * wo;
        par_chunks_mut(&mut out.data, ob * plane, |task, chunk| {
            let blocks_per_image = self.cout / ob;
            let (n, o0) = (task / blocks_per_image, (task % blocks_per_image) * ob);
            let g = o0 / cout_g;
            for (j, pl) in chunk.chunks_mut(plane).enumerate() {
                pl.fill(self.bias[o0 + j]);
            }
            for ci in 0..cin_g {
                let src = &x.data[(n * cin + g * cin_g + ci) * h * w..][..h * w];
                for ky in 0..k {
                    for oy in 0..ho {
                        let iy = (oy * s + ky) as isize - p as isize;
                        if iy < 0 || iy >= h as isize {
                            continue;
                        }
                        let row = &src[iy as usize * w..][..w];
                        for kx in 0..k {
                            // Output columns whose input column ox*s + kx - p lies inside the row.
                            if w + p <= kx {
                                continue;
                            }
                            let lo = p.saturating_sub(kx).div_ceil(s);
                            let hi = ((w + p - kx - 1) / s + 1).min(wo);
                            if lo >= hi {
                                continue;
                            }
                            for (j, pl) in chunk.chunks_mut(plane).enumerate() {
                                let wv = self.weight[(((o0 + j) * cin_g + ci) * k + ky) * k + kx];
                                let dst = &mut pl[oy * wo..][..wo];
                                if s == 1 {
                                    let off = lo + kx - p;
                                    for (d, &v) in dst[lo..hi].iter_mut().zip(&row[off..off + hi - lo]) {
                                        *d += wv * v;
                                    }
                                } else {
                                    for ox in lo..hi {
                                        dst[ox] += wv * row[ox * s + kx - p];
                                    }
                                }
                            }
                        }
                    }
                }
            }
        });
        out
    }
}

/// AvgPool2d(2, stride 2, ceil_mode=True, count_include_pad=False): the mean of the window's
/// elements that lie inside the input.
pub fn avg_pool_2x2_ceil(x: &Tensor) -> Tensor {
    let [b, c, h, w] = x.shape;
    let (ho, wo) = (h.div_ceil(2), w.div_ceil(2));
    let mut out = Tensor::zeros([b, c, ho, wo]);
    for (src, dst) in x.data.chunks(h * w).zip(out.data.chunks_mut(ho * wo)) {
        for oy in 0..ho {
            for ox in 0..wo {
                let (mut sum, mut n) = (0.0, 0.0);
                for iy in 2 * oy..(2 * oy + 2).min(h) {
                    for ix in 2 * ox..(2 * ox + 2).min(w) {
                        sum += src[iy * w + ix];
                        n += 1.0;
                    }
                }
                dst[oy * wo + ox] = sum / n;
            }
        }
    }
    out
}

/// Mean over H and W of every (image, channel): `[b, c, 1, 1]`.
pub fn global_avg_pool(x: &Tensor) -> Tensor {
    let [b, c, ..] = x.shape;
    let n = x.plane_len() as f64;
    Tensor { shape: [b, c, 1, 1], data: x.data.chunks(x.plane_len()).map(|p| p.iter().sum::<f64>() / n).collect() }
}

/// timm's `EcaModule` (channels given): x * sigmoid(conv1d_k(mean_hw(x))) with zero padding
/// (k - 1) / 2 along the channel axis, no bias; the result is also multiplied by `scale`.
pub fn eca(x: &Tensor, weight: &[f64], scale: f64) -> Tensor {
    let [b, c, ..] = x.shape;
    let means = global_avg_pool(x).data;
    let k = weight.len();
    let half = (k - 1) / 2;
    let mut out = x.clone();
    let plane = x.plane_len();
    for n in 0..b {
        for ch in 0..c {
            let mut y = 0.0;
            for (t, &wt) in weight.iter().enumerate() {
                let src = ch as isize + t as isize - half as isize;
                if src >= 0 && (src as usize) < c {
                    y += wt * means[n * c + src as usize];
                }
            }
            let gate = sigmoid(y) * scale;
            for v in &mut out.data[(n * c + ch) * plane..][..plane] {
                *v *= gate;
            }
        }
    }
    out
}

/// `y = a * alpha + b`, elementwise.
pub fn axpy(a: &Tensor, alpha: f64, b: &Tensor) -> Tensor {
    assert_eq!(a.shape, b.shape, "residual shapes");
    Tensor { shape: a.shape, data: a.data.iter().zip(&b.data).map(|(&x, &y)| x * alpha + y).collect() }
}

/// A fully connected layer on `[b, in, 1, 1]`: `weight` is `[out, in]`.
pub fn linear(x: &Tensor, weight: &[f64], bias: &[f64]) -> Tensor {
    let [b, cin, ..] = x.shape;
    let cout = bias.len();
    let mut out = Tensor::zeros([b, cout, 1, 1]);
    for n in 0..b {
        let xi = &x.data[n * cin..][..cin];
        for o in 0..cout {
            let wo = &weight[o * cin..][..cin];
            out.data[n * cout + o] = bias[o] + wo.iter().zip(xi).map(|(w, v)| w * v).sum::<f64>();
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Convolution straight from the definition, for checking the blocked one.
    fn naive_conv(x: &Tensor, c: &Conv2d) -> Tensor {
        let [b, cin, h, w] = x.shape;
        let (ho, wo) = (c.out_extent(h), c.out_extent(w));
        let (cin_g, cout_g) = (cin / c.groups, c.cout / c.groups);
        let mut out = Tensor::zeros([b, c.cout, ho, wo]);
        for n in 0..b {
            for o in 0..c.cout {
                for oy in 0..ho {
                    for ox in 0..wo {
                        let mut acc = c.bias[o];
                        for ci in 0..cin_g {
                            for ky in 0..c.k {
                                for kx in 0..c.k {
                                    let iy = (oy * c.stride + ky) as isize - c.pad as isize;
                                    let ix = (ox * c.stride + kx) as isize - c.pad as isize;
                                    if iy < 0 || ix < 0 || iy >= h as isize || ix >= w as isize {
                                        continue;
                                    }
                                    let xv = x.data
                                        [((n * cin + (o / cout_g) * cin_g + ci) * h + iy as usize) * w + ix as usize];
                                    acc += c.weight[((o * cin_g + ci) * c.k + ky) * c.k + kx] * xv;
                                }
                            }
                        }
                        out.data[((n * c.cout + o) * ho + oy) * wo + ox] = acc;
                    }
                }
            }
        }
        out
    }

    fn pseudo(n: usize, seed: u64) -> Vec<f64> {
        let mut s = seed;
        (0..n)
            .map(|_| {
                s = s.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
                ((s >> 11) as f64 / (1u64 << 53) as f64) * 2.0 - 1.0
            })
            .collect()
    }

    #[test]
    fn blocked_conv_matches_definition() {
        // (b, cin, h, w, cout, k, stride, groups): odd sizes, strides, groups, tiny planes.
        let cases = [
            (2, 3, 9, 7, 4, 3, 2, 1),
            (1, 4, 5, 6, 6, 3, 1, 2),
            (1, 8, 7, 7, 16, 1, 1, 1),
            (2, 6, 1, 1, 6, 3, 1, 3),
            (1, 2, 2, 3, 2, 3, 2, 1),
            (1, 16, 11, 4, 24, 3, 1, 8),
        ];
        for (i, &(b, cin, h, w, cout, k, stride, groups)) in cases.iter().enumerate() {
            let x = Tensor { shape: [b, cin, h, w], data: pseudo(b * cin * h * w, i as u64) };
            let weight = pseudo(cout * cin / groups * k * k, 100 + i as u64);
            let bias = pseudo(cout, 200 + i as u64);
            let pad = ((stride - 1) + (k - 1)) / 2;
            let c = Conv2d { weight: &weight, bias: &bias, cout, k, stride, pad, groups };
            let (fast, slow) = (c.apply(&x), naive_conv(&x, &c));
            assert_eq!(fast.shape, slow.shape, "case {i}");
            for (a, b) in fast.data.iter().zip(&slow.data) {
                assert!((a - b).abs() <= 1e-12 * (1.0 + b.abs()), "case {i}: {a} vs {b}");
            }
        }
    }

    #[test]
    fn ceil_mode_pool_averages_only_inside_elements() {
        let x = Tensor { shape: [1, 1, 3, 3], data: (1..=9).map(f64::from).collect() };
        let y = avg_pool_2x2_ceil(&x);
        assert_eq!(y.shape, [1, 1, 2, 2]);
        assert_eq!(y.data, vec![3.0, 4.5, 7.5, 9.0]);
    }

    #[test]
    fn eca_pads_the_channel_axis_with_zeros() {
        let x = Tensor { shape: [1, 3, 1, 2], data: vec![1.0, 3.0, 0.0, 0.0, -2.0, -2.0] };
        let y = eca(&x, &[0.5, 1.0, 2.0], 2.0);
        let m = [2.0, 0.0, -2.0];
        let g = [m[0] + 2.0 * m[1], 0.5 * m[0] + m[1] + 2.0 * m[2], 0.5 * m[1] + m[2]];
        for c in 0..3 {
            for j in 0..2 {
                let want = x.data[c * 2 + j] * 2.0 * sigmoid(g[c]);
                assert!((y.data[c * 2 + j] - want).abs() < 1e-15);
            }
        }
    }
}
