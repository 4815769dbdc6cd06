//! Class names for classifiers' outputs.

const IMAGENET: &str = include_str!("../imagenet_classes.txt");

/// The description of ImageNet-1k class `i` (timm's ImageNetInfo, in index order), or `None`
/// beyond the 1000 classes.
pub fn imagenet(i: usize) -> Option<&'static str> {
    IMAGENET.lines().nth(i)
}

/// The label of class `i` of a classifier with `classes` outputs: the ImageNet-1k description
/// for 1000 classes, else `class i`.
pub fn label(i: usize, classes: usize) -> String {
    match (classes, imagenet(i)) {
        (1000, Some(s)) => s.to_string(),
        _ => format!("class {i}"),
    }
}

/// The `k` most probable classes of one image's logits with their probability in percent
/// (softmax x 100, computed in f64), most probable first, ties by lower index.
pub fn top_k(logits: &[f32], k: usize) -> Vec<(usize, f64)> {
    let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max) as f64;
    let exps: Vec<f64> = logits.iter().map(|&v| (v as f64 - max).exp()).collect();
    let sum: f64 = exps.iter().sum();
    let mut idx: Vec<usize> = (0..logits.len()).collect();
    idx.sort_by(|&a, &b| exps[b].total_cmp(&exps[a]).then(a.cmp(&b)));
    idx.into_iter().take(k).map(|i| (i, 100.0 * exps[i] / sum)).collect()
}

/// One image's result as `nfnet classify` prints it: its name, then a line per class.
pub fn format_top(name: &str, top: &[(usize, f64)], classes: usize) -> String {
    let mut s = format!("{name}\n");
    for &(i, p) in top {
        s += &format!("  {p:7.3}%  {} ({i})\n", label(i, classes));
    }
    s
}
