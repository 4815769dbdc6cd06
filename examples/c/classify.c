/* Classify images with the compiled model: timm's preprocessing, one inference per batch,
 * softmax and the top 5 classes, printed as `nfnet classify` prints them.
 *
 *   cargo build --release -p nfnet-capi
 *   cc -O2 -Icapi/include examples/c/classify.c target/release/libnfnet.a \
 *      -lgcc_s -lutil -lrt -lpthread -lm -ldl -lc -o classify
 *   ./classify IMAGE...
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>

#include "nfnet.h"

#define TOP 5

static int fail(const char *what) {
    fprintf(stderr, "error: %s: %s\n", what, nfnet_last_error());
    return 1;
}

/* Prints the top classes of one image's logits: probability = softmax x 100. */
static void print_top(const char *path, const float *logits, size_t classes) {
    double max = -INFINITY, sum = 0.0;
    for (size_t i = 0; i < classes; i++) max = fmax(max, logits[i]);
    double *p = malloc(classes * sizeof *p);
    for (size_t i = 0; i < classes; i++) sum += p[i] = exp((double)logits[i] - max);
    printf("%s\n", path);
    int taken[TOP];
    size_t k = classes < TOP ? classes : TOP;
    for (size_t t = 0; t < k; t++) {
        size_t best = (size_t)-1;
        for (size_t i = 0; i < classes; i++) {
            int used = 0;
            for (size_t u = 0; u < t; u++) used |= (size_t)taken[u] == i;
            if (!used && (best == (size_t)-1 || p[i] > p[best])) best = i;
        }
        taken[t] = (int)best;
        printf("  %7.3f%%  %s (%zu)\n", 100.0 * p[best] / sum, nfnet_label(best), best);
    }
    free(p);
}

int main(int argc, char **argv) {
    if (argc < 2) {
        fprintf(stderr, "usage: %s IMAGE...\n", argv[0]);
        return 2;
    }
    size_t batch = nfnet_batch(), image_len = nfnet_image_len(), classes = nfnet_num_classes();
    if (classes == 0) {
        fprintf(stderr, "error: this model has no classifier\n");
        return 1;
    }
    nfnet_workspace *ws = NULL;
    if (nfnet_workspace_new(0, &ws) != NFNET_OK) return fail("workspace");
    float *input = calloc(nfnet_input_len(), sizeof(float));
    float *logits = malloc(batch * classes * sizeof(float));
    const char **names = malloc(batch * sizeof *names);
    int status = 0;
    size_t pending = 0;
    for (int a = 1; a <= argc; a++) {
        if (a < argc) {
            if (nfnet_preprocess_file(argv[a], input + pending * image_len, image_len) != NFNET_OK) {
                fprintf(stderr, "error: %s\n", nfnet_last_error());
                status = 1;
                continue;
            }
            names[pending++] = argv[a];
        }
        if (pending == batch || (a == argc && pending > 0)) {
            /* a last, partial batch runs with the rest of the input zeroed */
            for (size_t i = pending * image_len; i < batch * image_len; i++) input[i] = 0.0f;
            if (nfnet_infer(ws, input, nfnet_input_len(), logits, batch * classes, NULL, 0) != NFNET_OK) {
                status = fail("infer");
                break;
            }
            for (size_t b = 0; b < pending; b++) print_top(names[b], logits + b * classes, classes);
            pending = 0;
        }
    }
    free(names);
    free(logits);
    free(input);
    nfnet_workspace_free(ws);
    return status;
}
