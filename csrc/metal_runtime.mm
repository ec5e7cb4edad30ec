// Objective-C++ implementation of metal_runtime.h (compiled with -fobjc-arc: the Metal objects
// held by the Impl structs are released with them). Every method that receives autoreleased
// objects (names, errors, command buffers, encoders) runs inside an @autoreleasepool: Python's
// threads have no pool of their own, and anything autoreleased outside one is never freed.
#import <Foundation/Foundation.h>
#import <Metal/Metal.h>

#include <unistd.h>
#include <mutex>
#include <unordered_map>

#include "metal_runtime.h"

namespace fastllm::metal {

namespace {

std::string describe(NSError *err) {
    if (err == nil) {
        return "unknown error";
    }
    const char *s = [[err localizedDescription] UTF8String];
    return s ? s : "unknown error";
}

size_t page_size() {
    return size_t(getpagesize());
}

constexpr NSUInteger kSimdWidth = 32;  // lanes of a SIMD group the kernels are written for
constexpr size_t kMaxSetBytes = 4096;  // setBytes:length:atIndex: takes less than 4 KB

}  // namespace

// ---------------------------------------------------------------------------------------------
// Buffer

struct Buffer::Impl {
    id<MTLBuffer> buffer;
    bool nocopy = false;  // wraps caller memory, whose owner the MTLBuffer's deallocator holds
};

Buffer::Buffer(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}

Buffer::~Buffer() = default;

void *Buffer::contents() const {
    return [impl_->buffer contents];
}

size_t Buffer::length() const {
    return size_t([impl_->buffer length]);
}

bool Buffer::nocopy() const {
    return impl_->nocopy;
}

// ---------------------------------------------------------------------------------------------
// Pipeline

struct Pipeline::Impl {
    std::string name;
    id<MTLComputePipelineState> state;
};

Pipeline::Pipeline(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}

Pipeline::~Pipeline() = default;

const std::string &Pipeline::name() const {
    return impl_->name;
}

size_t Pipeline::max_threads() const {
    return size_t([impl_->state maxTotalThreadsPerThreadgroup]);
}

size_t Pipeline::execution_width() const {
    return size_t([impl_->state threadExecutionWidth]);
}

// ---------------------------------------------------------------------------------------------
// Device

struct Device::Impl {
    id<MTLDevice> device;
    id<MTLCommandQueue> queue;
    id<MTLLibrary> library;
    std::string library_path;
    std::mutex mu;  // guards pipelines: Python threads may compile programs concurrently
    std::unordered_map<std::string, std::shared_ptr<Pipeline>> pipelines;
};

Device::Device(const std::string &metallib_path) : impl_(std::make_unique<Impl>()) {
    std::string failure;
    @autoreleasepool {
        impl_->device = MTLCreateSystemDefaultDevice();
        if (impl_->device == nil) {
            failure = "no Metal device (MTLCreateSystemDefaultDevice returned nil)";
        } else if ((impl_->queue = [impl_->device newCommandQueue]) == nil) {
            failure = "cannot create a Metal command queue";
        } else {
            NSString *path = [NSString stringWithUTF8String:metallib_path.c_str()];
            NSError *err = nil;
            impl_->library = [impl_->device newLibraryWithURL:[NSURL fileURLWithPath:path]
                                                        error:&err];
            if (impl_->library == nil) {
                failure = "cannot load the kernel library " + metallib_path + ": " + describe(err);
            }
        }
    }
    // thrown outside the pool: unwinding through @autoreleasepool would skip draining it
    if (!failure.empty()) {
        throw Error(failure);
    }
    impl_->library_path = metallib_path;
}

Device::~Device() = default;

std::string Device::name() const {
    std::string out = "Metal device";
    @autoreleasepool {
        const char *s = [[impl_->device name] UTF8String];  // valid only inside the pool
        if (s != nullptr) {
            out = s;
        }
    }
    return out;
}

size_t Device::max_buffer_length() const {
    return size_t([impl_->device maxBufferLength]);
}

uint64_t Device::recommended_working_set_size() const {
    return uint64_t([impl_->device recommendedMaxWorkingSetSize]);
}

bool Device::supports_simdgroup_matrix() const {
    return [impl_->device supportsFamily:MTLGPUFamilyApple7];
}

std::shared_ptr<Buffer> Device::new_buffer(size_t nbytes) {
    auto impl = std::make_unique<Buffer::Impl>();
    // makeBuffer(length:options:) returns zero-filled memory
    impl->buffer = [impl_->device newBufferWithLength:(nbytes ? nbytes : 1)
                                              options:MTLResourceStorageModeShared];
    if (impl->buffer == nil) {
        throw Error("cannot allocate a Metal buffer of " + std::to_string(nbytes) + " bytes");
    }
    return std::make_shared<Buffer>(std::move(impl));
}

std::shared_ptr<Buffer> Device::wrap(void *ptr, size_t nbytes, bool nocopy,
                                     std::shared_ptr<void> keepalive) {
    if (nbytes == 0) {
        return new_buffer(0);
    }
    auto impl = std::make_unique<Buffer::Impl>();
    if (nocopy) {
        // makeBuffer(bytesNoCopy:) takes a page-aligned start and a whole number of pages. It
        // never falls back to a copy here: a silent copy of a mapped weight file doubles the
        // memory a model takes, so the caller decides (backend.py copies tensor by tensor).
        const size_t page = page_size();
        const size_t len = (nbytes + page - 1) / page * page;
        if (reinterpret_cast<uintptr_t>(ptr) % page != 0) {
            throw Error("cannot wrap memory in place: its start is not on a " +
                        std::to_string(page) + "-byte page");
        }
        if (len > max_buffer_length()) {
            throw Error("cannot wrap " + std::to_string(len) + " bytes in place: the device's " +
                        "largest buffer is " + std::to_string(max_buffer_length()) + " bytes");
        }
        // The deallocator block holds the memory's owner until Metal releases the buffer, which
        // may be after ~Buffer when a command buffer still holds it.
        std::shared_ptr<void> owner = std::move(keepalive);
        impl->buffer = [impl_->device newBufferWithBytesNoCopy:ptr
                                                        length:len
                                                       options:MTLResourceStorageModeShared
                                                   deallocator:^(void *, NSUInteger) {
                                                     (void)owner;
                                                   }];
        if (impl->buffer == nil) {
            throw Error("cannot wrap " + std::to_string(len) + " bytes in place: " +
                        "newBufferWithBytesNoCopy returned nil (the device does not map this " +
                        "memory)");
        }
        impl->nocopy = true;
        return std::make_shared<Buffer>(std::move(impl));
    }
    impl->buffer = [impl_->device newBufferWithBytes:ptr
                                              length:nbytes
                                             options:MTLResourceStorageModeShared];
    if (impl->buffer == nil) {
        throw Error("cannot allocate a Metal buffer of " + std::to_string(nbytes) + " bytes");
    }
    return std::make_shared<Buffer>(std::move(impl));
}

std::shared_ptr<Pipeline> Device::pipeline(const std::string &kernel) {
    std::lock_guard<std::mutex> lock(impl_->mu);
    auto it = impl_->pipelines.find(kernel);
    if (it != impl_->pipelines.end()) {
        return it->second;
    }
    auto impl = std::make_unique<Pipeline::Impl>();
    impl->name = kernel;
    std::string failure;
    @autoreleasepool {
        id<MTLFunction> fn =
            [impl_->library newFunctionWithName:[NSString stringWithUTF8String:kernel.c_str()]];
        if (fn == nil) {
            failure = "kernel " + kernel + " is not in " + impl_->library_path +
                      " (a metallib from another fastllm version?)";
        } else {
            NSError *err = nil;
            impl->state = [impl_->device newComputePipelineStateWithFunction:fn error:&err];
            if (impl->state == nil) {
                failure = "cannot create the pipeline of " + kernel + ": " + describe(err);
            } else if ([impl->state threadExecutionWidth] != kSimdWidth) {
                // the kernels size their SIMD-group reductions and per-group arrays for 32 lanes
                failure = "kernel " + kernel + ": the device's SIMD-group width is " +
                          std::to_string([impl->state threadExecutionWidth]) +
                          "; fastllm's kernels are written for " + std::to_string(kSimdWidth);
            }
        }
    }
    if (!failure.empty()) {
        throw Error(failure);
    }
    auto p = std::make_shared<Pipeline>(std::move(impl));
    impl_->pipelines.emplace(kernel, p);
    return p;
}

std::shared_ptr<Recording> Device::record(std::vector<Command> commands) {
    for (size_t i = 0; i < commands.size(); ++i) {
        const Command &c = commands[i];
        const std::string where = "dispatch " + std::to_string(i) + " (" +
                                  (c.pipeline ? c.pipeline->name() : std::string("?")) + ")";
        if (!c.pipeline) {
            throw Error(where + ": no pipeline");
        }
        // maxTotalThreadsPerThreadgroup is the pipeline's own limit (registers and threadgroup
        // memory of this kernel on this device), which can be below the device's 1024
        const size_t threads = size_t(c.threads[0]) * c.threads[1] * c.threads[2];
        if (threads == 0 || threads > c.pipeline->max_threads()) {
            throw Error(where + ": " + std::to_string(threads) + " threads per threadgroup, the " +
                        "kernel allows " + std::to_string(c.pipeline->max_threads()));
        }
        if (c.grid[0] == 0 || c.grid[1] == 0 || c.grid[2] == 0) {
            throw Error(where + ": empty grid");
        }
        if (c.kargs.size() >= kMaxSetBytes) {  // setBytes takes data smaller than 4 KB
            throw Error(where + ": " + std::to_string(c.kargs.size()) + " bytes of kernel " +
                        "arguments; setBytes takes fewer than " + std::to_string(kMaxSetBytes));
        }
        for (const Binding &b : c.buffers) {
            if (!b.buffer || b.offset >= b.buffer->length()) {
                throw Error(where + ": buffer offset past the end of its buffer");
            }
        }
    }
    return std::make_shared<Recording>(std::move(commands));
}

namespace {

// The recordings in turn, repeat times, into one compute encoder.
void encode_steps(id<MTLComputeCommandEncoder> enc, const std::vector<const Recording *> &parts,
                  uint32_t repeat) {
    Pipeline *current = nullptr;
    for (uint32_t k = 0; k < repeat; ++k) {
        for (const Recording *part : parts) {
            for (const Command &c : part->commands()) {
                if (c.pipeline.get() != current) {
                    current = c.pipeline.get();
                    [enc setComputePipelineState:current->impl().state];
                }
                if (!c.kargs.empty()) {
                    [enc setBytes:c.kargs.data() length:c.kargs.size() atIndex:0];
                }
                for (size_t i = 0; i < c.buffers.size(); ++i) {
                    [enc setBuffer:c.buffers[i].buffer->impl().buffer
                            offset:c.buffers[i].offset
                           atIndex:i + 1];
                }
                // a serial compute encoder: each dispatch sees the writes of the ones before it
                [enc dispatchThreadgroups:MTLSizeMake(c.grid[0], c.grid[1], c.grid[2])
                    threadsPerThreadgroup:MTLSizeMake(c.threads[0], c.threads[1], c.threads[2])];
            }
        }
    }
}

}  // namespace

void Device::run(const Recording &recording) { run_steps({&recording}, 1); }

// The caller keeps the recordings alive until this returns (it waits for the GPU).
void Device::run_steps(const std::vector<const Recording *> &parts, uint32_t repeat) {
    std::string failure;
    @autoreleasepool {
        // the Recordings hold every resource: no need for the command buffer to retain them
        id<MTLCommandBuffer> cb = [impl_->queue commandBufferWithUnretainedReferences];
        id<MTLComputeCommandEncoder> enc = cb != nil ? [cb computeCommandEncoder] : nil;
        if (enc == nil) {
            failure = "cannot create a Metal command buffer and its compute encoder";
        } else {
            encode_steps(enc, parts, repeat);
            [enc endEncoding];
            [cb commit];
            [cb waitUntilCompleted];
            // after completion the status is Completed or Error; error says why (a GPU fault,
            // the watchdog's timeout, a lost device), read here inside the pool that owns it
            if ([cb status] != MTLCommandBufferStatusCompleted) {
                NSError *err = [cb error];
                failure = "command buffer failed (status " +
                          std::to_string(static_cast<unsigned long>([cb status])) +
                          (err != nil ? ", error " + std::to_string(static_cast<long>([err code]))
                                      : std::string()) +
                          "): " + describe(err);
            }
        }
    }
    if (!failure.empty()) {
        throw Error(failure);
    }
}

}  // namespace fastllm::metal
