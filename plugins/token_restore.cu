// CUDA implementation of the token-restore op (see token_restore.h / token_restore_cuda.h).
//
// Two kernels in stream order, so no inverse map is needed:
//   1. area_upsample_kernel: one thread per output element (b, token, c) - channel innermost, so
//      a warp reads/writes consecutive channels (coalesced). Each thread averages its window of
//      prev: rows [floor(i*h/H), ceil((i+1)*h/H)) x cols [floor(j*w/W), ceil((j+1)*w/W)).
//   2. scatter_rows_kernel: one thread per (b, j, c) copies rows[b, j, c] to out[b, indices[b, j], c].
// Accumulation is float32 with a single multiply by 1/(window area): for the window sizes an
// upsample produces (1 or 2 per axis) this is within float32 rounding of the float64 reference.
#include "token_restore_cuda.h"

#include <cuda_runtime.h>

#include <cstdint>
#include <limits>

namespace {

constexpr int kThreads = 256;
constexpr int64_t kMaxBlocks = 65535LL * 16;  // grid-stride loops cover the rest

__global__ void area_upsample_kernel(const float* __restrict__ prev, float* __restrict__ out,
                                     int64_t total, int h, int w, int H, int W, int C) {
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  const int64_t M = static_cast<int64_t>(H) * W;
  const int64_t m = static_cast<int64_t>(h) * w;
  for (int64_t e = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; e < total;
       e += stride) {
    const int64_t c = e % C;
    const int64_t t = (e / C) % M;
    const int64_t b = e / (C * M);
    const int64_t i = t / W;
    const int64_t j = t % W;
    const int64_t rs = (i * h) / H;
    const int64_t re = ((i + 1) * h + H - 1) / H;
    const int64_t cs = (j * w) / W;
    const int64_t ce = ((j + 1) * w + W - 1) / W;
    const float* x = prev + b * m * C + c;
    float acc = 0.0f;
    for (int64_t y = rs; y < re; ++y) {
      const float* row = x + y * w * C;
      for (int64_t k = cs; k < ce; ++k) acc += __ldg(row + k * C);
    }
    out[e] = acc * (1.0f / static_cast<float>((re - rs) * (ce - cs)));
  }
}

__global__ void scatter_rows_kernel(const float* __restrict__ rows,
                                    const int64_t* __restrict__ indices, float* __restrict__ out,
                                    int64_t total, int64_t M, int r, int C) {
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t e = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; e < total;
       e += stride) {
    const int64_t c = e % C;
    const int64_t bj = e / C;  // b * r + j
    const int64_t b = bj / r;
    const int64_t pos = __ldg(indices + bj);
    if (pos < 0 || pos >= M) continue;  // documented: out-of-range indices are skipped
    out[(b * M + pos) * C + c] = __ldg(rows + e);
  }
}

inline unsigned int blocks_for(int64_t total) {
  int64_t blocks = (total + kThreads - 1) / kThreads;
  if (blocks > kMaxBlocks) blocks = kMaxBlocks;
  return static_cast<unsigned int>(blocks);
}

}  // namespace

extern "C" int stagevar_token_restore_cuda(const float* prev, const float* rows,
                                           const int64_t* indices, int B, int h, int w, int H,
                                           int W, int C, int r, float* out, cudaStream_t stream) {
  const int status = stagevar_token_restore_check(prev, rows, indices, B, h, w, H, W, C, r, out);
  if (status != STAGEVAR_OK) return status;
  const int64_t M = static_cast<int64_t>(H) * W;

  const int64_t total_out = static_cast<int64_t>(B) * M * C;
  area_upsample_kernel<<<blocks_for(total_out), kThreads, 0, stream>>>(prev, out, total_out, h, w,
                                                                       H, W, C);
  if (cudaGetLastError() != cudaSuccess) return STAGEVAR_ERR_CUDA;
  if (r > 0) {
    const int64_t total_rows = static_cast<int64_t>(B) * r * C;
    scatter_rows_kernel<<<blocks_for(total_rows), kThreads, 0, stream>>>(rows, indices, out,
                                                                         total_rows, M, r, C);
    if (cudaGetLastError() != cudaSuccess) return STAGEVAR_ERR_CUDA;
  }
  return STAGEVAR_OK;
}
