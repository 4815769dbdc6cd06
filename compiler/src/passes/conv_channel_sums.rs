//! Conv whose output is summed per channel (ECA, global pool): the sums accumulate in the
//! conv's epilogue, per block of output rows, in a fixed order.

use super::Pass;
use crate::schedule::{Layout, Op, PassReport, Schedule};

pub struct ConvChannelSums;

impl Pass for ConvChannelSums {
    fn name(&self) -> &'static str {
        "conv_channel_sums"
    }

    fn run(&self, s: &mut Schedule) -> PassReport {
        let mut r = PassReport::new(self.name());
        let mut j = 0;
        while j < s.kernels.len() {
            let Op::ChannelSums { input, sums } = s.kernels[j].op else {
                j += 1;
                continue;
            };
            let producer = (0..j).rev().find(|&k| s.kernels[k].op.outputs().contains(&input));
            let Some(k) =
                producer.filter(|&k| matches!(s.kernels[k].op, Op::Conv { out, sums: None, .. } if out == input))
            else {
                r.declined.push((s.kernels[j].modules.join("+"), "its input is not the main output of a conv".into()));
                j += 1;
                continue;
            };
            let bands = s.conv_geom(&s.kernels[k].op).bands();
            s.buffers[sums].layout = Layout { h: bands, w: 1, c: s.buffers[input].layout.c, pad: 0 };
            if let Op::Conv { sums: slot, .. } = &mut s.kernels[k].op {
                *slot = Some(sums);
            }
            let m = s.kernels[j].modules.clone();
            for x in m {
                if !s.kernels[k].modules.contains(&x) {
                    s.kernels[k].modules.push(x);
                }
            }
            r.applied.push(s.kernels[k].modules.join("+"));
            s.kernels.remove(j);
        }
        r
    }
}
