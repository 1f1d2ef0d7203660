/* CUDA launcher of the token-restore op; semantics as in token_restore.h.
 *
 * All pointers are device pointers; the work is enqueued on `stream` (asynchronous; the return
 * code only reports argument and launch errors). Two kernels run in stream order: the area
 * upsample writes every output element, then the scatter overwrites the r indexed tokens.
 * Indices outside [0, H*W) are skipped on the device (they cannot be validated on the host
 * without a synchronising copy); the CPU reference rejects them instead.
 */
#ifndef STAGEVAR_TOKEN_RESTORE_CUDA_H
#define STAGEVAR_TOKEN_RESTORE_CUDA_H

#include <cuda_runtime_api.h>

#include "token_restore.h"

#ifdef __cplusplus
extern "C" {
#endif

STAGEVAR_API int stagevar_token_restore_cuda(const float* prev, const float* rows,
                                             const int64_t* indices, int B, int h, int w, int H,
                                             int W, int C, int r, float* out,
                                             cudaStream_t stream);

#ifdef __cplusplus
}
#endif

#endif /* STAGEVAR_TOKEN_RESTORE_CUDA_H */
