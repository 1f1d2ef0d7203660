// TensorRT 10 IPluginV3 wrapper of the token-restore op (DESIGN.md section 8).
//
// STATUS: written against TensorRT 10's documented IPluginV3 API (IPluginV3OneCore,
// IPluginV3OneBuild, IPluginV3OneRuntime, IPluginCreatorV3One) but NOT yet compiled or run: the
// machine it was written on has no TensorRT. CMake builds it (target stagevar_trt_plugin) only
// when NvInfer.h is found via -DTensorRT_ROOT=... and a CUDA compiler exists.
//
// Plugin: name "StageVarTokenRestore", version "1", namespace "" (the ONNX parser's default).
// Fields (int32 scalars): h, w (previous grid), H, W (current grid).
// Inputs : 0 prev (B, h*w, C) float32, 1 rows (B, r, C) float32, 2 indices (B, r) int64.
// Output : 0 out (B, H*W, C) float32. Linear (row-major) format only.
// Semantics and the kernel: token_restore.h / token_restore_cuda.h.
//
// Loading: IPluginRegistry::loadLibrary("libstagevar_trt_plugin.so") uses the exported
// getCreators / setLoggerFinder below; or call stagevar_register_trt_plugin() after dlopen.
#include <NvInferRuntime.h>
#include <cuda_runtime_api.h>

#include <cstdint>
#include <cstring>
#include <string>
#include <vector>

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
  TokenRestorePlugin(int32_t h, int32_t w, int32_t H, int32_t W, std::string ns)
      : mH{h}, mW{w}, mOutH{H}, mOutW{W}, mNamespace{std::move(ns)} {
    initFields();
  }

  TokenRestorePlugin(TokenRestorePlugin const& other)
      : mH{other.mH}, mW{other.mW}, mOutH{other.mOutH}, mOutW{other.mOutW},
        mNamespace{other.mNamespace} {
    initFields();  // the fields point into this object, never into `other`
  }

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
    if (nbOutputs != 1 || nbInputs != 3) return -1;
    (void)inputTypes;
    outputTypes[0] = DataType::kFLOAT;
    return 0;
  }

  int32_t getOutputShapes(DimsExprs const* inputs, int32_t nbInputs, DimsExprs const* shapeInputs,
                          int32_t nbShapeInputs, DimsExprs* outputs, int32_t nbOutputs,
                          IExprBuilder& exprBuilder) noexcept override {
    (void)shapeInputs;
    (void)nbShapeInputs;
    if (nbInputs != 3 || nbOutputs != 1 || inputs[0].nbDims != 3) return -1;
    outputs[0].nbDims = 3;
    outputs[0].d[0] = inputs[0].d[0];
    outputs[0].d[1] = exprBuilder.constant(static_cast<int64_t>(mOutH) * mOutW);
    outputs[0].d[2] = inputs[0].d[2];
    return 0;
  }

  bool supportsFormatCombination(int32_t pos, DynamicPluginTensorDesc const* inOut,
                                 int32_t nbInputs, int32_t nbOutputs) noexcept override {
    if (nbInputs != 3 || nbOutputs != 1 || pos < 0 || pos > 3) return false;
    PluginTensorDesc const& desc = inOut[pos].desc;
    if (desc.format != TensorFormat::kLINEAR) return false;
    return pos == 2 ? desc.type == DataType::kINT64 : desc.type == DataType::kFLOAT;
  }

  int32_t configurePlugin(DynamicPluginTensorDesc const* in, int32_t nbInputs,
                          DynamicPluginTensorDesc const* out, int32_t nbOutputs) noexcept override {
    (void)out;
    if (nbInputs != 3 || nbOutputs != 1) return -1;
    if (in[0].desc.dims.nbDims != 3 || in[1].desc.dims.nbDims != 3 ||
        in[2].desc.dims.nbDims != 2) {
      return -1;
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
    if (nbInputs != 3 || nbOutputs != 1) return -1;
    if (in[0].dims.d[1] != static_cast<int64_t>(mH) * mW) return -1;
    if (out[0].dims.d[1] != static_cast<int64_t>(mOutH) * mOutW) return -1;
    return 0;
  }

  int32_t enqueue(PluginTensorDesc const* inputDesc, PluginTensorDesc const* outputDesc,
                  void const* const* inputs, void* const* outputs, void* workspace,
                  cudaStream_t stream) noexcept override {
    (void)outputDesc;
    (void)workspace;
    int64_t const B = inputDesc[0].dims.d[0];
    int64_t const C = inputDesc[0].dims.d[2];
    int64_t const r = inputDesc[1].dims.d[1];
    if (B > INT32_MAX || C > INT32_MAX || r > INT32_MAX) return -1;
    return stagevar_token_restore_cuda(
        static_cast<float const*>(inputs[0]), static_cast<float const*>(inputs[1]),
        static_cast<int64_t const*>(inputs[2]), static_cast<int>(B), mH, mW, mOutH, mOutW,
        static_cast<int>(C), static_cast<int>(r), static_cast<float*>(outputs[0]), stream);
  }

  IPluginV3* attachToContext(IPluginResourceContext* context) noexcept override {
    (void)context;
    return clone();
  }

  PluginFieldCollection const* getFieldsToSerialize() noexcept override { return &mFieldCollection; }

 private:
  void initFields() {
    mFields.clear();
    mFields.emplace_back("h", &mH, PluginFieldType::kINT32, 1);
    mFields.emplace_back("w", &mW, PluginFieldType::kINT32, 1);
    mFields.emplace_back("H", &mOutH, PluginFieldType::kINT32, 1);
    mFields.emplace_back("W", &mOutW, PluginFieldType::kINT32, 1);
    mFieldCollection.nbFields = static_cast<int32_t>(mFields.size());
    mFieldCollection.fields = mFields.data();
  }

  int32_t mH, mW, mOutH, mOutW;
  std::string mNamespace;
  std::vector<PluginField> mFields;
  PluginFieldCollection mFieldCollection{};
};

class TokenRestoreCreator final : public IPluginCreatorV3One {
 public:
  TokenRestoreCreator() {
    mFields.emplace_back("h", nullptr, PluginFieldType::kINT32, 1);
    mFields.emplace_back("w", nullptr, PluginFieldType::kINT32, 1);
    mFields.emplace_back("H", nullptr, PluginFieldType::kINT32, 1);
    mFields.emplace_back("W", nullptr, PluginFieldType::kINT32, 1);
    mFieldCollection.nbFields = static_cast<int32_t>(mFields.size());
    mFieldCollection.fields = mFields.data();
  }

  IPluginV3* createPlugin(AsciiChar const* name, PluginFieldCollection const* fc,
                          TensorRTPhase phase) noexcept override {
    (void)name;
    (void)phase;  // the same fields serve the build and the runtime phase
    if (fc == nullptr) return nullptr;
    int32_t v[4] = {0, 0, 0, 0};
    bool seen[4] = {false, false, false, false};
    char const* keys[4] = {"h", "w", "H", "W"};
    for (int32_t i = 0; i < fc->nbFields; ++i) {
      PluginField const& f = fc->fields[i];
      if (f.name == nullptr || f.data == nullptr || f.length < 1) continue;
      for (int k = 0; k < 4; ++k) {
        if (std::strcmp(f.name, keys[k]) != 0) continue;
        if (f.type == PluginFieldType::kINT32) {
          v[k] = *static_cast<int32_t const*>(f.data);
        } else if (f.type == PluginFieldType::kINT64) {
          v[k] = static_cast<int32_t>(*static_cast<int64_t const*>(f.data));
        } else {
          return nullptr;
        }
        seen[k] = true;
      }
    }
    for (int k = 0; k < 4; ++k) {
      if (!seen[k] || v[k] <= 0) return nullptr;
    }
    try {
      return new TokenRestorePlugin(v[0], v[1], v[2], v[3], mNamespace);
    } catch (...) {
      return nullptr;
    }
  }

  PluginFieldCollection const* getFieldNames() noexcept override { return &mFieldCollection; }
  AsciiChar const* getPluginName() const noexcept override { return kPluginName; }
  AsciiChar const* getPluginVersion() const noexcept override { return kPluginVersion; }
  AsciiChar const* getPluginNamespace() const noexcept override { return mNamespace.c_str(); }

 private:
  std::string mNamespace;
  std::vector<PluginField> mFields;
  PluginFieldCollection mFieldCollection{};
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
