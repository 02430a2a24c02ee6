// edgedf::TernaryLinear as an ONNX Runtime custom op (runtime/backends/ort_native.py builds it and registers it
// with a session). The same kernel as the OpenVINO op (ternary_core.hpp): BitNet's exact per-token int8 codes, the
// ternary GEMM on the CPU's best path, g / s and the bias in the epilogue; each block of rows is quantised and
// multiplied by one thread of the session's intra-op pool while its codes are in cache.
//
//   inputs  x float32 [..., K], w_packed uint8 [N, ceil(K / 4)], w_scale float32 [1], bias float32 [N]
//   output  y float32 [..., N]
//
// Unlike the OpenVINO op it takes nothing around it in (the RMSNorm before it, GELU, the residual): ONNX Runtime
// fuses the norm into one SimplifiedLayerNormalization node of its own. Built against ONNX Runtime's C API only
// (third_party/onnxruntime/onnxruntime_c_api.h, API version 21): it loads into ONNX Runtime 1.21 and later.

#include <functional>
#include <thread>

#include "ternary_core.hpp"
#include "third_party/onnxruntime/onnxruntime_c_api.h"

namespace edgedf {
namespace {

const OrtApi* g_api = nullptr;

struct Kernel {
    std::mutex mu;  // guards the re-laid-out weights, made on the first run (weights are initializers)
    const void* source = nullptr;
    std::shared_ptr<Packed> packed;
};

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
    const OrtValue *x = nullptr, *w = nullptr, *g = nullptr, *b = nullptr;
    for (auto [i, v] : {std::pair<size_t, const OrtValue**>{0, &x}, {1, &w}, {2, &g}, {3, &b}})
        if (OrtStatus* st = g_api->KernelContext_GetInput(ctx, i, v)) return st;
    Shape xs, ws, gs, bs;
    for (auto [v, s] : {std::pair<const OrtValue*, Shape*>{x, &xs}, {w, &ws}, {g, &gs}, {b, &bs}})
        if (OrtStatus* st = shape_of(v, *s)) return st;
    if (xs.dims.empty() || ws.dims.size() != 2) return fail("TernaryLinear takes x [..., K] and w_packed [N, K/4]");
    const int64_t k = xs.dims.back(), n = ws.dims[0];
    if (ws.dims[1] != (k + 3) / 4) return fail("TernaryLinear: w_packed does not match K");
    if (bs.count != n) return fail("TernaryLinear: the bias does not have N values");
    if (gs.count != 1) return fail("TernaryLinear: w_scale must be one value");
    const float *xd = nullptr, *gd = nullptr, *bd = nullptr;
    const uint8_t* wd = nullptr;
    if (OrtStatus* st = data_of(x, xd)) return st;
    if (OrtStatus* st = data_of(w, wd)) return st;
    if (OrtStatus* st = data_of(g, gd)) return st;
    if (OrtStatus* st = data_of(b, bd)) return st;
    std::vector<int64_t> ys = xs.dims;
    ys.back() = n;
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
    for_row_blocks(isa, rows, tasks, spawn,
                   [&](int64_t m0, int64_t m1) { run_rows(isa, layer, xd + m0 * k, m1 - m0, yd + m0 * n, false); });
    return status;
}

struct Op : OrtCustomOp {
    Op() : OrtCustomOp{} {
        version = ORT_API_VERSION;
        GetName = [](const OrtCustomOp*) { return "TernaryLinear"; };
        GetExecutionProviderType = [](const OrtCustomOp*) { return "CPUExecutionProvider"; };
        GetInputTypeCount = [](const OrtCustomOp*) -> size_t { return 4; };
        GetInputType = [](const OrtCustomOp*, size_t i) {
            return i == 1 ? ONNX_TENSOR_ELEMENT_DATA_TYPE_UINT8 : ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT;
        };
        GetOutputTypeCount = [](const OrtCustomOp*) -> size_t { return 1; };
        GetOutputType = [](const OrtCustomOp*, size_t) { return ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT; };
        GetInputCharacteristic = [](const OrtCustomOp*, size_t) { return INPUT_OUTPUT_REQUIRED; };
        GetOutputCharacteristic = [](const OrtCustomOp*, size_t) { return INPUT_OUTPUT_REQUIRED; };
        GetInputMemoryType = [](const OrtCustomOp*, size_t) { return OrtMemTypeDefault; };
        GetVariadicInputMinArity = [](const OrtCustomOp*) { return 1; };
        GetVariadicInputHomogeneity = [](const OrtCustomOp*) { return 1; };
        GetVariadicOutputMinArity = [](const OrtCustomOp*) { return 1; };
        GetVariadicOutputHomogeneity = [](const OrtCustomOp*) { return 1; };
        CreateKernelV2 = [](const OrtCustomOp*, const OrtApi*, const OrtKernelInfo*, void** kernel) -> OrtStatus* {
            *kernel = new Kernel();
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
