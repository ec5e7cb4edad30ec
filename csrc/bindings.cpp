// fastllm._metal: the Python face of metal_runtime.h. Type conversion only: buffers expose the
// buffer protocol (numpy views of shared memory), a step is recorded from a Python list once and
// replayed with one call per run, and kargs_layout() reports the argument structs as compiled
// here so that a test can hold them against fastllm.kargs.
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <cstddef>
#include <string>
#include <vector>

#include "kargs.h"
#include "metal_runtime.h"

namespace py = pybind11;
using fastllm::metal::Binding;
using fastllm::metal::Buffer;
using fastllm::metal::Command;
using fastllm::metal::Device;
using fastllm::metal::Error;
using fastllm::metal::Pipeline;
using fastllm::metal::Recording;

namespace {

std::array<uint32_t, 3> to_dim3(py::handle h, const char *what) {
    std::array<uint32_t, 3> d{1, 1, 1};
    auto seq = py::reinterpret_borrow<py::sequence>(h);
    if (seq.size() < 1 || seq.size() > 3) {
        throw py::value_error(std::string(what) + " must have 1 to 3 dimensions");
    }
    for (size_t i = 0; i < seq.size(); ++i) {
        d[i] = seq[i].cast<uint32_t>();
    }
    return d;
}

// items: [(pipeline, kargs: bytes, [(buffer, offset), ...], grid, threads), ...]; buffer i of a
// dispatch binds at [[buffer(i + 1)]], the kargs at [[buffer(0)]].
std::vector<Command> to_commands(const py::list &items) {
    std::vector<Command> out;
    out.reserve(items.size());
    for (py::handle item : items) {
        auto t = py::reinterpret_borrow<py::tuple>(item);
        if (t.size() != 5) {
            throw py::value_error("a dispatch is (pipeline, kargs, buffers, grid, threads)");
        }
        Command c;
        c.pipeline = t[0].cast<std::shared_ptr<Pipeline>>();
        std::string kargs = t[1].cast<std::string>();  // bytes -> raw bytes, no decoding
        c.kargs.assign(kargs.begin(), kargs.end());
        for (py::handle b : py::reinterpret_borrow<py::sequence>(t[2])) {
            auto bt = py::reinterpret_borrow<py::tuple>(b);
            c.buffers.push_back(
                Binding{bt[0].cast<std::shared_ptr<Buffer>>(), bt[1].cast<size_t>()});
        }
        c.grid = to_dim3(t[3], "grid");
        c.threads = to_dim3(t[4], "threads");
        out.push_back(std::move(c));
    }
    return out;
}

// Owns a Python object from C++; the GIL is taken to drop it whenever the last owner goes.
std::shared_ptr<void> hold(py::object obj) {
    return std::shared_ptr<void>(new py::object(std::move(obj)), [](void *p) {
        if (Py_IsInitialized()) {
            py::gil_scoped_acquire gil;
            delete static_cast<py::object *>(p);
        }
    });
}

#define KARGS_STRUCT(S, ...)                         \
    {                                                \
        py::dict fields;                             \
        using T = S;                                 \
        __VA_ARGS__                                  \
        out[#S] = py::make_tuple(sizeof(T), fields); \
    }
#define F(name) fields[#name] = offsetof(T, name);

// {struct: (sizeof, {field: offsetof})} for every struct of metal/kargs.h. Keep in step with the
// header: tests/metal/test_kargs_layout.py checks this table names every struct and field.
py::dict kargs_layout() {
    py::dict out;
    KARGS_STRUCT(kargs_step, F(pos) F(n_tokens) F(n_kv) F(slot))
    KARGS_STRUCT(kargs_get_rows, F(n_rows) F(n_cols) F(n_vocab) F(_pad0))
    KARGS_STRUCT(kargs_rms_norm,
                 F(n_rows) F(n_cols) F(group) F(has_weight) F(eps) F(_pad0) F(_pad1) F(_pad2))
    KARGS_STRUCT(kargs_mul_mat, F(M) F(N) F(K) F(w_row_words))
    KARGS_STRUCT(kargs_mul_mv_fused, F(M) F(K) F(x_mode) F(has_res) F(eps) F(n_rows0) F(n_rows1)
                                         F(n_rows2) F(tg_end0) F(tg_end1) F(tg_end2) F(_pad0))
    KARGS_STRUCT(kargs_mul_mm, F(M) F(N) F(K) F(epilogue))
    KARGS_STRUCT(kargs_binary, F(n) F(b_period) F(s) F(_pad0))
    KARGS_STRUCT(kargs_rope, F(n_rows) F(n_head) F(head_dim) F(n_rot) F(base) F(freq_scale) F(neox)
                                 F(has_freq_factors))
    KARGS_STRUCT(kargs_kv_store, F(n_rows) F(kv_dim) F(ring) F(_pad0))
    KARGS_STRUCT(kargs_rope_kv_store,
                 F(n_rows) F(n_head) F(k_n_head) F(head_dim) F(n_rot) F(base) F(freq_scale) F(neox)
                     F(has_freq_factors) F(kv_dim) F(ring) F(_pad0))
    KARGS_STRUCT(kargs_attention, F(n_rows) F(n_head) F(n_kv_head) F(head_dim) F(scale) F(softcap)
                                      F(window) F(ring) F(has_sinks) F(_pad0) F(_pad1) F(_pad2))
    KARGS_STRUCT(kargs_unary, F(n) F(_pad0) F(_pad1) F(_pad2))
    KARGS_STRUCT(kargs_argmax, F(n_rows) F(n_cols) F(pos0) F(_pad1))
    KARGS_STRUCT(kargs_sample, F(n_cols) F(top_k) F(pos0) F(chunk) F(temperature) F(top_p) F(min_p)
                                   F(penalty) F(last_n) F(_pad0) F(_pad1) F(_pad2))
    KARGS_STRUCT(kargs_swiglu_oai, F(n) F(alpha) F(limit) F(_pad0))
    KARGS_STRUCT(kargs_attn_reduce,
                 F(n_rows) F(n_head) F(head_dim) F(n_splits) F(has_sinks) F(_pad0) F(_pad1) F(_pad2))
    KARGS_STRUCT(kargs_part, F(row0) F(n_rows) F(_pad0) F(_pad1))
    KARGS_STRUCT(kargs_mv_slots, F(n_rows0) F(n_rows1) F(n_rows2) F(_pad0) F(wg_end0) F(wg_end1)
                                     F(wg_end2) F(_pad1))
    KARGS_STRUCT(kargs_layer_norm,
                 F(n_rows) F(n_cols) F(group) F(has_weight) F(has_bias) F(eps) F(_pad0) F(_pad1))
    KARGS_STRUCT(kargs_lerp, F(n_rows) F(n_cols) F(has_mu) F(mu_off) F(has_mu_v) F(mu_v_cols)
                                 F(mu_col) F(_pad0))
    KARGS_STRUCT(kargs_rwkv, F(n_rows) F(n_cols) F(group) F(eps))
    KARGS_STRUCT(kargs_slice_cols, F(n_rows) F(n_cols) F(start) F(width) F(period) F(out_cols)
                                       F(_pad0) F(_pad1))
    KARGS_STRUCT(kargs_gated_delta, F(n_rows) F(n_k_heads) F(n_v_heads) F(head_dim) F(scale)
                                        F(eps) F(_pad1) F(_pad2))
    KARGS_STRUCT(kargs_mul_mat_blocks,
                 F(M) F(n_blocks) F(m) F(k) F(w_row_words) F(_pad0) F(_pad1) F(_pad2))
    KARGS_STRUCT(kargs_sample_rows, F(n_cols) F(chunk) F(n_parts) F(lp_base))
    KARGS_STRUCT(kargs_sample_row, F(mode) F(top_k) F(temperature) F(top_p) F(min_p) F(u)
                                       F(repeat_penalty) F(frequency_penalty) F(presence_penalty)
                                           F(n_window) F(n_bias) F(logprobs) F(mask))
    KARGS_STRUCT(kargs_moe_route,
                 F(n_rows) F(n_expert) F(k) F(gating) F(norm) F(has_bias) F(scale) F(_pad0))
    KARGS_STRUCT(kargs_mul_mv_id, F(n_pairs) F(k) F(m) F(K) F(x_per_pair) F(n_expert)
                                      F(w_row_words) F(n_chunks) F(chunk) F(_pad0) F(_pad1)
                                          F(_pad2))
    KARGS_STRUCT(kargs_moe_ew, F(n_pairs) F(k) F(m) F(b_cols))
    return out;
}

#undef F
#undef KARGS_STRUCT

}  // namespace

PYBIND11_MODULE(_metal, m) {
    m.doc() = "Metal device, buffers, pipelines and recorded steps (fastllm's native layer)";
    py::register_exception<Error>(m, "MetalError", PyExc_RuntimeError);

    py::class_<Buffer, std::shared_ptr<Buffer>>(m, "Buffer", py::buffer_protocol())
        .def_buffer([](Buffer &b) {
            // a wrapped file mapping is read-only memory: expose it read-only
            return py::buffer_info(b.contents(), 1, py::format_descriptor<uint8_t>::format(), 1,
                                   {py::ssize_t(b.length())}, {py::ssize_t(1)}, b.nocopy());
        })
        .def_property_readonly("length", &Buffer::length)
        .def_property_readonly("nocopy", &Buffer::nocopy);

    py::class_<Pipeline, std::shared_ptr<Pipeline>>(m, "Pipeline")
        .def_property_readonly("name", &Pipeline::name)
        .def_property_readonly("max_threads", &Pipeline::max_threads)
        .def_property_readonly("execution_width", &Pipeline::execution_width);

    py::class_<Recording, std::shared_ptr<Recording>>(m, "Recording")
        .def("__len__", &Recording::size);

    py::class_<Device>(m, "Device")
        .def(py::init<const std::string &>(), py::arg("metallib"))
        .def_property_readonly("name", &Device::name)
        .def_property_readonly("max_buffer_length", &Device::max_buffer_length)
        .def_property_readonly("recommended_working_set_size",
                               &Device::recommended_working_set_size)
        .def_property_readonly("supports_simdgroup_matrix", &Device::supports_simdgroup_matrix)
        .def("buffer", &Device::new_buffer, py::arg("nbytes"), "A zero-filled shared buffer.")
        .def(
            "wrap",
            [](Device &d, py::buffer obj, bool nocopy) {
                py::buffer_info info = obj.request();
                if (info.ndim != 1 || info.strides[0] != info.itemsize) {
                    throw py::value_error("wrap() needs a flat contiguous buffer");
                }
                const size_t n = size_t(info.size) * size_t(info.itemsize);
                return d.wrap(info.ptr, n, nocopy, hold(obj));
            },
            py::arg("data"), py::arg("nocopy"),
            "A buffer of data's bytes. nocopy: wrapped in place (data is kept alive until Metal "
            "releases the buffer) or MetalError saying why it cannot be; never a copy. "
            "Otherwise copied.")
        .def("pipeline", &Device::pipeline, py::arg("kernel"))
        .def(
            "record", [](Device &d, const py::list &items) { return d.record(to_commands(items)); },
            py::arg("dispatches"))
        .def(
            "run",
            [](Device &d, const Recording &r) {
                py::gil_scoped_release release;  // the GPU works; other Python threads may run
                d.run(r);
            },
            py::arg("recording"))
        .def(
            "run_steps",
            [](Device &d, const std::vector<std::shared_ptr<Recording>> &parts, uint32_t repeat) {
                std::vector<const Recording *> raw;  // parts (the caller's) outlive the run
                for (const auto &p : parts) {
                    raw.push_back(p.get());
                }
                py::gil_scoped_release release;
                d.run_steps(raw, repeat);
            },
            py::arg("parts"), py::arg("repeat"),
            "The recordings in turn, repeat times, in one command buffer; waits for it.");

    m.def("kargs_layout", &kargs_layout,
          "{struct: (sizeof, {field: offsetof})} of metal/kargs.h as compiled into _metal");
}
