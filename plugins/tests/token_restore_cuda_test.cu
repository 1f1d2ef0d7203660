// GPU check of the CUDA kernel against the numpy fixtures (needs a GPU to run; built whenever
// CUDA is, registered with ctest only with -DSTAGEVAR_CUDA_TESTS=ON).
// Usage: token_restore_cuda_test <fixture dir>
#include <cuda_runtime.h>

#include <cmath>
#include <cstdio>
#include <string>
#include <vector>

#include "fixture_io.h"
#include "token_restore_cuda.h"

#define CHECK_CUDA(x)                                                                    \
  do {                                                                                   \
    cudaError_t e_ = (x);                                                                \
    if (e_ != cudaSuccess) {                                                             \
      std::fprintf(stderr, "CUDA error %s at %s:%d\n", cudaGetErrorString(e_), __FILE__, \
                   __LINE__);                                                            \
      return 1;                                                                          \
    }                                                                                    \
  } while (0)

template <typename T>
static int to_device(const std::vector<T>& host, T** dev) {
  *dev = nullptr;
  const size_t n = host.size() * sizeof(T);
  CHECK_CUDA(cudaMalloc(reinterpret_cast<void**>(dev), n ? n : 1));
  if (n) CHECK_CUDA(cudaMemcpy(*dev, host.data(), n, cudaMemcpyHostToDevice));
  return 0;
}

int main(int argc, char** argv) {
  if (argc != 2) {
    std::fprintf(stderr, "usage: %s <fixture dir>\n", argv[0]);
    return 2;
  }
  std::vector<std::string> names;
  if (!stagevar_test::list_cases(argv[1], &names)) return 1;
  int failures = 0;
  cudaStream_t stream;
  CHECK_CUDA(cudaStreamCreate(&stream));
  for (const std::string& name : names) {
    stagevar_test::Case c;
    std::string err;
    if (!stagevar_test::load_case(argv[1], name, &c, &err)) {
      std::fprintf(stderr, "FAIL: %s\n", err.c_str());
      ++failures;
      continue;
    }
    float *d_prev, *d_rows, *d_out;
    int64_t* d_idx;
    std::vector<float> out(c.expected.size(), std::nanf(""));
    if (to_device(c.prev, &d_prev) || to_device(c.rows, &d_rows) ||
        to_device(c.indices, &d_idx) || to_device(out, &d_out))
      return 1;
    const int rc = stagevar_token_restore_cuda(d_prev, d_rows, d_idx, c.B, c.h, c.w, c.H, c.W,
                                               c.C, c.r, d_out, stream);
    CHECK_CUDA(cudaStreamSynchronize(stream));
    CHECK_CUDA(cudaMemcpy(out.data(), d_out, out.size() * sizeof(float), cudaMemcpyDeviceToHost));
    double max_diff = 0.0;
    for (size_t i = 0; i < out.size(); ++i) {
      const double d = std::fabs(static_cast<double>(out[i]) - c.expected[i]);
      if (!(d <= max_diff)) max_diff = d;
    }
    const bool ok = rc == STAGEVAR_OK && max_diff <= 1e-5;
    std::printf("%-36s rc=%d max|diff|=%.3g %s\n", name.c_str(), rc, max_diff, ok ? "ok" : "FAIL");
    failures += ok ? 0 : 1;
    cudaFree(d_prev); cudaFree(d_rows); cudaFree(d_idx); cudaFree(d_out);
  }
  cudaStreamDestroy(stream);
  return failures ? 1 : 0;
}
