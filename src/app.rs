//! The model card's three uses on images: classify, features, embed; and preprocess.

use crate::setup;
use nfnet_model as m;
use nfnet_runtime::npy;
use nfnet_runtime::preprocess::{EvalConfig, load_rgb};
use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};

fn eval_config() -> EvalConfig {
    EvalConfig {
        size: (m::INPUT_H, m::INPUT_W),
        crop_pct: m::CROP_PCT as f64,
        crop_mode: m::CROP_MODE.to_string(),
        interpolation: m::INTERPOLATION.to_string(),
        mean: m::MEAN,
        std: m::STD,
    }
}

fn label(i: usize) -> String {
    nfnet_runtime::labels::label(i, m::NUM_CLASSES)
}

/// Extensions of the image files taken from a directory (compared case-insensitively): timm's
/// (`.png`, `.jpg`, `.jpeg`) and the other formats preprocessing reads.
const IMAGE_EXTENSIONS: [&str; 8] = ["png", "jpg", "jpeg", "gif", "bmp", "tif", "tiff", "webp"];

/// timm's `natural_key`: lower-cased, runs of digits compared as numbers (`img2` before `img10`).
fn natural_key(p: &Path) -> Vec<(u8, u128, String)> {
    let s = p.to_string_lossy().to_lowercase();
    let mut key = Vec::new();
    let mut rest = s.as_str();
    while !rest.is_empty() {
        let digits = rest.find(|c: char| !c.is_ascii_digit()).unwrap_or(rest.len());
        if digits > 0 {
            key.push((0, rest[..digits].parse().unwrap_or(u128::MAX), String::new()));
            rest = &rest[digits..];
        } else {
            let text = rest.find(|c: char| c.is_ascii_digit()).unwrap_or(rest.len());
            key.push((1, 0, rest[..text].to_string()));
            rest = &rest[text..];
        }
    }
    key
}

/// The image files under `dir`, as timm's folder dataset finds them: every subdirectory walked,
/// files taken by extension, sorted by `natural_key`.
fn images_in(dir: &Path, out: &mut Vec<PathBuf>) {
    let Ok(rd) = std::fs::read_dir(dir) else { return };
    for e in rd.flatten() {
        let p = e.path();
        if p.is_dir() {
            images_in(&p, out);
        } else if p
            .extension()
            .and_then(|x| x.to_str())
            .is_some_and(|x| IMAGE_EXTENSIONS.contains(&x.to_ascii_lowercase().as_str()))
        {
            out.push(p);
        }
    }
}

/// Image files named on the command line: files as given (each is tried), directories' image
/// files as timm's dataset takes them.
fn expand(paths: &[PathBuf]) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for p in paths {
        if p.is_dir() {
            let mut files = Vec::new();
            images_in(p, &mut files);
            files.sort_by_cached_key(|f| natural_key(f));
            out.extend(files);
        } else {
            out.push(p.clone());
        }
    }
    out
}

/// Everything one inference of a batch can return, per image.
#[derive(Default, Clone)]
struct ImageOut {
    logits: Vec<f32>,
    pre_logits: Vec<f32>,
    forward_features: Vec<f32>,
    features: [Vec<f32>; 5],
}

/// Runs images (CHW f32 each) in batches of the compiled batch, padding the last batch with
/// zero images whose outputs are dropped.
struct Runner {
    model: m::Model,
    ws: m::Workspace,
    batch: Vec<f32>,
    logits: Vec<f32>,
    pre: Vec<f32>,
    ff: Vec<f32>,
    f: [Vec<f32>; 5],
}

impl Runner {
    fn new(threads: Option<usize>) -> Result<Runner, String> {
        let (model, ws) = setup(threads)?;
        Ok(Runner {
            model,
            ws,
            batch: vec![0.0; m::INPUT_LEN],
            logits: vec![0.0; m::LOGITS_LEN],
            pre: vec![0.0; m::PRE_LOGITS_LEN],
            ff: vec![0.0; m::FORWARD_FEATURES_LEN],
            f: [m::FEATURE0_LEN, m::FEATURE1_LEN, m::FEATURE2_LEN, m::FEATURE3_LEN, m::FEATURE4_LEN]
                .map(|n| vec![0.0; n]),
        })
    }

    /// One batch of up to BATCH images; `maps` asks for forward_features and the feature maps.
    fn run(&mut self, images: &[&[f32]], maps: bool) -> Vec<ImageOut> {
        for (b, img) in images.iter().enumerate() {
            self.batch[b * m::IMAGE_LEN..(b + 1) * m::IMAGE_LEN].copy_from_slice(img);
        }
        self.batch[images.len() * m::IMAGE_LEN..].fill(0.0);
        let [f0, f1, f2, f3, f4] = &mut self.f;
        let out = m::Outputs {
            logits: self.logits.as_mut_slice().try_into().expect("sized"),
            pre_logits: Some(self.pre.as_mut_slice().try_into().expect("sized")),
            forward_features: maps.then(|| self.ff.as_mut_slice().try_into().expect("sized")),
            features: maps.then(|| m::Features {
                f0: f0.as_mut_slice().try_into().expect("sized"),
                f1: f1.as_mut_slice().try_into().expect("sized"),
                f2: f2.as_mut_slice().try_into().expect("sized"),
                f3: f3.as_mut_slice().try_into().expect("sized"),
                f4: f4.as_mut_slice().try_into().expect("sized"),
            }),
        };
        let input: &[f32; m::INPUT_LEN] = self.batch.as_slice().try_into().expect("sized");
        self.model.infer(&mut self.ws, input, out);
        let per = |v: &Vec<f32>, b: usize| {
            let n = v.len() / m::BATCH;
            v[b * n..(b + 1) * n].to_vec()
        };
        (0..images.len())
            .map(|b| ImageOut {
                logits: per(&self.logits, b),
                pre_logits: per(&self.pre, b),
                forward_features: if maps { per(&self.ff, b) } else { Vec::new() },
                features: if maps { std::array::from_fn(|i| per(&self.f[i], b)) } else { Default::default() },
            })
            .collect()
    }
}

/// A progress line on stderr for long runs on a terminal.
struct Progress {
    total: usize,
    shown: bool,
}

impl Progress {
    fn new(total: usize) -> Progress {
        Progress { total, shown: total > 8 && std::io::stderr().is_terminal() }
    }

    fn tick(&self, done: usize) {
        if self.shown {
            let width = 30;
            let fill = width * done / self.total.max(1);
            eprint!("\r[{}{}] {done}/{}", "#".repeat(fill), " ".repeat(width - fill), self.total);
            let _ = std::io::stderr().flush();
        }
    }

    fn finish(&self) {
        if self.shown {
            eprintln!();
        }
    }
}

pub fn classify(paths: &[PathBuf], top: usize, json: bool, threads: Option<usize>) -> Result<(), String> {
    if top == 0 {
        return Err("--top must be at least 1".into());
    }
    if m::NUM_CLASSES == 0 {
        return Err("this model has no classifier (num_classes 0); use `nfnet embed`".into());
    }
    let files = expand(paths);
    if files.is_empty() {
        return Err(format!("no image files found (a directory gives its {} files)", IMAGE_EXTENSIONS.join(", ")));
    }
    let cfg = eval_config();
    cfg.check()?;
    let mut runner = Runner::new(threads)?;
    let mut failures: Vec<(PathBuf, String)> = Vec::new();
    let mut results = Vec::new();
    let progress = Progress::new(files.len());
    let mut pending: Vec<(PathBuf, Vec<f32>)> = Vec::new();
    let mut flush = |pending: &mut Vec<(PathBuf, Vec<f32>)>, results: &mut Vec<(PathBuf, Vec<(usize, f64)>)>| {
        let imgs: Vec<&[f32]> = pending.iter().map(|(_, t)| t.as_slice()).collect();
        let outs = runner.run(&imgs, false);
        for ((path, _), o) in pending.drain(..).zip(outs) {
            results.push((path, nfnet_runtime::labels::top_k(&o.logits, top.min(m::CLASSES))));
        }
    };
    for (i, f) in files.iter().enumerate() {
        match load_rgb(f).and_then(|img| cfg.tensor(&img)) {
            Ok(t) => pending.push((f.clone(), t)),
            Err(e) => {
                eprintln!("\rerror: {}: {e}", f.display());
                failures.push((f.clone(), e));
            }
        }
        if pending.len() == m::BATCH {
            flush(&mut pending, &mut results);
        }
        progress.tick(i + 1);
    }
    if !pending.is_empty() {
        flush(&mut pending, &mut results);
    }
    progress.finish();
    if json {
        let items: Vec<serde_json::Value> = results
            .iter()
            .map(|(p, t)| {
                serde_json::json!({
                    "file": p.display().to_string(),
                    "top": t.iter().map(|&(i, pr)| serde_json::json!({"index": i, "label": label(i), "probability": pr})).collect::<Vec<_>>(),
                })
            })
            .collect();
        let failed: Vec<serde_json::Value> =
            failures.iter().map(|(p, e)| serde_json::json!({"file": p.display().to_string(), "error": e})).collect();
        println!("{}", serde_json::json!({"results": items, "failures": failed}));
    } else {
        for (p, t) in &results {
            print!("{}", nfnet_runtime::labels::format_top(&p.display().to_string(), t, m::NUM_CLASSES));
        }
    }
    if failures.is_empty() {
        Ok(())
    } else {
        let list: Vec<String> = failures.iter().map(|(p, _)| p.display().to_string()).collect();
        Err(format!("{} of {} images failed: {}", failures.len(), files.len(), list.join(", ")))
    }
}

/// The model inputs of a command: one image, or every image of a float32 (N, 3, H, W) .npy.
fn inputs(image: Option<&Path>, input: Option<&Path>) -> Result<Vec<Vec<f32>>, String> {
    match (image, input) {
        (Some(img), None) => {
            let cfg = eval_config();
            let t = load_rgb(img).and_then(|i| cfg.tensor(&i)).map_err(|e| format!("{}: {e}", img.display()))?;
            Ok(vec![t])
        }
        (None, Some(x)) => {
            let a = npy::read(x).map_err(|e| e.to_string())?;
            let want = [3, m::INPUT_H, m::INPUT_W];
            if a.shape.len() != 4 || a.shape[1..] != want || a.shape[0] == 0 {
                return Err(format!(
                    "{}: shape {:?} is not (N, 3, {}, {}), the compiled input size",
                    x.display(),
                    a.shape,
                    m::INPUT_H,
                    m::INPUT_W
                ));
            }
            if let Some(i) = a.data.iter().position(|v| !v.is_finite()) {
                return Err(format!("{}: value {i} is not finite", x.display()));
            }
            Ok(a.data.chunks(m::IMAGE_LEN).map(<[f32]>::to_vec).collect())
        }
        _ => Err("give an IMAGE or --input x.npy".into()),
    }
}

fn run_all(images: &[Vec<f32>], maps: bool, threads: Option<usize>) -> Result<Vec<ImageOut>, String> {
    let mut runner = Runner::new(threads)?;
    let mut outs = Vec::with_capacity(images.len());
    for chunk in images.chunks(m::BATCH) {
        let refs: Vec<&[f32]> = chunk.iter().map(Vec::as_slice).collect();
        outs.extend(runner.run(&refs, maps));
    }
    Ok(outs)
}

fn save(path: &Path, shape: Vec<usize>, data: Vec<f32>) -> Result<(), String> {
    let a = npy::Array::new(shape, data)?;
    npy::write(path, &a).map_err(|e| e.to_string())
}

pub fn features(
    image: Option<&Path>,
    input: Option<&Path>,
    out_dir: &Path,
    threads: Option<usize>,
) -> Result<(), String> {
    let images = inputs(image, input)?;
    let outs = run_all(&images, true, threads)?;
    std::fs::create_dir_all(out_dir).map_err(|e| format!("{}: cannot create: {e}", out_dir.display()))?;
    let taps = ["stem.conv3", "stages.0", "stages.1", "stages.2", "final_conv"];
    let n = images.len();
    for i in 0..5 {
        let [_, c, h, w] = m::FEATURE_SHAPES[i];
        let data: Vec<f32> = outs.iter().flat_map(|o| o.features[i].iter().copied()).collect();
        let shape = vec![n, c, h, w];
        println!("feature{i} ({}): {shape:?}", taps[i]);
        save(&out_dir.join(format!("feature{i}.npy")), shape, data)?;
    }
    Ok(())
}

pub fn embed(
    image: Option<&Path>,
    input: Option<&Path>,
    unpooled: bool,
    output: &Path,
    threads: Option<usize>,
) -> Result<(), String> {
    let images = inputs(image, input)?;
    let outs = run_all(&images, unpooled, threads)?;
    let n = images.len();
    let (shape, data): (Vec<usize>, Vec<f32>) = if unpooled {
        let [c, h, w] = m::FORWARD_FEATURES_SHAPE;
        (vec![n, c, h, w], outs.iter().flat_map(|o| o.forward_features.iter().copied()).collect())
    } else {
        (vec![n, m::NUM_FEATURES], outs.iter().flat_map(|o| o.pre_logits.iter().copied()).collect())
    };
    println!("embedding: {shape:?} -> {}", output.display());
    save(output, shape, data)
}

/// Logits `(N, classes)` of a float32 `(N, 3, H, W)` tensor file.
pub fn run(input: &Path, output: &Path, threads: Option<usize>) -> Result<(), String> {
    let images = inputs(None, Some(input))?;
    let outs = run_all(&images, false, threads)?;
    let logits: Vec<f32> = outs.iter().flat_map(|o| o.logits.iter().copied()).collect();
    save(output, vec![images.len(), m::CLASSES], logits)
}

pub fn preprocess(image: &Path, output: &Path) -> Result<(), String> {
    let t = inputs(Some(image), None)?.remove(0);
    save(output, vec![1, 3, m::INPUT_H, m::INPUT_W], t)
}

/// A horizontal bar chart: one bar per (label, value).
pub fn svg_bars(title: &str, bars: &[(String, f64)]) -> String {
    let esc = |s: &str| s.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;");
    let (row, left, width) = (18.0, 430.0, 420.0);
    let max = bars.iter().map(|b| b.1).fold(0.0f64, f64::max).max(1e-9);
    let height = 40.0 + row * bars.len() as f64;
    let mut s = format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{}\" height=\"{height}\" font-family=\"monospace\" font-size=\"11\">\n<text x=\"8\" y=\"18\" font-size=\"13\">{}</text>\n",
        left + width + 80.0,
        esc(title)
    );
    for (i, (name, v)) in bars.iter().enumerate() {
        let y = 30.0 + row * i as f64;
        let w = width * v / max;
        let name = if name.len() > 60 { format!("{}...", &name[..57]) } else { name.clone() };
        s += &format!(
            "<text x=\"8\" y=\"{}\">{}</text><rect x=\"{left}\" y=\"{y}\" width=\"{w:.1}\" height=\"{}\" fill=\"#4a7ab0\"/><text x=\"{}\" y=\"{}\">{v:.2} ms</text>\n",
            y + 12.0,
            esc(&name),
            row - 4.0,
            left + w + 4.0,
            y + 12.0
        );
    }
    s + "</svg>\n"
}
