//! `nfc`: the nfnet compiler's command line (check, reference, synth).

use clap::{Parser, Subcommand};
use nfnet_compiler::arch::{check_input_size, parse_input_size};
use nfnet_compiler::builder::{Builder, MAX_BATCH};
use nfnet_compiler::graph::{Graph, Op};
use nfnet_compiler::ops::Tensor;
use nfnet_compiler::reference::Outputs;
use nfnet_compiler::schedule::{Policies, Precision, Schedule, WinogradPolicy};
use nfnet_compiler::synth::{self, StorageDtype, SynthSpec};
use nfnet_compiler::{Error, Model, Result};
use nfnet_runtime::npy;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

#[derive(Parser)]
#[command(
    name = "nfc",
    version,
    about = "nfnet compiler: validate, evaluate and synthesize timm ECA-NFNet checkpoints"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Validate a model directory and print an architecture summary.
    Check {
        /// Directory holding config.json and model.safetensors.
        #[arg(long)]
        model: PathBuf,
        /// Input size S or HxW (height first); default the config's pretrained input size.
        #[arg(long, value_parser = parse_input_size)]
        input_size: Option<(usize, usize)>,
    },
    /// Evaluate the model in f64 exactly as timm does and write every output as .npy.
    Reference {
        #[arg(long)]
        model: PathBuf,
        /// float32 (B, 3, H, W) C-order .npy of normalized pixels.
        #[arg(long)]
        input: PathBuf,
        #[arg(long)]
        out_dir: PathBuf,
        /// Evaluate the folded graph (what the code generator compiles) instead of timm's
        /// unfolded formulation.
        #[arg(long)]
        folded: bool,
    },
    /// Print the fused kernel schedule and memory plan, without building.
    Schedule {
        #[arg(long)]
        model: PathBuf,
        #[arg(long, value_parser = parse_input_size)]
        input_size: Option<(usize, usize)>,
        #[arg(long, default_value_t = 1)]
        batch: usize,
        /// Stable JSON (format nfnet-schedule/1) instead of a table.
        #[arg(long)]
        json: bool,
        /// Run only the first N fusion passes.
        #[arg(long)]
        stop_after_pass: Option<usize>,
        /// Winograd algorithms the 3x3 stride-1 convs may take: auto, f2 (default), off, f4.
        #[arg(long, value_parser = parse_winograd)]
        winograd: Option<WinogradPolicy>,
        /// The convs' arithmetic: f32 (default) or bf16.
        #[arg(long, default_value = "f32", value_parser = parse_precision)]
        precision: Precision,
    },
    /// Write the generated Rust source and weight blob to a directory, to read.
    Emit {
        #[arg(long)]
        model: PathBuf,
        #[arg(long)]
        out: PathBuf,
        #[arg(long, value_parser = parse_input_size)]
        input_size: Option<(usize, usize)>,
        #[arg(long, default_value_t = 1)]
        batch: usize,
        #[arg(long)]
        stop_after_pass: Option<usize>,
        /// Winograd algorithms the 3x3 stride-1 convs may take: auto, f2 (default), off, f4.
        #[arg(long, value_parser = parse_winograd)]
        winograd: Option<WinogradPolicy>,
        /// The convs' arithmetic: f32 (default) or bf16.
        #[arg(long, default_value = "f32", value_parser = parse_precision)]
        precision: Precision,
    },
    /// Write a deterministic synthetic checkpoint (config.json + model.safetensors).
    Synth {
        /// eca_nfnet_l0, eca_nfnet_l1, eca_nfnet_l2 or eca_nfnet_l3.
        #[arg(long)]
        arch: String,
        #[arg(long, default_value_t = 0)]
        seed: u64,
        #[arg(long)]
        out: PathBuf,
        #[arg(long)]
        num_classes: Option<usize>,
        /// JSON object overlaid on the family config, as timm's `model_args`.
        #[arg(long)]
        model_args: Option<String>,
        /// pretrained_cfg.input_size to record, S or HxW.
        #[arg(long, value_parser = parse_input_size)]
        input_size: Option<(usize, usize)>,
        /// Storage dtype: f32, f16 or bf16.
        #[arg(long, default_value = "f32", value_parser = StorageDtype::parse)]
        dtype: StorageDtype,
    },
}

fn main() -> ExitCode {
    nfnet_runtime::quiet_sigpipe();
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Check { model, input_size } => check(&model, input_size),
        Command::Reference { model, input, out_dir, folded } => reference(&model, &input, &out_dir, folded),
        Command::Schedule { model, input_size, batch, json, stop_after_pass, winograd, precision } => {
            schedule(&model, input_size, batch, json, stop_after_pass, winograd, precision)
        }
        Command::Emit { model, out, input_size, batch, stop_after_pass, winograd, precision } => {
            emit(&model, &out, input_size, batch, stop_after_pass, winograd, precision)
        }
        Command::Synth { arch, seed, out, num_classes, model_args, input_size, dtype } => {
            synth_cmd(arch, seed, &out, num_classes, model_args, input_size, dtype)
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            for p in &e.problems {
                eprintln!("error: {p}");
            }
            ExitCode::FAILURE
        }
    }
}

fn check(dir: &Path, input_size: Option<(usize, usize)>) -> Result<()> {
    let model = Model::load(dir)?;
    let a = &model.arch;
    let hw = input_size.unwrap_or(a.config.pretrained.input_size);
    let g = model.graph(hw, 1)?;
    let ck = &model.checkpoint;
    let mut dtypes: Vec<String> = ck.tensors.values().map(|t| format!("{:?}", t.dtype)).collect();
    dtypes.sort();
    dtypes.dedup();
    println!("{}: valid", dir.display());
    println!("architecture  {} ({} classes, {} features)", a.config.architecture, a.num_classes, a.num_features);
    println!("parameters    {}", thousands(a.params()));
    let origin = synth::synthetic_tag(&ck.metadata).map_or(String::new(), |t| format!(", synthetic: {t}"));
    println!("checkpoint    {} tensors, {}{origin}", ck.tensors.len(), dtypes.join("+"));
    let gflop = g.total_flops() as f64 / 1e9;
    let digits = if gflop >= 1.0 { 2 } else { 4 };
    println!("input         3x{}x{}: {gflop:.digits$} GFLOP per image", hw.0, hw.1);
    let conv_out = |name: &str| {
        g.nodes.iter().find(|n| n.module == name && matches!(n.op, Op::Conv(_))).map(|n| g.values[n.output].shape)
    };
    let s = &a.stem;
    let stem_out = conv_out(&s[3].name).unwrap_or_default();
    println!(
        "stem          deep_quad {}->{}->{}->{}->{}, stride 4 -> {}x{}",
        s[0].cin, s[0].cout, s[1].cout, s[2].cout, s[3].cout, stem_out[2], stem_out[3]
    );
    for (st, depth) in a.config.cfg.depths.iter().enumerate() {
        let blocks: Vec<_> = a.blocks.iter().filter(|b| b.stage == st).collect();
        let (first, last) = (blocks[0], blocks[blocks.len() - 1]);
        let out = conv_out(&last.conv3.name).unwrap_or_default();
        println!(
            "stage {st}       {depth} blocks, {}->{} channels, mid {}, groups {}, stride {}, ECA k={}, -> {}x{}",
            first.in_chs, first.out_chs, first.mid_chs, first.groups, first.stride, first.eca_k, out[2], out[3]
        );
    }
    if let Some(f) = &a.final_conv {
        println!("final_conv    {}->{} + SiLU", f.cin, f.cout);
    }
    if a.num_classes > 0 {
        println!("head          avg pool + fc {}->{}", a.num_features, a.num_classes);
    }
    Ok(())
}

fn schedule(
    dir: &Path,
    input_size: Option<(usize, usize)>,
    batch: usize,
    json: bool,
    stop_after: Option<usize>,
    winograd: Option<WinogradPolicy>,
    precision: Precision,
) -> Result<()> {
    check_batch(batch)?;
    let policies = Policies::checked(winograd, None, precision).map_err(Error::new)?;
    let model = Model::load(dir)?;
    let hw = input_size.unwrap_or(model.arch.config.pretrained.input_size);
    let graph = model.graph(hw, batch)?;
    let s = Schedule::new(&graph, policies, stop_after);
    if json {
        println!("{}", serde_json::to_string_pretty(&s.to_json()).expect("JSON values serialize"));
    } else {
        print!("{}", s.to_text());
    }
    Ok(())
}

fn parse_precision(s: &str) -> std::result::Result<Precision, String> {
    Precision::parse(s).ok_or_else(|| format!("'{s}' is not one of f32, bf16"))
}

fn parse_winograd(s: &str) -> std::result::Result<WinogradPolicy, String> {
    WinogradPolicy::parse(s).ok_or_else(|| format!("'{s}' is not one of auto, f2, off, f4"))
}

fn check_batch(batch: usize) -> Result<()> {
    if !(1..=MAX_BATCH).contains(&batch) {
        return Err(Error::new(format!("--batch {batch} is not from 1 to {MAX_BATCH}")));
    }
    Ok(())
}

fn emit(
    dir: &Path,
    out: &Path,
    input_size: Option<(usize, usize)>,
    batch: usize,
    stop_after: Option<usize>,
    winograd: Option<WinogradPolicy>,
    precision: Precision,
) -> Result<()> {
    check_batch(batch)?;
    let mut b = Builder::new().model_dir(dir).batch(batch).out_dir(out).precision(precision);
    if let Some(w) = winograd {
        b = b.winograd(w);
    }
    if let Some((h, w)) = input_size {
        b = b.input_size(h, w);
    }
    if let Some(n) = stop_after {
        b = b.stop_after_pass(n);
    }
    std::fs::create_dir_all(out).map_err(|e| Error::new(format!("{}: cannot create: {e}", out.display())))?;
    let src = b.compile()?;
    let files = [
        nfnet_compiler::emit::WEIGHTS_FILE,
        nfnet_compiler::emit::SCHEDULE_JSON_FILE,
        nfnet_compiler::emit::SCHEDULE_TEXT_FILE,
    ];
    println!("wrote {} and, beside it, {}", src.display(), files.join(", "));
    Ok(())
}

fn thousands(n: usize) -> String {
    let s = n.to_string();
    let mut out = String::new();
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

fn reference(dir: &Path, input: &Path, out_dir: &Path, folded: bool) -> Result<()> {
    let x = npy::read(input).map_err(|e| Error::new(e.to_string()))?;
    let bad = |what: String| Error::new(format!("{}: {what}", input.display()));
    let [b, c, h, w] = x.shape[..] else {
        return Err(bad(format!("shape {:?} is not (B, 3, H, W)", x.shape)));
    };
    if c != 3 || b == 0 {
        return Err(bad(format!("shape {:?} is not (B, 3, H, W) with B >= 1", x.shape)));
    }
    check_input_size(h, w).map_err(bad)?;
    if let Some(i) = x.data.iter().position(|v| !v.is_finite()) {
        return Err(bad(format!("value {i} is not finite")));
    }
    let model = Model::load(dir)?;
    let input = Tensor::from_f32([b, c, h, w], &x.data);
    let out = if folded {
        Graph::build(&model.arch, &model.checkpoint, (h, w), b)?.eval(&input)
    } else {
        model.reference().forward(&input)?
    };
    write_outputs(&out, out_dir)
}

fn write_outputs(out: &Outputs, dir: &Path) -> Result<()> {
    std::fs::create_dir_all(dir).map_err(|e| Error::new(format!("{}: cannot create: {e}", dir.display())))?;
    fn flat(t: &Tensor) -> (Vec<usize>, &Tensor) {
        (vec![t.shape[0], t.shape[1]], t)
    }
    fn full(t: &Tensor) -> (Vec<usize>, &Tensor) {
        (t.shape.to_vec(), t)
    }
    let mut files = vec![
        ("logits.npy".to_string(), flat(&out.logits)),
        ("pre_logits.npy".to_string(), flat(&out.pre_logits)),
        ("forward_features.npy".to_string(), full(&out.forward_features)),
    ];
    for (i, f) in out.features.iter().enumerate() {
        files.push((format!("feature{i}.npy"), full(f)));
    }
    for (name, (shape, t)) in files {
        let a = npy::Array::new(shape, t.to_f32()).map_err(Error::new)?;
        npy::write(&dir.join(name), &a).map_err(|e| Error::new(e.to_string()))?;
    }
    Ok(())
}

fn synth_cmd(
    arch: String,
    seed: u64,
    out: &Path,
    num_classes: Option<usize>,
    model_args: Option<String>,
    input_size: Option<(usize, usize)>,
    dtype: StorageDtype,
) -> Result<()> {
    let model_args = match model_args {
        None => None,
        Some(text) => match serde_json::from_str(&text) {
            Ok(serde_json::Value::Object(m)) => Some(m),
            Ok(_) => return Err(Error::new("--model-args must be a JSON object")),
            Err(e) => return Err(Error::new(format!("--model-args is not valid JSON: {e}"))),
        },
    };
    let spec = SynthSpec { architecture: arch, seed, num_classes, model_args, input_size, dtype };
    synth::write(&spec, out)?;
    println!("wrote {} and {}", out.join("config.json").display(), out.join("model.safetensors").display());
    Ok(())
}
