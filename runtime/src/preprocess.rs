//! timm's eval preprocessing, reproduced exactly: decode, convert to RGB as PIL does, resize
//! with PIL's antialiased filters (its fixed-point arithmetic included), center crop as
//! torchvision does, scale to [0, 1] and normalize in f32.
//!
//! `resolve_model_data_config` + `create_transform(is_training=False)` for crop_mode
//! `center` (the default) is: Resize(shorter side -> floor(size / crop_pct)) for a square
//! size, else ResizeKeepRatio; CenterCrop(size); ToTensor; Normalize(mean, std).

use image::{DynamicImage, ImageDecoder, ImageReader, Limits};
use std::path::Path;

/// An 8-bit RGB image, row-major, 3 bytes per pixel.
#[derive(Clone, Debug, PartialEq)]
pub struct Rgb {
    pub width: usize,
    pub height: usize,
    pub data: Vec<u8>,
}

/// PIL's `Image.MAX_IMAGE_PIXELS` times two: above it PIL refuses an image as a
/// decompression bomb, and so do we.
pub const MAX_PIXELS: u64 = 2 * 89_478_485;

/// The eval transform's parameters (the model's `pretrained_cfg`).
#[derive(Clone, Debug, PartialEq)]
pub struct EvalConfig {
    /// (height, width) of the model input.
    pub size: (usize, usize),
    pub crop_pct: f64,
    pub crop_mode: String,
    pub interpolation: String,
    pub mean: [f32; 3],
    pub std: [f32; 3],
}

/// Decodes an image file into RGB as `PIL.Image.open(path).convert("RGB")` does: the first
/// frame of an animation, alpha dropped (not composited), grayscale replicated, 16-bit gray
/// clipped to 255 and 16-bit color reduced to its high byte. EXIF orientation is not applied
/// (PIL does not either).
pub fn load_rgb(path: &Path) -> Result<Rgb, String> {
    let bytes = std::fs::read(path).map_err(|e| format!("cannot open: {e}"))?;
    decode_rgb(&bytes)
}

/// As [`load_rgb`], from an encoded image in memory. The format is told by the content, as PIL
/// tells it; JPEG goes through libjpeg-turbo's decoder as in Pillow (see [`crate::jpeg`]).
pub fn decode_rgb(bytes: &[u8]) -> Result<Rgb, String> {
    if image::guess_format(bytes).ok() == Some(image::ImageFormat::Jpeg) {
        return crate::jpeg::decode(bytes);
    }
    decode(ImageReader::new(std::io::Cursor::new(bytes)))
}

fn decode<R: std::io::BufRead + std::io::Seek>(mut reader: ImageReader<R>) -> Result<Rgb, String> {
    let mut limits = Limits::default();
    limits.max_alloc = Some(4 * MAX_PIXELS * 8);
    reader.limits(limits);
    let reader = reader.with_guessed_format().map_err(|e| format!("cannot read: {e}"))?;
    if reader.format().is_none() {
        return Err("not an image in a supported format (PNG, JPEG, GIF, BMP, TIFF, WebP)".into());
    }
    let mut decoder = reader.into_decoder().map_err(|e| format!("cannot decode: {e}"))?;
    let (w, h) = decoder.dimensions();
    if w == 0 || h == 0 {
        return Err(format!("image is empty ({w}x{h})"));
    }
    if u64::from(w) * u64::from(h) > MAX_PIXELS {
        return Err(format!("image is {w}x{h}, above the {MAX_PIXELS}-pixel limit (a decompression bomb?)"));
    }
    let _ = decoder.set_limits(Limits::default());
    let img = DynamicImage::from_decoder(decoder).map_err(|e| format!("cannot decode: {e}"))?;
    Ok(to_rgb(img))
}

/// PIL's conversion of the decoded modes to RGB.
pub fn to_rgb(img: DynamicImage) -> Rgb {
    let (width, height) = (img.width() as usize, img.height() as usize);
    let data: Vec<u8> = match img {
        DynamicImage::ImageLuma8(b) => b.into_raw().into_iter().flat_map(|v| [v, v, v]).collect(),
        DynamicImage::ImageLumaA8(b) => b.into_raw().chunks_exact(2).flat_map(|p| [p[0], p[0], p[0]]).collect(),
        DynamicImage::ImageRgb8(b) => b.into_raw(),
        DynamicImage::ImageRgba8(b) => b.into_raw().chunks_exact(4).flat_map(|p| [p[0], p[1], p[2]]).collect(),
        // PIL opens 16-bit gray as "I;16" and clips it to 255 when converting to RGB.
        DynamicImage::ImageLuma16(b) => {
            b.into_raw().into_iter().map(|v| v.min(255) as u8).flat_map(|v| [v, v, v]).collect()
        }
        // 16-bit gray + alpha and 16-bit color are read as 8-bit by their high byte.
        DynamicImage::ImageLumaA16(b) => {
            b.into_raw().chunks_exact(2).map(|p| (p[0] >> 8) as u8).flat_map(|v| [v, v, v]).collect()
        }
        DynamicImage::ImageRgb16(b) => b.into_raw().into_iter().map(|v| (v >> 8) as u8).collect(),
        DynamicImage::ImageRgba16(b) => {
            b.into_raw().chunks_exact(4).flat_map(|p| [p[0], p[1], p[2]]).map(|v| (v >> 8) as u8).collect()
        }
        other => other.to_rgb8().into_raw(),
    };
    Rgb { width, height, data }
}

/// PIL's resampling filters (support, kernel).
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Filter {
    Bilinear,
    Bicubic,
}

impl Filter {
    pub fn parse(name: &str) -> Option<Filter> {
        match name {
            "bilinear" => Some(Filter::Bilinear),
            "bicubic" => Some(Filter::Bicubic),
            _ => None,
        }
    }

    fn support(self) -> f64 {
        match self {
            Filter::Bilinear => 1.0,
            Filter::Bicubic => 2.0,
        }
    }

    fn weight(self, x: f64) -> f64 {
        let x = x.abs();
        match self {
            Filter::Bilinear => {
                if x < 1.0 {
                    1.0 - x
                } else {
                    0.0
                }
            }
            Filter::Bicubic => {
                const A: f64 = -0.5;
                if x < 1.0 {
                    ((A + 2.0) * x - (A + 3.0)) * x * x + 1.0
                } else if x < 2.0 {
                    (((x - 5.0) * x + 8.0) * x - 4.0) * A
                } else {
                    0.0
                }
            }
        }
    }
}

/// Fixed-point precision of PIL's 8-bit resampling.
const PRECISION_BITS: u32 = 32 - 8 - 2;

/// PIL's `precompute_coeffs` + `normalize_coeffs_8bpc`: per output pixel, the first input
/// pixel, the count, and the integer weights.
fn coeffs(in_size: usize, out_size: usize, filter: Filter) -> (Vec<(usize, usize)>, Vec<i32>, usize) {
    let scale = in_size as f64 / out_size as f64;
    let filterscale = scale.max(1.0);
    let support = filter.support() * filterscale;
    let ksize = support.ceil() as usize * 2 + 1;
    let mut bounds = Vec::with_capacity(out_size);
    let mut kk = vec![0i32; out_size * ksize];
    let mut k = vec![0.0f64; ksize];
    for xx in 0..out_size {
        let center = (xx as f64 + 0.5) * scale;
        let ss = 1.0 / filterscale;
        // C's (int) truncation toward zero, then clamping, as PIL does.
        let xmin = ((center - support + 0.5) as i64).max(0) as usize;
        let xmax = ((center + support + 0.5) as i64).min(in_size as i64) as usize - xmin;
        let mut ww = 0.0;
        for x in 0..xmax {
            let w = filter.weight((x as f64 + xmin as f64 - center + 0.5) * ss);
            k[x] = w;
            ww += w;
        }
        for x in 0..xmax {
            let w = if ww != 0.0 { k[x] / ww } else { k[x] };
            let scaled = w * (1u32 << PRECISION_BITS) as f64;
            kk[xx * ksize + x] = if w < 0.0 { (-0.5 + scaled) as i32 } else { (0.5 + scaled) as i32 };
        }
        bounds.push((xmin, xmax));
    }
    (bounds, kk, ksize)
}

fn clip8(v: i32) -> u8 {
    if v >= (1 << PRECISION_BITS << 8) {
        255
    } else if v <= 0 {
        0
    } else {
        (v >> PRECISION_BITS) as u8
    }
}

/// `Image.resize((w, h), filter)` of PIL for an RGB image: two passes, each rounded to 8 bits
/// as PIL does. Pillow (13 and later) runs the vertical pass first when the height shrinks, by
/// more than twice as many pixels as the width does, else the horizontal pass first.
pub fn resize(img: &Rgb, w: usize, h: usize, filter: Filter) -> Rgb {
    let (dh, dw) = (img.height as i64 - h as i64, img.width as i64 - w as i64);
    let vertical_first = dh > 0 && dh > 2 * dw;
    if vertical_first {
        resize_horizontal(&resize_vertical(img, h, filter), w, filter)
    } else {
        resize_vertical(&resize_horizontal(img, w, filter), h, filter)
    }
}

/// PIL's horizontal pass (`ImagingResampleHorizontal_8bpc`) to width `w`.
fn resize_horizontal(img: &Rgb, w: usize, filter: Filter) -> Rgb {
    if w == img.width {
        return img.clone();
    }
    let (hb, hk, hks) = coeffs(img.width, w, filter);
    let mut out = vec![0u8; img.height * w * 3];
    for y in 0..img.height {
        let src = &img.data[y * img.width * 3..][..img.width * 3];
        for (xx, &(xmin, n)) in hb.iter().enumerate() {
            let k = &hk[xx * hks..][..n];
            let mut ss = [1i32 << (PRECISION_BITS - 1); 3];
            for (x, &kv) in k.iter().enumerate() {
                let p = &src[(x + xmin) * 3..][..3];
                for c in 0..3 {
                    ss[c] += p[c] as i32 * kv;
                }
            }
            for c in 0..3 {
                out[(y * w + xx) * 3 + c] = clip8(ss[c]);
            }
        }
    }
    Rgb { width: w, height: img.height, data: out }
}

/// PIL's vertical pass (`ImagingResampleVertical_8bpc`) to height `h`.
fn resize_vertical(img: &Rgb, h: usize, filter: Filter) -> Rgb {
    if h == img.height {
        return img.clone();
    }
    let w = img.width;
    let (vb, vk, vks) = coeffs(img.height, h, filter);
    let mut out = vec![0u8; h * w * 3];
    for (yy, &(ymin, n)) in vb.iter().enumerate() {
        let k = &vk[yy * vks..][..n];
        for x in 0..w {
            let mut ss = [1i32 << (PRECISION_BITS - 1); 3];
            for (y, &kv) in k.iter().enumerate() {
                let p = &img.data[((y + ymin) * w + x) * 3..][..3];
                for c in 0..3 {
                    ss[c] += p[c] as i32 * kv;
                }
            }
            for c in 0..3 {
                out[(yy * w + x) * 3 + c] = clip8(ss[c]);
            }
        }
    }
    Rgb { width: w, height: h, data: out }
}

/// Python's `round` (half to even).
fn py_round(x: f64) -> i64 {
    let r = x.round();
    if (x - x.trunc()).abs() == 0.5 { 2 * (x / 2.0).round() as i64 } else { r as i64 }
}

/// torchvision's CenterCrop on a PIL image: zero padding when the crop is larger, then a crop
/// at `round((size - crop) / 2)`.
fn center_crop(img: &Rgb, ch: usize, cw: usize) -> Rgb {
    let mut img = img.clone();
    if cw > img.width || ch > img.height {
        let (pl, pt) = (cw.saturating_sub(img.width) / 2, ch.saturating_sub(img.height) / 2);
        let (nw, nh) = (img.width.max(cw), img.height.max(ch));
        let mut data = vec![0u8; nw * nh * 3];
        for y in 0..img.height {
            data[((y + pt) * nw + pl) * 3..][..img.width * 3]
                .copy_from_slice(&img.data[y * img.width * 3..][..img.width * 3]);
        }
        img = Rgb { width: nw, height: nh, data };
    }
    let top = py_round((img.height - ch) as f64 / 2.0) as usize;
    let left = py_round((img.width - cw) as f64 / 2.0) as usize;
    let mut data = Vec::with_capacity(ch * cw * 3);
    for y in top..top + ch {
        data.extend_from_slice(&img.data[(y * img.width + left) * 3..][..cw * 3]);
    }
    Rgb { width: cw, height: ch, data }
}

impl EvalConfig {
    /// The resized size before the crop, as timm computes it for crop_mode `center`.
    fn scale_size(&self, img: &Rgb) -> (usize, usize) {
        let (th, tw) = self.size;
        let sh = (th as f64 / self.crop_pct).floor() as usize;
        let sw = (tw as f64 / self.crop_pct).floor() as usize;
        let (ih, iw) = (img.height, img.width);
        if sh == sw {
            // torchvision Resize(int): the shorter side to `sh`, the longer scaled, truncated.
            if iw <= ih {
                (((sh as f64) * ih as f64 / iw as f64) as usize, sh)
            } else {
                (sh, ((sh as f64) * iw as f64 / ih as f64) as usize)
            }
        } else {
            // timm ResizeKeepRatio(longest=0): the ratio of the side closer to its target.
            let ratio = (ih as f64 / sh as f64).min(iw as f64 / sw as f64);
            (py_round(ih as f64 / ratio).max(1) as usize, py_round(iw as f64 / ratio).max(1) as usize)
        }
    }

    /// Checks that this crate reproduces the configured transform.
    pub fn check(&self) -> Result<Filter, String> {
        if self.crop_mode != "center" {
            return Err(format!("crop_mode '{}' is not supported (only 'center')", self.crop_mode));
        }
        Filter::parse(&self.interpolation)
            .ok_or_else(|| format!("interpolation '{}' is not supported (bicubic, bilinear)", self.interpolation))
    }

    /// The 8-bit image the model sees, before scaling and normalization.
    pub fn resize_and_crop(&self, img: &Rgb) -> Result<Rgb, String> {
        let filter = self.check()?;
        let (rh, rw) = self.scale_size(img);
        let resized = if (rh, rw) == (img.height, img.width) { img.clone() } else { resize(img, rw, rh, filter) };
        Ok(center_crop(&resized, self.size.0, self.size.1))
    }

    /// The model input: CHW f32, `(v / 255 - mean) / std` per channel.
    pub fn tensor(&self, img: &Rgb) -> Result<Vec<f32>, String> {
        let c = self.resize_and_crop(img)?;
        let plane = c.width * c.height;
        let mut out = vec![0.0f32; 3 * plane];
        for (i, p) in c.data.chunks_exact(3).enumerate() {
            for ch in 0..3 {
                out[ch * plane + i] = (p[ch] as f32 / 255.0 - self.mean[ch]) / self.std[ch];
            }
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn python_rounding_is_half_to_even() {
        assert_eq!([0.5, 1.5, 2.5, -0.5, 2.4, 2.6].map(py_round), [0, 2, 2, 0, 2, 3]);
    }

    #[test]
    fn resize_to_the_same_size_on_one_axis_keeps_it() {
        let img = Rgb { width: 3, height: 2, data: (0..18).map(|v| v as u8 * 10).collect() };
        let r = resize(&img, 3, 4, Filter::Bicubic);
        assert_eq!((r.width, r.height), (3, 4));
        // a constant image stays constant under any resize
        let flat = Rgb { width: 7, height: 5, data: vec![77; 105] };
        let r = resize(&flat, 3, 11, Filter::Bicubic);
        assert!(r.data.iter().all(|&v| v == 77));
    }
}
