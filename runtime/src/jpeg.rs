//! JPEG decoding as Pillow decodes it: libjpeg-turbo's decoder (built from source by
//! `mozjpeg-sys`, whose decoder is libjpeg-turbo's), with Pillow's settings: the accurate
//! integer IDCT (`JDCT_ISLOW`), fancy (triangular) chroma upsampling, libjpeg's YCbCr -> RGB and
//! YCCK -> CMYK conversions, CMYK read with Adobe's inverted polarity (Pillow's `CMYK;I`) and
//! Pillow's CMYK -> RGB conversion.
//!
//! Refusals follow Pillow's: a decoder error (corrupt headers, tables or data libjpeg cannot
//! recover from) refuses the image, and so does a file that ends before the decoder has read
//! everything it needs, the end-of-image marker included (Pillow: `image file is truncated`).
//! Warnings that libjpeg recovers from (corrupt entropy data, extraneous bytes) decode, as
//! Pillow decodes them.

use crate::preprocess::{MAX_PIXELS, Rgb};
use mozjpeg_sys::*;
use std::cell::Cell;
use std::ffi::{c_int, c_void};
use std::panic::{AssertUnwindSafe, catch_unwind, resume_unwind};

/// What the error manager saw; reached through `client_data` while `decode` holds it (hence
/// a `Cell`).
#[derive(Default)]
struct Seen {
    /// libjpeg asked for data past the end (it then inserts an end-of-image marker).
    eof: Cell<bool>,
}

/// A libjpeg error, carried out of the decoder by unwinding.
struct JpegError(String);

fn message(cinfo: &mut jpeg_common_struct) -> String {
    let mut buf = [0u8; 80];
    // SAFETY: `err` is the error manager installed by `decode`, whose format_message writes a
    // NUL-terminated message of at most JMSG_LENGTH_MAX (80) bytes into the buffer.
    unsafe {
        if let Some(format) = (*cinfo.err).format_message {
            format(cinfo, &buf);
        }
    }
    let end = buf.iter().position(|&b| b == 0).unwrap_or(buf.len());
    buf[..end].iter_mut().for_each(|b| *b = if b.is_ascii_graphic() || *b == b' ' { *b } else { b'?' });
    String::from_utf8_lossy(&buf[..end]).into_owned()
}

/// libjpeg's fatal error: leave the decoder by unwinding (the C code is built with
/// `-fexceptions`), without running the panic hook (nothing is printed).
unsafe extern "C-unwind" fn error_exit(cinfo: &mut jpeg_common_struct) {
    let msg = message(cinfo);
    resume_unwind(Box::new(JpegError(msg)));
}

/// libjpeg's warnings and traces: record an end of data, print nothing.
unsafe extern "C-unwind" fn emit_message(cinfo: &mut jpeg_common_struct, level: c_int) {
    // SAFETY: `err` and `client_data` are the manager and `Seen` installed by `decode`.
    unsafe {
        if level < 0 && (*cinfo.err).msg_code == JWRN_JPEG_EOF as c_int {
            (*(cinfo.client_data as *const Seen)).eof.set(true);
        }
    }
}

/// Decodes a JPEG into 8-bit RGB exactly as `PIL.Image.open(f).convert("RGB")` does.
pub fn decode(bytes: &[u8]) -> Result<Rgb, String> {
    let seen = Seen::default();
    // SAFETY: both structs are plain C data for which all-zero is a valid initial state;
    // jpeg_std_error and jpeg_CreateDecompress initialize them.
    let mut err: jpeg_error_mgr = unsafe { std::mem::zeroed() };
    // SAFETY: as above.
    let mut cinfo: jpeg_decompress_struct = unsafe { std::mem::zeroed() };
    // SAFETY: `err` outlives `cinfo`'s use below.
    unsafe { jpeg_std_error(&mut err) };
    err.error_exit = Some(error_exit);
    err.emit_message = Some(emit_message);
    cinfo.common.err = &mut err;
    cinfo.common.client_data = &seen as *const Seen as *mut c_void;
    let created = catch_unwind(AssertUnwindSafe(|| {
        // SAFETY: `cinfo` is zeroed with its error manager set, as jpeg_create_decompress wants.
        unsafe { jpeg_CreateDecompress(&mut cinfo, JPEG_LIB_VERSION, size_of::<jpeg_decompress_struct>()) }
    }));
    if created.is_err() {
        return Err("cannot decode: the JPEG decoder could not start".into());
    }
    let result = catch_unwind(AssertUnwindSafe(|| read(&mut cinfo, bytes, &seen)));
    // SAFETY: created above; destroy frees everything libjpeg allocated, also after an error.
    unsafe { jpeg_destroy_decompress(&mut cinfo) };
    match result {
        Ok(r) => r,
        // Past the end of the data libjpeg reads an inserted end-of-image marker: what fails
        // after that is the truncation (Pillow's decoder would wait for more data instead).
        Err(_) if seen.eof.get() => Err(TRUNCATED.into()),
        Err(p) => match p.downcast::<JpegError>() {
            Ok(e) => Err(format!("cannot decode: {}", e.0)),
            Err(p) => resume_unwind(p),
        },
    }
}

/// Whether libjpeg-turbo's SIMD kernels are built in (see build.rs): then even damaged data
/// decodes to the pixels of Pillow on the same architecture, and decoding is about 1.6x faster.
pub const SIMD: bool = cfg!(nfnet_jpeg_simd);

const TRUNCATED: &str = "image file is truncated";

fn read(cinfo: &mut jpeg_decompress_struct, bytes: &[u8], seen: &Seen) -> Result<Rgb, String> {
    // SAFETY: `bytes` outlives the decoder (destroyed in `decode` before returning); every call
    // follows libjpeg's sequence (header, start, scanlines, finish) on a created decompressor.
    unsafe {
        jpeg_mem_src(cinfo, bytes.as_ptr(), bytes.len() as _);
        jpeg_read_header(cinfo, 1);
        if seen.eof.get() {
            return Err(TRUNCATED.into());
        }
        let (w, h) = (cinfo.image_width as usize, cinfo.image_height as usize);
        if w == 0 || h == 0 {
            return Err(format!("image is empty ({w}x{h})"));
        }
        if (w as u64) * (h as u64) > MAX_PIXELS {
            return Err(format!("image is {w}x{h}, above the {MAX_PIXELS}-pixel limit (a decompression bomb?)"));
        }
        // Pillow's modes by the number of components: L, RGB, CMYK.
        cinfo.out_color_space = match cinfo.num_components {
            1 => J_COLOR_SPACE::JCS_GRAYSCALE,
            3 => J_COLOR_SPACE::JCS_RGB,
            4 => J_COLOR_SPACE::JCS_CMYK,
            n => return Err(format!("cannot handle {n}-layer images")),
        };
        cinfo.dct_method = J_DCT_METHOD::JDCT_ISLOW;
        cinfo.do_fancy_upsampling = 1;
        cinfo.do_block_smoothing = 1;
        jpeg_start_decompress(cinfo);
        let comps = cinfo.output_components as usize;
        let (ow, oh) = (cinfo.output_width as usize, cinfo.output_height as usize);
        let mut raw = vec![0u8; ow * oh * comps];
        // Whole iMCU rows per call (up to 16 image rows): fewer calls, and no copy through
        // the upsampler's spare row.
        let mut rows = [std::ptr::null_mut::<u8>(); 16];
        while (cinfo.output_scanline as usize) < oh {
            let first = cinfo.output_scanline as usize;
            let n = (oh - first).min(rows.len());
            for (i, r) in rows[..n].iter_mut().enumerate() {
                *r = raw.as_mut_ptr().add((first + i) * ow * comps);
            }
            jpeg_read_scanlines(cinfo, rows.as_mut_ptr(), n as JDIMENSION);
        }
        jpeg_finish_decompress(cinfo);
        if seen.eof.get() {
            return Err(TRUNCATED.into());
        }
        let data = match comps {
            1 => raw.iter().flat_map(|&v| [v, v, v]).collect(),
            3 => raw,
            _ => raw.chunks_exact(4).flat_map(|p| cmyk_inverted_to_rgb([p[0], p[1], p[2], p[3]])).collect(),
        };
        Ok(Rgb { width: ow, height: oh, data })
    }
}

/// Pillow's `CMYK;I` read (Adobe polarity: 255 - value) followed by its CMYK -> RGB
/// conversion: `255 - k` scaled down by each ink, `x * y / 255` rounded as Pillow rounds it.
fn cmyk_inverted_to_rgb(p: [u8; 4]) -> [u8; 3] {
    let [c, m, y, k] = p.map(|v| 255 - v as i32);
    let nk = 255 - k;
    let muldiv255 = |a: i32, b: i32| {
        let t = a * b + 128;
        ((t >> 8) + t) >> 8
    };
    [c, m, y].map(|v| (nk - muldiv255(v, nk)).clamp(0, 255) as u8)
}
