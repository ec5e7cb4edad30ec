// msl_rt.hpp - CPU runtime of the MSL emulator.
// Each Metal thread of a threadgroup is a fiber (x86-64: a 6-register stack
// switch, ~50x cheaper than swapcontext, which makes a sigprocmask syscall per
// switch; elsewhere ucontext; MSLEMU_UCONTEXT forces ucontext); a threadgroup runs on
// one OS worker thread (so `static thread_local` == threadgroup storage), and
// several workers run different threadgroups concurrently.  SIMD-group
// collectives (simd_sum, shuffles, simdgroup_matrix ops) and
// threadgroup_barrier are blocking points: a fiber parks itself, the scheduler
// runs every other runnable fiber, and only when nothing is runnable does it
// complete the collectives / release the barrier.  The order in which runnable
// fibers are resumed is a policy (forward / reverse / seeded random), which is
// how missing-barrier races are shaken out.
#pragma once
#include <signal.h>
#include <sys/mman.h>
#include <ucontext.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <initializer_list>
#include <map>
#include <mutex>
#include <random>
#include <string>
#include <thread>
#include <vector>

#if defined(__x86_64__) && !defined(MSLEMU_UCONTEXT)
#define MSLEMU_FAST_SWITCH 1
// msl_ctx_switch(&save_sp, new_sp): push the callee-saved registers, save rsp,
// load new_sp, pop, ret.  A new fiber's stack is prepared to "return" into its
// entry function (fiber_start_frame below).
extern "C" void msl_ctx_switch(void **save_sp, void *new_sp);
asm(R"(
  .text
  .globl msl_ctx_switch
  .hidden msl_ctx_switch
  .type msl_ctx_switch,@function
msl_ctx_switch:
  pushq %rbp
  pushq %rbx
  pushq %r12
  pushq %r13
  pushq %r14
  pushq %r15
  movq %rsp, (%rdi)
  movq %rsi, %rsp
  popq %r15
  popq %r14
  popq %r13
  popq %r12
  popq %rbx
  popq %rbp
  ret
  .size msl_ctx_switch, .-msl_ctx_switch
)");
#endif

namespace msl {
namespace rt {

struct ThreadCtx {
    uint32_t tpig[3];   // thread_position_in_grid
    uint32_t tpitg[3];  // thread_position_in_threadgroup
    uint32_t tgpig[3];  // threadgroup_position_in_grid
    uint32_t tptg[3];   // threads_per_threadgroup (actual, for this threadgroup)
    uint32_t tgpg[3];   // threadgroups_per_grid
    uint32_t tpg[3];    // threads_per_grid
    uint32_t tiitg;     // thread_index_in_threadgroup
    uint32_t lane;      // thread_index_in_simdgroup
    uint32_t sgitg;     // simdgroup_index_in_threadgroup
    uint32_t sgptg;     // simdgroups_per_threadgroup
    uint32_t simd_width;
    void **buffers;
    void **tgmem;
};

using Tramp = void (*)(const ThreadCtx &);

enum class St : uint8_t { Ready, TGBarrier, Simd, Done };

struct Fiber;
struct CollGroup {
    Fiber *lane[32];    // nullptr = lane not participating (inactive / elsewhere)
    uint32_t mask;      // participating lanes
    uint32_t live;      // lanes of this simdgroup that have not returned
    uint32_t launched;  // lanes that exist in this simdgroup
    int n;
};
using CollFn = void (*)(CollGroup &);

struct Fiber {
#ifdef MSLEMU_FAST_SWITCH
    void *sp;
#else
    ucontext_t uc;
#endif
    St st;
    uint32_t idx;
    ThreadCtx tc;
    CollFn fn;
    const char *file;
    unsigned line, col;
    const void *in;
    void *out;
    uint64_t arg0;
};

struct Options {
    int policy = 0;  // 0 forward, 1 reverse, 2 random
    uint64_t seed = 0;
    int strict = 0;  // 1: divergence / barrier-after-return are errors
    int workers = 2;
    size_t stack_size = 256 * 1024;
};

struct Stats {
    uint64_t threadgroups, threads, tg_barriers, simd_ops, divergent_simd_ops, barrier_after_return,
        divergent_barriers;
};

struct Dispatch {
    Tramp tramp;
    void **buffers;
    std::vector<size_t> tg_lens;
    uint32_t tgpg[3], tptg[3], tpg[3];
    bool nonuniform;  // dispatchThreads: last threadgroup may be partial
    Options opt;
    std::atomic<uint64_t> next_tg{0};
    std::atomic<bool> abort{false};
    std::mutex mu;
    std::string err;
    std::atomic<uint64_t> st_tg{0}, st_threads{0}, st_bar{0}, st_simd{0}, st_div{0}, st_bar_ret{0},
        st_div_bar{0};
    void fail(const std::string &m) {
        std::lock_guard<std::mutex> g(mu);
        if (err.empty())
            err = m;
        abort = true;
    }
};

struct Worker {
#ifdef MSLEMU_FAST_SWITCH
    void *sched_sp;
#else
    ucontext_t sched;
#endif
    std::vector<Fiber> fibers;
    std::vector<char *> stacks;  // one per fiber, from the process-wide pool (stack_pool below)
    size_t stack_size = 0;
    std::vector<std::vector<unsigned char>> tgmem_store;
    std::vector<void *> tgmem_ptrs;
    uint64_t epoch = 0;
    std::map<void *, uint64_t> tg_seen;  // static thread_local threadgroup vars
    size_t tg_bytes = 0;                 // threadgroup memory used by this threadgroup
    Dispatch *d = nullptr;
    std::mt19937_64 rng;
};

inline thread_local Worker *t_worker = nullptr;
inline thread_local Fiber *t_cur = nullptr;

// ---------------------------------------------------------------- fibers
#ifdef MSLEMU_FAST_SWITCH
inline void to_fiber(Worker &w, Fiber &f) {
    msl_ctx_switch(&w.sched_sp, f.sp);
}
inline void to_scheduler(Fiber &f) {
    msl_ctx_switch(&f.sp, t_worker->sched_sp);
}
#else
inline void to_fiber(Worker &w, Fiber &f) {
    swapcontext(&w.sched, &f.uc);
}
inline void to_scheduler(Fiber &f) {
    swapcontext(&f.uc, &t_worker->sched);
}
#endif

inline void fiber_entry() {
    Fiber *f = t_cur;
    t_worker->d->tramp(f->tc);
    f->st = St::Done;
#ifdef MSLEMU_FAST_SWITCH
    to_scheduler(*f);  // never resumed
    __builtin_trap();
#endif
    // ucontext: returning resumes uc_link (= scheduler)
}

inline void block(St s) {
    Fiber *f = t_cur;
    f->st = s;
    to_scheduler(*f);
}

inline std::string where(const Fiber *f) {
    char b[200];
    snprintf(b, sizeof b,
             "thread_position_in_grid=(%u,%u,%u) threadgroup=(%u,%u,%u) simdgroup=%u lane=%u",
             f->tc.tpig[0], f->tc.tpig[1], f->tc.tpig[2], f->tc.tgpig[0], f->tc.tgpig[1],
             f->tc.tgpig[2], f->tc.sgitg, f->tc.lane);
    return b;
}

// Called (via a rewrite by the pre-pass) right after every
// `threadgroup T x[N];` declaration: first toucher in each threadgroup fills
// it with 0xFF bytes (NaN for float/half, ~0 for ints) so reads of
// never-written threadgroup memory are visible.
inline void tg_touch(void *p, size_t n) {
    Worker *w = t_worker;
    auto it = w->tg_seen.find(p);
    if (it == w->tg_seen.end() || it->second != w->epoch) {
        memset(p, 0xFF, n);
        w->tg_seen[p] = w->epoch;
        w->tg_bytes += n;
        if (w->tg_bytes > 32768)
            w->d->fail("threadgroup memory > 32 KiB (Apple GPU limit) at " + where(t_cur));
    }
}

// ---------------------------------------------------------------- collectives
template <class T>
inline T collective(CollFn fn, const T &x, uint64_t arg, const char *file, unsigned line,
                    unsigned col) {
    Fiber *f = t_cur;
    T out;
    f->fn = fn;
    f->in = &x;
    f->out = &out;
    f->arg0 = arg;
    f->file = file;
    f->line = line;
    f->col = col;
    block(St::Simd);
    return out;
}
// untyped version (matrix ops): in/out are arbitrary pointers
inline void collective_raw(CollFn fn, const void *in, void *out, uint64_t arg, const char *file,
                           unsigned line, unsigned col) {
    Fiber *f = t_cur;
    f->fn = fn;
    f->in = in;
    f->out = out;
    f->arg0 = arg;
    f->file = file;
    f->line = line;
    f->col = col;
    block(St::Simd);
}

inline void tg_barrier(const char *file, unsigned line, unsigned col) {
    Fiber *f = t_cur;
    f->file = file;
    f->line = line;
    f->col = col;
    block(St::TGBarrier);
}

// ---------------------------------------------------------------- scheduler
inline void run_threadgroup(Worker &w, uint64_t tg_linear) {
    Dispatch &d = *w.d;
    uint32_t g[3];
    g[0] = tg_linear % d.tgpg[0];
    g[1] = (tg_linear / d.tgpg[0]) % d.tgpg[1];
    g[2] = tg_linear / (uint64_t(d.tgpg[0]) * d.tgpg[1]);
    uint32_t tp[3];
    for (int k = 0; k < 3; k++) {
        tp[k] = d.tptg[k];
        if (d.nonuniform) {
            uint32_t rem = d.tpg[k] - g[k] * d.tptg[k];
            tp[k] = std::min(tp[k], rem);
        }
    }
    uint32_t n = tp[0] * tp[1] * tp[2];
    uint32_t full_n = d.tptg[0] * d.tptg[1] * d.tptg[2];
    uint32_t nsg = (n + 31) / 32;
    w.epoch++;
    w.tg_bytes = 0;
    for (size_t i = 0; i < w.tgmem_ptrs.size(); i++) {
        memset(w.tgmem_ptrs[i], 0xFF, w.tgmem_store[i].size());
        w.tg_bytes += d.tg_lens[i];
    }
    w.fibers.resize(n);
    for (uint32_t i = 0; i < n; i++) {
        Fiber &f = w.fibers[i];
        memset(&f.tc, 0, sizeof f.tc);
        f.idx = i;
        f.st = St::Ready;
        // linear index uses the *declared* threadgroup shape, like Metal
        uint32_t x = i % tp[0], y = (i / tp[0]) % tp[1], z = i / (tp[0] * tp[1]);
        uint32_t lin = x + y * d.tptg[0] + z * d.tptg[0] * d.tptg[1];
        (void)full_n;
        f.tc.tpitg[0] = x;
        f.tc.tpitg[1] = y;
        f.tc.tpitg[2] = z;
        for (int k = 0; k < 3; k++) {
            f.tc.tgpig[k] = g[k];
            f.tc.tptg[k] = tp[k];
            f.tc.tgpg[k] = d.tgpg[k];
            f.tc.tpg[k] = d.tpg[k];
            f.tc.tpig[k] = g[k] * d.tptg[k] + f.tc.tpitg[k];
        }
        f.tc.tiitg = lin;
        f.tc.lane = lin % 32;
        f.tc.sgitg = lin / 32;
        f.tc.sgptg = nsg;
        f.tc.simd_width = 32;
        f.tc.buffers = d.buffers;
        f.tc.tgmem = w.tgmem_ptrs.data();
#ifdef MSLEMU_FAST_SWITCH
        {  // stack top: [fake return address][fiber_entry][6 callee-saved registers] (first page =
           // guard)
            uintptr_t *sp = (uintptr_t *)(w.stacks[i] + w.stack_size);
            *--sp = 0;  // entry sees rsp % 16 == 8, as after a call
            *--sp = (uintptr_t)&fiber_entry;
            for (int r = 0; r < 6; r++)
                *--sp = 0;
            f.sp = sp;
        }
#else
        getcontext(&f.uc);
        f.uc.uc_stack.ss_sp = w.stacks[i] + 4096;  // first page = guard
        f.uc.uc_stack.ss_size = w.stack_size - 4096;
        f.uc.uc_link = &w.sched;
        makecontext(&f.uc, (void (*)())fiber_entry, 0);
#endif
    }
    // lanes by simdgroup (index by tiitg)
    std::vector<Fiber *> bylin(nsg * 32, nullptr);
    for (uint32_t i = 0; i < n; i++) {
        uint32_t l = w.fibers[i].tc.tiitg;
        if (l < bylin.size())
            bylin[l] = &w.fibers[i];
    }
    std::vector<uint32_t> order(n);
    for (;;) {
        if (d.abort)
            return;
        order.clear();
        for (uint32_t i = 0; i < n; i++)
            if (w.fibers[i].st == St::Ready)
                order.push_back(i);
        if (!order.empty()) {
            if (d.opt.policy == 1)
                std::reverse(order.begin(), order.end());
            else if (d.opt.policy == 2)
                std::shuffle(order.begin(), order.end(), w.rng);
            for (uint32_t i : order) {
                if (d.abort)
                    return;
                Fiber &f = w.fibers[i];
                if (f.st != St::Ready)
                    continue;
                t_cur = &f;
                to_fiber(w, f);
                t_cur = nullptr;
            }
            continue;
        }
        // nothing runnable: complete SIMD-group collectives, grouped by call site
        bool progress = false;
        for (uint32_t sg = 0; sg < nsg; sg++) {
            uint32_t live = 0, launched = 0;
            for (int l = 0; l < 32; l++) {
                Fiber *f = bylin[sg * 32 + l];
                if (!f)
                    continue;
                launched |= 1u << l;
                if (f->st != St::Done)
                    live |= 1u << l;
            }
            bool used[32] = {};
            for (int l = 0; l < 32; l++) {
                Fiber *f = bylin[sg * 32 + l];
                if (!f || f->st != St::Simd || used[l])
                    continue;
                CollGroup grp{};
                grp.live = live;
                grp.launched = launched;
                for (int m = l; m < 32; m++) {
                    Fiber *h = bylin[sg * 32 + m];
                    if (!h || h->st != St::Simd || used[m])
                        continue;
                    if (h->fn == f->fn && h->line == f->line && h->col == f->col &&
                        h->file == f->file) {
                        grp.lane[m] = h;
                        grp.mask |= 1u << m;
                        grp.n++;
                        used[m] = true;
                    }
                }
                d.st_simd++;
                if (grp.mask != launched) {  // some lanes elsewhere or already returned
                    d.st_div++;
                    if (d.opt.strict) {
                        char b[300];
                        snprintf(b, sizeof b,
                                 "%s:%u: SIMD-group function called in divergent control flow "
                                 "(active %08x, simdgroup %08x, not yet returned %08x) at %s",
                                 f->file, f->line, grp.mask, launched, live, where(f).c_str());
                        d.fail(b);
                        return;
                    }
                }
                t_cur = f;  // collectives may report errors with location
                f->fn(grp);
                t_cur = nullptr;
                if (d.abort)
                    return;
                for (int m = 0; m < 32; m++)
                    if (grp.lane[m])
                        grp.lane[m]->st = St::Ready;
                progress = true;
            }
        }
        if (progress)
            continue;
        // threadgroup barrier
        uint32_t waiting = 0, done = 0;
        Fiber *first = nullptr;
        bool same_site = true;
        for (uint32_t i = 0; i < n; i++) {
            Fiber &f = w.fibers[i];
            if (f.st == St::Done)
                done++;
            else if (f.st == St::TGBarrier) {
                waiting++;
                if (!first)
                    first = &f;
                else if (f.line != first->line || f.col != first->col || f.file != first->file)
                    same_site = false;
            }
        }
        if (waiting == 0)
            break;  // all done
        d.st_bar++;
        if (done) {
            d.st_bar_ret++;
            if (d.opt.strict) {
                char b[300];
                snprintf(b, sizeof b,
                         "%s:%u: threadgroup_barrier reached by %u threads while %u threads of the "
                         "threadgroup already returned (%s)",
                         first->file, first->line, waiting, done, where(first).c_str());
                d.fail(b);
                return;
            }
        }
        if (!same_site) {
            d.st_div_bar++;
            if (d.opt.strict) {
                char b[300];
                snprintf(b, sizeof b,
                         "%s:%u: threads of one threadgroup wait at different threadgroup_barrier "
                         "call sites (divergent barrier)",
                         first->file, first->line);
                d.fail(b);
                return;
            }
        }
        for (uint32_t i = 0; i < n; i++)
            if (w.fibers[i].st == St::TGBarrier)
                w.fibers[i].st = St::Ready;
    }
    d.st_tg++;
    d.st_threads += n;
}

// Fiber stacks are kept between dispatches: a fresh mmap + guard-page mprotect + first-touch
// page faults per fiber made a 256-thread dispatch cost ~9 ms, far more than most kernels.
inline std::mutex &stack_pool_mu() {
    static std::mutex m;
    return m;
}
inline std::vector<char *> &stack_pool() {
    static std::vector<char *> v;
    return v;
}
// stacks mapped so far: msl_stacks_mapped() shows the pool at work without timing anything
inline std::atomic<uint64_t> &stacks_mapped() {
    static std::atomic<uint64_t> n{0};
    return n;
}
inline bool take_stacks(std::vector<char *> &out, uint32_t n, size_t size) {
    {
        std::lock_guard<std::mutex> g(stack_pool_mu());
        auto &pool = stack_pool();
        while (out.size() < n && !pool.empty()) {
            out.push_back(pool.back());
            pool.pop_back();
        }
    }
    while (out.size() < n) {
        char *p = (char *)mmap(nullptr, size, PROT_READ | PROT_WRITE,
                               MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
        if (p == MAP_FAILED)
            return false;
        mprotect(p, 4096, PROT_NONE);  // guard page: a fiber stack overflow faults
        stacks_mapped()++;
        out.push_back(p);
    }
    return true;
}
inline void give_stacks(std::vector<char *> &v) {
    std::lock_guard<std::mutex> g(stack_pool_mu());
    stack_pool().insert(stack_pool().end(), v.begin(), v.end());
    v.clear();
}

inline void worker_main(Dispatch *d, int wid) {
    Worker w;
    w.d = d;
    w.rng.seed(d->opt.seed * 0x9E3779B97F4A7C15ull + wid);
    uint32_t maxn = d->tptg[0] * d->tptg[1] * d->tptg[2];
    w.stack_size = d->opt.stack_size;
    if (!take_stacks(w.stacks, maxn, w.stack_size)) {
        d->fail("mmap of fiber stacks failed");
        return;
    }
    for (size_t len : d->tg_lens) {
        w.tgmem_store.emplace_back(len ? len : 1);
    }
    for (auto &v : w.tgmem_store)
        w.tgmem_ptrs.push_back(v.data());
    t_worker = &w;
    static thread_local char altstack[65536];
    stack_t ss{};
    ss.ss_sp = altstack;
    ss.ss_size = sizeof altstack;
    sigaltstack(&ss, nullptr);
    uint64_t ntg = uint64_t(d->tgpg[0]) * d->tgpg[1] * d->tgpg[2];
    for (;;) {
        uint64_t t = d->next_tg.fetch_add(1);
        if (t >= ntg || d->abort)
            break;
        if (d->opt.policy == 2)
            w.rng.seed(d->opt.seed * 0x9E3779B97F4A7C15ull + t);
        run_threadgroup(w, t);
    }
    t_worker = nullptr;
    give_stacks(w.stacks);
}

// ---------------------------------------------------------------- registry
struct KernelInfo {
    Tramp tramp;
    std::string sig;
};
inline std::map<std::string, KernelInfo> &registry() {
    static std::map<std::string, KernelInfo> r;
    return r;
}
// sig: "name:attr(index)" per kernel parameter; enabled: false for a parameter whose
// [[function_constant(b)]] is false in this build (marked "[off]": it need not be bound)
struct Registrar {
    Registrar(const char *name, Tramp t, std::initializer_list<const char *> sig,
              std::initializer_list<bool> enabled) {
        std::string s;
        auto e = enabled.begin();
        for (const char *p : sig) {
            if (!s.empty())
                s += "; ";
            s += p;
            if (e != enabled.end() && !*e)
                s += "[off]";
            if (e != enabled.end())
                ++e;
        }
        registry()[name] = KernelInfo{t, s};
    }
};

}  // namespace rt
}  // namespace msl

// ---------------------------------------------------------------- C API
extern "C" {

__attribute__((visibility("default"))) uint64_t msl_stacks_mapped(void) {
    return msl::rt::stacks_mapped().load();
}

struct msl_stats {
    uint64_t threadgroups, threads, tg_barriers, simd_ops, divergent_simd_ops, barrier_after_return,
        divergent_barriers;
};

// grid: threadgroups-per-grid (grid_is_threads=0, dispatchThreadgroups) or
//       threads-per-grid (grid_is_threads=1, dispatchThreads)
__attribute__((visibility("default"))) int msl_dispatch(
    const char *name, void **buffers, int nbuf, const size_t *tg_lens, int ntg,
    const uint32_t *grid, const uint32_t *tptg, int grid_is_threads, int policy, uint64_t seed,
    int strict, int workers, char *errbuf, size_t errlen, msl_stats *stats) {
    using namespace msl::rt;
    (void)nbuf;
    auto it = registry().find(name);
    if (it == registry().end()) {
        snprintf(errbuf, errlen, "no kernel named %s", name);
        return 2;
    }
    Dispatch d;
    d.tramp = it->second.tramp;
    d.buffers = buffers;
    d.tg_lens.assign(tg_lens, tg_lens + ntg);
    for (int k = 0; k < 3; k++) {
        d.tptg[k] = tptg[k] ? tptg[k] : 1;
        if (grid_is_threads) {
            d.tpg[k] = grid[k];
            d.tgpg[k] = (grid[k] + d.tptg[k] - 1) / d.tptg[k];
        } else {
            d.tgpg[k] = grid[k];
            d.tpg[k] = grid[k] * d.tptg[k];
        }
    }
    d.nonuniform = grid_is_threads;
    if (d.tptg[0] * d.tptg[1] * d.tptg[2] > 1024) {
        snprintf(errbuf, errlen, "threads per threadgroup > 1024");
        return 3;
    }
    d.opt.policy = policy;
    d.opt.seed = seed;
    d.opt.strict = strict;
    d.opt.workers = workers > 0 ? workers : 1;
    uint64_t ntgs = uint64_t(d.tgpg[0]) * d.tgpg[1] * d.tgpg[2];
    if (uint64_t(d.opt.workers) > ntgs)
        d.opt.workers = int(ntgs ? ntgs : 1);  // no idle threads
    std::vector<std::thread> ts;
    for (int i = 1; i < d.opt.workers; i++)
        ts.emplace_back(worker_main, &d, i);
    worker_main(&d, 0);
    for (auto &t : ts)
        t.join();
    if (stats) {
        *stats = msl_stats{d.st_tg,  d.st_threads, d.st_bar,    d.st_simd,
                           d.st_div, d.st_bar_ret, d.st_div_bar};
    }
    if (!d.err.empty()) {
        snprintf(errbuf, errlen, "%s", d.err.c_str());
        return 1;
    }
    return 0;
}

// Buffer that starts `align`-aligned and whose end, padded with 0xFF bytes up to
// `align`, is followed by a PROT_NONE page: reading/writing past the end of a
// Metal buffer faults immediately instead of silently hitting neighbouring heap
// memory (mslemu.py checks the padding for stray writes after each dispatch).
__attribute__((visibility("default"))) void *msl_alloc_guarded(size_t n, size_t align) {
    size_t pg = 4096, na = (n + align - 1) / align * align, body = (na + pg - 1) / pg * pg;
    char *base = (char *)mmap(nullptr, body + pg, PROT_READ | PROT_WRITE,
                              MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (base == MAP_FAILED)
        return nullptr;
    mprotect(base + body, pg, PROT_NONE);
    memset(base + body - (na - n), 0xFF, na - n);
    return base + (body - na);
}
__attribute__((visibility("default"))) void msl_free_guarded(void *p, size_t n, size_t align) {
    size_t pg = 4096, na = (n + align - 1) / align * align, body = (na + pg - 1) / pg * pg;
    munmap((char *)p - (body - na), body + pg);
}

static void msl_segv_handler(int, siginfo_t *si, void *) {
    char b[400];
    int len;
    if (msl::rt::t_cur)
        len = snprintf(b, sizeof b,
                       "\nMSL emulator: invalid memory access at %p by kernel thread %s "
                       "(out-of-bounds buffer/stack access)\n",
                       si->si_addr, msl::rt::where(msl::rt::t_cur).c_str());
    else
        len = snprintf(b, sizeof b,
                       "\nMSL emulator: invalid memory access at %p outside kernel code\n",
                       si->si_addr);
    (void)!write(2, b, len);
    _exit(86);
}

__attribute__((visibility("default"))) void msl_install_segv_handler() {
    struct sigaction sa {};
    sa.sa_sigaction = msl_segv_handler;
    sa.sa_flags = SA_SIGINFO | SA_ONSTACK;
    sigaction(SIGSEGV, &sa, nullptr);
    sigaction(SIGBUS, &sa, nullptr);
}

// every kernel of the library, names separated by '\n'
__attribute__((visibility("default"))) const char *msl_kernel_names() {
    static std::string names;
    names.clear();
    for (auto &kv : msl::rt::registry())
        names += kv.first + "\n";
    return names.c_str();
}

__attribute__((visibility("default"))) const char *msl_kernel_signature(const char *name) {
    auto it = msl::rt::registry().find(name);
    return it == msl::rt::registry().end() ? nullptr : it->second.sig.c_str();
}
}
