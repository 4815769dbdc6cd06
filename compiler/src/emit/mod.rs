//! Emission: the schedule as Rust tokens (`quote!`), parsed into a `syn::File` and formatted
//! with `prettyplease`, plus the packed weight blob the source embeds with `include_bytes!`.
//!
//! The source holds the per-ISA micro-kernels ([`isa`]), one function per unique conv shape
//! (equal blocks share it), the forward pass as a straight list of kernel calls with constant
//! arena and weight offsets, and the typed API (`Model`, `Workspace`, `Outputs`).

pub mod isa;
pub mod pack;

use crate::graph::Op as GOp;
use crate::plan::{Algorithm, ConvPlan};
use crate::schedule::{Buffer, Layout, Op, Schedule, Tap};
use pack::Packed;
use proc_macro2::{Literal, TokenStream};
use quote::{format_ident, quote};
use std::collections::BTreeMap;

/// File name of the weight blob next to the emitted source.
pub const WEIGHTS_FILE: &str = "nfnet_weights.bin";
/// File name of the emitted source.
pub const SOURCE_FILE: &str = "nfnet_model.rs";
/// The schedule files the source includes, next to it.
pub const SCHEDULE_JSON_FILE: &str = "nfnet_schedule.json";
pub const SCHEDULE_TEXT_FILE: &str = "nfnet_schedule.txt";

/// What the header and the constants record about the inputs, and how to store the weights.
pub struct EmitInfo {
    /// How the config was named to the compiler (a path, or "built-in").
    pub config: String,
    pub weights_sha256: String,
    /// The synthesizer's tag when the weights are synthetic.
    pub synthetic: Option<String>,
}

pub struct Emitted {
    pub source: String,
    pub weights: Vec<u8>,
    /// The schedule as `nfc schedule --json` prints it (the source includes it from
    /// [`SCHEDULE_JSON_FILE`]).
    pub schedule_json: String,
    /// The schedule as `nfc schedule` prints it ([`SCHEDULE_TEXT_FILE`]).
    pub schedule_text: String,
}

fn f32_lit(x: f64) -> Literal {
    Literal::f32_suffixed(x as f32)
}

/// An integer literal without a type suffix (`12`, not `12usize`).
fn u(x: usize) -> Literal {
    Literal::usize_unsuffixed(x)
}

fn layout_tokens(l: Layout, offset: usize) -> TokenStream {
    let (o, h, w, c, pad) = (u(offset), u(l.h), u(l.w), u(l.c), u(l.pad));
    quote!(rt::Buf { offset: #o, h: #h, w: #w, c: #c, pad: #pad })
}

fn buf(s: &Schedule, b: Option<usize>) -> TokenStream {
    match b {
        None => quote!(rt::Buf::none()),
        Some(b) => {
            let Buffer { layout, offset, .. } = s.buffers[b];
            layout_tokens(layout, offset)
        }
    }
}

fn offset(s: &Schedule, b: Option<usize>) -> TokenStream {
    match b {
        None => quote!(rt::NONE),
        Some(b) => {
            let o = u(s.buffers[b].offset);
            quote!(#o)
        }
    }
}

/// One unique conv shape: its descriptor constant and the plan its entry points follow.
struct ConvShape {
    /// What it computes (`conv1x1_1536x384_20x20_silu`).
    name: String,
    desc: TokenStream,
    doc: String,
    plan: ConvPlan,
}

/// Unique conv shapes in first-use order, and the shape index of every conv kernel.
struct Convs {
    shapes: Vec<ConvShape>,
    of_kernel: BTreeMap<usize, usize>,
}

fn conv_shape(s: &Schedule, op: &Op) -> (String, ConvShape) {
    let Op::Conv { node, input, out, act, preact, sums } = op else { unreachable!("conv op") };
    let GOp::Conv(c) = &s.graph.nodes[*node].op else { unreachable!("conv node") };
    let sp = &c.spec;
    let li = s.buffers[*input].layout;
    let lo = s.buffers[*out].layout;
    let lp = preact.map(|p| s.buffers[p].layout);
    let plan = s.plan(op).expect("every conv kernel is planned").clone();
    let geom = plan.geom;
    let wp = (li.w + 2 * li.pad) as isize;
    let cin = li.c as isize;
    let taps: Vec<isize> =
        (0..sp.k).flat_map(|ky| (0..sp.k).map(move |kx| (ky as isize * wp + kx as isize) * cin)).collect();
    let (kc, cout_g, panel_outer) = (plan.kc, plan.cout_g, plan.panel_outer);
    let wino_m = plan.algorithm.winograd_m();
    let winograd = wino_m > 0;
    let key = format!(
        "{li:?}|{lo:?}|{lp:?}|{}|{}|{}|{kc}|{}|{cout_g}|{act}|{}|{panel_outer}|{geom:?}|{wino_m}|{:?}",
        sp.k,
        sp.stride,
        sp.pad(),
        sp.groups,
        sums.is_some(),
        plan.bf16
    );
    let b = |l: Layout| layout_tokens(l, 0);
    let (bi, bo) = (b(li), b(lo));
    let bp = lp.map_or(quote!(rt::Buf::none()), b);
    let (stride, cpad, has_sums) = (u(sp.stride), u(sp.pad()), sums.is_some());
    let taps_l: Vec<Literal> = taps.iter().map(|&t| Literal::isize_unsuffixed(t)).collect();
    let (kc_l, groups_l, cout_g_l) = (u(kc), u(sp.groups), u(cout_g));
    let (flat, rows, row_len, last, band) =
        (geom.flat, u(geom.rows), u(geom.row_len), u(geom.last_row_len), u(geom.band));
    let desc = quote! {
        rt::ConvDesc {
            input: #bi, out: #bo, pre: #bp, stride: #stride, conv_pad: #cpad, taps: &[#(#taps_l),*],
            kc: #kc_l, groups: #groups_l, cout_g: #cout_g_l, act: #act, sums: #has_sums, panel_outer: #panel_outer,
            flat: #flat, rows: #rows, row_len: #row_len, last_row_len: #last, band: #band,
        }
    };
    let doc = format!(
        "{}x{} conv{}, {} -> {} channels{}, {}x{} -> {}x{}, stride {}{}{}{}",
        sp.k,
        sp.k,
        if sp.groups > 1 { format!(" in {} groups", sp.groups) } else { String::new() },
        sp.cin,
        sp.cout,
        if *act { " + SiLU" } else { "" },
        li.h,
        li.w,
        lo.h,
        lo.w,
        sp.stride,
        if preact.is_some() { ", also stores the pre-activation" } else { "" },
        if has_sums { ", accumulates channel sums" } else { "" },
        if winograd { format!(", as Winograd F({wino_m}x{wino_m}, 3x3)") } else { String::new() },
    ) + if plan.bf16.is_some() { ", in bf16 (f32 accumulation)" } else { "" };
    // Named for what it computes: `conv3x3_128x128_g2_s2_20x20_silu`.
    let mut name = format!("conv{}x{}_{}x{}", sp.k, sp.k, sp.cin, sp.cout);
    if sp.groups > 1 {
        name += &format!("_g{}", sp.groups);
    }
    if sp.stride > 1 {
        name += &format!("_s{}", sp.stride);
    }
    name += &format!("_{}x{}", lo.h, lo.w);
    if winograd {
        name += &format!("_winograd{wino_m}");
    }
    if plan.bf16.is_some() {
        name += "_bf16";
    }
    for (on, tag) in [(*act, "_silu"), (preact.is_some(), "_pre"), (has_sums, "_sums")] {
        if on {
            name += tag;
        }
    }
    (key, ConvShape { name, desc, doc, plan })
}

fn collect_convs(s: &Schedule) -> Convs {
    let mut convs = Convs { shapes: Vec::new(), of_kernel: BTreeMap::new() };
    let mut index: BTreeMap<String, usize> = BTreeMap::new();
    let mut users: Vec<Vec<String>> = Vec::new();
    for (i, k) in s.kernels.iter().enumerate() {
        if let Op::Conv { .. } = k.op {
            let (key, mut shape) = conv_shape(s, &k.op);
            let at = *index.entry(key).or_insert_with(|| {
                // Shapes differing only in what the name leaves out (borders, tiling) are
                // numbered in first-use order.
                let same = convs.shapes.iter().filter(|c| c.name.split("_v").next() == Some(&shape.name)).count();
                if same > 0 {
                    shape.name = format!("{}_v{}", shape.name, same + 1);
                }
                convs.shapes.push(shape);
                users.push(Vec::new());
                convs.shapes.len() - 1
            });
            users[at].push(k.modules.join("+"));
            convs.of_kernel.insert(i, at);
        }
    }
    for (shape, used) in convs.shapes.iter_mut().zip(&users) {
        shape.doc = format!("{}.\n\nImplements: {}.", shape.doc, used.join(", "));
    }
    convs
}

/// The descriptor constants (shared by every ISA).
fn conv_consts(convs: &Convs) -> TokenStream {
    let items = convs.shapes.iter().map(|c| {
        let name = format_ident!("{}", c.name.to_uppercase());
        let (desc, doc) = (&c.desc, &c.doc);
        let bf16 = c.plan.bf16.map(|b| {
            let name = format_ident!("{}_BF16", c.name.to_uppercase());
            let (kpad, ntiles, splits, parts, chunk) = (u(b.kpad), u(b.ntiles), u(b.splits), u(b.parts), u(b.chunk));
            let (input16, output16, direct) = (b.input16, b.output16, b.direct);
            quote! {
                const #name: nfnet_runtime::bf16::Bf16Desc = nfnet_runtime::bf16::Bf16Desc {
                    kpad: #kpad, ntiles: #ntiles, splits: #splits, parts: #parts, chunk: #chunk,
                    input16: #input16, output16: #output16, direct: #direct,
                };
            }
        });
        quote! {
            #[doc = #doc]
            const #name: rt::ConvDesc = #desc;
            #bf16
        }
    });
    quote!(#(#items)*)
}

/// The per-shape entry points inside one ISA module.
fn conv_entry_points(convs: &Convs, isa: &isa::IsaSpec) -> TokenStream {
    let feature = &isa.feature;
    let items = convs.shapes.iter().map(|c| {
        let d = format_ident!("{}", c.name.to_uppercase());
        let item = format_ident!("{}_item", c.name);
        let run = format_ident!("{}", c.name);
        let plan = &c.plan;
        let mk = plan.micro(isa.kernels.isa);
        let (kc, step, t, p, items) = (u(plan.kc), u(plan.step), u(mk.tile), u(mk.panels), u(mk.items));
        let wd = format_ident!("WEIGHTS_{}", plan.weights.name().to_uppercase());
        let body = match plan.algorithm {
            _ if plan.bf16.is_some() => {
                let b = plan.bf16.expect("checked");
                let (scratch, bd) = (u(b.scratch_len()), format_ident!("{}_BF16", c.name.to_uppercase()));
                quote! {
                    const SCRATCH: usize = #scratch;
                    #[doc = "nfnet-safety: SCRATCH is this shape's gather scratch; `io` and `it` are this conv's call and item (the caller's contract)."]
                    unsafe { nfnet_runtime::bf16::conv_item::<SCRATCH>(ctx, &super::#d, &super::#bd, io, it) }
                }
            }
            Algorithm::Winograd { m } => {
                let (v_len, m_len) = (u(mk.scratch_vectors.0), u(mk.scratch_vectors.1));
                let (wm, a2) = (u(m), u((m + 2) * (m + 2)));
                quote! {
                    const TILES: usize = #t;
                    const KC: usize = #kc;
                    const PANELS: usize = #p;
                    const WEIGHTS: usize = rt::#wd;
                    const OUT_TILE: usize = #wm;
                    const POINTS: usize = #a2;
                    let mut v = core::mem::MaybeUninit::<[V; #v_len]>::uninit();
                    let mut m = core::mem::MaybeUninit::<[V; #m_len]>::uninit();
                    #[doc = "nfnet-safety: v and m are this shape's scratch sizes; `io` and `it` are this conv's call and item (the caller's contract)."]
                    unsafe {
                        wino_item::<TILES, KC, PANELS, WEIGHTS, OUT_TILE, POINTS>(
                            ctx, &super::#d, io, it, v.as_mut_ptr() as *mut f32, m.as_mut_ptr() as *mut f32,
                        )
                    }
                }
            }
            Algorithm::Direct => quote! {
                const TILE: usize = #t;
                const KC: usize = #kc;
                const STEP: usize = #step;
                const PANELS: usize = #p;
                const WEIGHTS: usize = rt::#wd;
                #[doc = "nfnet-safety: `io` and `it` are this conv's call and item (the caller's contract); this module's target feature is its ISA."]
                unsafe { conv_item::<TILE, KC, STEP, PANELS, WEIGHTS>(ctx, &super::#d, io, it) }
            },
        };
        let run_call = match plan.bf16 {
            Some(_) => {
                let bd = format_ident!("{}_BF16", c.name.to_uppercase());
                quote!(nfnet_runtime::bf16::conv_run(ctx, &super::#d, &super::#bd, io, ITEMS, &|it| unsafe { #item(ctx, io, it) }))
            }
            None => quote!(rt::conv_run(ctx, &super::#d, io, ITEMS, &|it| unsafe { #item(ctx, io, it) })),
        };
        quote! {
            #feature
            unsafe fn #item(ctx: &rt::Ctx, io: &rt::ConvIo, it: usize) {
                #body
            }

            unsafe fn #run(ctx: &rt::Ctx, io: &rt::ConvIo) {
                const ITEMS: usize = #items;
                #[doc = "nfnet-safety: the items write disjoint parts of the outputs (conv_run zeroes the borders apart) and run with it < ITEMS; `io` is this conv's call (the caller's contract)."]
                unsafe { #run_call }
            }
        }
    });
    quote!(#(#items)*)
}

/// The body of `forward_image`: one call per kernel.
/// The body of `forward_image` (one timed call per kernel) and the arms of `run_kernel` (each
/// kernel alone, for benchmarks; the input packing and copies out do nothing there).
fn emit_forward(s: &Schedule, packed: &Packed, convs: &Convs) -> (TokenStream, TokenStream) {
    let mut calls = Vec::new();
    let mut arms = Vec::new();
    // Each conv fetches the weights of the next conv or classifier (see `rt::ConvIo::ahead`).
    let ahead: Vec<_> = (0..s.kernels.len())
        .map(|i| s.plans[i].as_ref().and_then(|p| p.ahead).map(|k| packed.slots[k].byte_range(packed)))
        .collect();
    for (i, k) in s.kernels.iter().enumerate() {
        let slot = packed.slots[i];
        let doc = format!("{}: {}", k.op.kind(), k.modules.join("+"));
        // A kernel's call when it runs alone (`run_kernel`), where it differs from its call in
        // `forward_image`.
        let mut alone = None;
        let call = match &k.op {
            Op::PackInput { out } => {
                let o = buf(s, Some(*out));
                quote!(rt::pack_input(ctx, image, &#o);)
            }
            Op::Conv { input, out, preact, sums, .. } => {
                let name = format_ident!("{}", convs.shapes[convs.of_kernel[&i]].name);
                let (i_, o_, p_, s_) =
                    (offset(s, Some(*input)), offset(s, Some(*out)), offset(s, *preact), offset(s, *sums));
                let (w, b) = (u(slot.weights), u(slot.bias));
                let (a, a_len) = match &ahead[i] {
                    Some(r) => {
                        let (at, len) = (u(r.start), u(r.len()));
                        (quote!(#at), quote!(#len))
                    }
                    None => (quote!(rt::NONE), quote!(0)),
                };
                let io = |pre: TokenStream| {
                    quote!(k.#name(ctx, &rt::ConvIo {
                        input: #i_, out: #o_, pre: #pre, sums: #s_, weights: #w, bias: #b, ahead: #a, ahead_bytes: #a_len
                    });)
                };
                // A pre-activation only the feature maps read is stored only when the caller
                // asks for them.
                let tapped_only = preact.is_some_and(|p| {
                    s.readers(p).iter().all(|&r| matches!(s.kernels[r].op, Op::CopyOut { tap: Tap::Feature(_), .. }))
                });
                if tapped_only {
                    alone = Some(io(p_.clone()));
                    io(quote!(if features.is_some() { #p_ } else { rt::NONE }))
                } else {
                    io(p_)
                }
            }
            Op::ChannelSums { input, sums } => {
                let x = buf(s, Some(*input));
                let o = offset(s, Some(*sums));
                quote!(rt::channel_sums(ctx, &#x, #o);)
            }
            Op::EcaGate { node, sums, gate } => {
                let GOp::Eca { weight, scale } = &s.graph.nodes[*node].op else { unreachable!("eca") };
                let l = s.buffers[*sums].layout;
                let (parts, c) = (u(l.h), u(l.c));
                let r = s.graph.nodes[*node].inputs[0];
                let pixels = u(s.graph.values[r].shape[2] * s.graph.values[r].shape[3]);
                let (so, go) = (offset(s, Some(*sums)), offset(s, Some(*gate)));
                let (w, kk, sc) = (u(slot.weights), u(weight.len()), f32_lit(*scale));
                quote!(rt::eca_gate(ctx, #so, #parts, #pixels, #c, #w, #kk, #sc, #go);)
            }
            Op::ScaleAddAct { r, gate, shortcut, y, act } => {
                let (r_, sc_, y_, a_) = (buf(s, Some(*r)), buf(s, *shortcut), buf(s, *y), buf(s, *act));
                let g_ = offset(s, *gate);
                match act {
                    // An activation only bf16 convs read: rounded to bf16 as it is stored.
                    Some(a) if s.buffers[*a].bf16 => {
                        let r16 = s.buffers[*r].bf16;
                        quote!(nfnet_runtime::bf16::scale_add_act(ctx, &#r_, #r16, #g_, &#sc_, &#y_, &#a_);)
                    }
                    _ => quote!(rt::scale_add_act(k, ctx, &#r_, #g_, &#sc_, &#y_, &#a_);),
                }
            }
            Op::AvgPool { input, out } => {
                let (x, o) = (buf(s, Some(*input)), buf(s, Some(*out)));
                quote!(rt::avg_pool(ctx, &#x, &#o);)
            }
            Op::MeanPool { sums, pixels, out } => {
                let l = s.buffers[*sums].layout;
                let (parts, c, pixels) = (u(l.h), u(l.c), u(*pixels));
                let (so, oo) = (offset(s, Some(*sums)), offset(s, Some(*out)));
                quote!(rt::mean_pool(ctx, #so, #parts, #pixels, #c, #oo);)
            }
            Op::Fc { input, out, .. } => {
                let n_in = u(s.buffers[*input].layout.c);
                let n_out = u(s.buffers[*out].layout.c);
                let (x, o) = (offset(s, Some(*input)), offset(s, Some(*out)));
                let (w, b) = (u(slot.weights), u(slot.bias));
                quote!(k.fc(ctx, #x, #n_in, #w, #b, #n_out, #o);)
            }
            Op::CopyOut { tap, input } => {
                let x = buf(s, Some(*input));
                match tap {
                    Tap::Logits => quote!(rt::copy_out(ctx, &#x, logits);),
                    Tap::PreLogits => quote!(if let Some(d) = &mut pre_logits { rt::copy_out(ctx, &#x, d); }),
                    Tap::ForwardFeatures => {
                        quote!(if let Some(d) = &mut forward_features { rt::copy_out(ctx, &#x, d); })
                    }
                    Tap::Feature(f) => {
                        let f = u(*f);
                        quote!(if let Some(d) = &mut features { rt::copy_out(ctx, &#x, &mut *d[#f]); })
                    }
                }
            }
        };
        let idx = u(i);
        if !matches!(k.op, Op::PackInput { .. } | Op::CopyOut { .. }) {
            let alone = alone.as_ref().unwrap_or(&call);
            arms.push(quote!(#idx => { #alone }));
        }
        let label = format!("{STEP_LABEL}{doc}");
        calls.push(quote! {
            #[doc = #label]
            {
                let t0 = prof.as_ref().map(|_| std::time::Instant::now());
                #call
                if let (Some(p), Some(t0)) = (&mut prof, t0) {
                    p[#idx] += t0.elapsed().as_nanos() as u64;
                }
            }
        });
    }
    (quote!(#(#calls)*), quote!(#(#arms)*))
}

/// Marks the doc attribute `emit_forward` puts on each step's block; [`step_comments`] turns
/// it into a plain comment (`quote!` cannot carry comments, and a doc comment on a block
/// is not one Rust accepts without an `allow`).
const STEP_LABEL: &str = "nfnet-step: ";

/// Each step label (`///nfnet-step: conv: stem.conv1+stem.act2`) as a line comment.
fn step_comments(source: &str) -> String {
    let marker = format!("///{STEP_LABEL}");
    let mut out = String::with_capacity(source.len());
    for line in source.lines() {
        match line.split_once(&marker) {
            Some((indent, label)) if indent.trim().is_empty() => {
                out.push_str(indent);
                out.push_str("// ");
                out.push_str(label);
            }
            _ => out.push_str(line),
        }
        out.push('\n');
    }
    out
}

/// Marks the doc attribute the emitter puts on an `unsafe` block whose argument depends on
/// the call site; [`safety_comments`] turns it into that block's `// SAFETY:` line.
const SAFETY_LABEL: &str = "nfnet-safety: ";

/// `quote!` cannot carry comments: each marked `unsafe` block's argument becomes its
/// `// SAFETY:` line, and every other block (inside the kernels, whose safety is their
/// function's contract) gets a line pointing at that contract, as the workspace's rule asks.
fn safety_comments(source: &str) -> String {
    let marker = format!("///{SAFETY_LABEL}");
    let mut out = String::with_capacity(source.len() + source.len() / 8);
    let mut argued = false;
    for line in source.lines() {
        let t = line.trim_start();
        let indent = &line[..line.len() - t.len()];
        if let Some(argument) = t.strip_prefix(&marker) {
            out.push_str(&format!("{indent}// SAFETY: {argument}\n"));
            argued = true;
            continue;
        }
        let is_fn = t.contains("fn ") || t.starts_with("unsafe impl") || t.starts_with("//");
        if line.contains("unsafe {") && !is_fn {
            if !argued {
                out.push_str(indent);
                out.push_str("// SAFETY: within this function's contract (its `# Safety` section; the ISA proven by its token).\n");
            }
            argued = false;
        }
        out.push_str(line);
        out.push('\n');
    }
    out
}

/// Emits the whole model.
pub fn emit(s: &Schedule, info: &EmitInfo) -> Emitted {
    let packed = pack::pack(s);
    let convs = collect_convs(s);
    let (forward, kernel_arms) = emit_forward(s, &packed, &convs);
    let descs = conv_consts(&convs);
    let g = s.graph;
    let a = &g.arch;
    let isas = isa::isas();
    // The kernels that differ per ISA, as one trait every ISA's token implements; the
    // forward pass is written once, generic over it.
    let has_fc = s.kernels.iter().any(|k| matches!(k.op, Op::Fc { .. }));
    let fc_sig =
        quote!(unsafe fn fc(self, ctx: &rt::Ctx, x: usize, n_in: usize, w: usize, b: usize, n_out: usize, out: usize));
    let trait_items = convs.shapes.iter().map(|c| {
        let (name, doc) = (format_ident!("{}", c.name), &c.doc);
        quote! {
            #[doc = #doc]
            unsafe fn #name(self, ctx: &rt::Ctx, io: &rt::ConvIo);
        }
    });
    let trait_fc = has_fc.then(|| quote!(#[doc = "The classifier: `out = W x + b`."] #fc_sig;));
    let model_kernels = {
        let items = convs.shapes.iter().map(|c| {
            let name = format_ident!("{}", c.name);
            quote! {
                unsafe fn #name(self, ctx: &rt::Ctx, io: &rt::ConvIo) {
                    #[doc = "nfnet-safety: the token proves the ISA; the caller upholds the call's contract."]
                    unsafe { #name(ctx, io) }
                }
            }
        });
        let fc = has_fc.then(|| {
            quote! {
                #fc_sig {
                    #[doc = "nfnet-safety: the token proves the ISA; the caller upholds the call's contract."]
                    unsafe { fc(ctx, x, n_in, w, b, n_out, out) }
                }
            }
        });
        quote!(#(#items)* #fc)
    };
    let modules = isas.iter().map(|i| isa::module(i, &conv_entry_points(&convs, i), &model_kernels));
    // Each ISA's token comes from detection; the model's ISA was checked when it was made.
    let token = |i: &isa::IsaSpec, isa: TokenStream| {
        let t = format_ident!("{}", i.token);
        quote!(#t::detect(#isa).expect("the ISA was checked when the model was made"))
    };
    let kernel_dispatch = isas.iter().map(|i| {
        let (cfg, variants, k) = (&i.cfg, &i.variants, token(i, quote!(self.isa)));
        quote! {
            #[cfg(#cfg)]
            #variants => run_kernel(#k, &ctx, index),
        }
    });
    let silu_dispatch = isas.iter().map(|i| {
        let (cfg, variants, k) = (&i.cfg, &i.variants, token(i, quote!(isa)));
        quote! {
            #[cfg(#cfg)]
            #variants => rt::Kernels::scale_add_act(#k, n, n.max(1), r, none, none, none, o),
        }
    });
    let dispatch = isas.iter().map(|i| {
        let (cfg, variants, k) = (&i.cfg, &i.variants, token(i, quote!(self.isa)));
        quote! {
            #[cfg(#cfg)]
            #variants => forward_image(#k, ctx, image, lg, pl, ff, fs, prof.as_mut().map(|p| &mut p[..])),
        }
    });
    let batch = u(g.batch);
    let (ih, iw) = (u(g.input_hw.0), u(g.input_hw.1));
    let image_len = u(3 * g.input_hw.0 * g.input_hw.1);
    let nf = u(a.num_features);
    let nc = u(a.num_classes);
    let classes = u(if a.num_classes > 0 { a.num_classes } else { a.num_features });
    let shape_of = |v: usize| g.values[v].shape;
    let fshapes: Vec<[usize; 4]> = g.features.iter().map(|&v| shape_of(v)).collect();
    let flens: Vec<Literal> = fshapes.iter().map(|sh| u(sh[1] * sh[2] * sh[3])).collect();
    let fshape_toks = fshapes.iter().map(|sh| {
        let sh = sh.map(u);
        quote!([#(#sh),*])
    });
    let ff = shape_of(g.forward_features);
    let ff_len = u(ff[1] * ff[2] * ff[3]);
    let ff_chw = ff[1..].iter().map(|&x| u(x));
    let arena = u(s.arena_len);
    let sha = &info.weights_sha256;
    let model_config = &info.config;
    let synthetic = match &info.synthetic {
        Some(t) => quote!(Some(#t)),
        None => quote!(None),
    };
    let arch_name = &a.config.architecture;
    let p = &a.config.pretrained;
    let mean = p.mean.map(f32_lit);
    let std = p.std.map(f32_lit);
    // timm's resolve_data_config(use_test_size=True) pairs the test size with test_crop_pct.
    let at_test_size = p.test_input_size == Some(g.input_hw);
    let crop_pct = f32_lit(if at_test_size { p.test_crop_pct.unwrap_or(p.crop_pct) } else { p.crop_pct });
    let (interp, crop_mode) = (&p.interpolation, &p.crop_mode);
    let weights_bytes = u(packed.data.len() * 4 + packed.data16.len() * 2);
    let w16_offset = u(packed.data.len() * 4);
    let wd_name = s.policies.weights.name();
    let precision_name = s.policies.precision.name();
    // AMX runs the bf16 convs; a model without them has no use for it.
    let amx =
        if s.plans.iter().flatten().any(|p| p.bf16.is_some()) { quote!(Isa::Avx512Bf16, Isa::Amx,) } else { quote!() };
    let kernel_names: Vec<String> =
        s.kernels.iter().map(|k| format!("{} {}", k.op.kind(), k.modules.join("+"))).collect();
    let kernel_flops: Vec<Literal> = s.kernels.iter().map(|k| Literal::u64_unsuffixed(s.flops(k))).collect();
    let n_kernels = u(s.kernels.len());
    let f_names: Vec<_> = (0..5).map(|i| format_ident!("f{i}")).collect();
    let f_consts: Vec<_> = (0..5).map(|i| format_ident!("FEATURE{i}_LEN")).collect();
    let tokens = quote! {
        use nfnet_runtime::kernels as rt;
        use nfnet_runtime::{Isa, IsaError, Pool, SyncPtr};

        #[cfg(target_endian = "big")]
        compile_error!("the nfnet weight blob is little-endian");

        /// The timm architecture.
        pub const ARCHITECTURE: &str = #arch_name;
        /// Images per inference.
        pub const BATCH: usize = #batch;
        pub const INPUT_H: usize = #ih;
        pub const INPUT_W: usize = #iw;
        /// One image: 3 x INPUT_H x INPUT_W floats, NCHW.
        pub const IMAGE_LEN: usize = #image_len;
        pub const INPUT_LEN: usize = BATCH * IMAGE_LEN;
        /// Classifier outputs (0: the model has no classifier; logits are the pooled features).
        pub const NUM_CLASSES: usize = #nc;
        pub const NUM_FEATURES: usize = #nf;
        /// Logits per image.
        pub const CLASSES: usize = #classes;
        pub const LOGITS_LEN: usize = BATCH * CLASSES;
        pub const PRE_LOGITS_LEN: usize = BATCH * NUM_FEATURES;
        /// forward_features per image: [NUM_FEATURES, H/32, W/32].
        pub const FORWARD_FEATURES_SHAPE: [usize; 3] = [#(#ff_chw),*];
        pub const FORWARD_FEATURES_LEN: usize = BATCH * #ff_len;
        /// The five features_only maps per batch, NCHW.
        pub const FEATURE_SHAPES: [[usize; 4]; 5] = [#(#fshape_toks),*];
        #(pub const #f_consts: usize = BATCH * #flens;)*
        /// Floats of the activation arena (one image at a time).
        pub const ARENA_LEN: usize = #arena;
        pub const WEIGHTS_BYTES: usize = #weights_bytes;
        /// Storage of the conv weights: f32, bf16 or f16 (NFNET_WEIGHT_DTYPE).
        pub const WEIGHT_DTYPE: &str = #wd_name;
        /// The convs' arithmetic: f32, or bf16 (inputs and weights rounded to bf16, f32
        /// accumulation; NFNET_PRECISION).
        pub const PRECISION: &str = #precision_name;
        /// Where the 16-bit conv weights start in the blob (bytes).
        const WEIGHTS16_OFFSET: usize = #w16_offset;
        /// SHA-256 of model.safetensors.
        pub const WEIGHTS_SHA256: &str = #sha;
        /// The config.json the model was compiled from (or the built-in model's description).
        pub const MODEL_CONFIG: &str = #model_config;
        /// The synthesizer's tag when the weights are synthetic, `None` for real weights.
        pub const SYNTHETIC: Option<&str> = #synthetic;
        /// pretrained_cfg of the checkpoint (eval preprocessing); CROP_PCT is test_crop_pct when
        /// the compiled size is the config's test_input_size.
        pub const MEAN: [f32; 3] = [#(#mean),*];
        pub const STD: [f32; 3] = [#(#std),*];
        pub const CROP_PCT: f32 = #crop_pct;
        pub const INTERPOLATION: &str = #interp;
        pub const CROP_MODE: &str = #crop_mode;
        /// Kernels of the schedule, in order: the timm modules each implements.
        pub const KERNEL_NAMES: [&str; KERNELS] = [#(#kernel_names),*];
        /// FLOPs per image of each kernel.
        pub const KERNEL_FLOPS: [u64; KERNELS] = [#(#kernel_flops),*];
        pub const KERNELS: usize = #n_kernels;
        /// The fused kernel schedule (`nfc schedule --json`).
        pub const SCHEDULE_JSON: &str = include_str!("nfnet_schedule.json");
        /// The same as a table (`nfc schedule`).
        pub const SCHEDULE_TEXT: &str = include_str!("nfnet_schedule.txt");

        #[cfg(target_arch = "x86_64")]
        pub const ISAS: &[Isa] = &[Isa::Scalar, Isa::Avx2, Isa::Avx512, #amx Isa::NeonEmu];
        #[cfg(target_arch = "aarch64")]
        pub const ISAS: &[Isa] = &[Isa::Scalar, Isa::Neon];
        #[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
        pub const ISAS: &[Isa] = &[Isa::Scalar, Isa::NeonEmu];

        #[repr(C, align(64))]
        struct Aligned<T: ?Sized>(T);

        static WEIGHTS: &Aligned<[u8]> = &Aligned(*include_bytes!("nfnet_weights.bin"));

        #descs

        /// The kernels of this model that differ per ISA: one per conv shape, and the
        /// classifier. A value of an implementing type (an ISA's token) proves the CPU runs
        /// that ISA.
        trait ModelKernels: rt::Kernels {
            #(#trait_items)*
            #trait_fc
        }

        /// One image through the network with `k`'s kernels.
        ///
        /// # Safety
        /// `ctx.arena` holds ARENA_LEN floats owned by this call.
        #[allow(unused_mut, unused_variables, reason = "which outputs the steps use depends on the model")]
        #[allow(clippy::too_many_arguments, reason = "one argument per output the caller may ask for")]
        unsafe fn forward_image<K: ModelKernels>(
            k: K,
            ctx: &rt::Ctx,
            image: &[f32],
            logits: &mut [f32],
            mut pre_logits: Option<&mut [f32]>,
            mut forward_features: Option<&mut [f32]>,
            mut features: Option<[&mut [f32]; 5]>,
            mut prof: Option<&mut [u64]>,
        ) {
            #[doc = "nfnet-safety: every offset below comes from the compiler's memory plan for ARENA_LEN floats and its packing of the weight blob; buffers live at the same time never overlap."]
            unsafe {
                #forward
            }
        }

        /// Kernel `index` alone (see `Model::run_kernel`).
        ///
        /// # Safety
        /// As `forward_image`.
        #[allow(unused_variables, reason = "which kernels use the token depends on the model")]
        unsafe fn run_kernel<K: ModelKernels>(k: K, ctx: &rt::Ctx, index: usize) {
            #[doc = "nfnet-safety: as in `forward_image`."]
            unsafe {
                match index {
                    #kernel_arms
                    _ => {}
                }
            }
        }

        #(#modules)*

        /// The five feature maps, NCHW, for the whole batch.
        pub struct Features<'a> {
            #(pub #f_names: &'a mut [f32; #f_consts],)*
        }

        /// Caller buffers the model writes. Logits always; the rest when given.
        pub struct Outputs<'a> {
            pub logits: &'a mut [f32; LOGITS_LEN],
            pub pre_logits: Option<&'a mut [f32; PRE_LOGITS_LEN]>,
            pub forward_features: Option<&'a mut [f32; FORWARD_FEATURES_LEN]>,
            pub features: Option<Features<'a>>,
        }

        /// Per-thread state: activation arenas (ARENA_LEN floats each) and a thread pool.
        /// Allocated once; inference allocates nothing. A batch of several images runs them
        /// one per thread, each on its own arena with its kernels single-threaded, while a
        /// whole round of images per thread remains (no barrier between kernels, no item
        /// imbalance: faster than splitting every kernel); the rest run one at a time on all
        /// threads. So a workspace holds min(threads, BATCH) arenas.
        pub struct Workspace {
            /// Owns the arenas `arena_ptrs` point into (the kernels reach them only through
            /// those pointers, taken once: an arena's floats never move).
            _arenas: Box<[nfnet_runtime::Arena]>,
            arena_ptrs: Box<[SyncPtr<f32>]>,
            pool: Pool,
            /// Runs every item on the calling thread: the pool of an image that has a thread
            /// to itself.
            solo: Pool,
        }

        impl Workspace {
            /// A workspace whose kernels run on `threads` threads (the caller's included).
            pub fn new(threads: usize) -> std::io::Result<Workspace> {
                let pool = Pool::new(threads)?;
                let lanes = if BATCH > 1 { pool.threads().min(BATCH) } else { 1 };
                let mut arenas: Box<[nfnet_runtime::Arena]> = (0..lanes).map(|_| nfnet_runtime::Arena::new(ARENA_LEN)).collect();
                let arena_ptrs = arenas.iter_mut().map(|a| SyncPtr(a.as_mut_ptr())).collect();
                Ok(Workspace { _arenas: arenas, arena_ptrs, pool, solo: Pool::new(1)? })
            }

            pub fn threads(&self) -> usize {
                self.pool.threads()
            }

            /// Arena `lane`, the weight blob and a pool, as the kernels of `isa` see them.
            fn ctx<'p>(&self, lane: usize, pool: &'p Pool, isa: Isa) -> rt::Ctx<'p> {
                rt::Ctx {
                    arena: self.arena_ptrs[lane],
                    weights: SyncPtr(WEIGHTS.0.as_ptr() as *mut f32),
                    weights16: SyncPtr(WEIGHTS.0.as_ptr().wrapping_add(WEIGHTS16_OFFSET) as *mut u16),
                    pool,
                    bf16: nfnet_runtime::bf16::Engine::of(isa),
                }
            }
        }

        /// The caller's output buffers as raw pointers, so that images of one batch can be
        /// written from different threads (each image's parts are disjoint).
        #[derive(Clone, Copy)]
        struct RawOutputs {
            logits: SyncPtr<f32>,
            pre_logits: Option<SyncPtr<f32>>,
            forward_features: Option<SyncPtr<f32>>,
            features: Option<[SyncPtr<f32>; 5]>,
        }

        /// SiLU of `x` into `out` with `isa`'s vectorized kernel (the one every fused epilogue
        /// uses), for checking its accuracy; `x` and `out` must have the same length.
        pub fn silu(isa: Isa, x: &[f32], out: &mut [f32]) -> Result<(), IsaError> {
            let isa = Isa::require(isa.name(), ISAS)?;
            assert_eq!(x.len(), out.len(), "silu: lengths differ");
            let n = x.len();
            let (r, o) = (x.as_ptr(), out.as_mut_ptr());
            let none = core::ptr::null_mut::<f32>();
            #[doc = "nfnet-safety: the ISA was checked above; x and out hold n floats each; one row of n channels, no gate, shortcut or y."]
            unsafe {
                match isa {
                    #(#silu_dispatch)*
                    #[allow(unreachable_patterns, reason = "the ISAs compiled in depend on the target")]
                    other => unreachable!("ISA {other} was checked above"),
                }
            }
            Ok(())
        }

        /// The compiled model. Weights are static; the value only records the ISA in use.
        #[derive(Clone, Copy, Debug)]
        pub struct Model {
            isa: Isa,
        }

        impl Model {
            /// Runs kernel `index` of the schedule alone on whatever the workspace holds, for
            /// benchmarking kernels (`KERNEL_NAMES`, `KERNEL_FLOPS`); the result is meaningless
            /// and later inferences are unaffected. Packing and copy-out kernels do nothing.
            pub fn run_kernel(&self, ws: &mut Workspace, index: usize) {
                assert!(index < KERNELS, "kernel index {index} out of range");
                let ctx = ws.ctx(0, &ws.pool, self.isa);
                #[doc = "nfnet-safety: as in `run`: the ISA was checked, the arena is ours for this call."]
                unsafe {
                    match self.isa {
                        #(#kernel_dispatch)*
                        #[allow(unreachable_patterns, reason = "the ISAs compiled in depend on the target")]
                        other => unreachable!("ISA {other} was checked at construction"),
                    }
                }
            }

            /// The fastest ISA of this CPU, or the one `NFNET_ISA` forces (checked).
            pub fn new() -> Result<Model, IsaError> {
                Ok(Model { isa: Isa::select(ISAS)? })
            }

            /// A given ISA, if this build and CPU run it.
            pub fn with_isa(isa: Isa) -> Result<Model, IsaError> {
                Ok(Model { isa: Isa::require(isa.name(), ISAS)? })
            }

            pub fn isa(&self) -> Isa {
                self.isa
            }

            /// Runs the batch `input` (normalized pixels, NCHW) and writes the outputs.
            pub fn infer(&self, ws: &mut Workspace, input: &[f32; INPUT_LEN], out: Outputs<'_>) {
                self.run(ws, input, out, None)
            }

            /// Like `infer`, and adds each kernel's wall time in nanoseconds to `times`
            /// (indexed like `KERNEL_NAMES`).
            pub fn infer_profiled(
                &self,
                ws: &mut Workspace,
                input: &[f32; INPUT_LEN],
                out: Outputs<'_>,
                times: &mut [u64; KERNELS],
            ) {
                self.run(ws, input, out, Some(times))
            }

            fn run(&self, ws: &mut Workspace, input: &[f32; INPUT_LEN], out: Outputs<'_>, mut prof: Option<&mut [u64; KERNELS]>) {
                let ws: &Workspace = ws;
                let raw = RawOutputs {
                    logits: SyncPtr(out.logits.as_mut_ptr()),
                    pre_logits: out.pre_logits.map(|p| SyncPtr(p.as_mut_ptr())),
                    forward_features: out.forward_features.map(|p| SyncPtr(p.as_mut_ptr())),
                    features: out.features.map(|f| [#(SyncPtr(f.#f_names.as_mut_ptr())),*]),
                };
                // Whole rounds of one image per thread (not when timing kernels: the times
                // would mix), then the rest on all threads.
                let lanes = ws.arena_ptrs.len();
                let solo_images = if prof.is_none() && lanes > 1 { BATCH / lanes * lanes } else { 0 };
                for round in (0..solo_images).step_by(lanes.max(1)) {
                    ws.pool.run(lanes, &|lane| {
                        #[doc = "nfnet-safety: image `round + lane` runs once, alone on arena `lane`."]
                        unsafe { self.image(&ws.ctx(lane, &ws.solo, self.isa), input, raw, round + lane, None) }
                    });
                }
                for b in solo_images..BATCH {
                    #[doc = "nfnet-safety: one image at a time on arena 0."]
                    unsafe { self.image(&ws.ctx(0, &ws.pool, self.isa), input, raw, b, prof.as_mut().map(|p| &mut p[..])) }
                }
            }

            /// Runs image `b` of the batch.
            ///
            /// # Safety
            /// `raw` points at the caller's buffers of an `Outputs`; no other call may be running
            /// on the same arena or image at the same time.
            unsafe fn image(&self, ctx: &rt::Ctx, input: &[f32; INPUT_LEN], raw: RawOutputs, b: usize, mut prof: Option<&mut [u64]>) {
                #[doc = "nfnet-safety: the parts of image b of each buffer: disjoint from other images' parts, inside the caller's buffers (their lengths are BATCH times these)."]
                unsafe {
                    let part = |p: SyncPtr<f32>, len: usize| core::slice::from_raw_parts_mut(p.0.add(b * len), len);
                    let image = &input[b * IMAGE_LEN..(b + 1) * IMAGE_LEN];
                    let lg = part(raw.logits, CLASSES);
                    let pl = raw.pre_logits.map(|p| part(p, NUM_FEATURES));
                    let ff = raw.forward_features.map(|p| part(p, FORWARD_FEATURES_LEN / BATCH));
                    let fs = raw.features.map(|f| {
                        let [#(#f_names),*] = f;
                        [#(part(#f_names, #f_consts / BATCH)),*]
                    });
                    // The ISA was checked against this CPU when the Model was made; the arena
                    // has ARENA_LEN floats and is this call's alone.
                    match self.isa {
                        #(#dispatch)*
                        #[allow(unreachable_patterns, reason = "the ISAs compiled in depend on the target")]
                        other => unreachable!("ISA {other} was checked at construction"),
                    }
                }
            }
        }
    };
    let file: syn::File = syn::parse2(tokens).expect("emitted tokens form a Rust file");
    let body = safety_comments(&step_comments(&prettyplease::unparse(&file)));
    let header = format!(
        "// @generated by nfnet-compiler {} — do not edit.\n// config: {}\n// weights: model.safetensors, sha256 {}{}\n// architecture {}, input {}x{}x{}, batch {}, conv weights stored as {}\n\n",
        env!("CARGO_PKG_VERSION"),
        info.config,
        info.weights_sha256,
        info.synthetic.as_ref().map_or(String::new(), |t| format!(" (synthetic: {t})")),
        arch_name,
        3,
        g.input_hw.0,
        g.input_hw.1,
        g.batch,
        s.policies.weights.name()
    );
    let weights = packed.bytes();
    let schedule_json = serde_json::to_string_pretty(&s.to_json()).expect("JSON values serialize") + "\n";
    Emitted { source: header + &body, weights, schedule_json, schedule_text: s.to_text() }
}
