// msl_lint.hpp - declarations-only metal_stdlib for an *address-space lint*:
// the .metal file is parsed by clang as "C++ for OpenCL 2021" with the generic
// address space switched off, and MSL's address spaces mapped onto OpenCL's:
//   device -> __global, threadgroup -> __local, constant -> __constant,
//   thread -> __private.
// That makes clang reject the same address-space mistakes Apple's compiler
// rejects (device pointer passed where a threadgroup pointer is expected,
// unqualified pointer parameters, stores through constant pointers, ...).
// Nothing here is executable; it is -fsyntax-only.
#pragma once
#pragma OPENCL EXTENSION cl_khr_fp16 : enable

typedef unsigned char uchar;
typedef unsigned short ushort;
typedef unsigned int uint;
typedef unsigned long ulong;
typedef signed char int8_t;
typedef unsigned char uint8_t;
typedef short int16_t;
typedef unsigned short uint16_t;
typedef int int32_t;
typedef unsigned int uint32_t;
typedef long int64_t;
typedef unsigned long uint64_t;

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

namespace msl {
template <class T, int N, class... A>
metal::vec<T, N> mkvec(A... a);
template <class T>
__local T &tg_var();
template <class To, class From>
To vconvert(From f);  // threadgroup variables become references to this
}  // namespace msl

namespace metal {
#define MSL_DECL1(name) \
    template <class T>  \
    T name(T x)
MSL_DECL1(exp);
MSL_DECL1(exp2);
MSL_DECL1(log);
MSL_DECL1(log2);
MSL_DECL1(sqrt);
MSL_DECL1(rsqrt);
MSL_DECL1(sin);
MSL_DECL1(cos);
MSL_DECL1(tanh);
MSL_DECL1(erf);
MSL_DECL1(floor);
MSL_DECL1(ceil);
MSL_DECL1(round);
MSL_DECL1(rint);
MSL_DECL1(trunc);
MSL_DECL1(fract);
MSL_DECL1(fabs);
MSL_DECL1(saturate);
MSL_DECL1(abs);
template <class T>
T max(T a, T b);
template <class T>
T min(T a, T b);
template <class T>
T fmax(T a, T b);
template <class T>
T fmin(T a, T b);
template <class T>
T pow(T a, T b);
template <class T>
T powr(T a, T b);
template <class T>
T fma(T a, T b, T c);
template <class T>
T clamp(T x, T lo, T hi);
template <class T, class S>
T mix(T x, T y, S a);
template <class T, int N>
T dot(vec<T, N> a, vec<T, N> b);
template <class T>
T select(T a, T b, bool c);
template <class T>
bool isnan(T x);
template <class T>
bool isinf(T x);
template <class V>
bool all(V v);
template <class V>
bool any(V v);
template <class To, class From>
To as_type(From f);
namespace fast {
using metal::clamp;
using metal::cos;
using metal::exp;
using metal::exp2;
using metal::log;
using metal::max;
using metal::min;
using metal::pow;
using metal::rsqrt;
using metal::sin;
using metal::sqrt;
using metal::tanh;
}  // namespace fast
namespace precise {
using metal::clamp;
using metal::cos;
using metal::exp;
using metal::exp2;
using metal::log;
using metal::max;
using metal::min;
using metal::pow;
using metal::rsqrt;
using metal::sin;
using metal::sqrt;
using metal::tanh;
}  // namespace precise

template <class T, int C, int R>
struct matrix {
    vec<T, R> columns[C];
    matrix();
    explicit matrix(T d);
    template <class... A>
    matrix(A... a);
    vec<T, R> &operator[](int c);
    matrix &operator=(matrix o) __private;
};
template <class T, int C, int R>
vec<T, R> operator*(matrix<T, C, R> m, vec<T, C> v);
template <class T, int C, int R>
vec<T, C> operator*(vec<T, R> v, matrix<T, C, R> m);
template <class T, int K, int R, int C>
matrix<T, C, R> operator*(matrix<T, K, R> a, matrix<T, C, K> b);
template <class T, int C, int R>
matrix<T, C, R> operator*(matrix<T, C, R> a, T s);
template <class T, int C, int R>
matrix<T, C, R> operator+(matrix<T, C, R> a, matrix<T, C, R> b);
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
template <class T, int C, int R>
matrix<T, R, C> transpose(matrix<T, C, R> m);

enum class mem_flags : unsigned {
    mem_none = 0,
    mem_device = 1,
    mem_threadgroup = 2,
    mem_texture = 4
};
mem_flags operator|(mem_flags a, mem_flags b);
void threadgroup_barrier(mem_flags);
void simdgroup_barrier(mem_flags);

template <class T>
T simd_sum(T x);
template <class T>
T simd_product(T x);
template <class T>
T simd_max(T x);
template <class T>
T simd_min(T x);
template <class T>
T simd_and(T x);
template <class T>
T simd_or(T x);
template <class T>
T simd_xor(T x);
template <class T>
T simd_shuffle(T x, ushort lane);
template <class T>
T simd_broadcast(T x, ushort lane);
template <class T>
T simd_shuffle_xor(T x, ushort m);
template <class T>
T simd_shuffle_down(T x, ushort d);
template <class T>
T simd_shuffle_up(T x, ushort d);
template <class T>
T simd_prefix_exclusive_sum(T x);
template <class T>
T simd_prefix_inclusive_sum(T x);
template <class T>
T simd_broadcast_first(T x);
bool simd_all(bool x);
bool simd_any(bool x);
bool simd_is_first();

template <class T, int Cols, int Rows>
struct simdgroup_matrix {
    vec<T, 2> e;
    simdgroup_matrix();
    explicit simdgroup_matrix(T d);
    simdgroup_matrix &operator=(
        simdgroup_matrix o) __private;  // by value: `m = make_filled_...()` works
    vec<T, 2> &thread_elements();
};
typedef simdgroup_matrix<half, 8, 8> simdgroup_half8x8;
typedef simdgroup_matrix<float, 8, 8> simdgroup_float8x8;
template <class T, int C, int R>
simdgroup_matrix<T, C, R> make_filled_simdgroup_matrix(T v);
// src/dst must point into device or threadgroup memory (not thread/constant)
template <class T>
void simdgroup_load(simdgroup_matrix<T, 8, 8> &d, const __global T *src, ulong elements_per_row = 8,
                    ulong2 matrix_origin = 0, bool transpose_matrix = false);
template <class T>
void simdgroup_load(simdgroup_matrix<T, 8, 8> &d, const __local T *src, ulong elements_per_row = 8,
                    ulong2 matrix_origin = 0, bool transpose_matrix = false);
template <class T>
void simdgroup_store(const simdgroup_matrix<T, 8, 8> &m, __global T *dst,
                     ulong elements_per_row = 8, ulong2 matrix_origin = 0,
                     bool transpose_matrix = false);
template <class T>
void simdgroup_store(const simdgroup_matrix<T, 8, 8> &m, __local T *dst, ulong elements_per_row = 8,
                     ulong2 matrix_origin = 0, bool transpose_matrix = false);
template <class TD, class TA, class TB, class TC>
void simdgroup_multiply_accumulate(simdgroup_matrix<TD, 8, 8> &d,
                                   const simdgroup_matrix<TA, 8, 8> &a,
                                   const simdgroup_matrix<TB, 8, 8> &b,
                                   const simdgroup_matrix<TC, 8, 8> &c);
template <class TD, class TA, class TB>
void simdgroup_multiply(simdgroup_matrix<TD, 8, 8> &d, const simdgroup_matrix<TA, 8, 8> &a,
                        const simdgroup_matrix<TB, 8, 8> &b);
}  // namespace metal

#define is_function_constant_defined(x) __msl_fcdef_##x
#define kernel __kernel
#define device __global
#define constant __constant
#define threadgroup __local
#define thread __private
#define float2(...) ::msl::mkvec<float, 2>(__VA_ARGS__)
#define float3(...) ::msl::mkvec<float, 3>(__VA_ARGS__)
#define float4(...) ::msl::mkvec<float, 4>(__VA_ARGS__)
#define half2(...) ::msl::mkvec<half, 2>(__VA_ARGS__)
#define half3(...) ::msl::mkvec<half, 3>(__VA_ARGS__)
#define half4(...) ::msl::mkvec<half, 4>(__VA_ARGS__)
#define int2(...) ::msl::mkvec<int, 2>(__VA_ARGS__)
#define int4(...) ::msl::mkvec<int, 4>(__VA_ARGS__)
#define uint2(...) ::msl::mkvec<uint, 2>(__VA_ARGS__)
#define uint3(...) ::msl::mkvec<uint, 3>(__VA_ARGS__)
#define uint4(...) ::msl::mkvec<uint, 4>(__VA_ARGS__)
#define ushort2(...) ::msl::mkvec<ushort, 2>(__VA_ARGS__)
#define ulong2(...) ::msl::mkvec<ulong, 2>(__VA_ARGS__)
