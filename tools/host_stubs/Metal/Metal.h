// Declarations-only stand-in for <Metal/Metal.h>: exactly the API surface csrc/metal_runtime.mm
// uses, so that the Objective-C++ can be type-checked on Linux (tools/host_stubs/check_host.sh).
// Each declaration was written from the Apple documentation page cited beside it (Objective-C
// declarations; the pages are titled with the Swift names). Nothing here links or runs: a call
// the real framework lacks, or a wrong argument type, is what this catches. The macOS CI build
// against the real SDK remains the authority.
#pragma once
#import <Foundation/Foundation.h>
#include <stdint.h>

// https://developer.apple.com/documentation/metal/mtlsize
typedef struct {
    NSUInteger width, height, depth;
} MTLSize;

// https://developer.apple.com/documentation/metal/mtlsizemake(_:_:_:)
static inline MTLSize MTLSizeMake(NSUInteger width, NSUInteger height, NSUInteger depth) {
    MTLSize s = {width, height, depth};
    return s;
}

// https://developer.apple.com/documentation/metal/mtlresourceoptions
// https://developer.apple.com/documentation/metal/mtlresourceoptions/storagemodeshared
// (MTLStorageModeShared = 0 shifted by MTLResourceStorageModeShift = 4)
typedef NS_OPTIONS(NSUInteger, MTLResourceOptions) {
    MTLResourceStorageModeShared = 0 << 4,
};

// https://developer.apple.com/documentation/metal/mtlcommandbufferstatus
typedef NS_ENUM(NSUInteger, MTLCommandBufferStatus) {
    MTLCommandBufferStatusNotEnqueued = 0,
    MTLCommandBufferStatusEnqueued = 1,
    MTLCommandBufferStatusCommitted = 2,
    MTLCommandBufferStatusScheduled = 3,
    MTLCommandBufferStatusCompleted = 4,
    MTLCommandBufferStatusError = 5,
};

// https://developer.apple.com/documentation/metal/mtlgpufamily
// https://developer.apple.com/documentation/metal/mtlgpufamily/apple7
typedef NS_ENUM(NSInteger, MTLGPUFamily) {
    MTLGPUFamilyApple7 = 1007,
};

// https://developer.apple.com/documentation/metal/mtlresource
@protocol MTLResource <NSObject>
@end

// https://developer.apple.com/documentation/metal/mtlbuffer
@protocol MTLBuffer <MTLResource>
// https://developer.apple.com/documentation/metal/mtlbuffer/contents()
- (void *)contents;
// https://developer.apple.com/documentation/metal/mtlbuffer/length
@property(readonly) NSUInteger length;
@end

// https://developer.apple.com/documentation/metal/mtlfunction
@protocol MTLFunction <NSObject>
@end

// https://developer.apple.com/documentation/metal/mtllibrary
@protocol MTLLibrary <NSObject>
// https://developer.apple.com/documentation/metal/mtllibrary/makefunction(name:)
- (id<MTLFunction>)newFunctionWithName:(NSString *)functionName;
@end

// https://developer.apple.com/documentation/metal/mtlcomputepipelinestate
@protocol MTLComputePipelineState <NSObject>
// https://developer.apple.com/documentation/metal/mtlcomputepipelinestate/maxtotalthreadsperthreadgroup
@property(readonly) NSUInteger maxTotalThreadsPerThreadgroup;
// https://developer.apple.com/documentation/metal/mtlcomputepipelinestate/threadexecutionwidth
@property(readonly) NSUInteger threadExecutionWidth;
@end

// https://developer.apple.com/documentation/metal/mtlcommandencoder
@protocol MTLCommandEncoder <NSObject>
// https://developer.apple.com/documentation/metal/mtlcommandencoder/endencoding()
- (void)endEncoding;
@end

// https://developer.apple.com/documentation/metal/mtlcomputecommandencoder
@protocol MTLComputeCommandEncoder <MTLCommandEncoder>
// https://developer.apple.com/documentation/metal/mtlcomputecommandencoder/setcomputepipelinestate(_:)
- (void)setComputePipelineState:(id<MTLComputePipelineState>)state;
// https://developer.apple.com/documentation/metal/mtlcomputecommandencoder/setbytes(_:length:index:)
- (void)setBytes:(const void *)bytes length:(NSUInteger)length atIndex:(NSUInteger)index;
// https://developer.apple.com/documentation/metal/mtlcomputecommandencoder/setbuffer(_:offset:index:)
- (void)setBuffer:(id<MTLBuffer>)buffer offset:(NSUInteger)offset atIndex:(NSUInteger)index;
// https://developer.apple.com/documentation/metal/mtlcomputecommandencoder/dispatchthreadgroups(_:threadsperthreadgroup:)
- (void)dispatchThreadgroups:(MTLSize)threadgroupsPerGrid
       threadsPerThreadgroup:(MTLSize)threadsPerThreadgroup;
@end

// https://developer.apple.com/documentation/metal/mtlcommandbuffer
@protocol MTLCommandBuffer <NSObject>
// https://developer.apple.com/documentation/metal/mtlcommandbuffer/makecomputecommandencoder()
- (id<MTLComputeCommandEncoder>)computeCommandEncoder;
// https://developer.apple.com/documentation/metal/mtlcommandbuffer/commit()
- (void)commit;
// https://developer.apple.com/documentation/metal/mtlcommandbuffer/waituntilcompleted()
- (void)waitUntilCompleted;
// https://developer.apple.com/documentation/metal/mtlcommandbuffer/status
@property(readonly) MTLCommandBufferStatus status;
// https://developer.apple.com/documentation/metal/mtlcommandbuffer/error
@property(readonly) NSError *error;
@end

// https://developer.apple.com/documentation/metal/mtlcommandqueue
@protocol MTLCommandQueue <NSObject>
// https://developer.apple.com/documentation/metal/mtlcommandqueue/makecommandbuffer()
- (id<MTLCommandBuffer>)commandBuffer;
// https://developer.apple.com/documentation/metal/mtlcommandqueue/makecommandbufferwithunretainedreferences()
- (id<MTLCommandBuffer>)commandBufferWithUnretainedReferences;
@end

// https://developer.apple.com/documentation/metal/mtldevice
@protocol MTLDevice <NSObject>
// https://developer.apple.com/documentation/metal/mtldevice/name
@property(readonly) NSString *name;
// https://developer.apple.com/documentation/metal/mtldevice/maxbufferlength
@property(readonly) NSUInteger maxBufferLength;
// https://developer.apple.com/documentation/metal/mtldevice/recommendedmaxworkingsetsize
@property(readonly) uint64_t recommendedMaxWorkingSetSize;
// https://developer.apple.com/documentation/metal/mtldevice/supportsfamily(_:)
- (BOOL)supportsFamily:(MTLGPUFamily)gpuFamily;
// https://developer.apple.com/documentation/metal/mtldevice/makecommandqueue()
- (id<MTLCommandQueue>)newCommandQueue;
// https://developer.apple.com/documentation/metal/mtldevice/makebuffer(length:options:)
- (id<MTLBuffer>)newBufferWithLength:(NSUInteger)length options:(MTLResourceOptions)options;
// https://developer.apple.com/documentation/metal/mtldevice/makebuffer(bytes:length:options:)
- (id<MTLBuffer>)newBufferWithBytes:(const void *)pointer
                             length:(NSUInteger)length
                            options:(MTLResourceOptions)options;
// https://developer.apple.com/documentation/metal/mtldevice/makebuffer(bytesnocopy:length:options:deallocator:)
- (id<MTLBuffer>)newBufferWithBytesNoCopy:(void *)pointer
                                   length:(NSUInteger)length
                                  options:(MTLResourceOptions)options
                              deallocator:(void (^)(void *pointer, NSUInteger length))deallocator;
// https://developer.apple.com/documentation/metal/mtldevice/makelibrary(url:)
- (id<MTLLibrary>)newLibraryWithURL:(NSURL *)url error:(NSError **)error;
// https://developer.apple.com/documentation/metal/mtldevice/makecomputepipelinestate(function:)
- (id<MTLComputePipelineState>)newComputePipelineStateWithFunction:(id<MTLFunction>)computeFunction
                                                             error:(NSError **)error;
@end

// https://developer.apple.com/documentation/metal/mtlcreatesystemdefaultdevice()
#ifdef __cplusplus
extern "C"
#endif
    id<MTLDevice>
    MTLCreateSystemDefaultDevice(void);
