//! `nfnet`: the inference binary with the compiled model inside.

mod app;

use clap::{Parser, Subcommand};
use nfnet_model as m;
use nfnet_runtime::npy;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Instant;

#[derive(Parser)]
#[command(
    name = "nfnet",
    version,
    about = "ECA-NFNet compiled ahead of time: run, benchmark and inspect the built-in model"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Classify images: top-K classes with probabilities (softmax x 100), as the model card.
    Classify {
        /// Image files or directories (their images, sorted).
        #[arg(required = true)]
        images: Vec<PathBuf>,
        #[arg(long, default_value_t = 5)]
        top: usize,
        #[arg(long)]
        json: bool,
        #[arg(long)]
        threads: Option<usize>,
    },
    /// The five feature maps (features_only): stem.conv3, stages.0, stages.1, stages.2, final_conv.
    Features {
        image: Option<PathBuf>,
        /// A float32 (N, 3, H, W) .npy of normalized pixels instead of an image.
        #[arg(long, conflicts_with = "image")]
        input: Option<PathBuf>,
        #[arg(long, default_value = ".")]
        out_dir: PathBuf,
        #[arg(long)]
        threads: Option<usize>,
    },
    /// Image embeddings: pooled (N, num_features), or forward_features with --unpooled.
    Embed {
        image: Option<PathBuf>,
        #[arg(long, conflicts_with = "image")]
        input: Option<PathBuf>,
        #[arg(long)]
        unpooled: bool,
        #[arg(long, default_value = "embedding.npy")]
        output: PathBuf,
        #[arg(long)]
        threads: Option<usize>,
    },
    /// Write exactly the tensor the model sees for an image: float32 (1, 3, H, W).
    Preprocess {
        image: PathBuf,
        #[arg(long)]
        output: PathBuf,
    },
    /// Run the model on a float32 (N, 3, H, W) .npy of normalized pixels; write logits (N, classes).
    Run {
        #[arg(long)]
        input: PathBuf,
        #[arg(long)]
        output: PathBuf,
        /// Threads (default NFNET_THREADS, else all cores).
        #[arg(long)]
        threads: Option<usize>,
    },
    /// Latency: warm-up, then min / median / p90 over the iterations.
    Bench {
        #[arg(long, default_value_t = 20)]
        iters: usize,
        #[arg(long)]
        threads: Option<usize>,
        #[arg(long)]
        json: bool,
        /// For benchmark harnesses that interleave engines call by call: after the warm-up
        /// print `ready`, then for each line read on stdin (a count N, empty for 1) run N
        /// inferences and print their times in ms on one line; exit at the end of stdin.
        #[arg(long, conflicts_with_all = ["iters", "json"])]
        serve: bool,
    },
    /// Time per fused kernel (median over the iterations): share of the total, GFLOP/s and share
    /// of the measured FMA peak of the threads used, slowest first.
    Profile {
        #[arg(long, default_value_t = 10)]
        iters: usize,
        #[arg(long)]
        threads: Option<usize>,
        /// Rows to print (all with 0).
        #[arg(long, default_value_t = 30)]
        top: usize,
        /// Also write a bar chart of the kernels' times as SVG.
        #[arg(long)]
        svg: Option<PathBuf>,
        /// Per kernel time over the iterations: `median`, or `min` (the least disturbed run,
        /// best for A/B comparisons on a busy machine).
        #[arg(long, default_value = "median", value_parser = ["median", "min"])]
        stat: String,
    },
    /// The compiled model: architecture, shapes, ISA, arena, weights.
    Info,
    /// The fused kernel schedule of the compiled model.
    Schedule {
        #[arg(long)]
        json: bool,
    },
}

fn main() -> ExitCode {
    nfnet_runtime::quiet_sigpipe();
    let cli = Cli::parse();
    let r = match cli.command {
        Command::Run { input, output, threads } => app::run(&input, &output, threads),
        Command::Bench { serve: true, threads, .. } => serve(threads),
        Command::Bench { iters, threads, json, .. } => bench(iters, threads, json),
        Command::Profile { iters, threads, top, svg, stat } => profile(iters, threads, top, svg.as_deref(), &stat),
        Command::Classify { images, top, json, threads } => app::classify(&images, top, json, threads),
        Command::Features { image, input, out_dir, threads } => {
            app::features(image.as_deref(), input.as_deref(), &out_dir, threads)
        }
        Command::Embed { image, input, unpooled, output, threads } => {
            app::embed(image.as_deref(), input.as_deref(), unpooled, &output, threads)
        }
        Command::Preprocess { image, output } => app::preprocess(&image, &output),
        Command::Info => info(),
        Command::Schedule { json } => schedule(json),
    };
    match r {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

fn threads(arg: Option<usize>) -> Result<usize, String> {
    match arg {
        Some(0) => Err("--threads must be at least 1".into()),
        Some(n) => Ok(n),
        None => nfnet_runtime::threads_from_env(),
    }
}

pub(crate) fn setup(t: Option<usize>) -> Result<(m::Model, m::Workspace), String> {
    let model = m::Model::new().map_err(|e| e.to_string())?;
    let ws = m::Workspace::new(threads(t)?).map_err(|e| format!("cannot start threads: {e}"))?;
    Ok((model, ws))
}

/// A fixed, non-trivial input for timing (the values do not change the work done).
fn timing_input(iters: usize) -> Result<Vec<f32>, String> {
    if iters == 0 {
        return Err("--iters must be at least 1".into());
    }
    Ok((0..m::INPUT_LEN).map(|i| ((i * 7919 % 1000) as f32 / 500.0) - 1.0).collect())
}

/// What a timing line measured: model, size, batch, ISA, threads, iterations.
fn run_header(model: &m::Model, threads: usize, iters: usize) -> String {
    format!(
        "{} {}x{} batch {} | isa {} | {threads} threads | {iters} iters",
        m::ARCHITECTURE,
        m::INPUT_H,
        m::INPUT_W,
        m::BATCH,
        model.isa()
    )
}

/// One inference of `input` (logits only) per call, returning its time in ms.
fn timed_inference<'a>(model: &'a m::Model, ws: &'a mut m::Workspace, input: &'a [f32]) -> impl FnMut() -> f64 + 'a {
    let input: &[f32; m::INPUT_LEN] = input.try_into().expect("sized");
    let mut logits = vec![0.0f32; m::LOGITS_LEN];
    move || {
        let l: &mut [f32; m::LOGITS_LEN] = logits.as_mut_slice().try_into().expect("sized");
        let start = Instant::now();
        model.infer(ws, input, m::Outputs { logits: l, pre_logits: None, forward_features: None, features: None });
        start.elapsed().as_secs_f64() * 1e3
    }
}

fn bench(iters: usize, t: Option<usize>, json: bool) -> Result<(), String> {
    let input = timing_input(iters)?;
    let (model, mut ws) = setup(t)?;
    let mut once = timed_inference(&model, &mut ws, &input);
    for _ in 0..2.min(iters) {
        once();
    }
    let times: Vec<f64> = (0..iters).map(|_| once()).collect();
    drop(once);
    let mut ms = times.clone();
    ms.sort_by(f64::total_cmp);
    let pick = |q: f64| ms[((ms.len() - 1) as f64 * q).round() as usize];
    let (min, median, p90) = (ms[0], pick(0.5), pick(0.9));
    let ips = m::BATCH as f64 / (median / 1e3);
    let threads = ws.threads();
    if json {
        let v = serde_json::json!({
            "min_ms": min, "median_ms": median, "p90_ms": p90, "images_per_s": ips, "iters": iters,
            "threads": threads, "isa": model.isa().name(), "precision": m::PRECISION,
            "input_size": [m::INPUT_H, m::INPUT_W],
            "batch": m::BATCH, "architecture": m::ARCHITECTURE, "times_ms": times,
        });
        println!("{v}");
    } else {
        println!(
            "{}: min {:.1} ms, median {:.1} ms, p90 {:.1} ms, {:.2} images/s",
            run_header(&model, threads, iters),
            min,
            median,
            p90,
            ips
        );
    }
    Ok(())
}

/// `bench --serve`: one process kept warm while a harness times other engines between its
/// calls, so that a burst of load on a shared machine falls on all of them alike.
fn serve(t: Option<usize>) -> Result<(), String> {
    use std::io::{BufRead, Write};
    let input = timing_input(1)?;
    let (model, mut ws) = setup(t)?;
    let mut once = timed_inference(&model, &mut ws, &input);
    once();
    once();
    let mut out = std::io::stdout().lock();
    let write_err = |e: std::io::Error| format!("stdout: {e}");
    writeln!(out, "ready").and_then(|()| out.flush()).map_err(write_err)?;
    for (n, line) in std::io::stdin().lock().lines().enumerate() {
        let line = line.map_err(|e| format!("stdin: {e}"))?;
        let count = match line.trim() {
            "" => 1,
            s => match s.parse::<usize>() {
                Ok(c) if c >= 1 => c,
                _ => return Err(format!("stdin line {}: {s:?} is not a number of inferences (1 or more)", n + 1)),
            },
        };
        let times: Vec<String> = (0..count).map(|_| format!("{:.4}", once())).collect();
        writeln!(out, "{}", times.join(" ")).and_then(|()| out.flush()).map_err(write_err)?;
    }
    Ok(())
}

fn profile(iters: usize, t: Option<usize>, top: usize, svg: Option<&Path>, stat: &str) -> Result<(), String> {
    let input = timing_input(iters)?;
    let (model, mut ws) = setup(t)?;
    let input: &[f32; m::INPUT_LEN] = input.as_slice().try_into().expect("sized");
    let mut logits = vec![0.0f32; m::LOGITS_LEN];
    let mut run = |times: &mut [u64; m::KERNELS]| {
        let l: &mut [f32; m::LOGITS_LEN] = logits.as_mut_slice().try_into().expect("sized");
        let out = m::Outputs { logits: l, pre_logits: None, forward_features: None, features: None };
        model.infer_profiled(&mut ws, input, out, times);
    };
    run(&mut [0u64; m::KERNELS]);
    // Per kernel the median (or minimum) over the iterations: robust to the bursts of a
    // shared machine.
    // The peak is sampled between the iterations too, under the same conditions as the
    // kernels: its best round is the yardstick for the kernels' times.
    let isa = model.isa();
    let mut peak_core = nfnet_runtime::peak::fma_peak_gflops(isa, 5);
    let mut samples = vec![[0u64; m::KERNELS]; iters];
    for s in samples.iter_mut() {
        run(s);
        let p = nfnet_runtime::peak::fma_peak_gflops(isa, 1);
        peak_core = match (peak_core, p) {
            (Some(a), Some(b)) => Some(a.max(b)),
            (a, b) => a.or(b),
        };
    }
    let times: Vec<u64> = (0..m::KERNELS)
        .map(|k| {
            let mut v: Vec<u64> = samples.iter().map(|s| s[k]).collect();
            v.sort_unstable();
            if stat == "min" { v[0] } else { v[v.len() / 2] }
        })
        .collect();
    let threads = ws.threads();
    let peak = peak_core.map(|p| p * threads as f64);
    let total: u64 = times.iter().sum();
    let mut order: Vec<usize> = (0..m::KERNELS).collect();
    order.sort_by_key(|&i| std::cmp::Reverse(times[i]));
    let ms_of = |ns: u64| ns as f64 / 1e6;
    let total_ms = ms_of(total);
    let all_flops = (m::KERNEL_FLOPS.iter().sum::<u64>() * m::BATCH as u64) as f64;
    println!(
        "{}: {:.1} ms per inference in kernels (sum of {}s), {:.1} GFLOP/s",
        run_header(&model, threads, iters),
        total_ms,
        stat,
        all_flops / (total_ms * 1e6).max(1.0)
    );
    match peak {
        Some(p) => println!(
            "peak: {p:.1} GFLOP/s ({} threads x {:.1}, best round of {}); whole model at {:.1}% of it",
            threads,
            p / threads as f64,
            match model.isa() {
                nfnet_runtime::Isa::Amx => "a loop of AMX bf16 tile products",
                nfnet_runtime::Isa::Avx512Bf16 => "a loop of vdpbf16ps",
                _ => "an FMA loop",
            },
            100.0 * all_flops / (total_ms * 1e6).max(1.0) / p
        ),
        None => println!("peak: not measured for {}", model.isa()),
    }
    println!("{:>8} {:>6} {:>8} {:>6}  kernel", "ms", "share", "GFLOP/s", "%peak");
    let rows = if top == 0 { m::KERNELS } else { top.min(m::KERNELS) };
    for &i in &order[..rows] {
        let ms = ms_of(times[i]);
        let gflops = (m::KERNEL_FLOPS[i] * m::BATCH as u64) as f64 / (ms * 1e6).max(1.0);
        let of_peak = peak.map_or("-".to_string(), |p| format!("{:.1}", 100.0 * gflops / p));
        println!(
            "{ms:>8.2} {:>5.1}% {gflops:>8.1} {of_peak:>6}  {}",
            100.0 * times[i] as f64 / total.max(1) as f64,
            m::KERNEL_NAMES[i]
        );
    }
    if let Some(path) = svg {
        let bars: Vec<(String, f64)> =
            order[..rows].iter().map(|&i| (m::KERNEL_NAMES[i].to_string(), ms_of(times[i]))).collect();
        let title = format!(
            "{} {}x{}, {} threads, {}: ms per kernel",
            m::ARCHITECTURE,
            m::INPUT_H,
            m::INPUT_W,
            threads,
            model.isa()
        );
        npy::write_atomic(path, app::svg_bars(&title, &bars).as_bytes())
            .map_err(|e| format!("{}: cannot write: {e}", path.display()))?;
    }
    Ok(())
}

fn info() -> Result<(), String> {
    let isa = m::Model::new().map(|m| m.isa().name().to_string()).unwrap_or_else(|e| format!("unavailable ({e})"));
    println!("model          {}", m::MODEL_CONFIG);
    println!("architecture   {}", m::ARCHITECTURE);
    println!("input          {} x 3 x {} x {} (batch x channels x height x width)", m::BATCH, m::INPUT_H, m::INPUT_W);
    println!("classes        {}", m::NUM_CLASSES);
    println!("features       {}", m::NUM_FEATURES);
    println!("isa            {isa} (compiled: {})", m::ISAS.iter().map(|i| i.name()).collect::<Vec<_>>().join(", "));
    println!(
        "precision      {}{}",
        m::PRECISION,
        if m::PRECISION == "bf16" {
            " (convs on 64 or more input channels: inputs and weights rounded to bf16, f32 accumulation; NFNET_PRECISION)"
        } else {
            " (NFNET_PRECISION)"
        }
    );
    let arena = (m::ARENA_LEN * 4) as f64 / (1 << 20) as f64;
    if m::BATCH > 1 {
        println!(
            "arena          {arena:.1} MiB per image run at once (a workspace of T threads: min(T, {}))",
            m::BATCH
        );
    } else {
        println!("arena          {arena:.1} MiB per workspace");
    }
    println!("weights        {:.1} MiB, sha256 {}", m::WEIGHTS_BYTES as f64 / (1 << 20) as f64, m::WEIGHTS_SHA256);
    match m::SYNTHETIC {
        Some(tag) => println!("weights origin synthetic ({tag}): not the pretrained model"),
        None => println!("weights origin a real checkpoint"),
    }
    let v: serde_json::Value = serde_json::from_str(m::SCHEDULE_JSON).map_err(|e| e.to_string())?;
    let algorithms: Vec<&str> =
        v["kernels"].as_array().into_iter().flatten().filter_map(|k| k["algorithm"].as_str()).collect();
    let count = |a: &str| algorithms.iter().filter(|&&x| x == a).count();
    let plans: Vec<&serde_json::Value> =
        v["kernels"].as_array().into_iter().flatten().filter_map(|k| k.get("plan").filter(|p| !p.is_null())).collect();
    let in_bf16 = plans.iter().filter(|p| p["precision"] == "bf16").count();
    if in_bf16 > 0 {
        // bf16 precision: NFNET_WINOGRAD and NFNET_WEIGHT_DTYPE do not apply; its f32 convs
        // take Winograd where it pays and keep f32 weights.
        println!(
            "convs          {} ({} in bf16 with bf16 weights; {} in f32 with f32 weights, {} of them as Winograd)",
            algorithms.len(),
            in_bf16,
            algorithms.len() - in_bf16,
            count("winograd_f4x4_3x3") + count("winograd_f2x2_3x3"),
        );
    } else {
        println!(
            "convs          {} ({} as Winograd F(4x4, 3x3), {} as F(2x2, 3x3); NFNET_WINOGRAD={}), {} weights",
            algorithms.len(),
            count("winograd_f4x4_3x3"),
            count("winograd_f2x2_3x3"),
            v["winograd"].as_str().unwrap_or("auto"),
            m::WEIGHT_DTYPE
        );
    }
    Ok(())
}

fn schedule(json: bool) -> Result<(), String> {
    print!("{}", if json { m::SCHEDULE_JSON } else { m::SCHEDULE_TEXT });
    Ok(())
}
