// Stand-in for libobjc2's <objc/blocks_runtime.h>, which GNUstep's Foundation includes but
// Debian's GNUstep (built on GCC's libobjc) does not ship. The two entry points are those of the
// blocks runtime ABI: https://clang.llvm.org/docs/Block-ABI-Apple.html
#pragma once
#ifdef __cplusplus
extern "C" {
#endif
void *_Block_copy(const void *);
void _Block_release(const void *);
#ifdef __cplusplus
}
#endif
#define Block_copy(x) ((__typeof(x))_Block_copy((const void *)(x)))
#define Block_release(x) _Block_release((const void *)(x))
