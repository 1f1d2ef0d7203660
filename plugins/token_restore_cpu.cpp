// CPU reference of the token-restore op (see token_restore.h).
#include "token_restore.h"

#include <cstddef>
#include <cstdint>
#include <limits>
#include <vector>

namespace {

// Window [start, end) of output index i when resizing n_in -> n_out with adaptive average pooling.
inline void area_window(int64_t i, int64_t n_in, int64_t n_out, int64_t* start, int64_t* end) {
  *start = (i * n_in) / n_out;
  *end = ((i + 1) * n_in + n_out - 1) / n_out;
}

}  // namespace

extern "C" int stagevar_token_restore_cpu(const float* prev, const float* rows,
                                          const int64_t* indices, int B, int h, int w, int H,
                                          int W, int C, int r, float* out) {
  const int status = stagevar_token_restore_check(prev, rows, indices, B, h, w, H, W, C, r, out);
  if (status != STAGEVAR_OK) return status;
  const int64_t M = static_cast<int64_t>(H) * W;
  const int64_t m = static_cast<int64_t>(h) * w;

  // Validate every index before touching out.
  for (int64_t k = 0; k < static_cast<int64_t>(B) * r; ++k) {
    if (indices[k] < 0 || indices[k] >= M) return STAGEVAR_ERR_INDEX_RANGE;
  }

  // Separable area resize in double: first along columns (h, w) -> (h, W), then rows -> (H, W).
  std::vector<double> tmp(static_cast<size_t>(h) * W * C);
  std::vector<double> acc(static_cast<size_t>(C));
  for (int b = 0; b < B; ++b) {
    const float* x = prev + static_cast<int64_t>(b) * m * C;
    for (int64_t y = 0; y < h; ++y) {
      for (int64_t j = 0; j < W; ++j) {
        int64_t s, e;
        area_window(j, w, W, &s, &e);
        const double inv = 1.0 / static_cast<double>(e - s);
        double* t = &tmp[static_cast<size_t>((y * W + j) * C)];
        for (int64_t c = 0; c < C; ++c) t[c] = 0.0;
        for (int64_t k = s; k < e; ++k) {
          const float* src = x + (y * w + k) * C;
          for (int64_t c = 0; c < C; ++c) t[c] += static_cast<double>(src[c]) * inv;
        }
      }
    }
    float* o = out + static_cast<int64_t>(b) * M * C;
    for (int64_t i = 0; i < H; ++i) {
      int64_t s, e;
      area_window(i, h, H, &s, &e);
      const double inv = 1.0 / static_cast<double>(e - s);
      for (int64_t j = 0; j < W; ++j) {
        for (int64_t c = 0; c < C; ++c) acc[c] = 0.0;
        for (int64_t k = s; k < e; ++k) {
          const double* t = &tmp[static_cast<size_t>((k * W + j) * C)];
          for (int64_t c = 0; c < C; ++c) acc[c] += t[c] * inv;
        }
        float* dst = o + (i * W + j) * C;
        for (int64_t c = 0; c < C; ++c) dst[c] = static_cast<float>(acc[c]);
      }
    }
    // Scatter: in index order, so among duplicates the larger j wins.
    for (int64_t j = 0; j < r; ++j) {
      const int64_t pos = indices[static_cast<int64_t>(b) * r + j];
      const float* src = rows + (static_cast<int64_t>(b) * r + j) * C;
      float* dst = o + pos * C;
      for (int64_t c = 0; c < C; ++c) dst[c] = src[c];
    }
  }
  return STAGEVAR_OK;
}
