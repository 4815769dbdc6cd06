//! Chains of elementwise kernels (ECA gate apply -> residual add -> next block's SiLU) become
//! one pass over the tensor that stores only what is read later.

use super::Pass;
use crate::schedule::{Op, PassReport, Schedule};

pub struct ScaleAddActChain;

impl Pass for ScaleAddActChain {
    fn name(&self) -> &'static str {
        "scale_add_act_chain"
    }

    fn run(&self, s: &mut Schedule) -> PassReport {
        let mut r = PassReport::new(self.name());
        let mut k = 0;
        while k < s.kernels.len() {
            let Op::ScaleAddAct { r: kr, gate: kg, shortcut: ks, y: Some(y), act: None } = s.kernels[k].op else {
                k += 1;
                continue;
            };
            let readers = s.readers(y);
            let mut merged = None;
            for &j in &readers {
                merged = match s.kernels[j].op {
                    // A residual add of y (either operand) when y has no shortcut yet and no other reader.
                    Op::ScaleAddAct { r: jr, gate: None, shortcut: Some(js), y: jy, act: None }
                        if ks.is_none() && readers.len() == 1 && (jr == y) != (js == y) =>
                    {
                        let other = if jr == y { js } else { jr };
                        Some((j, Op::ScaleAddAct { r: kr, gate: kg, shortcut: Some(other), y: jy, act: None }))
                    }
                    // A SiLU of y: keep storing y only if something else reads it.
                    Op::ScaleAddAct { r: jr, gate: None, shortcut: None, y: None, act: Some(a) } if jr == y => {
                        let y_out = (readers.len() > 1).then_some(y);
                        Some((j, Op::ScaleAddAct { r: kr, gate: kg, shortcut: ks, y: y_out, act: Some(a) }))
                    }
                    _ => None,
                };
                if merged.is_some() {
                    break;
                }
            }
            // The merged kernel runs at k: everything it reads must be ready there.
            let ready =
                |op: &Op| op.inputs().iter().all(|b| (0..k).any(|p| s.kernels[p].op.outputs().contains(b)) || *b == kr);
            let why = match &merged {
                None if readers.is_empty() => Some(None),
                None => Some(Some("no elementwise reader it can absorb")),
                Some((_, op)) if !ready(op) => Some(Some("an operand is produced later")),
                Some(_) => None,
            };
            let (Some((j, op)), None) = (merged, why) else {
                if let Some(Some(why)) = why {
                    r.declined.push((s.kernels[k].modules.join("+"), why.into()));
                }
                k += 1;
                continue;
            };
            let mods = s.kernels[j].modules.clone();
            s.kernels[k].op = op;
            s.kernels[k].modules.extend(mods);
            s.kernels.remove(j);
            r.applied.push(s.kernels[k].modules.join("+"));
            // k stays: the merged kernel may absorb the next one too.
        }
        r
    }
}
