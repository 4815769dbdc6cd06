//! The fusion passes: each rewrites the kernel list where its pattern applies and reports
//! where it did and, where the pattern began but did not fit, why not.

mod conv_act;
mod conv_channel_sums;
mod scale_add_act_chain;
mod scale_add_act_in_place;

use crate::schedule::{PassReport, Schedule};

pub trait Pass: Sync {
    /// As reports and `NFNET_STOP_AFTER_PASS` count it.
    fn name(&self) -> &'static str;
    fn run(&self, s: &mut Schedule) -> PassReport;
}

/// The fusion passes in the order they run.
pub const PASSES: [&dyn Pass; 4] = [
    &conv_act::ConvAct,
    &conv_channel_sums::ConvChannelSums,
    &scale_add_act_chain::ScaleAddActChain,
    &scale_add_act_in_place::ScaleAddActInPlace,
];
