//! Conv followed by a SiLU of its output: SiLU in the conv's epilogue. The raw output is still
//! stored (`preact`) when something else reads it (a feature tap).

use super::Pass;
use crate::schedule::{Op, PassReport, Schedule};

pub struct ConvAct;

impl Pass for ConvAct {
    fn name(&self) -> &'static str {
        "conv_act"
    }

    fn run(&self, s: &mut Schedule) -> PassReport {
        let mut r = PassReport::new(self.name());
        let mut k = 0;
        while k < s.kernels.len() {
            let Op::Conv { out, act: false, .. } = s.kernels[k].op else {
                k += 1;
                continue;
            };
            let readers = s.readers(out);
            let silu = readers.iter().copied().find(|&j| {
                matches!(s.kernels[j].op, Op::ScaleAddAct { r, gate: None, shortcut: None, y: None, act: Some(_) } if r == out)
            });
            let Some(j) = silu else {
                r.declined.push((s.kernels[k].modules.join("+"), "no SiLU reads its output".into()));
                k += 1;
                continue;
            };
            let Op::ScaleAddAct { act: Some(a), .. } = s.kernels[j].op else { unreachable!("matched above") };
            let keep_raw = readers.len() > 1;
            let module = s.kernels[j].modules.clone();
            if let Op::Conv { out, act, preact, .. } = &mut s.kernels[k].op {
                *preact = keep_raw.then_some(*out);
                *out = a;
                *act = true;
            }
            s.kernels[k].modules.extend(module);
            r.applied.push(s.kernels[k].modules.join("+"));
            s.kernels.remove(j);
            k += 1;
        }
        r
    }
}
