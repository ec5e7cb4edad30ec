// The Metal runtime as plain C++: device, buffers, pipelines by kernel name, and recorded steps
// that run as one command buffer. No Objective-C type appears here, so bindings.cpp (and any
// C++ caller) compiles without an Objective-C compiler; metal_runtime.mm is the only
// implementation and the only Objective-C++ in the project. Nothing here knows about models.
#pragma once

#include <array>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <stdexcept>
#include <string>
#include <vector>

namespace fastllm::metal {

// Every failure (no device, missing kernel, command buffer error) is reported as this.
class Error : public std::runtime_error {
  public:
    using std::runtime_error::runtime_error;
};

// A shared-storage buffer: CPU and GPU see the same memory (Apple silicon is unified memory).
class Buffer {
  public:
    struct Impl;
    explicit Buffer(std::unique_ptr<Impl> impl);
    ~Buffer();
    Buffer(const Buffer &) = delete;
    Buffer &operator=(const Buffer &) = delete;

    void *contents() const;
    size_t length() const;
    // true when the buffer wraps caller memory (a mapped weight file) instead of a copy
    bool nocopy() const;
    Impl &impl() const { return *impl_; }

  private:
    std::unique_ptr<Impl> impl_;
};

// A compute pipeline for one kernel function of the metallib.
class Pipeline {
  public:
    struct Impl;
    explicit Pipeline(std::unique_ptr<Impl> impl);
    ~Pipeline();
    Pipeline(const Pipeline &) = delete;
    Pipeline &operator=(const Pipeline &) = delete;

    const std::string &name() const;
    size_t max_threads() const;      // per threadgroup, for this kernel on this device
    size_t execution_width() const;  // SIMD-group width
    Impl &impl() const { return *impl_; }

  private:
    std::unique_ptr<Impl> impl_;
};

struct Binding {
    std::shared_ptr<Buffer> buffer;
    size_t offset = 0;
};

// One dispatch: kargs bytes at [[buffer(0)]] (set with setBytes), buffers at 1, 2, ...;
// grid threadgroups of `threads` threads.
struct Command {
    std::shared_ptr<Pipeline> pipeline;
    std::vector<uint8_t> kargs;
    std::vector<Binding> buffers;
    std::array<uint32_t, 3> grid{1, 1, 1};
    std::array<uint32_t, 3> threads{1, 1, 1};
};

// A step recorded once and run many times. It owns references to every pipeline and buffer it
// uses, so the command buffer can be created without retaining them per run.
class Recording {
  public:
    explicit Recording(std::vector<Command> commands) : commands_(std::move(commands)) {}
    const std::vector<Command> &commands() const { return commands_; }
    size_t size() const { return commands_.size(); }

  private:
    std::vector<Command> commands_;
};

class Device {
  public:
    // The system default device with the kernels of the metallib at `metallib_path`.
    explicit Device(const std::string &metallib_path);
    ~Device();
    Device(const Device &) = delete;
    Device &operator=(const Device &) = delete;

    std::string name() const;
    size_t max_buffer_length() const;
    uint64_t recommended_working_set_size() const;
    bool supports_simdgroup_matrix() const;  // Apple7 family or later (M1 and newer)

    // A zero-filled buffer of nbytes.
    std::shared_ptr<Buffer> new_buffer(size_t nbytes);
    // A buffer holding nbytes at ptr. With nocopy, ptr is wrapped in place or not at all (Error
    // says why: not page-aligned, past maxBufferLength, refused by the device); the buffer spans
    // nbytes rounded up to whole pages, so the caller's mapping must cover them (a file mapping
    // does), and `keepalive`, which must own that memory, is held until Metal releases the
    // buffer. Without nocopy the bytes are copied.
    std::shared_ptr<Buffer> wrap(void *ptr, size_t nbytes, bool nocopy,
                                 std::shared_ptr<void> keepalive);
    // The pipeline of kernel function `kernel`, created once and cached; Error when the
    // function is missing, fails to specialize or link, or runs SIMD groups other than 32 wide.
    std::shared_ptr<Pipeline> pipeline(const std::string &kernel);
    // Checks a step (threads against each pipeline's maxTotalThreadsPerThreadgroup, kargs under
    // setBytes's 4 KB, offsets) and keeps it for run().
    std::shared_ptr<Recording> record(std::vector<Command> commands);
    // Encodes every command of the recording into one command buffer, commits it and waits.
    void run(const Recording &recording);
    // The recordings in turn, `repeat` times, in one command buffer (greedy decoding: a step
    // and its argmax, which feeds the next step on the device), then commits it and waits.
    void run_steps(const std::vector<const Recording *> &parts, uint32_t repeat);

  private:
    struct Impl;
    std::unique_ptr<Impl> impl_;
};

}  // namespace fastllm::metal
