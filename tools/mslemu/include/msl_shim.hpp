// msl_shim.hpp - a (partial) metal_stdlib for running MSL compute kernels on
// a CPU with clang.  Vector types are clang ext_vector_type (same size/alignment
// as MSL vectors, .xyzw/.rgba swizzles, element-wise ops); half is _Float16
// (compile with -Xclang -ffloat16-excess-precision=none for per-op rounding).
#pragma once
#include <cfloat>
#include <cmath>
#include <limits>
#include <tuple>
#include <type_traits>

#include "msl_rt.hpp"

typedef _Float16 half;
typedef unsigned char uchar;
typedef unsigned short ushort;
typedef unsigned int uint;
typedef unsigned long ulong;  // 64-bit on LP64 Linux, like MSL

namespace metal {
template <class T, int N>
using vec = T __attribute__((ext_vector_type(N)));
}

#define MSL_VEC_TYPES(T, P)        \
    typedef metal::vec<T, 2> P##2; \
    typedef metal::vec<T, 3> P##3; \
    typedef metal::vec<T, 4> P##4;
MSL_VEC_TYPES(float, float)
MSL_VEC_TYPES(half, half)
MSL_VEC_TYPES(int, int)
MSL_VEC_TYPES(uint, uint)
MSL_VEC_TYPES(short, short)
MSL_VEC_TYPES(ushort, ushort)
MSL_VEC_TYPES(char, char)
MSL_VEC_TYPES(uchar, uchar)
MSL_VEC_TYPES(long, long)
MSL_VEC_TYPES(ulong, ulong)
// bool vectors: one byte per component like MSL (clang's ext_vector of bool is a bit vector
// without swizzles); `signed char` keeps them distinct from charN.  Vector comparisons still
// give intN masks (-1/0): use them with select/all/any, or convert with bool4(...)
MSL_VEC_TYPES(signed char, bool)

namespace msl {
template <class V>
struct vtraits {
    static constexpr int n = 0;
    using elem = V;
};
template <class T, int N>
struct vtraits<metal::vec<T, N>> {
    static constexpr int n = N;
    using elem = T;
};
template <class V>
constexpr bool is_vec = vtraits<V>::n > 0;

// MSL constructor syntax float4(a,b,c,d) / float4(x) / float4(f2, f2) /
// float4(half4) is routed here by function-like macros (msl_macros.hpp).
template <class T, int N>
struct VecBuilder {
    metal::vec<T, N> v{};
    int n = 0;
    template <class A>
    void add(const A &a) {
        if constexpr (is_vec<A>) {
            for (int i = 0; i < vtraits<A>::n; i++)
                v[n++] = static_cast<T>(a[i]);
        } else {
            v[n++] = static_cast<T>(a);
        }
    }
};
template <class T, int N, class... A>
inline metal::vec<T, N> mkvec(const A &...a) {
    if constexpr (sizeof...(A) == 0) {
        return metal::vec<T, N>{};
    } else if constexpr (sizeof...(A) == 1 && !(is_vec<A> || ...)) {
        metal::vec<T, N> r;
        ((r = static_cast<T>(a)), ...);  // splat
        return r;
    } else {
        static_assert(((is_vec<A> ? vtraits<A>::n : 1) + ...) == N,
                      "MSL vector constructor: wrong number of components");
        VecBuilder<T, N> b;
        (b.add(a), ...);
        return b.v;
    }
}
// static_cast<float4>(h4) / static_cast<int4>(f4): MSL converts component-wise (clang's
// ext_vector static_cast would refuse or bit-cast); mslemu.py routes vector static_casts here
template <class To, class From>
inline To vconvert(const From &f) {
    using E = typename vtraits<To>::elem;
    if constexpr (is_vec<From>) {
        static_assert(vtraits<To>::n == vtraits<From>::n,
                      "static_cast between vectors of different length");
        To r;
        for (int i = 0; i < vtraits<To>::n; i++)
            r[i] = static_cast<E>(f[i]);
        return r;
    } else {
        To r = static_cast<E>(f);  // splat
        return r;
    }
}
template <int N, class... A>
inline metal::vec<signed char, N> mkbool(const A &...a) {
    metal::vec<signed char, N> r = mkvec<signed char, N>(a...);
    for (int i = 0; i < N; i++)
        r[i] = r[i] != 0;
    return r;
}
template <class T>
inline T poison() {
    T t;
    memset((void *)&t, 0xFF, sizeof t);
    return t;
}
#define MSL_SITE                                                               \
    const char *_msl_f = __builtin_FILE(), unsigned _msl_l = __builtin_LINE(), \
               unsigned _msl_c = __builtin_COLUMN()
#define MSL_SITE_ARGS _msl_f, _msl_l, _msl_c
}  // namespace msl

namespace metal {
using ::half;
using ::uchar;
using ::uint;
using ::ushort;

// ------------------------------------------------------------ math
namespace detail {
template <class T, class F>
inline T map1(const T &x, F f) {
    if constexpr (msl::is_vec<T>) {
        T r;
        for (int i = 0; i < msl::vtraits<T>::n; i++)
            r[i] = f(x[i]);
        return r;
    } else {
        return f(x);
    }
}
template <class T, class F>
inline T map2(const T &x, const T &y, F f) {
    if constexpr (msl::is_vec<T>) {
        T r;
        for (int i = 0; i < msl::vtraits<T>::n; i++)
            r[i] = f(x[i], y[i]);
        return r;
    } else {
        return f(x, y);
    }
}
}  // namespace detail

#define MSL_UNARY_FLOAT(name, expr)         \
    template <class T>                      \
    inline T name(T x) {                    \
        return detail::map1(x, [](auto e) { \
            using E = decltype(e);          \
            float v = (float)e;             \
            (void)v;                        \
            return (E)(expr);               \
        });                                 \
    }
MSL_UNARY_FLOAT(exp, std::exp(v))
MSL_UNARY_FLOAT(exp2, std::exp2(v))
MSL_UNARY_FLOAT(log, std::log(v))
MSL_UNARY_FLOAT(log2, std::log2(v))
MSL_UNARY_FLOAT(sqrt, std::sqrt(v))
MSL_UNARY_FLOAT(rsqrt, 1.0f / std::sqrt(v))
MSL_UNARY_FLOAT(sin, std::sin(v))
MSL_UNARY_FLOAT(cos, std::cos(v))
MSL_UNARY_FLOAT(tanh, std::tanh(v))
MSL_UNARY_FLOAT(erf, std::erf(v))
MSL_UNARY_FLOAT(floor, std::floor(v))
MSL_UNARY_FLOAT(ceil, std::ceil(v))
MSL_UNARY_FLOAT(round, std::round(v))
MSL_UNARY_FLOAT(rint, std::rint(v))
MSL_UNARY_FLOAT(trunc, std::trunc(v))
MSL_UNARY_FLOAT(fract, v - std::floor(v))
MSL_UNARY_FLOAT(fabs, std::fabs(v))
MSL_UNARY_FLOAT(saturate, std::fmin(std::fmax(v, 0.0f), 1.0f))

template <class T>
inline T abs(T x) {
    return detail::map1(x, [](auto e) { return e < 0 ? (decltype(e))-e : e; });
}
template <class T>
inline T max(T a, T b) {
    return detail::map2(a, b, [](auto x, auto y) { return x > y ? x : y; });
}
template <class T>
inline T min(T a, T b) {
    return detail::map2(a, b, [](auto x, auto y) { return x < y ? x : y; });
}
template <class T>
inline T fmax(T a, T b) {
    return max(a, b);
}
template <class T>
inline T fmin(T a, T b) {
    return min(a, b);
}
template <class T>
inline T clamp(T x, T lo, T hi) {
    return min(max(x, lo), hi);
}
template <class T, class S, class = std::enable_if_t<msl::is_vec<T> && !msl::is_vec<S>>>
inline T clamp(T x, S lo, S hi) {
    return clamp(x, T(lo), T(hi));
}
template <class T>
inline T pow(T a, T b) {
    return detail::map2(a, b,
                        [](auto x, auto y) { return (decltype(x))std::pow((float)x, (float)y); });
}
template <class T>
inline T powr(T a, T b) {
    return pow(a, b);
}
template <class T>
inline T fma(T a, T b, T c) {
    if constexpr (msl::is_vec<T>) {
        T r;
        for (int i = 0; i < msl::vtraits<T>::n; i++)
            r[i] = fma(a[i], b[i], c[i]);
        return r;
    } else {
        return (T)std::fma((float)a, (float)b, (float)c);
    }
}
template <class T, class S>
inline T mix(T x, T y, S a) {
    return x + (y - x) * a;
}
template <class T>
inline typename msl::vtraits<T>::elem dot(T a, T b) {
    typename msl::vtraits<T>::elem s = 0;
    for (int i = 0; i < msl::vtraits<T>::n; i++)
        s += a[i] * b[i];
    return s;
}
template <class T>
inline T select(T a, T b, bool c) {
    return c ? b : a;
}
template <class T>
inline bool isnan(T x) {
    return x != x;
}
template <class T>
inline bool isinf(T x) {
    return x == std::numeric_limits<float>::infinity() ||
           x == -std::numeric_limits<float>::infinity();
}
template <class V>
inline bool all(V v) {
    for (int i = 0; i < msl::vtraits<V>::n; i++)
        if (!v[i])
            return false;
    return true;
}
template <class V>
inline bool any(V v) {
    for (int i = 0; i < msl::vtraits<V>::n; i++)
        if (v[i])
            return true;
    return false;
}
template <class To, class From>
inline To as_type(const From &f) {
    static_assert(sizeof(To) == sizeof(From), "as_type: size mismatch");
    return __builtin_bit_cast(To, f);
}
MSL_UNARY_FLOAT(log10, std::log10(v))
MSL_UNARY_FLOAT(exp10, std::pow(10.0f, v))
MSL_UNARY_FLOAT(tan, std::tan(v))
MSL_UNARY_FLOAT(asin, std::asin(v))
MSL_UNARY_FLOAT(acos, std::acos(v))
MSL_UNARY_FLOAT(atan, std::atan(v))
MSL_UNARY_FLOAT(sinh, std::sinh(v))
MSL_UNARY_FLOAT(cosh, std::cosh(v))
MSL_UNARY_FLOAT(sign, v != v     ? 0.0f
                      : v > 0.0f ? 1.0f
                      : v < 0.0f ? -1.0f
                                 : v)  // +-0 -> +-0, NaN -> 0
template <class T>
inline T atan2(T y, T x) {
    return detail::map2(y, x,
                        [](auto a, auto b) { return (decltype(a))std::atan2((float)a, (float)b); });
}
template <class T>
inline T fmod(T a, T b) {
    return detail::map2(a, b,
                        [](auto x, auto y) { return (decltype(x))std::fmod((float)x, (float)y); });
}
template <class T>
inline T copysign(T a, T b) {
    return detail::map2(
        a, b, [](auto x, auto y) { return (decltype(x))std::copysign((float)x, (float)y); });
}
template <class T>
inline T step(T edge, T x) {
    return detail::map2(edge, x, [](auto e, auto v) { return (decltype(v))(v < e ? 0 : 1); });
}
template <class T, class S, class = std::enable_if_t<msl::is_vec<T> && !msl::is_vec<S>>>
inline T step(S edge, T x) {
    return step(T(edge), x);
}
template <class T>
inline T smoothstep(T e0, T e1, T x) {
    T t = clamp((x - e0) / (e1 - e0), T(0), T(1));
    return t * t * (T(3) - T(2) * t);
}
template <class T>
inline T mad(T a, T b, T c) {
    return a * b + c;
}
template <class T>
inline T divide(T a, T b) {
    return a / b;
}
template <class T>
inline T max3(T a, T b, T c) {
    return max(max(a, b), c);
}
template <class T>
inline T min3(T a, T b, T c) {
    return min(min(a, b), c);
}
template <class T>
inline T median3(T a, T b, T c) {
    return max(min(a, b), min(max(a, b), c));
}
template <class T>
inline T ldexp(T x, int k) {
    return detail::map1(x, [k](auto e) { return (decltype(e))std::ldexp((float)e, k); });
}
template <class T>
inline T sincos(T x, T &c) {
    c = cos(x);
    return sin(x);
}
// select(a, b, c): c ? b : a, component-wise for a vector condition
template <class T, class C, class = std::enable_if_t<msl::is_vec<T> && msl::is_vec<C>>>
inline T select(T a, T b, C c) {
    T r;
    for (int i = 0; i < msl::vtraits<T>::n; i++)
        r[i] = c[i] ? b[i] : a[i];
    return r;
}
template <class T>
inline auto isfinite(T x) {
    if constexpr (msl::is_vec<T>) {
        metal::vec<bool, msl::vtraits<T>::n> r;
        for (int i = 0; i < msl::vtraits<T>::n; i++)
            r[i] = std::isfinite((float)x[i]);
        return r;
    } else {
        return (bool)std::isfinite((float)x);
    }
}
template <class T>
inline bool signbit(T x) {
    return std::signbit((float)x);
}
// geometric
template <class T>
inline typename msl::vtraits<T>::elem length(T v) {
    return (typename msl::vtraits<T>::elem)std::sqrt((float)dot(v, v));
}
template <class T>
inline typename msl::vtraits<T>::elem distance(T a, T b) {
    return length(a - b);
}
template <class T>
inline T normalize(T v) {
    return v * (typename msl::vtraits<T>::elem)(1.0f / std::sqrt((float)dot(v, v)));
}
// integer
template <class T>
inline T popcount(T x) {
    return detail::map1(x, [](auto e) {
        return (decltype(e))__builtin_popcountll(
            (unsigned long long)(std::make_unsigned_t<decltype(e)>)e);
    });
}
template <class T>
inline T clz(T x) {
    return detail::map1(x, [](auto e) {
        using U = std::make_unsigned_t<decltype(e)>;
        U u = (U)e;
        return (decltype(e))(u ? __builtin_clzll(u) - 8 * (sizeof(unsigned long long) - sizeof(U))
                               : 8 * sizeof(U));
    });
}
template <class T>
inline T ctz(T x) {
    return detail::map1(x, [](auto e) {
        using U = std::make_unsigned_t<decltype(e)>;
        U u = (U)e;
        return (decltype(e))(u ? __builtin_ctzll(u) : 8 * sizeof(U));
    });
}
template <class T>
inline T extract_bits(T x, uint offset, uint bits) {
    return detail::map1(x, [=](auto e) {
        using U = std::make_unsigned_t<decltype(e)>;
        if (bits == 0)
            return (decltype(e))0;
        U m = bits >= 8 * sizeof(U) ? U(~U(0)) : U((U(1) << bits) - 1);
        U v = U(U(e) >> offset) & m;
        if constexpr (std::is_signed_v<decltype(e)>) {  // sign-extend
            if (bits < 8 * sizeof(U) && (v >> (bits - 1)) & 1)
                v |= U(~m);
        }
        return (decltype(e))v;
    });
}
template <class T>
inline T mulhi(T a, T b) {
    return detail::map2(a, b, [](auto x, auto y) {
        return (decltype(x))(((long long)x * (long long)y) >> (8 * sizeof(x)));
    });
}
namespace fast {
using metal::atan;
using metal::atan2;
using metal::ceil;
using metal::clamp;
using metal::cos;
using metal::divide;
using metal::exp;
using metal::exp10;
using metal::exp2;
using metal::fabs;
using metal::floor;
using metal::fmax;
using metal::fmin;
using metal::fract;
using metal::length;
using metal::log;
using metal::log10;
using metal::log2;
using metal::max;
using metal::min;
using metal::normalize;
using metal::pow;
using metal::powr;
using metal::round;
using metal::rsqrt;
using metal::saturate;
using metal::sign;
using metal::sin;
using metal::sincos;
using metal::sqrt;
using metal::tan;
using metal::tanh;
using metal::trunc;
}  // namespace fast
namespace precise {
using namespace fast;
}

template <class T>
struct numeric_limits : std::numeric_limits<T> {};
template <>
struct numeric_limits<half> {
    static constexpr half max() { return (half)65504.0f; }
    static constexpr half lowest() { return (half)-65504.0f; }
    static constexpr half min() { return (half)6.103515625e-05f; }
    static constexpr half epsilon() { return (half)0.0009765625f; }
    static half infinity() { return (half)std::numeric_limits<float>::infinity(); }
};

// ------------------------------------------------------------ matrices (floatCxR / halfCxR: C
// columns of R rows)
template <class T, int C, int R>
struct matrix {
    vec<T, R> columns[C];
    matrix() {
        for (int c = 0; c < C; c++)
            columns[c] = msl::poison<vec<T, R>>();
    }                       // uninitialized on the GPU
    explicit matrix(T d) {  // d on the diagonal
        for (int c = 0; c < C; c++) {
            columns[c] = T(0);
            if (c < R)
                columns[c][c] = d;
        }
    }
    template <class... V,
              class = std::enable_if_t<sizeof...(V) == C && C != 1 && (msl::is_vec<V> && ...)>>
    matrix(const V &...cols) {
        int c = 0;
        ((columns[c++] = msl::vconvert<vec<T, R>>(cols)), ...);
    }
    template <
        class... S,
        class = std::enable_if_t<sizeof...(S) == C * R && C * R != 1 && (!msl::is_vec<S> && ...)>,
        class = void>
    matrix(const S &...v) {
        T a[] = {T(v)...};
        for (int c = 0; c < C; c++)
            for (int r = 0; r < R; r++)
                columns[c][r] = a[c * R + r];
    }
    template <class U>
    explicit matrix(const matrix<U, C, R> &m) {
        for (int c = 0; c < C; c++)
            columns[c] = msl::vconvert<vec<T, R>>(m.columns[c]);
    }
    vec<T, R> &operator[](int c) { return columns[c]; }
    const vec<T, R> &operator[](int c) const { return columns[c]; }
    matrix &operator+=(const matrix &o) {
        for (int c = 0; c < C; c++)
            columns[c] += o.columns[c];
        return *this;
    }
    matrix &operator-=(const matrix &o) {
        for (int c = 0; c < C; c++)
            columns[c] -= o.columns[c];
        return *this;
    }
    matrix &operator*=(T s) {
        for (int c = 0; c < C; c++)
            columns[c] *= s;
        return *this;
    }
};
template <class T, int C, int R>
inline matrix<T, C, R> operator+(matrix<T, C, R> a, const matrix<T, C, R> &b) {
    return a += b;
}
template <class T, int C, int R>
inline matrix<T, C, R> operator-(matrix<T, C, R> a, const matrix<T, C, R> &b) {
    return a -= b;
}
template <class T, int C, int R>
inline matrix<T, C, R> operator*(matrix<T, C, R> a, T s) {
    return a *= s;
}
template <class T, int C, int R>
inline matrix<T, C, R> operator*(T s, matrix<T, C, R> a) {
    return a *= s;
}
template <class T, int C, int R>
inline vec<T, R> operator*(const matrix<T, C, R> &m, const vec<T, C> &v) {
    vec<T, R> r = T(0);
    for (int c = 0; c < C; c++)
        r += m.columns[c] * v[c];
    return r;
}
template <class T, int C, int R>
inline vec<T, C> operator*(const vec<T, R> &v, const matrix<T, C, R> &m) {
    vec<T, C> r;
    for (int c = 0; c < C; c++)
        r[c] = dot(v, m.columns[c]);
    return r;
}
template <class T, int K, int R, int C>
inline matrix<T, C, R> operator*(const matrix<T, K, R> &a, const matrix<T, C, K> &b) {
    matrix<T, C, R> r(T(0));
    for (int c = 0; c < C; c++)
        r.columns[c] = a * b.columns[c];
    return r;
}
template <class T, int C, int R>
inline matrix<T, R, C> transpose(const matrix<T, C, R> &m) {
    matrix<T, R, C> t(T(0));
    for (int c = 0; c < C; c++)
        for (int r = 0; r < R; r++)
            t.columns[r][c] = m.columns[c][r];
    return t;
}
#define MSL_MAT_TYPES(T, P)         \
    typedef matrix<T, 2, 2> P##2x2; \
    typedef matrix<T, 2, 3> P##2x3; \
    typedef matrix<T, 2, 4> P##2x4; \
    typedef matrix<T, 3, 2> P##3x2; \
    typedef matrix<T, 3, 3> P##3x3; \
    typedef matrix<T, 3, 4> P##3x4; \
    typedef matrix<T, 4, 2> P##4x2; \
    typedef matrix<T, 4, 3> P##4x3; \
    typedef matrix<T, 4, 4> P##4x4;
MSL_MAT_TYPES(float, float)
MSL_MAT_TYPES(half, half)

// ------------------------------------------------------------ MSL constants (metal_math)
#ifndef MAXFLOAT
#define MAXFLOAT FLT_MAX
#endif
#define HUGE_VALH ((half)INFINITY)
#define HALF_MAX ((half)65504.0f)
#define HALF_MIN ((half)6.103515625e-05f)
#define HALF_EPSILON ((half)0.0009765625f)
#define MAXHALF HALF_MAX
#define M_E_F 2.71828182845904523536028747135266250f
#define M_LOG2E_F 1.44269504088896340735992468100189214f
#define M_LOG10E_F 0.434294481903251827651128918916605082f
#define M_LN2_F 0.693147180559945309417232121458176568f
#define M_LN10_F 2.30258509299404568401799145468436421f
#define M_PI_F 3.14159265358979323846264338327950288f
#define M_PI_2_F 1.57079632679489661923132169163975144f
#define M_PI_4_F 0.785398163397448309615660845819875721f
#define M_1_PI_F 0.318309886183790671537767526745028724f
#define M_2_PI_F 0.636619772367581343075535053490057448f
#define M_2_SQRTPI_F 1.12837916709551257389615890312154517f
#define M_SQRT2_F 1.41421356237309504880168872420969808f
#define M_SQRT1_2_F 0.707106781186547524400844362104849039f
#define M_E_H ((half)M_E_F)
#define M_LOG2E_H ((half)M_LOG2E_F)
#define M_LN2_H ((half)M_LN2_F)
#define M_PI_H ((half)M_PI_F)
#define M_SQRT2_H ((half)M_SQRT2_F)
#define M_SQRT1_2_H ((half)M_SQRT1_2_F)

// ------------------------------------------------------------ barriers
enum class mem_flags : unsigned {
    mem_none = 0,
    mem_device = 1,
    mem_threadgroup = 2,
    mem_texture = 4,
    mem_threadgroup_imageblock = 8
};
inline constexpr mem_flags operator|(mem_flags a, mem_flags b) {
    return mem_flags(unsigned(a) | unsigned(b));
}

inline void threadgroup_barrier(mem_flags, MSL_SITE) {
    msl::rt::tg_barrier(MSL_SITE_ARGS);
}
namespace detail {
inline void coll_nop(msl::rt::CollGroup &) {}
}  // namespace detail
// simdgroup_barrier: the lanes of the SIMD-group meet (lockstep point)
inline void simdgroup_barrier(mem_flags, MSL_SITE) {
    msl::rt::collective_raw(&detail::coll_nop, nullptr, nullptr, 0, MSL_SITE_ARGS);
}

// ------------------------------------------------------------ SIMD-group functions
namespace detail {
using msl::rt::CollGroup;
template <class T>
inline const T &IN(CollGroup &g, int l) {
    return *static_cast<const T *>(g.lane[l]->in);
}
template <class T>
inline T &OUT(CollGroup &g, int l) {
    return *static_cast<T *>(g.lane[l]->out);
}
inline bool act(CollGroup &g, int l) {
    return l >= 0 && l < 32 && ((g.mask >> l) & 1);
}

template <class T, class Op>
inline void reduce_all(CollGroup &g, T identity, Op op) {
    T v[32];
    for (int l = 0; l < 32; l++)
        v[l] = act(g, l) ? IN<T>(g, l) : identity;
    // butterfly (xor 16,8,4,2,1): every lane ends with the same total
    for (int off = 16; off >= 1; off >>= 1) {
        T nv[32];
        for (int l = 0; l < 32; l++)
            nv[l] = op(v[l], v[l ^ off]);
        for (int l = 0; l < 32; l++)
            v[l] = nv[l];
    }
    for (int l = 0; l < 32; l++)
        if (act(g, l))
            OUT<T>(g, l) = v[l];
}
template <class T>
void c_sum(CollGroup &g) {
    reduce_all<T>(g, T(0), [](T a, T b) { return a + b; });
}
template <class T>
void c_prod(CollGroup &g) {
    reduce_all<T>(g, T(1), [](T a, T b) { return a * b; });
}
template <class T>
void c_max(CollGroup &g) {
    reduce_all<T>(g, T(-std::numeric_limits<float>::infinity()),
                  [](T a, T b) { return metal::max(a, b); });
}
template <class T>
void c_maxi(CollGroup &g) {
    reduce_all<T>(g, std::numeric_limits<T>::lowest(), [](T a, T b) { return a > b ? a : b; });
}
template <class T>
void c_min(CollGroup &g) {
    reduce_all<T>(g, T(std::numeric_limits<float>::infinity()),
                  [](T a, T b) { return metal::min(a, b); });
}
template <class T>
void c_mini(CollGroup &g) {
    reduce_all<T>(g, std::numeric_limits<T>::max(), [](T a, T b) { return a < b ? a : b; });
}
template <class T>
void c_and(CollGroup &g) {
    reduce_all<T>(g, T(~T(0)), [](T a, T b) { return T(a & b); });
}
template <class T>
void c_or(CollGroup &g) {
    reduce_all<T>(g, T(0), [](T a, T b) { return T(a | b); });
}
template <class T>
void c_xor(CollGroup &g) {
    reduce_all<T>(g, T(0), [](T a, T b) { return T(a ^ b); });
}

// value of lane `src` or poison if that lane is not active
template <class T>
inline T from(CollGroup &g, int src) {
    return act(g, src) ? IN<T>(g, src) : msl::poison<T>();
}
template <class T>
void c_shuffle(CollGroup &g) {
    for (int l = 0; l < 32; l++)
        if (act(g, l))
            OUT<T>(g, l) = from<T>(g, int(g.lane[l]->arg0));
}
template <class T>
void c_shuffle_xor(CollGroup &g) {
    for (int l = 0; l < 32; l++)
        if (act(g, l))
            OUT<T>(g, l) = from<T>(g, l ^ int(g.lane[l]->arg0));
}
template <class T>
void c_shuffle_down(CollGroup &g) {
    for (int l = 0; l < 32; l++)
        if (act(g, l)) {
            int s = l + int(g.lane[l]->arg0);
            OUT<T>(g, l) = s >= 32 ? IN<T>(g, l) : from<T>(g, s);  // upper delta lanes unchanged
        }
}
template <class T>
void c_shuffle_up(CollGroup &g) {
    for (int l = 0; l < 32; l++)
        if (act(g, l)) {
            int s = l - int(g.lane[l]->arg0);
            OUT<T>(g, l) = s < 0 ? IN<T>(g, l) : from<T>(g, s);  // lower delta lanes unchanged
        }
}
template <class T>
void c_prefix_excl_sum(CollGroup &g) {
    T acc = T(0);
    for (int l = 0; l < 32; l++)
        if (act(g, l)) {
            OUT<T>(g, l) = acc;
            acc = acc + IN<T>(g, l);
        }
}
template <class T>
void c_prefix_incl_sum(CollGroup &g) {
    T acc = T(0);
    for (int l = 0; l < 32; l++)
        if (act(g, l)) {
            acc = acc + IN<T>(g, l);
            OUT<T>(g, l) = acc;
        }
}
inline void c_all(CollGroup &g) {
    bool r = true;
    for (int l = 0; l < 32; l++)
        if (act(g, l))
            r = r && IN<bool>(g, l);
    for (int l = 0; l < 32; l++)
        if (act(g, l))
            OUT<bool>(g, l) = r;
}
inline void c_any(CollGroup &g) {
    bool r = false;
    for (int l = 0; l < 32; l++)
        if (act(g, l))
            r = r || IN<bool>(g, l);
    for (int l = 0; l < 32; l++)
        if (act(g, l))
            OUT<bool>(g, l) = r;
}
inline void c_is_first(CollGroup &g) {
    int first = __builtin_ctz(g.mask);
    for (int l = 0; l < 32; l++)
        if (act(g, l))
            OUT<bool>(g, l) = (l == first);
}
template <class T>
void c_broadcast_first(CollGroup &g) {
    int first = __builtin_ctz(g.mask);
    for (int l = 0; l < 32; l++)
        if (act(g, l))
            OUT<T>(g, l) = IN<T>(g, first);
}
}  // namespace detail

#define MSL_COLL(fn, x, arg) msl::rt::collective<T>(&detail::fn<T>, x, uint64_t(arg), MSL_SITE_ARGS)
template <class T>
inline T simd_sum(T x, MSL_SITE) {
    return MSL_COLL(c_sum, x, 0);
}
template <class T>
inline T simd_product(T x, MSL_SITE) {
    return MSL_COLL(c_prod, x, 0);
}
template <class T>
inline T simd_max(T x, MSL_SITE) {
    if constexpr (std::is_integral_v<T>)
        return MSL_COLL(c_maxi, x, 0);
    else
        return MSL_COLL(c_max, x, 0);
}
template <class T>
inline T simd_min(T x, MSL_SITE) {
    if constexpr (std::is_integral_v<T>)
        return MSL_COLL(c_mini, x, 0);
    else
        return MSL_COLL(c_min, x, 0);
}
template <class T>
inline T simd_and(T x, MSL_SITE) {
    return MSL_COLL(c_and, x, 0);
}
template <class T>
inline T simd_or(T x, MSL_SITE) {
    return MSL_COLL(c_or, x, 0);
}
template <class T>
inline T simd_xor(T x, MSL_SITE) {
    return MSL_COLL(c_xor, x, 0);
}
template <class T>
inline T simd_shuffle(T x, ushort lane, MSL_SITE) {
    return MSL_COLL(c_shuffle, x, lane);
}
template <class T>
inline T simd_broadcast(T x, ushort lane, MSL_SITE) {
    return MSL_COLL(c_shuffle, x, lane);
}
template <class T>
inline T simd_shuffle_xor(T x, ushort m, MSL_SITE) {
    return MSL_COLL(c_shuffle_xor, x, m);
}
template <class T>
inline T simd_shuffle_down(T x, ushort d, MSL_SITE) {
    return MSL_COLL(c_shuffle_down, x, d);
}
template <class T>
inline T simd_shuffle_up(T x, ushort d, MSL_SITE) {
    return MSL_COLL(c_shuffle_up, x, d);
}
template <class T>
inline T simd_prefix_exclusive_sum(T x, MSL_SITE) {
    return MSL_COLL(c_prefix_excl_sum, x, 0);
}
template <class T>
inline T simd_prefix_inclusive_sum(T x, MSL_SITE) {
    return MSL_COLL(c_prefix_incl_sum, x, 0);
}
template <class T>
inline T simd_broadcast_first(T x, MSL_SITE) {
    return MSL_COLL(c_broadcast_first, x, 0);
}
inline bool simd_all(bool x, MSL_SITE) {
    return msl::rt::collective<bool>(&detail::c_all, x, 0, MSL_SITE_ARGS);
}
inline bool simd_any(bool x, MSL_SITE) {
    return msl::rt::collective<bool>(&detail::c_any, x, 0, MSL_SITE_ARGS);
}
inline bool simd_is_first(MSL_SITE) {
    bool d = false;
    return msl::rt::collective<bool>(&detail::c_is_first, d, 0, MSL_SITE_ARGS);
}

// ------------------------------------------------------------ simdgroup_matrix (8x8 only)
// Lane l holds elements (row, col) and (row, col+1) with
//   qid = l/4, row = (qid & 4) + (l/2)%4, col = (qid & 2)*2 + (l%2)*2
// (the layout Apple's own MLX kernels rely on via thread_elements()).
namespace detail {
inline void frag_coord(int lane, int &r, int &c) {
    int qid = lane / 4;
    r = (qid & 4) + (lane / 2) % 4;
    c = (qid & 2) * 2 + (lane % 2) * 2;
}
}  // namespace detail

template <class T, int Cols, int Rows>
struct simdgroup_matrix {
    static_assert(Cols == 8 && Rows == 8, "emulator supports simdgroup_matrix 8x8 only");
    vec<T, 2> e;
    simdgroup_matrix() { e = msl::poison<vec<T, 2>>(); }  // undefined on GPU -> NaN here
    explicit simdgroup_matrix(T d) {                      // diagonal matrix
        int r, c;
        detail::frag_coord(msl::rt::t_cur->tc.lane, r, c);
        e[0] = (r == c) ? d : T(0);
        e[1] = (r == c + 1) ? d : T(0);
    }
    vec<T, 2> &thread_elements() { return e; }
    const vec<T, 2> &thread_elements() const { return e; }
};
typedef simdgroup_matrix<half, 8, 8> simdgroup_half8x8;
typedef simdgroup_matrix<float, 8, 8> simdgroup_float8x8;

template <class T, int C, int R>
inline simdgroup_matrix<T, C, R> make_filled_simdgroup_matrix(T v) {
    simdgroup_matrix<T, C, R> m;
    m.e = vec<T, 2>{v, v};
    return m;
}

namespace detail {
struct MatIO {
    const void *ptr;
    unsigned long epr, ox, oy;
    bool transpose;
};
inline bool uniform_io(CollGroup &g, const char *what) {
    if (g.mask != g.launched) {
        char b[300];
        snprintf(b, sizeof b,
                 "%s:%u: %s needs all 32 lanes of the SIMD-group in uniform control flow (active "
                 "mask %08x, simdgroup lanes %08x) at %s",
                 msl::rt::t_cur->file, msl::rt::t_cur->line, what, g.mask, g.launched,
                 msl::rt::where(msl::rt::t_cur).c_str());
        msl::rt::t_worker->d->fail(b);
        return false;
    }
    if (g.launched != 0xFFFFFFFFu) {
        msl::rt::t_worker->d->fail(
            std::string(what) +
            ": SIMD-group has fewer than 32 threads (threadgroup size not a multiple of 32)");
        return false;
    }
    const MatIO &a0 = *static_cast<const MatIO *>(g.lane[0]->in);
    for (int l = 1; l < 32; l++) {
        const MatIO &a = *static_cast<const MatIO *>(g.lane[l]->in);
        if (a.ptr != a0.ptr || a.epr != a0.epr || a.ox != a0.ox || a.oy != a0.oy ||
            a.transpose != a0.transpose) {
            char b[300];
            snprintf(b, sizeof b,
                     "%s:%u: %s called with non-uniform arguments across the SIMD-group (lane 0 vs "
                     "lane %d)",
                     msl::rt::t_cur->file, msl::rt::t_cur->line, what, l);
            msl::rt::t_worker->d->fail(b);
            return false;
        }
    }
    return true;
}
template <class T>
void c_mload(CollGroup &g) {
    if (!uniform_io(g, "simdgroup_load"))
        return;
    for (int l = 0; l < 32; l++) {
        const MatIO &a = *static_cast<const MatIO *>(g.lane[l]->in);
        const T *src = static_cast<const T *>(a.ptr);
        auto &m = *static_cast<simdgroup_matrix<T, 8, 8> *>(g.lane[l]->out);
        int r, c;
        frag_coord(l, r, c);
        for (int k = 0; k < 2; k++) {
            unsigned long rr = r, cc = c + k;
            m.e[k] = a.transpose ? src[(a.oy + cc) * a.epr + a.ox + rr]
                                 : src[(a.oy + rr) * a.epr + a.ox + cc];
        }
    }
}
template <class T>
void c_mstore(CollGroup &g) {
    if (!uniform_io(g, "simdgroup_store"))
        return;
    for (int l = 0; l < 32; l++) {
        const MatIO &a = *static_cast<const MatIO *>(g.lane[l]->in);
        T *dst = const_cast<T *>(static_cast<const T *>(a.ptr));
        const auto &m = *static_cast<const simdgroup_matrix<T, 8, 8> *>(g.lane[l]->out);
        int r, c;
        frag_coord(l, r, c);
        for (int k = 0; k < 2; k++) {
            unsigned long rr = r, cc = c + k;
            if (a.transpose)
                dst[(a.oy + cc) * a.epr + a.ox + rr] = m.e[k];
            else
                dst[(a.oy + rr) * a.epr + a.ox + cc] = m.e[k];
        }
    }
}
template <class TD, class TA, class TB, class TC>
struct MMAArgs {
    const simdgroup_matrix<TA, 8, 8> *a;
    const simdgroup_matrix<TB, 8, 8> *b;
    const simdgroup_matrix<TC, 8, 8> *c;
    const void *tag;
};
template <class TD, class TA, class TB, class TC>
void c_mma(CollGroup &g) {
    using A = MMAArgs<TD, TA, TB, TC>;
    if (g.mask != 0xFFFFFFFFu) {
        char b[200];
        snprintf(b, sizeof b,
                 "%s:%u: simdgroup_multiply_accumulate needs all 32 lanes in uniform control flow "
                 "(mask %08x)",
                 msl::rt::t_cur->file, msl::rt::t_cur->line, g.mask);
        msl::rt::t_worker->d->fail(b);
        return;
    }
    float Am[8][8], Bm[8][8], Cm[8][8];
    for (int l = 0; l < 32; l++) {
        const A &a = *static_cast<const A *>(g.lane[l]->in);
        int r, c;
        frag_coord(l, r, c);
        for (int k = 0; k < 2; k++) {
            Am[r][c + k] = (float)a.a->e[k];
            Bm[r][c + k] = (float)a.b->e[k];
            Cm[r][c + k] = a.c ? (float)a.c->e[k] : 0.0f;
        }
    }
    for (int l = 0; l < 32;
         l++) {  // all inputs gathered before any output is written (aliasing-safe)
        auto &d = *static_cast<simdgroup_matrix<TD, 8, 8> *>(g.lane[l]->out);
        int r, c;
        frag_coord(l, r, c);
        for (int k = 0; k < 2; k++) {
            float s = Cm[r][c + k];
            for (int j = 0; j < 8; j++)
                s += Am[r][j] * Bm[j][c + k];
            d.e[k] = (TD)s;
        }
    }
}
}  // namespace detail

template <class T, class P>
inline void simdgroup_load(simdgroup_matrix<T, 8, 8> &d, P *src, unsigned long elements_per_row = 8,
                           ulong2 matrix_origin = 0, bool transpose_matrix = false, MSL_SITE) {
    detail::MatIO io{(const void *)src, elements_per_row, matrix_origin.x, matrix_origin.y,
                     transpose_matrix};
    msl::rt::collective_raw(&detail::c_mload<T>, &io, &d, 0, MSL_SITE_ARGS);
}
template <class T, class P>
inline void simdgroup_store(const simdgroup_matrix<T, 8, 8> &m, P *dst,
                            unsigned long elements_per_row = 8, ulong2 matrix_origin = 0,
                            bool transpose_matrix = false, MSL_SITE) {
    detail::MatIO io{(const void *)dst, elements_per_row, matrix_origin.x, matrix_origin.y,
                     transpose_matrix};
    msl::rt::collective_raw(&detail::c_mstore<T>, &io, const_cast<simdgroup_matrix<T, 8, 8> *>(&m),
                            0, MSL_SITE_ARGS);
}
template <class TD, class TA, class TB, class TC>
inline void simdgroup_multiply_accumulate(simdgroup_matrix<TD, 8, 8> &d,
                                          const simdgroup_matrix<TA, 8, 8> &a,
                                          const simdgroup_matrix<TB, 8, 8> &b,
                                          const simdgroup_matrix<TC, 8, 8> &c, MSL_SITE) {
    detail::MMAArgs<TD, TA, TB, TC> args{&a, &b, &c, nullptr};
    msl::rt::collective_raw(&detail::c_mma<TD, TA, TB, TC>, &args, &d, 0, MSL_SITE_ARGS);
}
template <class TD, class TA, class TB>
inline void simdgroup_multiply(simdgroup_matrix<TD, 8, 8> &d, const simdgroup_matrix<TA, 8, 8> &a,
                               const simdgroup_matrix<TB, 8, 8> &b, MSL_SITE) {
    detail::MMAArgs<TD, TA, TB, TD> args{&a, &b, nullptr, nullptr};
    msl::rt::collective_raw(&detail::c_mma<TD, TA, TB, TD>, &args, &d, 0, MSL_SITE_ARGS);
}

// ------------------------------------------------------------ atomics (device memory is shared by
// all workers)
enum memory_order {
    memory_order_relaxed = __ATOMIC_RELAXED,
    memory_order_acquire = __ATOMIC_ACQUIRE,
    memory_order_release = __ATOMIC_RELEASE,
    memory_order_acq_rel = __ATOMIC_ACQ_REL,
    memory_order_seq_cst = __ATOMIC_SEQ_CST
};
template <class T>
struct _atomic {
    T v;
};
typedef _atomic<int> atomic_int;
typedef _atomic<uint> atomic_uint;
typedef _atomic<float> atomic_float;
template <class T>
inline T atomic_load_explicit(const volatile _atomic<T> *a, memory_order) {
    return __atomic_load_n(&a->v, __ATOMIC_SEQ_CST);
}
template <class T>
inline void atomic_store_explicit(volatile _atomic<T> *a, T x, memory_order) {
    __atomic_store_n(&a->v, x, __ATOMIC_SEQ_CST);
}
template <class T>
inline T atomic_exchange_explicit(volatile _atomic<T> *a, T x, memory_order) {
    return __atomic_exchange_n(&a->v, x, __ATOMIC_SEQ_CST);
}
template <class T>
inline T atomic_fetch_add_explicit(volatile _atomic<T> *a, T x, memory_order) {
    if constexpr (std::is_floating_point_v<T>) {
        T old = __atomic_load_n(&a->v, __ATOMIC_SEQ_CST);
        while (!__atomic_compare_exchange_n(&a->v, &old, old + x, true, __ATOMIC_SEQ_CST,
                                            __ATOMIC_SEQ_CST)) {
        }
        return old;
    } else {
        return __atomic_fetch_add(&a->v, x, __ATOMIC_SEQ_CST);
    }
}
template <class T>
inline T atomic_fetch_sub_explicit(volatile _atomic<T> *a, T x, memory_order) {
    return __atomic_fetch_sub(&a->v, x, __ATOMIC_SEQ_CST);
}
template <class T>
inline T atomic_fetch_max_explicit(volatile _atomic<T> *a, T x, memory_order) {
    T old = __atomic_load_n(&a->v, __ATOMIC_SEQ_CST);
    while (old < x &&
           !__atomic_compare_exchange_n(&a->v, &old, x, true, __ATOMIC_SEQ_CST, __ATOMIC_SEQ_CST)) {
    }
    return old;
}
template <class T>
inline bool atomic_compare_exchange_weak_explicit(volatile _atomic<T> *a, T *expected, T desired,
                                                  memory_order, memory_order) {
    return __atomic_compare_exchange_n(&a->v, expected, desired, true, __ATOMIC_SEQ_CST,
                                       __ATOMIC_SEQ_CST);
}

using ::float2;
using ::float3;
using ::float4;
using ::half2;
using ::half3;
using ::half4;
}  // namespace metal
using metal::float2x2;
using metal::float2x3;
using metal::float2x4;
using metal::float3x2;
using metal::float3x3;
using metal::float3x4;
using metal::float4x2;
using metal::float4x3;
using metal::float4x4;
using metal::half2x2;
using metal::half2x3;
using metal::half2x4;
using metal::half3x2;
using metal::half3x3;
using metal::half3x4;
using metal::half4x2;
using metal::half4x3;
using metal::half4x4;
namespace metal {
using ::int2;
using ::int3;
using ::int4;
using ::uint2;
using ::uint3;
using ::uint4;
using ::ulong2;
using ::ushort2;
using ::ushort3;
using ::ushort4;
}  // namespace metal

namespace msl {
namespace rt {
// convert a 3-component builtin to the declared parameter type (uint, uint2, uint3, ushort, ...)
// type of parameter I of function type F (kernel trampolines: decltype(kernel<args>))
template <class F>
struct fn_params;
template <class R, class... A>
struct fn_params<R(A...)> {
    using type = std::tuple<A...>;
};
template <class F, size_t I>
using param_t = std::tuple_element_t<I, typename fn_params<F>::type>;
// [[buffer(i)]] argument: pointer, reference (constant Args& args) or by value
template <class P>
inline P buffer_arg(const ThreadCtx &t, unsigned i) {
    void *p = t.buffers[i];
    if constexpr (std::is_reference_v<P>)
        return *reinterpret_cast<std::remove_reference_t<P> *>(p);
    else if constexpr (std::is_pointer_v<P>)
        return reinterpret_cast<P>(p);
    else
        return *reinterpret_cast<const P *>(p);
}
// argument whose [[function_constant(b)]] is false: nullptr / poisoned object
template <class P>
inline P absent_arg() {
    if constexpr (std::is_reference_v<P>) {
        static std::remove_cv_t<std::remove_reference_t<P>> dummy =
            poison<std::remove_cv_t<std::remove_reference_t<P>>>();
        return dummy;
    } else if constexpr (std::is_pointer_v<P>) {
        return nullptr;
    } else {
        return poison<P>();
    }
}
template <class T>
inline T bi(const uint32_t *v) {
    if constexpr (is_vec<T>) {
        T r{};
        for (int i = 0; i < vtraits<T>::n && i < 3; i++)
            r[i] = (typename vtraits<T>::elem)v[i];
        return r;
    } else {
        return (T)v[0];
    }
}
}  // namespace rt
}  // namespace msl
