/*
 * nfnet.h: an ECA-NFNet model compiled ahead of time by nfnet, behind a C ABI.
 *
 * Link `libnfnet.a` (or `libnfnet.so`) built by `cargo build --release -p nfnet-capi`. The
 * model (architecture, weights, input size, batch) was fixed when the library was built; the
 * functions below report its shapes. Nothing needs initializing.
 *
 * Conventions
 *   - Every `int` result is NFNET_OK (0) or a negative NFNET_ERR_* code; on failure
 *     nfnet_last_error() gives a one-line message. No function aborts, exits or prints.
 *   - Lengths are counts of floats, checked against the compiled shapes (NFNET_ERR_LENGTH).
 *   - Tensors are float32, NCHW, C order; `input` holds nfnet_batch() images of normalized
 *     pixels, as nfnet_preprocess_* writes them.
 *   - Buffers passed to one call must not overlap (NFNET_ERR_ARGUMENT).
 *
 * Threads
 *   - The model's weights are static and read-only: any number of workspaces may run at once.
 *   - A workspace (arena + its own worker threads) is used by one thread at a time; give each
 *     calling thread its own. Inference allocates nothing: all memory is taken by
 *     nfnet_workspace_new.
 *   - nfnet_last_error() is per thread.
 */
#ifndef NFNET_H
#define NFNET_H

#include <stddef.h>

#ifdef __cplusplus
extern "C" {
#endif

#define NFNET_OK 0
/* A required pointer is NULL, misaligned or overlaps another, or an index is out of range. */
#define NFNET_ERR_ARGUMENT (-1)
/* A buffer's length is not the compiled shape's. */
#define NFNET_ERR_LENGTH (-2)
/* An image cannot be read or decoded (missing, corrupt, truncated, unsupported, too large). */
#define NFNET_ERR_IMAGE (-3)
/* This CPU cannot run the compiled model, or NFNET_ISA names an instruction set it lacks. */
#define NFNET_ERR_CPU (-4)
/* Threads or memory for a workspace cannot be had, or NFNET_THREADS is not a thread count. */
#define NFNET_ERR_RESOURCE (-5)
/* A bug inside the library; free the workspace it happened in. */
#define NFNET_ERR_INTERNAL (-6)

typedef struct nfnet_workspace nfnet_workspace;

/* Creates a workspace whose inferences run on `threads` threads, the caller's included
 * (0: NFNET_THREADS if set, else every available core; at most 1024), into *out. */
int nfnet_workspace_new(unsigned threads, nfnet_workspace **out);
/* Frees a workspace and joins its threads. NULL is fine. */
void nfnet_workspace_free(nfnet_workspace *ws);
/* The threads a workspace runs on (0 for NULL). */
size_t nfnet_workspace_threads(const nfnet_workspace *ws);

/* The compiled shapes. */
size_t nfnet_batch(void);          /* images per inference */
size_t nfnet_height(void);         /* input height */
size_t nfnet_width(void);          /* input width */
size_t nfnet_image_len(void);      /* 3 * height * width: one preprocessed image */
size_t nfnet_input_len(void);      /* batch * 3 * height * width */
size_t nfnet_num_classes(void);    /* logits per image (0 for a model without head) */
size_t nfnet_num_features(void);   /* pre-logits per image */
size_t nfnet_forward_features_len(void); /* batch * num_features * (height/32) * (width/32) */
size_t nfnet_feature_len(size_t i);      /* floats of feature map i (0..4) for the batch; 0 beyond */
/* The shape of feature map i as {batch, channels, height, width}. */
int nfnet_feature_shape(size_t i, size_t dims[4]);

/* Runs the batch `input` (input_len == nfnet_input_len()) and writes, where not NULL, the
 * logits (batch * num_classes) and the pooled pre-logits (batch * num_features). */
int nfnet_infer(nfnet_workspace *ws, const float *input, size_t input_len,
                float *logits, size_t logits_len,
                float *pre_logits, size_t pre_logits_len);

/* Runs the batch `input` and writes forward_features (after the final activation, before
 * pooling; out_len == nfnet_forward_features_len()). */
int nfnet_forward_features(nfnet_workspace *ws, const float *input, size_t input_len,
                           float *out, size_t out_len);

/* Runs the batch `input` and writes the five feature maps (timm's features_only: strides 2,
 * 4, 8, 16, 32): features[i] holds lens[i] == nfnet_feature_len(i) floats; none may be NULL. */
int nfnet_features(nfnet_workspace *ws, const float *input, size_t input_len,
                   float *const features[5], const size_t lens[5]);

/* timm's eval preprocessing of one image (PNG, JPEG, GIF, BMP, TIFF, WebP) into `out`
 * (out_len == nfnet_image_len(), CHW): converted to RGB as PIL does, resized, center-cropped,
 * normalized. From a file, or from `len` bytes of an encoded image in memory. */
int nfnet_preprocess_file(const char *path, float *out, size_t out_len);
int nfnet_preprocess_bytes(const unsigned char *data, size_t len, float *out, size_t out_len);

/* The label of class i: ImageNet-1k's description for a 1000-class model, else "class i";
 * NULL for i >= nfnet_num_classes(). Static storage. */
const char *nfnet_label(size_t i);

/* This thread's last error message (UTF-8; "" when none). Valid until this thread's next
 * call into the library. */
const char *nfnet_last_error(void);

/* The compiled model in one line: architecture, input size, batch, classes, weight storage,
 * the instruction set this CPU runs it with, SHA-256 of the weights. Static storage. */
const char *nfnet_info(void);

#ifdef __cplusplus
}
#endif

#endif /* NFNET_H */
