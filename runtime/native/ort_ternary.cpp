// edgedf::TernaryLinear as an ONNX Runtime custom op (runtime/backends/ort_native.py builds it and registers it
// with a session). The same kernel as the OpenVINO op (ternary_core.hpp): BitNet's exact per-token int8 codes, the
// ternary GEMM on the CPU's best path, g / s and the bias in the epilogue; each block of rows is quantised and
// multiplied by one thread of the session's intra-op pool while its codes are in cache.
//
//   inputs  x float32 [..., K], w_packed uint8 [N, ceil(K / 4)], w_scale float32 [1], bias float32 [N];
//           optional: norm_weight float32 [K] and norm_eps float32 [1] (the RMSNorm in front, applied to x),
//           residual float32 [..., N] (added to the output)
//   attribute gelu int (0): GELU on the output, before the residual
//   output  y float32 [..., N]
//
// The canonical graph's nodes take only the four inputs; runtime/backends/ort_native.py (fuse) gives each node the
// norm before it, the GELU after fc1 and the residual add after proj and fc2 as ONNX Runtime opens the model, as
// the OpenVINO op's conversion does: each task normalises, quantises, multiplies, applies GELU and adds the residual
// to its block of rows while they are in cache. Built against ONNX Runtime's C API only
// (third_party/onnxruntime/onnxruntime_c_api.h, API version 21): it loads into ONNX Runtime 1.21 and later.

#include <functional>
#include <thread>

#include "ternary_core.hpp"
#include "third_party/onnxruntime/onnxruntime_c_api.h"

namespace edgedf {
namespace {

const OrtApi* g_api = nullptr;

struct Kernel {
    bool gelu = false;
    std::mutex mu;  // guards the re-laid-out weights, made on the first run (weights are initializers)
    const void* source = nullptr;
    std::shared_ptr<Packed> packed;
};

constexpr size_t kInputs = 7;  // x, w_packed, w_scale, bias, then the optional norm_weight, norm_eps, residual

struct Shape {
    std::vector<int64_t> dims;
    int64_t count = 1;
};

OrtStatus* shape_of(const OrtValue* v, Shape& s) {
    OrtTensorTypeAndShapeInfo* info = nullptr;
    if (OrtStatus* st = g_api->GetTensorTypeAndShape(v, &info)) return st;
    size_t rank = 0;
    OrtStatus* st = g_api->GetDimensionsCount(info, &rank);
    if (!st) {
        s.dims.resize(rank);
        st = g_api->GetDimensions(info, s.dims.data(), rank);
    }
    g_api->ReleaseTensorTypeAndShapeInfo(info);
    s.count = 1;
    for (int64_t d : s.dims) s.count *= d;
    return st;
}

template <class T>
OrtStatus* data_of(const OrtValue* v, T*& out) {
    void* p = nullptr;
    OrtStatus* st = g_api->GetTensorMutableData(const_cast<OrtValue*>(v), &p);
    out = static_cast<T*>(p);
    return st;
}

OrtStatus* fail(const std::string& msg) { return g_api->CreateStatus(ORT_INVALID_ARGUMENT, msg.c_str()); }

Isa active_isa() {
    static const Isa isa = detect_isa();
    return isa;
}


OrtStatus* compute(Kernel& kernel, OrtKernelContext* ctx) {
    size_t count = 0;
    if (OrtStatus* st = g_api->KernelContext_GetInputCount(ctx, &count)) return st;
    const OrtValue* in[kInputs] = {};  // an optional input left out stays null
    Shape shape[kInputs];
    for (size_t i = 0; i < std::min(count, kInputs); ++i) {
        if (OrtStatus* st = g_api->KernelContext_GetInput(ctx, i, &in[i])) return st;
        if (in[i])
            if (OrtStatus* st = shape_of(in[i], shape[i])) return st;
    }
    const Shape &xs = shape[0], &ws = shape[1];
    if (!in[0] || !in[1] || !in[2] || !in[3]) return fail("TernaryLinear takes x, w_packed, w_scale and bias");
    if (xs.dims.empty() || ws.dims.size() != 2) return fail("TernaryLinear takes x [..., K] and w_packed [N, K/4]");
    const int64_t k = xs.dims.back(), n = ws.dims[0];
    if (ws.dims[1] != (k + 3) / 4) return fail("TernaryLinear: w_packed does not match K");
    if (shape[3].count != n) return fail("TernaryLinear: the bias does not have N values");
    if (shape[2].count != 1) return fail("TernaryLinear: w_scale must be one value");
    if (!in[4] != !in[5]) return fail("TernaryLinear: norm_weight and norm_eps go together");
    if (in[4] && (shape[4].count != k || shape[5].count != 1))
        return fail("TernaryLinear: the norm takes K weights and one eps");
    std::vector<int64_t> ys = xs.dims;
    ys.back() = n;
    if (in[6] && shape[6].dims != ys) return fail("TernaryLinear: the residual's shape is not the output's");
    const float *xd = nullptr, *gd = nullptr, *bd = nullptr, *gamma = nullptr, *eps = nullptr, *res = nullptr;
    const uint8_t* wd = nullptr;
    if (OrtStatus* st = data_of(in[0], xd)) return st;
    if (OrtStatus* st = data_of(in[1], wd)) return st;
    if (OrtStatus* st = data_of(in[2], gd)) return st;
    if (OrtStatus* st = data_of(in[3], bd)) return st;
    for (auto [i, d] : {std::pair<size_t, const float**>{4, &gamma}, {5, &eps}, {6, &res}})
        if (in[i])
            if (OrtStatus* st = data_of(in[i], *d)) return st;
    OrtValue* y = nullptr;
    if (OrtStatus* st = g_api->KernelContext_GetOutput(ctx, 0, ys.data(), ys.size(), &y)) return st;
    float* yd = nullptr;
    if (OrtStatus* st = data_of(y, yd)) return st;

    Layer layer;
    try {
        std::lock_guard<std::mutex> lock(kernel.mu);
        if (!kernel.packed || kernel.source != wd || kernel.packed->n != n || kernel.packed->k != k) {
            kernel.packed = pack(wd, n, k);
            kernel.source = wd;
        }
        layer.p = kernel.packed;
    } catch (const std::exception& e) {
        return fail(e.what());
    }
    layer.g = *gd;
    layer.bias = bd;
    layer.gamma = gamma;
    layer.eps = eps ? *eps : 0.f;
    const Isa isa = active_isa();
    const int64_t rows = k ? xs.count / k : 0;
    // ONNX Runtime runs `tasks` calls of the worker on its intra-op pool; those that start after the rows are all
    // taken return at once (a kernel cannot ask the pool's size).
    const int64_t tasks = std::max<int64_t>(1, std::thread::hardware_concurrency());
    OrtStatus* status = nullptr;
    const auto spawn = [&](int64_t threads, const auto& worker) {
        std::function<void()> fn = worker;
        status = g_api->KernelContext_ParallelFor(
            ctx, [](void* data, size_t) { (*static_cast<std::function<void()>*>(data))(); },
            static_cast<size_t>(threads), static_cast<size_t>(threads), &fn);
    };
    for_row_blocks(isa, rows, tasks, spawn, [&](int64_t m0, int64_t m1) {
        float* yb = yd + m0 * n;
        run_rows(isa, layer, xd + m0 * k, m1 - m0, yb, kernel.gelu);
        if (res) add_residual(yb, res + m0 * n, (m1 - m0) * n);
    });
    return status;
}

struct Op : OrtCustomOp {
    Op() : OrtCustomOp{} {
        version = ORT_API_VERSION;
        GetName = [](const OrtCustomOp*) { return "TernaryLinear"; };
        GetExecutionProviderType = [](const OrtCustomOp*) { return "CPUExecutionProvider"; };
        GetInputTypeCount = [](const OrtCustomOp*) -> size_t { return kInputs; };
        GetInputType = [](const OrtCustomOp*, size_t i) {
            return i == 1 ? ONNX_TENSOR_ELEMENT_DATA_TYPE_UINT8 : ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT;
        };
        GetOutputTypeCount = [](const OrtCustomOp*) -> size_t { return 1; };
        GetOutputType = [](const OrtCustomOp*, size_t) { return ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT; };
        GetInputCharacteristic = [](const OrtCustomOp*, size_t i) {
            return i < 4 ? INPUT_OUTPUT_REQUIRED : INPUT_OUTPUT_OPTIONAL;
        };
        GetOutputCharacteristic = [](const OrtCustomOp*, size_t) { return INPUT_OUTPUT_REQUIRED; };
        GetInputMemoryType = [](const OrtCustomOp*, size_t) { return OrtMemTypeDefault; };
        GetVariadicInputMinArity = [](const OrtCustomOp*) { return 1; };
        GetVariadicInputHomogeneity = [](const OrtCustomOp*) { return 1; };
        GetVariadicOutputMinArity = [](const OrtCustomOp*) { return 1; };
        GetVariadicOutputHomogeneity = [](const OrtCustomOp*) { return 1; };
        CreateKernelV2 = [](const OrtCustomOp*, const OrtApi* api, const OrtKernelInfo* info,
                            void** kernel) -> OrtStatus* {
            auto* made = new Kernel();
            int64_t gelu = 0;
            if (OrtStatus* st = api->KernelInfoGetAttribute_int64(info, "gelu", &gelu)) api->ReleaseStatus(st);
            made->gelu = gelu != 0;  // absent: 0
            *kernel = made;
            return nullptr;
        };
        KernelComputeV2 = [](void* kernel, OrtKernelContext* ctx) -> OrtStatus* {
            return compute(*static_cast<Kernel*>(kernel), ctx);
        };
        KernelDestroy = [](void* kernel) { delete static_cast<Kernel*>(kernel); };
        GetStartVersion = [](const OrtCustomOp*) { return 1; };
        GetEndVersion = [](const OrtCustomOp*) { return 1 << 30; };
    }
};

}  // namespace
}  // namespace edgedf

extern "C" __attribute__((visibility("default"))) OrtStatus* RegisterCustomOps(OrtSessionOptions* options,
                                                                               const OrtApiBase* base) {
    edgedf::g_api = base->GetApi(ORT_API_VERSION);
    if (!edgedf::g_api) return nullptr;  // cannot happen: an ONNX Runtime older than 1.21 would not load the model
    static edgedf::Op op;
    static OrtCustomOpDomain* domain = nullptr;  // one for the process: sessions keep pointing at it
    static std::mutex mu;
    std::lock_guard<std::mutex> lock(mu);
    if (!domain) {
        if (OrtStatus* st = edgedf::g_api->CreateCustomOpDomain("edgedf", &domain)) return st;
        if (OrtStatus* st = edgedf::g_api->CustomOpDomain_Add(domain, &op)) return st;
    }
    return edgedf::g_api->AddCustomOpDomain(options, domain);
}

extern "C" __attribute__((visibility("default"))) const char* edgedf_ternary_isa() {
    return edgedf::isa_name(edgedf::active_isa());
}
