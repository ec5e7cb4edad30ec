// msl_macros.hpp - turn MSL keywords into C++ after all system headers are in.
// Included right before the (pre-processed) .metal source.
#pragma once
#define kernel
#define device
#define constant const
#define thread
#define threadgroup /* pointers/refs only: threadgroup *variables* are rewritten by mslemu.py */
#define METAL_EMULATOR 1
/* function constants: mslemu.py turns `constant T x [[function_constant(i)]];` into a
   constexpr x plus the flag __msl_fcdef_x */
#define is_function_constant_defined(x) __msl_fcdef_##x

/* vector constructors: function-like macros only fire on float4(...); the
   bare type name float4 is untouched */
#define float2(...) ::msl::mkvec<float, 2>(__VA_ARGS__)
#define float3(...) ::msl::mkvec<float, 3>(__VA_ARGS__)
#define float4(...) ::msl::mkvec<float, 4>(__VA_ARGS__)
#define half2(...) ::msl::mkvec<half, 2>(__VA_ARGS__)
#define half3(...) ::msl::mkvec<half, 3>(__VA_ARGS__)
#define half4(...) ::msl::mkvec<half, 4>(__VA_ARGS__)
#define int2(...) ::msl::mkvec<int, 2>(__VA_ARGS__)
#define int3(...) ::msl::mkvec<int, 3>(__VA_ARGS__)
#define int4(...) ::msl::mkvec<int, 4>(__VA_ARGS__)
#define uint2(...) ::msl::mkvec<uint, 2>(__VA_ARGS__)
#define uint3(...) ::msl::mkvec<uint, 3>(__VA_ARGS__)
#define uint4(...) ::msl::mkvec<uint, 4>(__VA_ARGS__)
#define short2(...) ::msl::mkvec<short, 2>(__VA_ARGS__)
#define short4(...) ::msl::mkvec<short, 4>(__VA_ARGS__)
#define ushort2(...) ::msl::mkvec<ushort, 2>(__VA_ARGS__)
#define ushort4(...) ::msl::mkvec<ushort, 4>(__VA_ARGS__)
#define char4(...) ::msl::mkvec<char, 4>(__VA_ARGS__)
#define uchar4(...) ::msl::mkvec<uchar, 4>(__VA_ARGS__)
#define ulong2(...) ::msl::mkvec<ulong, 2>(__VA_ARGS__)
#define ulong3(...) ::msl::mkvec<ulong, 3>(__VA_ARGS__)
#define ulong4(...) ::msl::mkvec<ulong, 4>(__VA_ARGS__)
#define long2(...) ::msl::mkvec<long, 2>(__VA_ARGS__)
#define long3(...) ::msl::mkvec<long, 3>(__VA_ARGS__)
#define long4(...) ::msl::mkvec<long, 4>(__VA_ARGS__)
#define short3(...) ::msl::mkvec<short, 3>(__VA_ARGS__)
#define ushort3(...) ::msl::mkvec<ushort, 3>(__VA_ARGS__)
#define char2(...) ::msl::mkvec<char, 2>(__VA_ARGS__)
#define char3(...) ::msl::mkvec<char, 3>(__VA_ARGS__)
#define uchar2(...) ::msl::mkvec<uchar, 2>(__VA_ARGS__)
#define uchar3(...) ::msl::mkvec<uchar, 3>(__VA_ARGS__)
#define bool2(...) ::msl::mkbool<2>(__VA_ARGS__)
#define bool3(...) ::msl::mkbool<3>(__VA_ARGS__)
#define bool4(...) ::msl::mkbool<4>(__VA_ARGS__)
