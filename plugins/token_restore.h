/* Token restore: the representative-token restoration op of StageVAR (DESIGN.md section 8).
 *
 * Inputs (all dense, row-major, C-contiguous):
 *   prev    (B, h*w, C) float32  previous scale's chunk output, tokens in raster order
 *   rows    (B, r, C)   float32  the chunk's r outputs
 *   indices (B, r)      int64    positions in [0, H*W) where rows are written
 * Output:
 *   out     (B, H*W, C) float32
 *
 * out = area-upsample of prev from (h, w) to (H, W) with adaptive-average-pooling semantics per
 * axis (output i averages input [floor(i*h/H), ceil((i+1)*h/H)), same for columns; i.e.
 * Y = A_h X A_w^T with stagevar.runtime.resize.area_matrix), then out[b, indices[b, j]] = rows[b, j].
 *
 * Duplicate indices in one batch row are allowed: the write of the larger j wins on the CPU
 * reference; on CUDA the winner among duplicates is unspecified. The exported graph never
 * produces duplicates (representative_indices draws without replacement). r == 0 is allowed
 * (pure upsample). Reference: stagevar.runtime.lowrank.restore_tokens.
 */
#ifndef STAGEVAR_TOKEN_RESTORE_H
#define STAGEVAR_TOKEN_RESTORE_H

#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#if defined(_WIN32)
#define STAGEVAR_API __declspec(dllexport)
#else
#define STAGEVAR_API __attribute__((visibility("default")))
#endif

/* Error codes returned by the C ABI functions. */
enum {
  STAGEVAR_OK = 0,
  STAGEVAR_ERR_NULL_POINTER = 1,   /* a required pointer is NULL */
  STAGEVAR_ERR_BAD_SIZE = 2,       /* B, h, w, H, W, C <= 0, r < 0, r > H*W, or size overflow */
  STAGEVAR_ERR_INDEX_RANGE = 3,    /* an index lies outside [0, H*W) (CPU only; out untouched) */
  STAGEVAR_ERR_CUDA = 4            /* a CUDA launch failed (CUDA launcher only) */
};

/* CPU reference. Validates everything before writing: on error, out is left untouched.
 * Accumulates in double, so it matches the float64 numpy reference to float32 rounding. */
STAGEVAR_API int stagevar_token_restore_cpu(const float* prev, const float* rows,
                                            const int64_t* indices, int B, int h, int w, int H,
                                            int W, int C, int r, float* out);

#ifdef __cplusplus
}
#endif

/* Shape and pointer checks shared by the CPU and CUDA entry points (same codes on both). */
static inline int stagevar_token_restore_check(const float* prev, const float* rows,
                                               const int64_t* indices, int B, int h, int w,
                                               int H, int W, int C, int r, const float* out) {
  if (B <= 0 || h <= 0 || w <= 0 || H <= 0 || W <= 0 || C <= 0 || r < 0) return STAGEVAR_ERR_BAD_SIZE;
  const int64_t M = (int64_t)H * W;
  const int64_t m = (int64_t)h * w;
  if (r > M) return STAGEVAR_ERR_BAD_SIZE;
  /* Every element count must fit in a signed 64-bit index with room to spare. */
  const int64_t limit = INT64_MAX / 4;
  if (M > limit / C / B || m > limit / C / B) return STAGEVAR_ERR_BAD_SIZE;
  if (prev == 0 || out == 0) return STAGEVAR_ERR_NULL_POINTER;
  if (r > 0 && (rows == 0 || indices == 0)) return STAGEVAR_ERR_NULL_POINTER;
  return STAGEVAR_OK;
}

#endif /* STAGEVAR_TOKEN_RESTORE_H */
