// edgedf::TernaryLinear as a native OpenVINO CPU op (runtime/backends/ov_native.py builds and loads it).
//
//   y = (Round(x * s) / s) @ (c * g)^T + bias,   s = 127 / max(max|x| over K, 1e-5),   c in {-1, 0, +1}
//
// computed as BitNet's integer arithmetic (the codes and int32 sums of the ONNX Runtime `int8-exact` lowering):
//   q   = Round(x * s)                   float32 product, round half to even: PyTorch's int8 codes
//   acc = sum_k (q + 128) * c - 128 * sum_k c      int32, exact
//   y   = float(acc) * (g / s) + bias    g / s once per token: a division per output would cost more than the
//                                        GEMM on AMX; this rounds twice where (acc * g) / s rounds once
//
// The GEMM multiplies unsigned activation bytes (q + 128, in [1, 255]) by signed ternary bytes. The weights
// are re-laid out once per layer in blocks of 16 output columns x 4 k: [N/16][K/4][16][4], so that one
// broadcast 4-byte group of an activation row meets 16 columns at once (no horizontal sums).
//   AMX-INT8 (where Linux grants the tile state): TDPBUSD on 32x32 tiles; this layout is its B layout.
//   AVX-512 VNNI: vpdpbusd accumulates the 4 products straight into int32.
//   AVX-VNNI (AVX2 with the 256-bit VNNI of Alder Lake and later hybrid cores, which have no AVX-512): vpdpbusd on
//     ymm registers, 6 rows x 16 columns per tile.
//   AVX2 (no VNNI): vpmaddubsw gives pair sums in int16. A plain int8 GEMM must widen after every step
//     (pairs of 255 * 127 can reach 64770 and saturate); with |c| <= 1 a pair sum is at most 510, so 64 steps
//     (256 k values) accumulate in int16 before one vpmaddwd widens them: 2 instructions per step, not 3.
//   scalar: anything else (and the reference the SIMD paths are tested against).
// The path is chosen at run time from the CPU; EDGEDF_TERNARY_ISA=amx|avx512|avxvnni|avx2|scalar forces one (tests).
// The RMSNorm in front of each BitLinear is taken into the op as OpenVINO reads the ONNX (with_fused_norm): each
// task normalises its rows in cache and quantises them, so the normalised tensor never goes out to memory. Its
// float operations are the same on every path; like OpenVINO's own RMS op, it does not round as PyTorch does.
// So is the GELU after fc1 (with_fused_gelu), applied to each block of output rows while they are in cache.
// And, as each ViT block has them, fc2 is chained to fc1 (with_chained_layer: the hidden rows never leave the
// thread's cache) and the residual add after proj and fc2 is taken in (with_residual). qkv writes q, k and v in the
// attention's layout (with_heads_layout), q and k already scaled for its scores and k transposed
// (with_attention_inputs). Where the CPU has AVX-512, the attention itself, float32 as BitNet keeps it, then runs
// as edgedf's Attention op (with_fused_attention), its output already in token order (with_tokens_major).

#include "ternary_core.hpp"

#include "openvino/core/extension.hpp"
#include "openvino/core/op_extension.hpp"
#include "openvino/core/parallel.hpp"
#include "openvino/frontend/onnx/extension/conversion.hpp"
#include "openvino/frontend/node_context.hpp"
#include "openvino/op/add.hpp"
#include "openvino/op/concat.hpp"
#include "openvino/op/constant.hpp"
#include "openvino/op/divide.hpp"
#include "openvino/op/erf.hpp"
#include "openvino/op/gather.hpp"
#include "openvino/op/matmul.hpp"
#include "openvino/op/multiply.hpp"
#include "openvino/op/op.hpp"
#include "openvino/op/power.hpp"
#include "openvino/op/reduce_mean.hpp"
#include "openvino/op/reshape.hpp"
#include "openvino/op/softmax.hpp"
#include "openvino/op/sqrt.hpp"
#include "openvino/op/transpose.hpp"
#include "openvino/op/unsqueeze.hpp"

namespace edgedf {

// for_row_blocks' workers, on OpenVINO's threads
static const auto spawn = [](int64_t threads, const auto& worker) {
    ov::parallel_nt_static(static_cast<int>(threads), [&](int, int) { worker(); });
};

// The op's inputs: x, then one BitLinear (w_packed, w_scale, bias: 3 inputs; with its RMSNorm fused in, also
// norm_weight and norm_eps: 5); chained (with_chained_layer), a second BitLinear with its norm (5 more) that takes
// the first one's output, GELU'd where `gelu` is set, as its x; with `residual`, a last input added to the output
// (with_residual). Every combination computes what the graph it replaces computes, float for float.
class TernaryLinear : public ov::op::Op {
public:
    OPENVINO_OP("TernaryLinear", "edgedf");

    TernaryLinear() = default;
    explicit TernaryLinear(const ov::OutputVector& args, bool gelu = false, bool chain = false, bool residual = false,
                           int64_t splits = 0, int64_t heads = 0, float q_scale = 1.f, float k_scale = 1.f,
                           bool k_transposed = false)
        : Op(args), gelu_(gelu), chain_(chain), residual_(residual), splits_(splits), heads_(heads), q_scale_(q_scale),
          k_scale_(k_scale), k_transposed_(k_transposed) {
        constructor_validate_and_infer_types();
    }

    void validate_and_infer_types() override {
        const size_t layer_inputs = get_input_size() - (residual_ ? 1 : 0);
        NODE_VALIDATION_CHECK(this, chain_ ? layer_inputs == 11 : layer_inputs == 4 || layer_inputs == 6,
                              "TernaryLinear takes x, w_packed, w_scale, bias (and, fused, norm_weight, norm_eps; "
                              "chained, a second layer's five; with a residual, one more)");
        NODE_VALIDATION_CHECK(this, get_input_element_type(0) == ov::element::f32, "x must be float32");
        const size_t w_last = chain_ ? 6 : 1;
        for (size_t w : {size_t{1}, w_last})
            NODE_VALIDATION_CHECK(this, get_input_element_type(w) == ov::element::u8, "w_packed must be uint8");
        const auto& ws = get_input_partial_shape(w_last);
        auto out = get_input_partial_shape(0);
        if (out.rank().is_static() && ws.rank().is_static() && ws.rank().get_length() == 2)
            out[out.rank().get_length() - 1] = ws[0];
        if (heads_) {  // [B, T, S * H * D] written as S outputs [B, H, T, D]
            NODE_VALIDATION_CHECK(this, !residual_ && out.rank().is_static() && out.size() == 3 && out[1].is_static() &&
                                            out[2].is_static() && out[2].get_length() % (splits_ * heads_) == 0,
                                  "TernaryLinear in heads layout takes x [B, T, K] and S * H columns' multiple");
            NODE_VALIDATION_CHECK(this, !k_transposed_ || splits_ >= 2, "k_transposed needs a second split");
            const auto d = out[2].get_length() / (splits_ * heads_);
            out = ov::PartialShape{out[0], heads_, out[1], d};
            set_output_size(static_cast<size_t>(splits_));
            for (int64_t i = 0; i < splits_; ++i) set_output_type(static_cast<size_t>(i), ov::element::f32, out);
            if (k_transposed_) set_output_type(1, ov::element::f32, ov::PartialShape{out[0], heads_, d, out[2]});
            return;
        }
        if (residual_)
            NODE_VALIDATION_CHECK(this, get_input_element_type(get_input_size() - 1) == ov::element::f32,
                                  "the residual must be float32");
        set_output_type(0, ov::element::f32, out);
    }

    std::shared_ptr<ov::Node> clone_with_new_inputs(const ov::OutputVector& args) const override {
        return std::make_shared<TernaryLinear>(args, gelu_, chain_, residual_, splits_, heads_, q_scale_, k_scale_,
                                               k_transposed_);
    }

    bool visit_attributes(ov::AttributeVisitor& visitor) override {
        visitor.on_attribute("gelu", gelu_);
        visitor.on_attribute("chain", chain_);
        visitor.on_attribute("residual", residual_);
        visitor.on_attribute("splits", splits_);
        visitor.on_attribute("heads", heads_);
        visitor.on_attribute("q_scale", q_scale_);
        visitor.on_attribute("k_scale", k_scale_);
        visitor.on_attribute("k_transposed", k_transposed_);
        return true;
    }
    bool gelu() const { return gelu_; }
    bool chain() const { return chain_; }
    bool residual() const { return residual_; }
    int64_t heads() const { return heads_; }
    int64_t splits() const { return splits_; }
    bool k_transposed() const { return k_transposed_; }  // with_attention_inputs made it
    // the op that replaced this one where its q and k were taken into the attention (with_attention_inputs)
    std::shared_ptr<ov::Node> successor() const { return successor_.lock(); }
    void set_successor(const std::shared_ptr<ov::Node>& op) const { successor_ = op; }
    bool has_evaluate() const override { return true; }

    bool evaluate(ov::TensorVector& outputs, const ov::TensorVector& inputs) const override {
        const ov::Shape xs = inputs[0].get_shape();
        const int64_t k = static_cast<int64_t>(xs.back());
        const bool norm = chain_ || inputs.size() - (residual_ ? 1 : 0) == 6;
        const Layer first = layer(inputs, 1, k, norm);
        const Layer second = chain_ ? layer(inputs, 6, first.p->n, true) : Layer{};
        const int64_t n = chain_ ? second.p->n : first.p->n, hidden = first.p->n;
        const int64_t rows = static_cast<int64_t>(ov::shape_size(xs)) / std::max<int64_t>(k, 1);
        ov::Shape ys = xs;
        ys.back() = static_cast<size_t>(n);
        const int64_t tokens = heads_ ? static_cast<int64_t>(xs[1]) : 1, head_dim = heads_ ? n / (splits_ * heads_) : 0;
        if (heads_) ys = {xs[0], static_cast<size_t>(heads_), xs[1], static_cast<size_t>(head_dim)};
        std::vector<float*> ysplit;
        for (auto& out : outputs) {
            out.set_shape(ys);
            ysplit.push_back(out.data<float>());
        }
        const float* res = residual_ ? inputs.back().data<const float>() : nullptr;
        OPENVINO_ASSERT(!res || inputs.back().get_shape() == ys, "TernaryLinear: the residual's shape is not the output's");
        const float* xd = inputs[0].data<const float>();
        const Isa isa = active_isa();
        for_row_blocks(isa, rows, parallel_get_max_threads(), spawn, [&](int64_t m0, int64_t m1) {
            // rows [m0, m1) of the [rows, n] output: in place, or (heads layout) in this thread's buffer
            static thread_local std::vector<float> h, o;
            if (heads_) o.resize(std::max(o.size(), static_cast<size_t>((m1 - m0) * n)));
            float* yb = heads_ ? o.data() : ysplit[0] + m0 * n;
            if (chain_) {  // the first layer's output stays in this thread's cache for the second
                h.resize(std::max(h.size(), static_cast<size_t>((m1 - m0) * hidden)));
                run_rows(isa, first, xd + m0 * k, m1 - m0, h.data(), gelu_);
                run_rows(isa, second, h.data(), m1 - m0, yb, false);
            } else {
                run_rows(isa, first, xd + m0 * k, m1 - m0, yb, gelu_);
            }
            if (res) add_residual(yb, res + m0 * n, (m1 - m0) * n);
            if (heads_) write_heads(yb, m0, m1, n, tokens, head_dim, ysplit);
        });
        return true;
    }

    static Isa active_isa() {
        static const Isa isa = detect_isa();
        return isa;
    }

private:
    // Rows [m0, m1) of the [rows, n] output in yb: row b * T + t, columns (s, h, d) -> output s [b][h][t][d]; q (s = 0)
    // and k (s = 1) times their scales (the attention's Multiply, the same float product), k as [b][h][d][t] where
    // k_transposed.
    void write_heads(const float* yb, int64_t m0, int64_t m1, int64_t n, int64_t tokens, int64_t head_dim,
                     const std::vector<float*>& ysplit) const {
        const size_t bytes = static_cast<size_t>(head_dim) * sizeof(float);
        for (int64_t m = m0; m < m1; ++m) {
            const int64_t b = m / tokens, t = m % tokens;
            for (int64_t sh = 0; sh < splits_ * heads_; ++sh) {
                const int64_t s = sh / heads_, h = sh % heads_;
                if (s == 1 && k_transposed_) continue;
                const float* src = yb + (m - m0) * n + sh * head_dim;
                float* dst = ysplit[s] + ((b * heads_ + h) * tokens + t) * head_dim;
                const float c = s == 0 ? q_scale_ : s == 1 ? k_scale_ : 1.f;
                if (c != 1.f)
                    for (int64_t d = 0; d < head_dim; ++d) dst[d] = src[d] * c;
                else
                    std::memcpy(dst, src, bytes);
            }
        }
        if (!k_transposed_) return;
        // k^T: per run of rows of one image, each (h, d) row of the output written in one go
        for (int64_t r0 = m0; r0 < m1;) {
            const int64_t b = r0 / tokens, t0 = r0 % tokens, r1 = std::min(m1, (b + 1) * tokens);
            for (int64_t h = 0; h < heads_; ++h) {
                const float* src = yb + (r0 - m0) * n + (heads_ + h) * head_dim;
                float* dst = ysplit[1] + (b * heads_ + h) * head_dim * tokens + t0;
                for (int64_t d = 0; d < head_dim; ++d)
                    for (int64_t r = 0; r < r1 - r0; ++r) dst[d * tokens + r] = src[r * n + d] * k_scale_;
            }
            r0 = r1;
        }
    }

    // The layer whose w_packed is input w (its scale, bias and norm follow it), taking k inputs per row.
    Layer layer(const ov::TensorVector& inputs, size_t w, int64_t k, bool norm) const {
        const ov::Shape ws = inputs[w].get_shape();
        OPENVINO_ASSERT(static_cast<int64_t>(ws[1]) == (k + 3) / 4, "TernaryLinear: w_packed does not match K");
        Layer l;
        l.p = packed_weights(w, inputs[w], static_cast<int64_t>(ws[0]), k);
        l.g = *inputs[w + 1].data<const float>();
        l.bias = inputs[w + 2].data<const float>();
        if (norm) {
            l.gamma = inputs[w + 3].data<const float>();
            l.eps = *inputs[w + 4].data<const float>();
        }
        return l;
    }

    // Constant weights are re-laid out once; anything else (never in an exported bundle) on every call.
    std::shared_ptr<Packed> packed_weights(size_t input, const ov::Tensor& w, int64_t n, int64_t k) const {
        const bool constant = ov::as_type_ptr<ov::op::v0::Constant>(input_value(input).get_node_shared_ptr()) != nullptr;
        if (!constant) return pack(w.data<const uint8_t>(), n, k);
        Cache& c = cache_->at(input == 1 ? 0 : 1);
        std::call_once(c.once, [&] { c.packed = pack(w.data<const uint8_t>(), n, k); });
        return c.packed;
    }
    bool gelu_ = false;      // GELU on the first layer's output (with_fused_gelu)
    bool chain_ = false;     // a second layer follows (with_chained_layer)
    bool residual_ = false;  // the last input is added to the output (with_residual)
    int64_t splits_ = 0, heads_ = 0;  // heads_ > 0: q, k, v outputs in the attention's layout (with_heads_layout)
    float q_scale_ = 1.f, k_scale_ = 1.f;  // q and k scaled for the attention's scores (with_attention_inputs)
    bool k_transposed_ = false;            // k written as [B, H, D, T] (with_attention_inputs)
    mutable std::weak_ptr<ov::Node> successor_;
    struct Cache {
        std::once_flag once;
        std::shared_ptr<Packed> packed;
    };
    std::shared_ptr<std::array<Cache, 2>> cache_ = std::make_shared<std::array<Cache, 2>>();
};

// softmax(q k^T) v of q (scaled), k^T (scaled) and v [B, H, T, D] as with_attention_inputs' op writes them: one op
// instead of OpenVINO's MatMul, Softmax and MatMul (with_fused_attention), its output [B, H, T, D] or, tokens_major,
// [B, T, H, D] (the Transpose that follows taken in: with_tokens_major). Query rows are handed out in blocks as the
// BitLinear's are (for_row_blocks), each block's rows run by attention_rows.
class Attention : public ov::op::Op {
public:
    OPENVINO_OP("Attention", "edgedf");

    Attention() = default;
    explicit Attention(const ov::OutputVector& args, bool tokens_major = false)
        : Op(args), tokens_major_(tokens_major) {
        constructor_validate_and_infer_types();
    }

    void validate_and_infer_types() override {
        NODE_VALIDATION_CHECK(this, get_input_size() == 3, "Attention takes q, k^T and v");
        for (size_t i = 0; i < 3; ++i)
            NODE_VALIDATION_CHECK(this, get_input_element_type(i) == ov::element::f32 &&
                                            get_input_partial_shape(i).rank().compatible(4),
                                  "Attention takes float32 q, k^T and v of rank 4");
        auto out = get_input_partial_shape(0);
        if (tokens_major_ && out.rank().is_static()) out = ov::PartialShape{out[0], out[2], out[1], out[3]};
        set_output_type(0, ov::element::f32, out);
    }

    std::shared_ptr<ov::Node> clone_with_new_inputs(const ov::OutputVector& args) const override {
        return std::make_shared<Attention>(args, tokens_major_);
    }

    bool visit_attributes(ov::AttributeVisitor& visitor) override {
        visitor.on_attribute("tokens_major", tokens_major_);
        return true;
    }
    bool tokens_major() const { return tokens_major_; }
    bool has_evaluate() const override { return true; }

    bool evaluate(ov::TensorVector& outputs, const ov::TensorVector& inputs) const override {
        const ov::Shape s = inputs[0].get_shape();
        OPENVINO_ASSERT(inputs[1].get_shape() == ov::Shape({s[0], s[1], s[3], s[2]}) && inputs[2].get_shape() == s,
                        "Attention: q, k^T and v do not match");
        const auto h = static_cast<int64_t>(s[1]), t = static_cast<int64_t>(s[2]), d = static_cast<int64_t>(s[3]);
        outputs[0].set_shape(tokens_major_ ? ov::Shape{s[0], s[2], s[1], s[3]} : s);
        const float *q = inputs[0].data<const float>(), *kt = inputs[1].data<const float>(),
                    *v = inputs[2].data<const float>();
        float* y = outputs[0].data<float>();
        const Isa isa = TernaryLinear::active_isa();
        const auto rows = static_cast<int64_t>(s[0] * s[1]) * t;
        for_row_blocks(isa, rows, parallel_get_max_threads(), spawn, [&](int64_t m0, int64_t m1) {
            for (int64_t m = m0; m < m1;) {  // the rows of each head in [m0, m1)
                const int64_t head = m / t, r0 = m % t, r1 = std::min(t, r0 + m1 - m);
                float* o = tokens_major_ ? y + ((head / h) * t * h + head % h) * d : y + head * t * d;
                attention_rows(isa, q + head * t * d, kt + head * d * t, v + head * t * d, t, d, r0, r1, o,
                               tokens_major_ ? h * d : d);
                m += r1 - r0;
            }
        });
        return true;
    }

private:
    bool tokens_major_ = false;
};

// The RMSNorm in front of each BitLinear, as the canonical ONNX writes it (train.bitlinear.RMSNorm):
//   Mul(Div(x, Sqrt(Add(ReduceMean(Pow(x, 2), -1, keepdims), eps))), norm_weight)  ->  TernaryLinear(x, ...)
// converts to one TernaryLinear with the norm's weight and eps as inputs 5 and 6, which normalises each task's
// rows where it quantises them, instead of OpenVINO writing the normalised tensor out and the op reading it back.
// The match runs as OpenVINO's ONNX frontend converts the node, whose inputs are then already converted (the
// unused norm nodes drop out of the model); the bundle itself keeps the canonical graph.
template <typename T>
static std::shared_ptr<T> producer(const ov::Output<ov::Node>& out) {
    return ov::as_type_ptr<T>(out.get_node_shared_ptr());
}

static std::shared_ptr<ov::op::v0::Constant> f32_constant(const ov::Output<ov::Node>& out, size_t size) {
    const auto c = producer<ov::op::v0::Constant>(out);
    return c && c->get_element_type() == ov::element::f32 && ov::shape_size(c->get_shape()) == size ? c : nullptr;
}

// args (x, w_packed, w_scale, bias) with the norm fused in where x is such a norm of the last axis, else as given.
static ov::OutputVector with_fused_norm(const ov::OutputVector& args) {
    using namespace ov::op;
    const auto& xs = args[0].get_partial_shape();
    const auto mul = producer<v1::Multiply>(args[0]);
    if (args.size() != 4 || !mul || xs.rank().is_dynamic() || xs.size() == 0 || xs[xs.size() - 1].is_dynamic())
        return args;
    const auto k = static_cast<size_t>(xs[xs.size() - 1].get_length());
    const auto last_axis = [&](const ov::Output<ov::Node>& axes) {
        const auto c = producer<v0::Constant>(axes);
        const auto v = c ? c->cast_vector<int64_t>() : std::vector<int64_t>{};
        return v.size() == 1 && (v[0] == -1 || v[0] == static_cast<int64_t>(xs.size()) - 1);
    };
    for (int i = 0; i < 2; ++i) {  // Mul(norm, weight) or Mul(weight, norm); Add(mean, eps) or Add(eps, mean)
        const auto div = producer<v1::Divide>(mul->input_value(i));
        const auto gamma = f32_constant(mul->input_value(1 - i), k);
        const auto sqrt = div ? producer<v0::Sqrt>(div->input_value(1)) : nullptr;
        const auto add = sqrt ? producer<v1::Add>(sqrt->input_value(0)) : nullptr;
        if (!gamma || !add) continue;
        const ov::Output<ov::Node> x = div->input_value(0);
        for (int j = 0; j < 2; ++j) {
            const auto mean = producer<v1::ReduceMean>(add->input_value(j));
            const auto eps = f32_constant(add->input_value(1 - j), 1);
            const auto pow = mean ? producer<v1::Power>(mean->input_value(0)) : nullptr;
            const auto two = pow ? f32_constant(pow->input_value(1), 1) : nullptr;
            if (eps && two && two->cast_vector<float>()[0] == 2.f && pow->input_value(0) == x &&
                mean->get_keep_dims() && last_axis(mean->input_value(1)))
                return {x, args[1], args[2], args[3], gamma, eps};
        }
    }
    return args;
}

static bool scalar_near(const ov::Output<ov::Node>& out, float value) {
    const auto c = f32_constant(out, 1);
    return c && std::fabs(c->cast_vector<float>()[0] - value) <= 1e-6f * std::fabs(value);
}

// The GELU after a BitLinear (fc1) as PyTorch exports nn.GELU(): Mul(t, Mul(0.5, Add(Erf(Div(t, sqrt 2)), 1))),
// operands of Mul and Add in either order, t = TernaryLinear(...). Returns that op again with its GELU on, or null;
// the erf branch, no longer used, drops out of the model.
static std::shared_ptr<ov::Node> with_fused_gelu(const ov::Output<ov::Node>& t, const ov::Output<ov::Node>& g) {
    using namespace ov::op;
    const auto op = producer<TernaryLinear>(t);
    const auto half = producer<v1::Multiply>(g);
    if (!op || op->gelu() || op->chain() || op->residual() || op->heads() || !half) return nullptr;
    for (int i = 0; i < 2; ++i) {
        const auto add = producer<v1::Add>(half->input_value(i));
        if (!add || !scalar_near(half->input_value(1 - i), 0.5f)) continue;
        for (int j = 0; j < 2; ++j) {
            const auto erf = producer<v0::Erf>(add->input_value(j));
            const auto div = erf ? producer<v1::Divide>(erf->input_value(0)) : nullptr;
            if (div && scalar_near(add->input_value(1 - j), 1.f) && div->input_value(0) == t &&
                scalar_near(div->input_value(1), std::sqrt(2.f)))
                return std::make_shared<TernaryLinear>(op->input_values(), true);
        }
    }
    return nullptr;
}

// ONNX Mul: the GELU above fused into its TernaryLinear; any other Mul as OpenVINO converts it (numpy broadcast).
static ov::OutputVector convert_mul(const ov::frontend::NodeContext& node) {
    const ov::Output<ov::Node> a = node.get_input(0), b = node.get_input(1);
    if (auto fused = with_fused_gelu(a, b)) return {fused};
    if (auto fused = with_fused_gelu(b, a)) return {fused};
    return {std::make_shared<ov::op::v1::Multiply>(a, b)};
}

// A BitLinear whose x is, after its fused norm, the output of another one with its norm fused (fc1, GELU'd or not,
// then fc2): one op that runs each block of rows through both, so that the hidden rows (4 x wider than the
// model's) stay in the thread's cache instead of going out to memory and back.
static std::shared_ptr<ov::Node> with_chained_layer(const ov::OutputVector& args) {
    const auto first = args.size() == 6 ? producer<TernaryLinear>(args[0]) : nullptr;
    if (!first || first->chain() || first->residual() || first->heads() || first->get_input_size() != 6)
        return nullptr;
    ov::OutputVector chained = first->input_values();
    chained.insert(chained.end(), args.begin() + 1, args.end());
    return std::make_shared<TernaryLinear>(chained, first->gelu(), true);
}

// ONNX TernaryLinear: with its norm fused in (with_fused_norm), chained to the BitLinear before it where it can be.
static ov::OutputVector convert_ternary_linear(const ov::frontend::NodeContext& node) {
    ov::OutputVector args;
    for (size_t i = 0; i < node.get_input_size(); ++i) args.push_back(node.get_input(static_cast<int>(i)));
    args = with_fused_norm(args);
    if (auto chained = with_chained_layer(args)) return {chained};
    return {std::make_shared<TernaryLinear>(args)};
}

// The residual connection after a BitLinear (the ViT block's x + proj(...) and x + fc2(...)): the op adds it to each
// block of output rows while they are in cache, instead of OpenVINO reading the whole output back. Only where r has
// the op's output shape (no broadcasting): dimensions static and equal, or dynamic in both (checked when it runs).
static std::shared_ptr<ov::Node> with_residual(const ov::Output<ov::Node>& t, const ov::Output<ov::Node>& r) {
    const auto op = producer<TernaryLinear>(t);
    if (!op || op->residual() || op->heads() || r.get_element_type() != ov::element::f32) return nullptr;
    const auto &ts = t.get_partial_shape(), &rs = r.get_partial_shape();
    if (ts.rank().is_dynamic() || rs.rank().is_dynamic() || ts.size() != rs.size()) return nullptr;
    for (size_t i = 0; i < ts.size(); ++i)
        if (ts[i].is_static() != rs[i].is_static() || (ts[i].is_static() && ts[i] != rs[i])) return nullptr;
    ov::OutputVector args = op->input_values();
    args.push_back(r);
    return std::make_shared<TernaryLinear>(args, op->gelu(), op->chain(), true);
}

// The attention's split of qkv into heads, as PyTorch exports qkv(x).reshape(B, T, 3, H, D).permute(2, 0, 3, 1, 4)
// and takes q, k, v from it with Gather: Transpose(Reshape(t, [-1, T, S, H, D]), [2, 0, 3, 1, 4]) of a TernaryLinear
// t [B, T, S * H * D] becomes an op with S outputs [B, H, T, D], each block of rows written straight into them
// (instead of OpenVINO reading the whole output back to permute it), stacked for the Transpose's consumers; a Gather
// of one of them (convert_gather) takes that output itself, so that nothing is stacked.
static ov::Output<ov::Node> with_heads_layout(const ov::Output<ov::Node>& in, const std::vector<int64_t>& perm) {
    const auto reshape = producer<ov::op::v1::Reshape>(in);
    const auto op = reshape ? producer<TernaryLinear>(reshape->input_value(0)) : nullptr;
    if (!op || op->residual() || op->heads() || perm != std::vector<int64_t>{2, 0, 3, 1, 4}) return {};
    const auto &ts = reshape->get_input_partial_shape(0), &rs = reshape->get_output_partial_shape(0);
    if (ts.rank().is_dynamic() || ts.size() != 3 || rs.rank().is_dynamic() || rs.size() != 5) return {};
    for (size_t i = 1; i < 5; ++i)
        if (rs[i].is_dynamic() || (i < 3 && ts[i].is_dynamic())) return {};
    // [B, T, N] -> [B', T, S, H, D] with S * H * D = N: then B' = B (the element count is kept)
    if (rs[1] != ts[1] || rs[2].get_length() * rs[3].get_length() * rs[4].get_length() != ts[2].get_length()) return {};
    const auto split = std::make_shared<TernaryLinear>(op->input_values(), op->gelu(), op->chain(), false,
                                                       rs[2].get_length(), rs[3].get_length());
    const auto zero = ov::op::v0::Constant::create(ov::element::i64, {1}, {0});
    ov::OutputVector stacked;
    for (const auto& out : split->outputs()) stacked.push_back(std::make_shared<ov::op::v0::Unsqueeze>(out, zero));
    return std::make_shared<ov::op::v0::Concat>(stacked, 0);
}

// The attention's output back in token order, as PyTorch exports x.transpose(1, 2) of it: Transpose(y, [0, 2, 1, 3])
// of an Attention op becomes one that writes [B, T, H, D] itself.
static std::shared_ptr<ov::Node> with_tokens_major(const ov::Output<ov::Node>& in, const std::vector<int64_t>& perm) {
    const auto op = producer<Attention>(in);
    if (!op || op->tokens_major() || perm != std::vector<int64_t>{0, 2, 1, 3}) return nullptr;
    return std::make_shared<Attention>(op->input_values(), true);
}

// ONNX Transpose: the heads layout above, the attention's output in token order; any other as OpenVINO converts it
// (no perm: the axes reversed).
static ov::OutputVector convert_transpose(const ov::frontend::NodeContext& node) {
    const ov::Output<ov::Node> in = node.get_input(0);
    const auto perm = node.get_attribute<std::vector<int64_t>>("perm", {});
    if (auto fused = with_heads_layout(in, perm); fused.get_node()) return {fused};
    if (auto fused = with_tokens_major(in, perm)) return {fused};
    const auto order = ov::op::v0::Constant::create(ov::element::i64, {perm.size()}, perm);
    return {std::make_shared<ov::op::v1::Transpose>(in, order)};
}

// ONNX Gather: one of with_heads_layout's outputs, where it picks one (axis 0, a constant scalar index) of their
// stack; any other Gather as OpenVINO converts it.
static ov::OutputVector convert_gather(const ov::frontend::NodeContext& node) {
    const ov::Output<ov::Node> data = node.get_input(0), indices = node.get_input(1);
    const int64_t axis = node.get_attribute<int64_t>("axis", 0);
    const auto concat = producer<ov::op::v0::Concat>(data);
    const auto index = producer<ov::op::v0::Constant>(indices);
    if (concat && index && axis == 0 && index->get_shape().empty()) {
        const auto i = index->cast_vector<int64_t>()[0];
        const auto stack = i >= 0 && i < static_cast<int64_t>(concat->get_input_size())
                               ? producer<ov::op::v0::Unsqueeze>(concat->input_value(static_cast<size_t>(i)))
                               : nullptr;
        const auto op = stack ? producer<TernaryLinear>(stack->input_value(0)) : nullptr;
        if (op && op->heads() && op->get_output_size() == concat->get_input_size()) return {stack->input_value(0)};
    }
    return {std::make_shared<ov::op::v8::Gather>(data, indices,
                                                 ov::op::v0::Constant::create(ov::element::i64, {}, {axis}))};
}

// The attention's inputs, as PyTorch exports scaled_dot_product_attention(q, k, v) of with_heads_layout's outputs:
//   MatMul(Mul(q, c), Mul(Reshape(Transpose(Reshape(k, [-1, T, D]), [0, 2, 1]), [-1, H, D, T]), c'))
// (Mul operands in either order, c and c' float scalars: the scale split between q and k) becomes MatMul(q', k')
// of an op that writes q' = q * c and k' = k^T * c' itself, the same float products, as it writes each block of rows
// into the heads layout (instead of OpenVINO reading q and k back to scale them and transposing k). The op it
// replaces names it as its successor, so that the attention's v, taken from the old op, is taken from the new one
// (convert_matmul); the old op then drops out of the model (where nothing else reads its q or k).
static std::shared_ptr<TernaryLinear> heads_op(const ov::Output<ov::Node>& out, size_t index) {
    const auto op = producer<TernaryLinear>(out);
    return op && op->heads() && !op->k_transposed() && out.get_index() == index ? op : nullptr;
}

// (x, c) where m is Mul(x, c) or Mul(c, x) with c a float constant of one value that does not add axes to x
static std::pair<ov::Output<ov::Node>, float> scaled(const ov::Output<ov::Node>& m) {
    if (const auto mul = producer<ov::op::v1::Multiply>(m))
        for (int i = 0; i < 2; ++i) {
            const auto c = f32_constant(mul->input_value(1 - i), 1);
            const auto& xs = mul->get_input_partial_shape(i);
            if (c && xs.rank().is_static() && c->get_shape().size() <= xs.size())
                return {mul->input_value(i), c->cast_vector<float>()[0]};
        }
    return {{}, 0.f};
}

static std::shared_ptr<ov::Node> with_attention_inputs(const ov::Output<ov::Node>& a, const ov::Output<ov::Node>& b) {
    using namespace ov::op;
    const auto [q, cq] = scaled(a);
    const auto [kt, ck] = scaled(b);
    const auto op = q.get_node() ? heads_op(q, 0) : nullptr;
    if (!op || !kt.get_node()) return nullptr;
    const auto outer = producer<v1::Reshape>(kt);
    const auto transpose = outer ? producer<v1::Transpose>(outer->input_value(0)) : nullptr;
    const auto inner = transpose ? producer<v1::Reshape>(transpose->input_value(0)) : nullptr;
    if (!inner || heads_op(inner->input_value(0), 1) != op) return nullptr;
    const auto perm = producer<v0::Constant>(transpose->input_value(1));
    if (!perm || perm->cast_vector<int64_t>() != std::vector<int64_t>{0, 2, 1}) return nullptr;
    // k [B, H, T, D] -> [B * H, T, D] -> [B * H, D, T] -> [B, H, D, T]: k with its last two axes swapped
    const auto &ks = inner->get_input_partial_shape(0), &r1 = inner->get_output_partial_shape(0),
               &r2 = outer->get_output_partial_shape(0);
    if (ks.rank().is_dynamic() || ks.size() != 4 || r1.rank().is_dynamic() || r1.size() != 3 ||
        r2.rank().is_dynamic() || r2.size() != 4)
        return nullptr;
    for (size_t i = 1; i < 4; ++i)
        if (ks[i].is_dynamic()) return nullptr;
    if (r1[1] != ks[2] || r1[2] != ks[3] || r2[1] != ks[1] || r2[2] != ks[3] || r2[3] != ks[2]) return nullptr;
    const auto fused = std::make_shared<TernaryLinear>(op->input_values(), op->gelu(), op->chain(), false, op->splits(),
                                                       op->heads(), cq, ck, true);
    op->set_successor(fused);
    return std::make_shared<v0::MatMul>(fused->output(0), fused->output(1));
}

// an output of an op with a successor (with_attention_inputs) that is the same in it: the successor's
static ov::Output<ov::Node> current(const ov::Output<ov::Node>& out) {
    const auto op = producer<TernaryLinear>(out);
    const auto next = op && out.get_index() > 1 ? op->successor() : nullptr;
    return next ? next->output(out.get_index()) : out;
}

// The attention itself, MatMul(Softmax(MatMul(q', k'), last axis), v) of the three outputs of one op that
// with_attention_inputs made, becomes one Attention op where the CPU has AVX-512 (without it, OpenVINO's own
// attention runs faster than attention_rows' scalar loop). The scores' MatMul and the Softmax drop out of the model
// where nothing else reads them.
static std::shared_ptr<ov::Node> with_fused_attention(const ov::Output<ov::Node>& a, const ov::Output<ov::Node>& v) {
    using namespace ov::op;
    if (!zmm_path(TernaryLinear::active_isa())) return nullptr;
    const auto softmax = producer<v8::Softmax>(a);
    const auto scores = softmax ? producer<v0::MatMul>(softmax->input_value(0)) : nullptr;
    if (!scores || scores->get_transpose_a() || scores->get_transpose_b()) return nullptr;
    const auto axis = softmax->get_axis();
    if (axis != -1 && axis != 3) return nullptr;
    const auto op = producer<TernaryLinear>(scores->input_value(0));
    if (!op || !op->k_transposed() || op->get_output_size() != 3 || scores->input_value(0) != op->output(0) ||
        scores->input_value(1) != op->output(1) || v != op->output(2))
        return nullptr;
    return std::make_shared<Attention>(op->outputs());
}

// ONNX MatMul: the attention's scores of a TernaryLinear's q and k above, the attention itself; any other MatMul as
// OpenVINO converts it.
static ov::OutputVector convert_matmul(const ov::frontend::NodeContext& node) {
    const ov::Output<ov::Node> a = node.get_input(0), b = node.get_input(1);
    if (auto fused = with_attention_inputs(a, b)) return {fused};
    if (auto fused = with_fused_attention(a, current(b))) return {fused};
    return {std::make_shared<ov::op::v0::MatMul>(current(a), current(b))};
}

// ONNX Add: a residual fused into the TernaryLinear before it; any other Add as OpenVINO converts it.
static ov::OutputVector convert_add(const ov::frontend::NodeContext& node) {
    const ov::Output<ov::Node> a = node.get_input(0), b = node.get_input(1);
    if (auto fused = with_residual(a, b)) return {fused};
    if (auto fused = with_residual(b, a)) return {fused};
    return {std::make_shared<ov::op::v1::Add>(a, b)};
}

}  // namespace edgedf

extern "C" OPENVINO_EXTENSION_C_API const char* edgedf_ternary_isa() {
    return edgedf::isa_name(edgedf::TernaryLinear::active_isa());
}

OPENVINO_CREATE_EXTENSIONS(std::vector<ov::Extension::Ptr>(
    {std::make_shared<ov::OpExtension<edgedf::TernaryLinear>>(), std::make_shared<ov::OpExtension<edgedf::Attention>>(),
     std::make_shared<ov::frontend::onnx::ConversionExtension>("TernaryLinear", "edgedf", edgedf::convert_ternary_linear),
     std::make_shared<ov::frontend::onnx::ConversionExtension>("Mul", edgedf::convert_mul),
     std::make_shared<ov::frontend::onnx::ConversionExtension>("Add", edgedf::convert_add),
     std::make_shared<ov::frontend::onnx::ConversionExtension>("MatMul", edgedf::convert_matmul),
     std::make_shared<ov::frontend::onnx::ConversionExtension>("Transpose", edgedf::convert_transpose),
     std::make_shared<ov::frontend::onnx::ConversionExtension>("Gather", edgedf::convert_gather)}));
