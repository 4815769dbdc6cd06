// The C API behind a few lines of RAII: a workspace that frees itself, errors as exceptions.
//
//   cargo build --release -p nfnet-capi
//   c++ -std=c++17 -O2 -Icapi/include examples/cpp/classify.cpp target/release/libnfnet.a
//       -lgcc_s -lutil -lrt -lpthread -lm -ldl -lc -o classify_cpp
//   ./classify_cpp IMAGE
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <memory>
#include <numeric>
#include <stdexcept>
#include <string>
#include <vector>

#include "nfnet.h"

namespace nfnet {

inline void check(int code) {
    if (code != NFNET_OK) throw std::runtime_error(nfnet_last_error());
}

class Workspace {
  public:
    explicit Workspace(unsigned threads = 0) {
        nfnet_workspace *ws = nullptr;
        check(nfnet_workspace_new(threads, &ws));
        ws_.reset(ws);
    }
    // Logits of a whole batch (batch x classes).
    std::vector<float> infer(const std::vector<float> &input) {
        std::vector<float> logits(nfnet_batch() * nfnet_num_classes());
        check(nfnet_infer(ws_.get(), input.data(), input.size(), logits.data(), logits.size(), nullptr, 0));
        return logits;
    }

  private:
    struct Free {
        void operator()(nfnet_workspace *ws) const { nfnet_workspace_free(ws); }
    };
    std::unique_ptr<nfnet_workspace, Free> ws_;
};

// One image, preprocessed as timm's eval transform does, placed as image `b` of a batch.
inline void preprocess(const std::string &path, std::vector<float> &input, size_t b) {
    check(nfnet_preprocess_file(path.c_str(), input.data() + b * nfnet_image_len(), nfnet_image_len()));
}

}  // namespace nfnet

int main(int argc, char **argv) {
    if (argc != 2) {
        std::fprintf(stderr, "usage: %s IMAGE\n", argv[0]);
        return 2;
    }
    try {
        nfnet::Workspace ws;
        std::vector<float> input(nfnet_input_len());
        nfnet::preprocess(argv[1], input, 0);
        std::vector<float> logits = ws.infer(input);
        size_t classes = nfnet_num_classes();
        double max = *std::max_element(logits.begin(), logits.begin() + classes), sum = 0.0;
        std::vector<double> p(classes);
        for (size_t i = 0; i < classes; i++) sum += p[i] = std::exp(double(logits[i]) - max);
        std::vector<size_t> order(classes);
        std::iota(order.begin(), order.end(), 0);
        std::stable_sort(order.begin(), order.end(), [&](size_t a, size_t b) { return p[a] > p[b]; });
        std::printf("%s\n", argv[1]);
        for (size_t t = 0; t < std::min<size_t>(5, classes); t++) {
            size_t i = order[t];
            std::printf("  %7.3f%%  %s (%zu)\n", 100.0 * p[i] / sum, nfnet_label(i), i);
        }
    } catch (const std::exception &e) {
        std::fprintf(stderr, "error: %s\n", e.what());
        return 1;
    }
    return 0;
}
