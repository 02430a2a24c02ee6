// edgedf's ternary kernel without any framework in it: the CPU paths, the weights' layout, the per-token codes, the
// GEMM and the one BitLinear step (run_rows) that the OpenVINO op (ternary_linear.cpp) and the ONNX Runtime op
// (ort_ternary.cpp) both run. What it computes and how: ternary_linear.cpp's opening comment.
#pragma once

#include <cpuid.h>
#include <immintrin.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <atomic>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <mutex>
#include <stdexcept>
#include <string>
#include <type_traits>
#include <vector>

namespace edgedf {

constexpr float kEps = 1e-5f;  // train.bitlinear.EPS
constexpr int kBlock = 16;      // output columns per weight block

enum class Isa { scalar, avx2, avxvnni, avx512, amx };

// which width of the norm, codes and GELU a path uses
static bool zmm_path(Isa isa) { return isa == Isa::avx512 || isa == Isa::amx; }
static bool ymm_path(Isa isa) { return isa == Isa::avx2 || isa == Isa::avxvnni; }

// Compilers older than these do not know AVX-VNNI (target "avxvnni"): the kernel then builds without that path.
#if defined(__x86_64__) && (defined(__clang__) ? __clang_major__ >= 12 : __GNUC__ >= 11)
#define EDGEDF_AVX_VNNI 1
#endif

// AVX-VNNI (CPUID leaf 7 subleaf 1, EAX bit 4) on a CPU whose AVX2 the OS enables.
static bool avx_vnni_usable() {
#if defined(EDGEDF_AVX_VNNI)
    unsigned eax = 0, ebx = 0, ecx = 0, edx = 0;
    return __builtin_cpu_supports("avx2") && __get_cpuid_count(7, 1, &eax, &ebx, &ecx, &edx) && ((eax >> 4) & 1);
#else
    return false;
#endif
}

// AMX-INT8 (Sapphire Rapids and later): the CPU has it and Linux grants this process the tile state.
static bool amx_usable() {
#if defined(__x86_64__) && defined(__linux__)
    unsigned eax = 0, ebx = 0, ecx = 0, edx = 0;
    if (!__get_cpuid_count(7, 0, &eax, &ebx, &ecx, &edx) || !((edx >> 24) & 1) || !((edx >> 25) & 1)) return false;
    constexpr long kReqXcompPerm = 0x1023, kXtiledata = 18;  // ARCH_REQ_XCOMP_PERM, XFEATURE_XTILEDATA
    return syscall(SYS_arch_prctl, kReqXcompPerm, kXtiledata) == 0;
#else
    return false;
#endif
}

static Isa detect_isa() {
    const bool avx_vnni = avx_vnni_usable();
    if (const char* forced = std::getenv("EDGEDF_TERNARY_ISA")) {
        std::string f(forced);
        if (f == "scalar") return Isa::scalar;
        if (f == "avx2") return __builtin_cpu_supports("avx2") ? Isa::avx2 : Isa::scalar;
        if (f == "avxvnni") return avx_vnni ? Isa::avxvnni : Isa::scalar;
        const bool vnni512 = __builtin_cpu_supports("avx512bw") && __builtin_cpu_supports("avx512vnni");
        if (f == "avx512") return vnni512 ? Isa::avx512 : Isa::scalar;
        if (f == "amx") return vnni512 && amx_usable() ? Isa::amx : Isa::scalar;
    }
    if (__builtin_cpu_supports("avx512bw") && __builtin_cpu_supports("avx512vnni"))
        return amx_usable() ? Isa::amx : Isa::avx512;
    if (avx_vnni) return Isa::avxvnni;
    if (__builtin_cpu_supports("avx2")) return Isa::avx2;
    return Isa::scalar;
}

static const char* isa_name(Isa isa) {
    switch (isa) {
        case Isa::amx: return "amx-int8";
        case Isa::avx512: return "avx512-vnni";
        case Isa::avxvnni: return "avx-vnni";
        case Isa::avx2: return "avx2";
        default: return "scalar";
    }
}

// Weights re-laid out for the kernels: codes [Nb][K4][16][4] int8 (zero padded) and per-column sums.
struct Packed {
    int64_t n = 0, k = 0, nb = 0, k4 = 0;
    std::vector<int8_t> w;
    std::vector<int32_t> colsum;  // sum_k c[n][k], padded to nb * 16
};

static std::shared_ptr<Packed> pack(const uint8_t* packed, int64_t n, int64_t k) {
    auto p = std::make_shared<Packed>();
    p->n = n;
    p->k = k;
    p->nb = (n + kBlock - 1) / kBlock;
    p->k4 = (k + 63) / 64 * 16;  // K padded to 64: one AMX tile row of bytes
    p->w.assign(static_cast<size_t>(p->nb * p->k4 * kBlock * 4), 0);
    p->colsum.assign(static_cast<size_t>(p->nb * kBlock), 0);
    const int64_t row_bytes = (k + 3) / 4;  // the canonical packing: 4 codes per byte, c + 1 in 2 bits
    for (int64_t j = 0; j < n; ++j) {
        for (int64_t i = 0; i < k; ++i) {
            const int code = ((packed[j * row_bytes + i / 4] >> (2 * (i % 4))) & 3) - 1;
            // 3 (code 2) is never written; the AVX2 path's int16 sums rely on |code| <= 1
            if (code > 1) throw std::runtime_error("TernaryLinear: w_packed holds the unused 2-bit value 3");
            p->w[((j / kBlock * p->k4 + i / 4) * kBlock + j % kBlock) * 4 + i % 4] = static_cast<int8_t>(code);
            p->colsum[j] += code;
        }
    }
    return p;
}

// Per-token codes: a[m][0..4*k4) = Round(x * s) + 128 as bytes (the K padding is 128, which meets zero
// weights), and s[m]. Round is the CPU's round-half-to-even (cvtps2dq / nearbyint in the default mode).
static void quantize_rows_scalar(const float* x, int64_t rows, int64_t k, int64_t k4, uint8_t* a, float* s) {
    for (int64_t m = 0; m < rows; ++m) {
        const float* xr = x + m * k;
        float amax = 0.f;
        for (int64_t i = 0; i < k; ++i) amax = std::max(amax, std::fabs(xr[i]));
        const float sm = 127.0f / std::max(amax, kEps);
        s[m] = sm;
        uint8_t* ar = a + m * k4 * 4;
        for (int64_t i = 0; i < k; ++i) ar[i] = static_cast<uint8_t>(static_cast<int>(std::nearbyint(xr[i] * sm)) + 128);
        for (int64_t i = k; i < k4 * 4; ++i) ar[i] = 128;
    }
}

#if defined(__x86_64__)
// the mask of a 16-lane vector's first `count` lanes (all of them from 16 on)
static inline __mmask16 first_lanes(int64_t count) {
    return count >= 16 ? __mmask16(0xFFFF) : static_cast<__mmask16>((1u << count) - 1);
}

__attribute__((target("avx512f,avx512bw"))) static void quantize_rows_avx512(const float* x, int64_t rows, int64_t k,
                                                                             int64_t k4, uint8_t* a, float* s) {
    const __m512i off = _mm512_set1_epi32(128), flip = _mm512_set1_epi8(static_cast<char>(0x80));
    const __m512i order = _mm512_setr_epi32(0, 4, 8, 12, 1, 5, 9, 13, 2, 6, 10, 14, 3, 7, 11, 15);
    for (int64_t m = 0; m < rows; ++m) {
        const float* xr = x + m * k;
        __m512 vmax[4] = {_mm512_setzero_ps(), _mm512_setzero_ps(), _mm512_setzero_ps(), _mm512_setzero_ps()};
        int64_t c = 0;
        for (; c + 64 <= k; c += 64)  // four independent chains (max is exact in any order)
            for (int j = 0; j < 4; ++j)
                vmax[j] = _mm512_max_ps(vmax[j], _mm512_abs_ps(_mm512_loadu_ps(xr + c + 16 * j)));
        for (; c < k; c += 16) {
            const __mmask16 mk = first_lanes(k - c);
            vmax[0] = _mm512_max_ps(vmax[0], _mm512_abs_ps(_mm512_maskz_loadu_ps(mk, xr + c)));
        }
        const __m512 amax = _mm512_max_ps(_mm512_max_ps(vmax[0], vmax[1]), _mm512_max_ps(vmax[2], vmax[3]));
        const float sm = 127.0f / std::max(_mm512_reduce_max_ps(amax), kEps);
        s[m] = sm;
        const __m512 sv = _mm512_set1_ps(sm);
        uint8_t* ar = a + m * k4 * 4;
        int64_t i = 0;
        // 64 codes at a time: saturating packs 32 -> 16 -> 8 bits (|q| <= 127: nothing saturates) interleave the 4
        // vectors per 128-bit lane, one dword permutation restores their order, and q + 128 is q ^ 0x80 as a byte
        // (the masked vpmovdb store to memory is microcoded on AMD Zen 4/5)
        for (; i + 64 <= k; i += 64) {
            __m512i q[4];
            for (int j = 0; j < 4; ++j) q[j] = _mm512_cvtps_epi32(_mm512_mul_ps(_mm512_loadu_ps(xr + i + 16 * j), sv));
            const __m512i b = _mm512_packs_epi16(_mm512_packs_epi32(q[0], q[1]), _mm512_packs_epi32(q[2], q[3]));
            _mm512_storeu_si512(ar + i, _mm512_xor_si512(_mm512_permutexvar_epi32(order, b), flip));
        }
        for (; i < k; i += 16) {
            const __mmask16 mk = first_lanes(k - i);
            const __m512i q = _mm512_add_epi32(_mm512_cvtps_epi32(_mm512_mul_ps(_mm512_maskz_loadu_ps(mk, xr + i), sv)), off);
            _mm512_mask_cvtepi32_storeu_epi8(ar + i, mk, q);
        }
        for (int64_t i = k; i < k4 * 4; ++i) ar[i] = 128;
    }
}

__attribute__((target("avx2,fma"))) static void quantize_rows_avx2(const float* x, int64_t rows, int64_t k, int64_t k4,
                                                                   uint8_t* a, float* s) {
    const __m256i off = _mm256_set1_epi32(128);
    const __m256 sign = _mm256_set1_ps(-0.0f);
    // the low byte of each int32, gathered into the first 4 bytes of each 128-bit lane
    const __m256i low_bytes = _mm256_setr_epi8(0, 4, 8, 12, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, 0, 4, 8,
                                               12, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1);
    const __m256i lanes = _mm256_setr_epi32(0, 4, 0, 0, 0, 0, 0, 0);
    for (int64_t m = 0; m < rows; ++m) {
        const float* xr = x + m * k;
        const int64_t k8 = k / 8 * 8;
        __m256 vmax[4] = {_mm256_setzero_ps(), _mm256_setzero_ps(), _mm256_setzero_ps(), _mm256_setzero_ps()};
        int64_t c = 0;
        for (; c + 32 <= k8; c += 32)  // four independent chains (max is exact in any order)
            for (int j = 0; j < 4; ++j)
                vmax[j] = _mm256_max_ps(vmax[j], _mm256_andnot_ps(sign, _mm256_loadu_ps(xr + c + 8 * j)));
        for (; c < k8; c += 8) vmax[0] = _mm256_max_ps(vmax[0], _mm256_andnot_ps(sign, _mm256_loadu_ps(xr + c)));
        alignas(32) float lanes_max[8];
        _mm256_store_ps(lanes_max, _mm256_max_ps(_mm256_max_ps(vmax[0], vmax[1]), _mm256_max_ps(vmax[2], vmax[3])));
        float amax = 0.f;
        for (float v : lanes_max) amax = std::max(amax, v);
        for (int64_t i = k8; i < k; ++i) amax = std::max(amax, std::fabs(xr[i]));
        const float sm = 127.0f / std::max(amax, kEps);
        s[m] = sm;
        const __m256 sv = _mm256_set1_ps(sm);
        uint8_t* ar = a + m * k4 * 4;
        for (int64_t i = 0; i < k8; i += 8) {
            const __m256i q = _mm256_add_epi32(_mm256_cvtps_epi32(_mm256_mul_ps(_mm256_loadu_ps(xr + i), sv)), off);
            const __m256i packed = _mm256_permutevar8x32_epi32(_mm256_shuffle_epi8(q, low_bytes), lanes);
            _mm_storel_epi64(reinterpret_cast<__m128i*>(ar + i), _mm256_castsi256_si128(packed));
        }
        for (int64_t i = k8; i < k; ++i) ar[i] = static_cast<uint8_t>(static_cast<int>(std::nearbyint(xr[i] * sm)) + 128);
        for (int64_t i = k; i < k4 * 4; ++i) ar[i] = 128;
    }
}
#endif

// The RMSNorm in front of a BitLinear, fused into its op (with_fused_norm below): one row x into o as
// (x * (1 / sqrt(mean(x^2) + eps))) * gamma. The sum of squares runs in 32 partial sums (column i into sum i % 32
// up to the last whole 32: independent vector chains, where one would wait on each add), added pairwise at the end
// (sum j + w into sum j for w = 16, 8, 4, 2, 1), then the columns left over in order: the same float operations
// on every path (no FMA contraction: -ffp-contract=off), so every path gives the same normalised rows, and
// therefore the same codes.
constexpr int kNormParts = 32;

static void rms_norm_row_scalar(const float* xr, int64_t k, const float* gamma, float eps, float* o) {
    float part[kNormParts] = {};
    int64_t i = 0;
    for (; i + kNormParts <= k; i += kNormParts)
        for (int j = 0; j < kNormParts; ++j) part[j] += xr[i + j] * xr[i + j];
    for (int w = kNormParts / 2; w >= 1; w /= 2)  // pairwise, halving: a few vector adds, not 32 in a chain
        for (int j = 0; j < w; ++j) part[j] += part[j + w];
    float ss = part[0];
    for (; i < k; ++i) ss += xr[i] * xr[i];
    const float inv = 1.0f / std::sqrt(ss / static_cast<float>(k) + eps);
    for (i = 0; i < k; ++i) o[i] = xr[i] * inv * gamma[i];
}

#if defined(__x86_64__)
// The same float operations written out 16 and 8 wide: partial sum j in lane j % W of vector j / W, and the pairwise
// halving in registers. Compiled from rms_norm_row_scalar, the halving went through the stack (vector stores read back
// narrower, then scalar adds), a chain of store-forwarding stalls in every row: on the Zen 5 the norm and codes of
// a 384-wide row took 0.218 ns per value that way, 0.163 written out (the codes alone 0.064).
// The halving from w = 4 on, of sums 0-7 in h (w = 16 and 8 done), the columns from i on, and 1 / rms:
__attribute__((target("avx2"), always_inline)) static inline float rms_inverse(__m256 h, const float* xr, int64_t i,
                                                                               int64_t k, float eps) {
    __m128 q = _mm_add_ps(_mm256_castps256_ps128(h), _mm256_extractf128_ps(h, 1));  // w = 4
    q = _mm_add_ps(q, _mm_movehl_ps(q, q));                                         // w = 2
    float ss = _mm_cvtss_f32(_mm_add_ss(q, _mm_movehdup_ps(q)));                    // w = 1
    for (; i < k; ++i) ss += xr[i] * xr[i];
    return 1.0f / std::sqrt(ss / static_cast<float>(k) + eps);
}

__attribute__((target("avx512f"))) static void rms_norm_row_avx512(const float* xr, int64_t k, const float* gamma,
                                                                   float eps, float* o) {
    __m512 p0 = _mm512_setzero_ps(), p1 = _mm512_setzero_ps();  // sums 0-15, 16-31
    int64_t i = 0;
    for (; i + kNormParts <= k; i += kNormParts) {
        const __m512 a = _mm512_loadu_ps(xr + i), b = _mm512_loadu_ps(xr + i + 16);
        p0 = _mm512_add_ps(p0, _mm512_mul_ps(a, a));
        p1 = _mm512_add_ps(p1, _mm512_mul_ps(b, b));
    }
    p0 = _mm512_add_ps(p0, p1);  // w = 16
    const __m256 h = _mm256_add_ps(_mm512_castps512_ps256(p0),  // w = 8
                                   _mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(p0), 1)));
    const __m512 iv = _mm512_set1_ps(rms_inverse(h, xr, i, k, eps));
    for (i = 0; i < k; i += 16) {
        const __mmask16 mk = first_lanes(k - i);
        const __m512 v = _mm512_mul_ps(_mm512_mul_ps(_mm512_maskz_loadu_ps(mk, xr + i), iv),
                                       _mm512_maskz_loadu_ps(mk, gamma + i));
        _mm512_mask_storeu_ps(o + i, mk, v);
    }
}

__attribute__((target("avx2"))) static void rms_norm_row_avx2(const float* xr, int64_t k, const float* gamma, float eps,
                                                              float* o) {
    __m256 p[4] = {_mm256_setzero_ps(), _mm256_setzero_ps(), _mm256_setzero_ps(), _mm256_setzero_ps()};  // 8j-8j+7
    int64_t i = 0;
    for (; i + kNormParts <= k; i += kNormParts)
        for (int j = 0; j < 4; ++j) {
            const __m256 a = _mm256_loadu_ps(xr + i + 8 * j);
            p[j] = _mm256_add_ps(p[j], _mm256_mul_ps(a, a));
        }
    const __m256 h = _mm256_add_ps(_mm256_add_ps(p[0], p[2]), _mm256_add_ps(p[1], p[3]));  // w = 16, then 8
    const float inv = rms_inverse(h, xr, i, k, eps);
    const __m256 iv = _mm256_set1_ps(inv);
    for (i = 0; i + 8 <= k; i += 8)
        _mm256_storeu_ps(o + i, _mm256_mul_ps(_mm256_mul_ps(_mm256_loadu_ps(xr + i), iv), _mm256_loadu_ps(gamma + i)));
    for (; i < k; ++i) o[i] = xr[i] * inv * gamma[i];
}
#endif

static void rms_norm_row(Isa isa, const float* x, int64_t k, const float* gamma, float eps, float* o) {
#if defined(__x86_64__)
    if (zmm_path(isa)) return rms_norm_row_avx512(x, k, gamma, eps, o);
    if (ymm_path(isa)) return rms_norm_row_avx2(x, k, gamma, eps, o);
#endif
    rms_norm_row_scalar(x, k, gamma, eps, o);
}

static void quantize_rows(Isa isa, const float* x, int64_t rows, int64_t k, int64_t k4, uint8_t* a, float* s) {
#if defined(__x86_64__)
    if (zmm_path(isa)) return quantize_rows_avx512(x, rows, k, k4, a, s);
    if (ymm_path(isa)) return quantize_rows_avx2(x, rows, k, k4, a, s);
#endif
    quantize_rows_scalar(x, rows, k, k4, a, s);
}

// Codes of `rows` rows of x, and their output scales rs = g / s (once per row, for the epilogues). With gamma, each
// row is normalised first, into a one-row buffer of the calling thread that stays in L1 while the row is
// quantised (the whole block's rows normalised at once went out to L2 and back).
static void prepare_rows(Isa isa, const float* x, int64_t rows, int64_t k, const float* gamma, float eps, int64_t k4,
                         float g, uint8_t* a, float* rs) {
    if (!gamma) {
        quantize_rows(isa, x, rows, k, k4, a, rs);
    } else {
        static thread_local std::vector<float> xn;
        xn.resize(std::max(xn.size(), static_cast<size_t>(k)));
        for (int64_t r = 0; r < rows; ++r) {
            rms_norm_row(isa, x + r * k, k, gamma, eps, xn.data());
            quantize_rows(isa, xn.data(), 1, k, k4, a + r * k4 * 4, rs + r);
        }
    }
    for (int64_t r = 0; r < rows; ++r) rs[r] = g / rs[r];
}

// GELU in its erf form (PyTorch's nn.GELU(); the ONNX graph's t * 0.5 * (1 + erf(t / sqrt 2))), applied to the
// op's output where the graph has it right after the op (with_fused_gelu): each block's rows while they are in
// cache, instead of OpenVINO reading the whole output back and writing it again. erf is the rational function XLA
// and Eigen use for float on [-4, 4] (|error| < 1e-7 against erf in float64), written with fma, so that every path,
// vectorised 16, 8 or 1 wide, computes the same floats.
__attribute__((always_inline)) static inline float gelu(float t) {
    const float x = std::min(std::max(t * 0.70710678f, -4.f), 4.f);
    const float x2 = x * x;
    float p = std::fma(x2, -2.72614225801306e-10f, 2.77068142495902e-08f);
    p = std::fma(x2, p, -2.10102402082508e-06f);
    p = std::fma(x2, p, -5.69250639462346e-05f);
    p = std::fma(x2, p, -7.34990630326855e-04f);
    p = std::fma(x2, p, -2.95459980854025e-03f);
    p = std::fma(x2, p, -1.60960333262415e-02f);
    float q = std::fma(x2, -1.45660718464996e-05f, -2.13374055278905e-04f);
    q = std::fma(x2, q, -1.68282697438203e-03f);
    q = std::fma(x2, q, -7.37332916720468e-03f);
    q = std::fma(x2, q, -1.42647390514189e-02f);
    return t * 0.5f * (1.f + x * p / q);
}

static void gelu_scalar(float* y, int64_t n) {
    for (int64_t i = 0; i < n; ++i) y[i] = gelu(y[i]);
}

#if defined(__x86_64__)  // gelu() operation for operation, W wide (the compiler left the AVX2 loop scalar)
#define EDGEDF_GELU_LOOP(V, W, load, store, set1, mul, add, div, min, max, fmadd)                      \
    int64_t i = 0;                                                                                     \
    for (; i + (W) <= n; i += (W)) {                                                                   \
        const V t = load(y + i);                                                                       \
        const V x = min(max(mul(t, set1(0.70710678f)), set1(-4.f)), set1(4.f));                       \
        const V x2 = mul(x, x);                                                                        \
        V p = fmadd(x2, set1(-2.72614225801306e-10f), set1(2.77068142495902e-08f));                    \
        p = fmadd(x2, p, set1(-2.10102402082508e-06f));                                                \
        p = fmadd(x2, p, set1(-5.69250639462346e-05f));                                                \
        p = fmadd(x2, p, set1(-7.34990630326855e-04f));                                                \
        p = fmadd(x2, p, set1(-2.95459980854025e-03f));                                                \
        p = fmadd(x2, p, set1(-1.60960333262415e-02f));                                                \
        V q = fmadd(x2, set1(-1.45660718464996e-05f), set1(-2.13374055278905e-04f));                   \
        q = fmadd(x2, q, set1(-1.68282697438203e-03f));                                                \
        q = fmadd(x2, q, set1(-7.37332916720468e-03f));                                                \
        q = fmadd(x2, q, set1(-1.42647390514189e-02f));                                                \
        store(y + i, mul(mul(t, set1(0.5f)), add(set1(1.f), div(mul(x, p), q))));                     \
    }                                                                                                  \
    gelu_scalar(y + i, n - i);

__attribute__((target("avx2,fma"))) static void gelu_avx2(float* y, int64_t n) {
    EDGEDF_GELU_LOOP(__m256, 8, _mm256_loadu_ps, _mm256_storeu_ps, _mm256_set1_ps, _mm256_mul_ps, _mm256_add_ps,
                     _mm256_div_ps, _mm256_min_ps, _mm256_max_ps, _mm256_fmadd_ps)
}

__attribute__((target("avx512f"))) static void gelu_avx512(float* y, int64_t n) {
    EDGEDF_GELU_LOOP(__m512, 16, _mm512_loadu_ps, _mm512_storeu_ps, _mm512_set1_ps, _mm512_mul_ps, _mm512_add_ps,
                     _mm512_div_ps, _mm512_min_ps, _mm512_max_ps, _mm512_fmadd_ps)
}
#undef EDGEDF_GELU_LOOP
#endif

// y += r over n values: the residual add after a layer, on its block of rows while they are in cache
static void add_residual(float* y, const float* r, int64_t n) {
    for (int64_t i = 0; i < n; ++i) y[i] += r[i];
}

static void gelu_inplace(Isa isa, float* y, int64_t n) {
#if defined(__x86_64__)
    if (zmm_path(isa)) return gelu_avx512(y, n);
    if (ymm_path(isa)) return gelu_avx2(y, n);
#endif
    gelu_scalar(y, n);
}

static inline float epilogue(int32_t acc_u, int32_t colsum, float r, float b) {
    return static_cast<float>(acc_u - 128 * colsum) * r + b;
}

static void gemm_scalar(const Packed& p, const uint8_t* a, const float* rs, const float* bias, float* y,
                        int64_t m0, int64_t m1) {
    for (int64_t m = m0; m < m1; ++m) {
        const uint8_t* ar = a + m * p.k4 * 4;
        for (int64_t nb = 0; nb < p.nb; ++nb) {
            int32_t acc[kBlock] = {0};
            const int8_t* wb = p.w.data() + nb * p.k4 * kBlock * 4;
            for (int64_t q = 0; q < p.k4; ++q)
                for (int c = 0; c < kBlock; ++c)
                    for (int t = 0; t < 4; ++t) acc[c] += ar[q * 4 + t] * wb[(q * kBlock + c) * 4 + t];
            for (int c = 0; c < kBlock; ++c) {
                const int64_t n = nb * kBlock + c;
                if (n < p.n) y[m * p.n + n] = epilogue(acc[c], p.colsum[n], rs[m], bias[n]);
            }
        }
    }
}

#if defined(__x86_64__)
// The output lines a tile's epilogue will write (rows m to m + rows, 16-column blocks from n0 on, cols columns),
// asked for with write intent as the tile starts: they arrive while it multiplies, instead of each store waiting
// for its line at the end (a block's output rows are larger than L1, a layer's whole output larger than L2). On the
// Zen 5 the GEMM alone ran 430 GMAC/s on one thread against 406 without (bench_kernel.py); in a whole ViT-S the
// gain is within ab_native.py's run-to-run noise. On the AVX2 and AVX-VNNI paths (emulated there) a whole ViT-S ran
// 1.002x and 1.003x, so they do without. Prefetching cannot fault, past the output's end included.
static inline void prefetch_output(const float* y, int64_t n, int64_t m, int rows, int64_t n0, int cols) {
    for (int r = 0; r < rows; ++r)
        for (int c = 0; c < cols; c += kBlock) __builtin_prefetch(y + (m + r) * n + n0 + c, 1, 3);
}

// MR rows x NB 16-column blocks per call; the accumulators stay in registers (fully unrolled loops).
template <int MR, int NB>
__attribute__((target("avx512f,avx512bw,avx512vnni"))) static void tile_avx512(const Packed& p, const uint8_t* a,
                                                                                 const float* rs,
                                                                                 const float* bias, float* y,
                                                                                 int64_t m, int64_t nb) {
    __m512i acc[MR][NB];
#pragma GCC unroll 16
    for (int r = 0; r < MR; ++r)
#pragma GCC unroll 4
        for (int b = 0; b < NB; ++b) acc[r][b] = _mm512_setzero_si512();
    const int64_t wstride = p.k4 * kBlock * 4;  // bytes per 16-column block
    const int8_t* wb = p.w.data() + nb * wstride;
    const int64_t lda = p.k4 * 4;
    const uint8_t* ar = a + m * lda;
    prefetch_output(y, p.n, m, MR, nb * kBlock, NB * kBlock);
    for (int64_t q = 0; q < p.k4; ++q) {
        __m512i w[NB];
#pragma GCC unroll 4
        for (int b = 0; b < NB; ++b) w[b] = _mm512_loadu_si512(wb + b * wstride + q * kBlock * 4);
#pragma GCC unroll 16
        for (int r = 0; r < MR; ++r) {
            const __m512i av = _mm512_set1_epi32(*reinterpret_cast<const int32_t*>(ar + r * lda + q * 4));
#pragma GCC unroll 4
            for (int b = 0; b < NB; ++b) acc[r][b] = _mm512_dpbusd_epi32(acc[r][b], av, w[b]);
        }
    }
#pragma GCC unroll 4
    for (int b = 0; b < NB; ++b) {
        const int64_t n0 = (nb + b) * kBlock;
        if (n0 >= p.n) break;
        const __mmask16 mask = first_lanes(p.n - n0);
        const __m512i corr = _mm512_slli_epi32(_mm512_loadu_si512(p.colsum.data() + n0), 7);  // 128 * colsum
        const __m512 bv = _mm512_maskz_loadu_ps(mask, bias + n0);
#pragma GCC unroll 16
        for (int r = 0; r < MR; ++r) {
            const __m512 v = _mm512_cvtepi32_ps(_mm512_sub_epi32(acc[r][b], corr));
            const __m512 out = _mm512_add_ps(_mm512_mul_ps(v, _mm512_set1_ps(rs[m + r])), bv);
            _mm512_mask_storeu_ps(y + (m + r) * p.n + n0, mask, out);
        }
    }
}

// The 256-bit paths' epilogue: MR rows x one 16-column block of int32 sums (two ymm halves: columns 0-7, 8-15).
template <int MR>
__attribute__((target("avx2,fma"), always_inline)) static inline void store_ymm(const Packed& p, const __m256i (*acc)[2],
                                                                               const float* rs, const float* bias,
                                                                               float* y, int64_t m, int64_t nb) {
    const int64_t n0 = nb * kBlock;
    for (int r = 0; r < MR; ++r) {
        const __m256 rv = _mm256_set1_ps(rs[m + r]);
        for (int h = 0; h < 2; ++h) {
            const int64_t nh = n0 + 8 * h;
            if (nh >= p.n) break;
            const __m256i corr = _mm256_slli_epi32(
                _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p.colsum.data() + nh)), 7);
            const __m256 v = _mm256_cvtepi32_ps(_mm256_sub_epi32(acc[r][h], corr));
            const __m256 prod = _mm256_mul_ps(v, rv);
            if (p.n - nh >= 8) {
                _mm256_storeu_ps(y + (m + r) * p.n + nh, _mm256_add_ps(prod, _mm256_loadu_ps(bias + nh)));
            } else {
                alignas(32) float tmp[8];
                _mm256_store_ps(tmp, prod);
                for (int64_t c = 0; c < p.n - nh; ++c) y[(m + r) * p.n + nh + c] = tmp[c] + bias[nh + c];
            }
        }
    }
}

// The AVX2 inner loop for R <= 6 rows (n >= 1 steps of 4 k), written out: 2 sums per row in ymm0-11, the two weight
// halves in ymm12-13, the broadcast activation group in ymm14 and a product in ymm15 (all 16 registers), so each
// weight load feeds up to 6 rows. From intrinsics gcc adds into the product's register and moves the sum back (27
// instructions per step for 3 rows instead of 21). Rows R and up are left out by the assembler (.if), so one loop
// serves every tile height. On the Zen 3, 6 rows ran a ViT-S 1.06-1.10x as fast as 3 at batch 8 in three A/B runs
// (ab_native.py, outputs identical; results_ab_zen3_6rows.md has the 40-round one).
template <int R>
__attribute__((target("avx2"), always_inline)) static inline void steps_avx2(const int8_t* w, const uint8_t* a,
                                                                            int64_t lda, int64_t n,
                                                                            __m256i (*acc16)[2]) {
    static_assert(R >= 1 && R <= 6, "6 rows of 2 sums fill ymm0-11");
    const uint8_t* a3 = R > 3 ? a + 3 * lda : a;  // rows 3-5 (not read below 4 rows)
#define EDGEDF_ROW(r, addr, s0, s1)                                                                           \
    ".if " #r " < %c[rows]\n\tvpbroadcastd " addr ", %%ymm14\n\tvpmaddubsw %%ymm12, %%ymm14, %%ymm15\n\t"     \
    "vpaddw %%ymm15, %%ymm" #s0 ", %%ymm" #s0 "\n\tvpmaddubsw %%ymm13, %%ymm14, %%ymm15\n\t"                 \
    "vpaddw %%ymm15, %%ymm" #s1 ", %%ymm" #s1 "\n\t.endif\n\t"
    __asm__ volatile(
        ".irp i,0,1,2,3,4,5,6,7,8,9,10,11\n\t.if \\i < 2 * %c[rows]\n\tvmovdqu 32*\\i(%[acc]), %%ymm\\i\n\t"
        ".endif\n\t.endr\n\t"
        "1:\n\t"
        "vmovdqu (%[w]), %%ymm12\n\t"
        "vmovdqu 32(%[w]), %%ymm13\n\t"
        EDGEDF_ROW(0, "(%[a])", 0, 1)
        EDGEDF_ROW(1, "(%[a],%[lda])", 2, 3)
        EDGEDF_ROW(2, "(%[a],%[lda],2)", 4, 5)
        EDGEDF_ROW(3, "(%[a3])", 6, 7)
        EDGEDF_ROW(4, "(%[a3],%[lda])", 8, 9)
        EDGEDF_ROW(5, "(%[a3],%[lda],2)", 10, 11)
        "addq $64, %[w]\n\t"
        "addq $4, %[a]\n\t"
        "addq $4, %[a3]\n\t"
        "decq %[n]\n\t"
        "jnz 1b\n\t"
        ".irp i,0,1,2,3,4,5,6,7,8,9,10,11\n\t.if \\i < 2 * %c[rows]\n\tvmovdqu %%ymm\\i, 32*\\i(%[acc])\n\t"
        ".endif\n\t.endr"
        : [w] "+r"(w), [a] "+r"(a), [a3] "+r"(a3), [n] "+r"(n)
        : [lda] "r"(lda), [acc] "r"(acc16), [rows] "i"(R)
        : "cc", "memory", "xmm0", "xmm1", "xmm2", "xmm3", "xmm4", "xmm5", "xmm6", "xmm7", "xmm8", "xmm9", "xmm10",
          "xmm11", "xmm12", "xmm13", "xmm14", "xmm15");
#undef EDGEDF_ROW
}

// AVX2: MR rows (at most 6) x one 16-column block.
template <int MR>
__attribute__((target("avx2,fma"))) static void tile_avx2(const Packed& p, const uint8_t* a, const float* rs,
                                                          const float* bias, float* y, int64_t m, int64_t nb) {
    __m256i acc[MR][2], acc16[MR][2];
#pragma GCC unroll 16
    for (int r = 0; r < MR; ++r)
#pragma GCC unroll 2
        for (int h = 0; h < 2; ++h) acc[r][h] = acc16[r][h] = _mm256_setzero_si256();
    const __m256i ones = _mm256_set1_epi16(1);
    const int8_t* wb = p.w.data() + nb * p.k4 * kBlock * 4;
    const int64_t lda = p.k4 * 4;
    const uint8_t* ar = a + m * lda;
    constexpr int64_t kSteps16 = 64;  // 64 pair sums of at most 510 fit int16 (32640 <= 32767)
    for (int64_t q0 = 0; q0 < p.k4; q0 += kSteps16) {
        const int64_t q1 = std::min(p.k4, q0 + kSteps16);
        steps_avx2<MR>(wb + q0 * kBlock * 4, ar + q0 * 4, lda, q1 - q0, acc16);
#pragma GCC unroll 16
        for (int r = 0; r < MR; ++r)
#pragma GCC unroll 2
            for (int h = 0; h < 2; ++h) {
                acc[r][h] = _mm256_add_epi32(acc[r][h], _mm256_madd_epi16(acc16[r][h], ones));
                acc16[r][h] = _mm256_setzero_si256();
            }
    }
    store_ymm<MR>(p, acc, rs, bias, y, m, nb);
}

#if defined(EDGEDF_AVX_VNNI)
// AVX-VNNI: MR rows (up to kMR: 12 accumulators, 2 weight halves and a broadcast in the 16 ymm registers) x one
// 16-column block; vpdpbusd sums the 4 products of each group straight into int32.
template <int MR>
__attribute__((target("avx2,fma,avxvnni"))) static void tile_avxvnni(const Packed& p, const uint8_t* a,
                                                                     const float* rs, const float* bias, float* y,
                                                                     int64_t m, int64_t nb) {
    __m256i acc[MR][2];
#pragma GCC unroll 16
    for (int r = 0; r < MR; ++r) acc[r][0] = acc[r][1] = _mm256_setzero_si256();
    const int8_t* wb = p.w.data() + nb * p.k4 * kBlock * 4;
    const int64_t lda = p.k4 * 4;
    const uint8_t* ar = a + m * lda;
    for (int64_t q = 0; q < p.k4; ++q) {
        const __m256i w0 = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(wb + q * kBlock * 4));
        const __m256i w1 = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(wb + q * kBlock * 4 + 32));
#pragma GCC unroll 16
        for (int r = 0; r < MR; ++r) {
            const __m256i av = _mm256_set1_epi32(*reinterpret_cast<const int32_t*>(ar + r * lda + q * 4));
            acc[r][0] = _mm256_dpbusd_avx_epi32(acc[r][0], av, w0);
            acc[r][1] = _mm256_dpbusd_avx_epi32(acc[r][1], av, w1);
        }
    }
    __m256i sums[MR][2];  // acc's address is never taken, which keeps it in registers
#pragma GCC unroll 16
    for (int r = 0; r < MR; ++r) sums[r][0] = acc[r][0], sums[r][1] = acc[r][1];
    store_ymm<MR>(p, sums, rs, bias, y, m, nb);
}
#endif

// AMX: 32 rows x 32 columns per call, four 16x16 int32 accumulator tiles. The weight blocks are already in
// the layout TDPBUSD takes for B (per 16-column block, one 64-byte row per 4 k: 16 columns x 4 bytes).
struct alignas(64) TileConfig {
    uint8_t palette = 1, start_row = 0, reserved[14] = {};
    uint16_t colsb[16] = {};
    uint8_t rows[16] = {};
};

__attribute__((target("amx-tile"))) static void amx_configure() {
    static const TileConfig cfg = [] {
        TileConfig c;
        for (int t = 0; t < 8; ++t) c.colsb[t] = 64, c.rows[t] = 16;  // 0-3: C, 4-5: A, 6-7: B
        return c;
    }();
    _tile_loadconfig(&cfg);  // per block: OpenVINO's own AMX kernels set other shapes on the same threads
}

__attribute__((target("amx-tile,amx-int8,avx512f,avx512bw"))) static void tile_amx(const Packed& p, const uint8_t* a,
                                                                                    const float* rs,
                                                                                    const float* bias, float* y,
                                                                                    int64_t m, int64_t nb) {
    const int64_t lda = p.k4 * 4, wstride = p.k4 * kBlock * 4;
    const int8_t* w0 = p.w.data() + nb * wstride;
    const int8_t* w1 = w0 + wstride;
    const uint8_t* a0 = a + m * lda;
    const uint8_t* a1 = a0 + 16 * lda;
    _tile_zero(0);
    _tile_zero(1);
    _tile_zero(2);
    _tile_zero(3);
    for (int64_t q = 0; q < p.k4; q += 16) {
        _tile_loadd(4, a0 + q * 4, lda);
        _tile_loadd(5, a1 + q * 4, lda);
        _tile_loadd(6, w0 + q * 64, 64);
        _tile_loadd(7, w1 + q * 64, 64);
        _tile_dpbusd(0, 4, 6);
        _tile_dpbusd(1, 4, 7);
        _tile_dpbusd(2, 5, 6);
        _tile_dpbusd(3, 5, 7);
    }
    alignas(64) int32_t c[32][32];
    _tile_stored(0, &c[0][0], 128);
    _tile_stored(1, &c[0][16], 128);
    _tile_stored(2, &c[16][0], 128);
    _tile_stored(3, &c[16][16], 128);
    for (int b = 0; b < 2; ++b) {
        const int64_t n0 = (nb + b) * kBlock;
        const __mmask16 mask = first_lanes(p.n - n0);
        const __m512i corr = _mm512_slli_epi32(_mm512_loadu_si512(p.colsum.data() + n0), 7);  // 128 * colsum
        const __m512 bv = _mm512_maskz_loadu_ps(mask, bias + n0);
        for (int r = 0; r < 32; ++r) {
            const __m512 v = _mm512_cvtepi32_ps(_mm512_sub_epi32(_mm512_load_si512(&c[r][b * 16]), corr));
            const __m512 out = _mm512_add_ps(_mm512_mul_ps(v, _mm512_set1_ps(rs[m + r])), bv);
            _mm512_mask_storeu_ps(y + (m + r) * p.n + n0, mask, out);
        }
    }
}

// AVX-512 VNNI without AMX: up to 4 blocks (64 columns) per call, 24 accumulators of the 32 zmm registers, so
// that each broadcast activation group feeds 4 vpdpbusd rather than 2 (half the activation loads per product).
template <int MR>
static void tile_wide(const Packed& p, const uint8_t* a, const float* rs, const float* bias, float* y,
                      int64_t m, int64_t nb) {
    switch (std::min<int64_t>(4, p.nb - nb)) {
        case 4: return tile_avx512<MR, 4>(p, a, rs, bias, y, m, nb);
        case 3: return tile_avx512<MR, 3>(p, a, rs, bias, y, m, nb);
        case 2: return tile_avx512<MR, 2>(p, a, rs, bias, y, m, nb);
        default: return tile_avx512<MR, 1>(p, a, rs, bias, y, m, nb);
    }
}

template <int MR>
static void tile(Isa isa, const Packed& p, const uint8_t* a, const float* rs, const float* bias, float* y,
                 int64_t m, int64_t nb) {
    if (isa == Isa::avx512) {
        tile_wide<MR>(p, a, rs, bias, y, m, nb);
    } else if (isa == Isa::amx) {  // the rows left below whole AMX tiles, in AMX's 2-block column steps
        if (nb + 1 < p.nb)
            tile_avx512<MR, 2>(p, a, rs, bias, y, m, nb);
        else
            tile_avx512<MR, 1>(p, a, rs, bias, y, m, nb);
#if defined(EDGEDF_AVX_VNNI)
    } else if (isa == Isa::avxvnni) {
        for (int64_t b = nb; b < std::min(nb + 2, p.nb); ++b) tile_avxvnni<MR>(p, a, rs, bias, y, m, b);
#endif
    } else {
        for (int64_t b = nb; b < std::min(nb + 2, p.nb); ++b) tile_avx2<MR>(p, a, rs, bias, y, m, b);
    }
}
#endif

constexpr int kMR = 6;  // rows per tile

static void gemm(Isa isa, const Packed& p, const uint8_t* a, const float* rs, const float* bias, float* y,
                 int64_t m0, int64_t m1) {
#if defined(__x86_64__)
    if (isa != Isa::scalar) {
        if (isa == Isa::amx) amx_configure();
        const int64_t step = isa == Isa::avx512 ? 4 : 2;  // column blocks per tile call (tile_wide: 4)
        for (int64_t nb = 0; nb < p.nb; nb += step) {
            int64_t m = m0;
            if (isa == Isa::amx && nb + 1 < p.nb)  // whole 32-row tiles; the rest on the AVX-512 VNNI path
                for (; m + 32 <= m1; m += 32) tile_amx(p, a, rs, bias, y, m, nb);
            for (; m + kMR <= m1; m += kMR) tile<kMR>(isa, p, a, rs, bias, y, m, nb);
            switch (m1 - m) {  // the last 1-5 rows in one tile: one pass over the weights, not one per row
                case 5: tile<5>(isa, p, a, rs, bias, y, m, nb); break;
                case 4: tile<4>(isa, p, a, rs, bias, y, m, nb); break;
                case 3: tile<3>(isa, p, a, rs, bias, y, m, nb); break;
                case 2: tile<2>(isa, p, a, rs, bias, y, m, nb); break;
                case 1: tile<1>(isa, p, a, rs, bias, y, m, nb); break;
            }
        }
        return;
    }
#endif
    gemm_scalar(p, a, rs, bias, y, m0, m1);
}

// Work is handed out in blocks of whole tiles (AMX: 32 rows; the others: kMR), each normalised, quantised and
// multiplied by one thread while its codes stay in cache for the pass over the weights (rows_per_block rows; on
// AVX-512 VNNI, 60-row blocks run 15 % faster than 64). Threads take the next block as they finish one (a shared
// counter), and blocks shrink towards the end, so that no thread waits long on another: cores do not run at one
// speed (hybrid P/E cores, another process, a VM's neighbours). Equal static shares left the faster of 2 threads
// idle for 24 % of the op on this project's VM; equal 60-row tasks left 14 and 13 of them at batch 8.
static int64_t rows_per_tile(Isa isa) { return isa == Isa::amx ? 32 : kMR; }
static int64_t rows_per_block(Isa isa) { return isa == Isa::amx ? 64 : 10 * kMR; }

// One BitLinear of an op: its re-laid-out weights, scale g, bias and the RMSNorm fused in front (gamma null: none).
struct Layer {
    std::shared_ptr<Packed> p;
    float g = 1.f;
    const float* bias = nullptr;
    const float* gamma = nullptr;
    float eps = 0.f;
};

// `rows` rows of x (rows x K) through one layer into y (rows x N): normalised, quantised and multiplied while the
// codes stay in the calling thread's cache, GELU on the output while it does.
static void run_rows(Isa isa, const Layer& l, const float* x, int64_t rows, float* y, bool gelu) {
    static thread_local std::vector<uint8_t> a;  // codes and output scales: buffers that only grow
    static thread_local std::vector<float> rs;
    a.resize(std::max(a.size(), static_cast<size_t>(rows * l.p->k4 * 4)));
    rs.resize(std::max(rs.size(), static_cast<size_t>(rows)));
    prepare_rows(isa, x, rows, l.p->k, l.gamma, l.eps, l.p->k4, l.g, a.data(), rs.data());
    gemm(isa, *l.p, a.data(), rs.data(), l.bias, y, 0, rows);
    if (gelu) gelu_inplace(isa, y, rows * l.p->n);
}

// Rows [0, rows) in blocks: fn(m0, m1) for each block, on up to max_threads workers that spawn(threads, worker)
// starts, each calling worker() once. The blocks are whole tiles (rows_per_block's comment says why) taken from a
// shared counter: a full block while plenty is left, then a share of what is left, so the last blocks are small.
template <class Spawn, class Fn>
static void for_row_blocks(Isa isa, int64_t rows, int64_t max_threads, Spawn spawn, Fn fn) {
    const int64_t tile_rows = rows_per_tile(isa), tiles_per_block = rows_per_block(isa) / tile_rows;
    const int64_t tiles = (rows + tile_rows - 1) / tile_rows;
    const int64_t threads = std::max<int64_t>(1, std::min(max_threads, tiles));
    std::atomic<int64_t> next{0};  // the first tile no worker has taken yet
    spawn(threads, [&] {
        for (int64_t t0 = next.load(std::memory_order_relaxed);;) {
            const int64_t left = tiles - t0;
            if (left <= 0) return;
            const int64_t take = std::clamp<int64_t>(left / (2 * threads), 1, tiles_per_block);
            if (!next.compare_exchange_weak(t0, t0 + take, std::memory_order_relaxed)) continue;
            fn(t0 * tile_rows, std::min(rows, (t0 + take) * tile_rows));
            t0 = next.load(std::memory_order_relaxed);
        }
    });
}

// ---- The attention, softmax(q k^T) v in float32, for the heads of one op (edgedf::Attention) ----
// q [T][D] and v [T][D] of one head, k^T [D][T] (q and k already scaled: with_attention_inputs), output row t at
// o + t * o_stride. BitNet keeps the attention in float. Each tile: the scores of 6 query rows against all keys,
// their softmax and those 6 rows of output, while the scores stay in L1 (in ViT-S on a Zen 5, 2.58 ms/img against
// the 2.79 of OpenVINO's MatMul/Softmax/MatMul in the fp32 model: results_profile_zen5.md). Where
// there is no AVX-512 the graph keeps OpenVINO's attention (with_fused_attention); the scalar loop below runs only
// where an op made on an AVX-512 CPU is moved to one without (a saved IR).
static void attention_rows_scalar(const float* q, const float* kt, const float* v, int64_t t, int64_t d, int64_t r0,
                                  int64_t r1, float* o, int64_t o_stride) {
    std::vector<float> s(static_cast<size_t>(t));
    for (int64_t r = r0; r < r1; ++r) {
        float mx = -INFINITY;
        for (int64_t j = 0; j < t; ++j) {
            float acc = 0.f;
            for (int64_t i = 0; i < d; ++i) acc = std::fma(q[r * d + i], kt[i * t + j], acc);
            s[j] = acc;
            mx = std::max(mx, acc);
        }
        float sum = 0.f;
        for (int64_t j = 0; j < t; ++j) sum += s[j] = std::exp(s[j] - mx);
        for (int64_t i = 0; i < d; ++i) {
            float acc = 0.f;
            for (int64_t j = 0; j < t; ++j) acc = std::fma(s[j], v[j * d + i], acc);
            o[r * o_stride + i] = acc * (1.f / sum);
        }
    }
}

#if defined(__x86_64__)
// e^x for x <= 0 (the softmax's s - max): x = n ln 2 + r, e^r by Cephes' expf polynomial, times 2^n; under -87.3
// it gives e^-87.3 (1.2e-38, nothing beside the row's largest term, which is 1).
__attribute__((target("avx512f"), always_inline)) static inline __m512 exp_avx512(__m512 x) {
    x = _mm512_max_ps(x, _mm512_set1_ps(-87.3365447505531f));
    const __m512 n = _mm512_roundscale_ps(_mm512_mul_ps(x, _mm512_set1_ps(1.44269504088896341f)),
                                          _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    __m512 r = _mm512_fnmadd_ps(n, _mm512_set1_ps(0.693359375f), x);
    r = _mm512_fnmadd_ps(n, _mm512_set1_ps(-2.12194440e-4f), r);
    __m512 p = _mm512_fmadd_ps(_mm512_set1_ps(1.9875691500e-4f), r, _mm512_set1_ps(1.3981999507e-3f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(8.3334519073e-3f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(4.1665795894e-2f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.6666665459e-1f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(5.0000001201e-1f));
    p = _mm512_fmadd_ps(p, _mm512_mul_ps(r, r), _mm512_add_ps(r, _mm512_set1_ps(1.f)));
    return _mm512_scalef_ps(p, n);
}

// acc[r][c] = sum_k a[r * as + k] * b[k * bs + 16 c ..] for R rows and k < steps, the last vector of b masked:
// both of the attention's products (q k^T: a = q, b = k^T; p v: a = p, b = v)
template <int R, int C>
__attribute__((target("avx512f"), always_inline)) static inline void fma_tile(const float* a, int64_t as,
                                                                              const float* b, int64_t bs,
                                                                              int64_t steps, __mmask16 last,
                                                                              __m512 (&acc)[R][C]) {
#pragma GCC unroll 8
    for (int r = 0; r < R; ++r)
#pragma GCC unroll 4
        for (int c = 0; c < C; ++c) acc[r][c] = _mm512_setzero_ps();
    for (int64_t k = 0; k < steps; ++k) {
        const float* br = b + k * bs;
        __m512 w[C];
#pragma GCC unroll 4
        for (int c = 0; c < C; ++c)
            w[c] = c == C - 1 ? _mm512_maskz_loadu_ps(last, br + 16 * c) : _mm512_loadu_ps(br + 16 * c);
#pragma GCC unroll 8
        for (int r = 0; r < R; ++r) {
            const __m512 ab = _mm512_set1_ps(a[r * as + k]);
#pragma GCC unroll 4
            for (int c = 0; c < C; ++c) acc[r][c] = _mm512_fmadd_ps(ab, w[c], acc[r][c]);
        }
    }
}

// s[r][j .. j + 16 C) = sum_i q[r][i] k^T[i][j ..] for R rows
template <int R, int C>
__attribute__((target("avx512f"))) static void scores_tile(const float* q, const float* kt, int64_t t, int64_t d,
                                                           int64_t j, __mmask16 last, float* s, int64_t sp) {
    __m512 acc[R][C];
    fma_tile<R, C>(q, d, kt + j, t, d, last, acc);
#pragma GCC unroll 8
    for (int r = 0; r < R; ++r)
#pragma GCC unroll 4
        for (int c = 0; c < C; ++c) _mm512_storeu_ps(s + r * sp + j + 16 * c, acc[r][c]);
}

// o[r][i .. i + 16 C) = (sum_j p[r][j] v[j][i ..]) * inv[r] for R rows, the last vector masked
template <int R, int C>
__attribute__((target("avx512f"))) static void values_tile(const float* p, int64_t sp, const float* v, int64_t t,
                                                           int64_t d, int64_t i, __mmask16 last, const float* inv,
                                                           float* o, int64_t o_stride) {
    __m512 acc[R][C];
    fma_tile<R, C>(p, sp, v + i, d, t, last, acc);
#pragma GCC unroll 8
    for (int r = 0; r < R; ++r) {
        const __m512 f = _mm512_set1_ps(inv[r]);
        float* orow = o + r * o_stride + i;
#pragma GCC unroll 4
        for (int c = 0; c < C; ++c) {
            const __m512 out = _mm512_mul_ps(acc[r][c], f);
            if (c == C - 1)
                _mm512_mask_storeu_ps(orow + 16 * c, last, out);
            else
                _mm512_storeu_ps(orow + 16 * c, out);
        }
    }
}

// one tile's calls over `count` values in steps of 64 (4 vectors), the last step 1-4 vectors with the last masked
template <class Tile>
static void in_steps(int64_t count, Tile tile) {
    int64_t i = 0;
    for (; i + 64 <= count; i += 64) tile(std::integral_constant<int, 4>{}, i, first_lanes(16));
    const int64_t left = count - i;
    const __mmask16 last = first_lanes(left - (left - 1) / 16 * 16);
    switch ((left + 15) / 16) {
        case 3: return tile(std::integral_constant<int, 3>{}, i, last);
        case 2: return tile(std::integral_constant<int, 2>{}, i, last);
        case 1: return tile(std::integral_constant<int, 1>{}, i, last);
        default: return;
    }
}

// R query rows (q and o at their first): scores, softmax and output; s: R rows of sp >= t floats, rounded up to 16
template <int R>
__attribute__((target("avx512f"))) static void attention_tile(const float* q, const float* kt, const float* v,
                                                              int64_t t, int64_t d, float* o, int64_t o_stride,
                                                              float* s, int64_t sp) {
    in_steps(t, [&](auto c, int64_t j, __mmask16 last) {
        scores_tile<R, decltype(c)::value>(q, kt, t, d, j, last, s, sp);
    });
    float inv[R];
    const int64_t whole = t / 16 * 16;
    const __mmask16 tail = first_lanes(t - whole);
    for (int r = 0; r < R; ++r) {
        float* sr = s + r * sp;
        __m512 mx = _mm512_set1_ps(-INFINITY);
        for (int64_t j = 0; j < whole; j += 16) mx = _mm512_max_ps(mx, _mm512_loadu_ps(sr + j));
        mx = _mm512_mask_max_ps(mx, tail, mx, _mm512_loadu_ps(sr + whole));
        const __m512 m = _mm512_set1_ps(_mm512_reduce_max_ps(mx));
        __m512 sum = _mm512_setzero_ps();
        for (int64_t j = 0; j < whole; j += 16) {
            const __m512 e = exp_avx512(_mm512_sub_ps(_mm512_loadu_ps(sr + j), m));
            sum = _mm512_add_ps(sum, e);
            _mm512_storeu_ps(sr + j, e);
        }
        const __m512 e = _mm512_maskz_mov_ps(tail, exp_avx512(_mm512_sub_ps(_mm512_loadu_ps(sr + whole), m)));
        sum = _mm512_add_ps(sum, e);
        _mm512_storeu_ps(sr + whole, e);
        inv[r] = 1.f / _mm512_reduce_add_ps(sum);
    }
    in_steps(d, [&](auto c, int64_t i, __mmask16 last) {
        values_tile<R, decltype(c)::value>(s, sp, v, t, d, i, last, inv, o, o_stride);
    });
}

static void attention_rows_avx512(const float* q, const float* kt, const float* v, int64_t t, int64_t d, int64_t r0,
                                  int64_t r1, float* o, int64_t o_stride) {
    static thread_local std::vector<float> s;
    const int64_t sp = (t + 15) / 16 * 16 + 16;  // + 16: rows of a power-of-two size would share cache sets
    s.resize(std::max(s.size(), static_cast<size_t>(kMR * sp)));
    int64_t r = r0;
    const auto rows = [&](auto n) {
        attention_tile<decltype(n)::value>(q + r * d, kt, v, t, d, o + r * o_stride, o_stride, s.data(), sp);
        r += n;
    };
    while (r + kMR <= r1) rows(std::integral_constant<int, kMR>{});
    switch (r1 - r) {
        case 5: return rows(std::integral_constant<int, 5>{});
        case 4: return rows(std::integral_constant<int, 4>{});
        case 3: return rows(std::integral_constant<int, 3>{});
        case 2: return rows(std::integral_constant<int, 2>{});
        case 1: return rows(std::integral_constant<int, 1>{});
    }
}
#endif

// query rows [r0, r1) of one head
static void attention_rows(Isa isa, const float* q, const float* kt, const float* v, int64_t t, int64_t d,
                           int64_t r0, int64_t r1, float* o, int64_t o_stride) {
#if defined(__x86_64__)
    if (zmm_path(isa)) return attention_rows_avx512(q, kt, v, t, d, r0, r1, o, o_stride);
#endif
    attention_rows_scalar(q, kt, v, t, d, r0, r1, o, o_stride);
}

}  // namespace edgedf
