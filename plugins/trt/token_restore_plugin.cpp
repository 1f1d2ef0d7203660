// TensorRT 10 IPluginV3 wrapper of the token-restore op (DESIGN.md section 8).
//
// STATUS: written against TensorRT 10's IPluginV3 API (IPluginV3OneCore, IPluginV3OneBuild,
// IPluginV3OneRuntime, IPluginCreatorV3One); compiled (-Wall -Wextra, clean) against the
// TensorRT 10.7 headers and exercised with a fake registry, but never run inside TensorRT: the
// machine it was written on has no TensorRT and no GPU. CMake builds it (target stagevar_trt_plugin) only
// when NvInfer.h is found via -DTensorRT_ROOT=... and a CUDA compiler exists.
//
// Plugin: name "StageVarTokenRestore", version "1", namespace "" (the ONNX parser's default).
// The ONNX node is `stagevar.TokenRestore`; `stagevar-export build --plugins` renames it to this
// plugin (exporter/onnx_local_functions.py: plugin_variant). No fields: every size comes from
// the input shapes, so one plugin instance serves every optimization profile (every scale).
// Inputs : 0 x (B, M, C)        float32, only its shape is used (the output has it; M = H*W)
//          1 prev (B, h*w, C)   float32, the previous scale's chunk output
//          2 rows (B, r, C)     float32, the chunk's r outputs
//          3 indices (B, r)     int64
//          4 area_h (H, h)      float32 } the 1-D area-resize matrices; only their shapes are
//          5 area_w (W, w)      float32 } read: the kernel computes the same weights itself
// Output : 0 y (B, M, C) float32. Linear (row-major) format only.
// Semantics and the kernel: token_restore.h / token_restore_cuda.h.
//
// Loading: IPluginRegistry::loadLibrary("libstagevar_trt_plugin.so") uses the exported
// getCreators / setLoggerFinder below; or call stagevar_register_trt_plugin() after dlopen.
#include <NvInferRuntime.h>
#include <cuda_runtime_api.h>

#include <cstdint>
#include <string>
#include <utility>

#include "token_restore_cuda.h"

namespace {

using namespace nvinfer1;

constexpr char const* kPluginName = "StageVarTokenRestore";
constexpr char const* kPluginVersion = "1";

class TokenRestorePlugin final : public IPluginV3,
                                 public IPluginV3OneCore,
                                 public IPluginV3OneBuild,
                                 public IPluginV3OneRuntime {
 public:
  explicit TokenRestorePlugin(std::string ns) : mNamespace{std::move(ns)} {}

  TokenRestorePlugin(TokenRestorePlugin const& other) = default;

  ~TokenRestorePlugin() override = default;

  // IPluginV3
  IPluginCapability* getCapabilityInterface(PluginCapabilityType type) noexcept override {
    switch (type) {
      case PluginCapabilityType::kCORE: return static_cast<IPluginV3OneCore*>(this);
      case PluginCapabilityType::kBUILD: return static_cast<IPluginV3OneBuild*>(this);
      case PluginCapabilityType::kRUNTIME: return static_cast<IPluginV3OneRuntime*>(this);
    }
    return nullptr;
  }

  IPluginV3* clone() noexcept override {
    try {
      return new TokenRestorePlugin(*this);
    } catch (...) {
      return nullptr;
    }
  }

  // IPluginV3OneCore
  AsciiChar const* getPluginName() const noexcept override { return kPluginName; }
  AsciiChar const* getPluginVersion() const noexcept override { return kPluginVersion; }
  AsciiChar const* getPluginNamespace() const noexcept override { return mNamespace.c_str(); }

  // IPluginV3OneBuild
  int32_t getNbOutputs() const noexcept override { return 1; }

  int32_t getOutputDataTypes(DataType* outputTypes, int32_t nbOutputs,
                             DataType const* inputTypes, int32_t nbInputs) const noexcept override {
    (void)inputTypes;
    if (nbOutputs != 1 || nbInputs != kNbInputs) return -1;
    // y is always float32: the only output type supportsFormatCombination accepts (not x's type,
    // which would break the build if x ever arrived as anything but float32).
    outputTypes[0] = DataType::kFLOAT;
    return 0;
  }

  int32_t getOutputShapes(DimsExprs const* inputs, int32_t nbInputs, DimsExprs const* shapeInputs,
                          int32_t nbShapeInputs, DimsExprs* outputs, int32_t nbOutputs,
                          IExprBuilder& exprBuilder) noexcept override {
    (void)shapeInputs;
    (void)nbShapeInputs;
    (void)exprBuilder;
    if (nbInputs != kNbInputs || nbOutputs != 1 || inputs[0].nbDims != 3) return -1;
    outputs[0] = inputs[0];  // y has x's shape
    return 0;
  }

  bool supportsFormatCombination(int32_t pos, DynamicPluginTensorDesc const* inOut,
                                 int32_t nbInputs, int32_t nbOutputs) noexcept override {
    if (nbInputs != kNbInputs || nbOutputs != 1 || pos < 0 || pos > kNbInputs) return false;
    PluginTensorDesc const& desc = inOut[pos].desc;
    if (desc.format != TensorFormat::kLINEAR) return false;
    return pos == kIndices ? desc.type == DataType::kINT64 : desc.type == DataType::kFLOAT;
  }

  int32_t configurePlugin(DynamicPluginTensorDesc const* in, int32_t nbInputs,
                          DynamicPluginTensorDesc const* out, int32_t nbOutputs) noexcept override {
    (void)out;
    if (nbInputs != kNbInputs || nbOutputs != 1) return -1;
    int32_t const ranks[kNbInputs] = {3, 3, 3, 2, 2, 2};
    for (int32_t i = 0; i < kNbInputs; ++i) {
      if (in[i].desc.dims.nbDims != ranks[i]) return -1;
    }
    return 0;
  }

  size_t getWorkspaceSize(DynamicPluginTensorDesc const* inputs, int32_t nbInputs,
                          DynamicPluginTensorDesc const* outputs,
                          int32_t nbOutputs) const noexcept override {
    (void)inputs; (void)nbInputs; (void)outputs; (void)nbOutputs;
    return 0;
  }

  // IPluginV3OneRuntime
  int32_t onShapeChange(PluginTensorDesc const* in, int32_t nbInputs, PluginTensorDesc const* out,
                        int32_t nbOutputs) noexcept override {
    (void)out;
    if (nbInputs != kNbInputs || nbOutputs != 1) return -1;
    Sizes const z = sizes(in);  // B and C come from prev, r from rows, the grids from area_h/area_w
    // x holds H*W tokens, prev h*w; rows and indices agree on r; everything on B and C. x's B and C
    // matter most: y (the buffer enqueue writes B*H*W*C floats into) takes x's shape.
    if (in[kX].dims.d[0] != z.B || in[kX].dims.d[1] != z.H * z.W || in[kX].dims.d[2] != z.C) return -1;
    if (in[kPrev].dims.d[1] != z.h * z.w) return -1;
    if (in[kIndices].dims.d[1] != z.r || in[kRows].dims.d[0] != z.B || in[kIndices].dims.d[0] != z.B) return -1;
    if (in[kRows].dims.d[2] != z.C) return -1;
    return 0;
  }

  int32_t enqueue(PluginTensorDesc const* inputDesc, PluginTensorDesc const* outputDesc,
                  void const* const* inputs, void* const* outputs, void* workspace,
                  cudaStream_t stream) noexcept override {
    (void)outputDesc;
    (void)workspace;
    Sizes const z = sizes(inputDesc);
    int64_t const all[] = {z.B, z.h, z.w, z.H, z.W, z.C, z.r};
    for (int64_t v : all) {
      if (v > INT32_MAX) return -1;
    }
    return stagevar_token_restore_cuda(
        static_cast<float const*>(inputs[kPrev]), static_cast<float const*>(inputs[kRows]),
        static_cast<int64_t const*>(inputs[kIndices]), static_cast<int>(z.B), static_cast<int>(z.h),
        static_cast<int>(z.w), static_cast<int>(z.H), static_cast<int>(z.W), static_cast<int>(z.C),
        static_cast<int>(z.r), static_cast<float*>(outputs[0]), stream);
  }

  IPluginV3* attachToContext(IPluginResourceContext* context) noexcept override {
    (void)context;
    return clone();
  }

  PluginFieldCollection const* getFieldsToSerialize() noexcept override { return &mNoFields; }

 private:
  enum : int32_t { kX = 0, kPrev = 1, kRows = 2, kIndices = 3, kAreaH = 4, kAreaW = 5, kNbInputs = 6 };

  struct Sizes {
    int64_t B, h, w, H, W, C, r;
  };

  // Grid sizes from the area matrices' shapes: (H, h) and (W, w).
  static Sizes sizes(PluginTensorDesc const* in) {
    return Sizes{in[kPrev].dims.d[0], in[kAreaH].dims.d[1], in[kAreaW].dims.d[1], in[kAreaH].dims.d[0],
                 in[kAreaW].dims.d[0], in[kPrev].dims.d[2], in[kRows].dims.d[1]};
  }

  std::string mNamespace;
  PluginFieldCollection mNoFields{0, nullptr};
};

class TokenRestoreCreator final : public IPluginCreatorV3One {
 public:
  IPluginV3* createPlugin(AsciiChar const* name, PluginFieldCollection const* fc,
                          TensorRTPhase phase) noexcept override {
    // No fields: the ONNX parser passes the node's attributes (none besides the plugin
    // version and namespace, which it consumes itself); sizes come from the input shapes.
    (void)name;
    (void)fc;
    (void)phase;
    try {
      return new TokenRestorePlugin(mNamespace);
    } catch (...) {
      return nullptr;
    }
  }

  PluginFieldCollection const* getFieldNames() noexcept override { return &mNoFields; }
  AsciiChar const* getPluginName() const noexcept override { return kPluginName; }
  AsciiChar const* getPluginVersion() const noexcept override { return kPluginVersion; }
  AsciiChar const* getPluginNamespace() const noexcept override { return mNamespace.c_str(); }

 private:
  std::string mNamespace;
  PluginFieldCollection mNoFields{0, nullptr};
};

TokenRestoreCreator& creator() {
  static TokenRestoreCreator instance;
  return instance;
}

}  // namespace

// Entry points of a dynamically loaded TensorRT 10 plugin library (IPluginRegistry::loadLibrary).
extern "C" STAGEVAR_API void setLoggerFinder(nvinfer1::ILoggerFinder* finder) {
  (void)finder;  // the plugin logs nothing
}

extern "C" STAGEVAR_API nvinfer1::IPluginCreatorInterface* const* getCreators(int32_t& nbCreators) {
  static nvinfer1::IPluginCreatorInterface* const creators[] = {&creator()};
  nbCreators = 1;
  return creators;
}

// Explicit registration for callers that dlopen the library themselves. Returns 0 on success.
extern "C" STAGEVAR_API int stagevar_register_trt_plugin(void) {
  nvinfer1::IPluginRegistry* registry = getPluginRegistry();
  if (registry == nullptr) return 1;
  return registry->registerCreator(creator(), "") ? 0 : 1;
}
