// A shared library linked as libstagevar_trt_plugin.so is (static CUDA part, static cudart, no
// build RUNPATH), for checking that linkage where the TensorRT headers are absent (CI):
// plugins/check_self_contained.sh must accept it. Calls the CUDA launcher so the linker keeps it.
#include "token_restore_cuda.h"

extern "C" STAGEVAR_API int stagevar_self_contained_probe(void) {
  // Invalid sizes: returns STAGEVAR_ERR_BAD_SIZE without touching the GPU.
  return stagevar_token_restore_cuda(nullptr, nullptr, nullptr, 0, 0, 0, 0, 0, 0, 0, nullptr, nullptr);
}
