"""The persistent decode step: runs of a step's dispatches as one dispatch each.

A run of consecutive dispatches of one workgroup size (a "chunk": up to the binding limits, so a
whole step on a device with enough bindings, a few at a time on lavapipe's 32) becomes one
kernel (wgsl_merge.py) launched on a grid of G workgroups that stay resident. It walks the
chunk's task list, a storage buffer of (grid x, y, z, number of workgroups) per phase (one phase
per original dispatch): workgroup w runs the phase's virtual workgroups w, w + G, ... with the
built-ins the original dispatch would have given them, then signals a counter; the next phase
starts when all G workgroups have signalled the previous one. Each hand-off is

    producer: its writes; storageBarrier(); thread 0: atomicAdd(counter, 1)
    consumer: thread 0: atomicLoad(counter) until it reaches G; workgroupUniformLoad;
              storageBarrier(); its reads

(benchmarks/NOTES.md, section 15, says what naga emits for these and why they order the data
on Vulkan). WebGPU promises no forward progress between workgroups, so every wait is bounded:
past a bound of loads (the task list's head holds it) it sets the timeout flag (ctl[0]) and the workgroup stops working; every
later wait sees the flag and gives up at once, and the host re-runs the call on the ordinary
dispatches. The last workgroup to leave (ctl[1] counts them) puts the counters back to zero for
the next launch; the dispatch boundary makes that visible to it.

llvmpipe (lavapipe) ends every loop of a shader invocation once the invocation has made 65,535
loop iterations in all, counted together over all its loops (Mesa's LP_MAX_TGSI_LOOP_ITERATIONS),
and says nothing: results are silently cut. A persistent workgroup walks many virtual
workgroups, each with its own loops, so a launch can run past that where no ordinary dispatch
does (Gemma 3's output mat-vec: 26,215 virtual workgroups of ~10 iterations on one workgroup).
Each launch therefore ends with a sentinel loop of two iterations (a count from the task list,
so no compiler unrolls it): if it ran fewer, the budget was spent, the launch sets the bit
LOOP_LIMIT and the host re-runs the call on the ordinary dispatches and builds its lists again
with half the virtual workgroups per launch (Persistent.rounds).

FASTLLM_WEBGPU_PERSISTENT: unset or "0": off (the default until the path has been measured on a
GPU: benchmarks/NOTES.md, section 15); "1": on Vulkan GPU
adapters where the probe passes (and the first tokens equal the ordinary path's); "force":
anywhere (lavapipe in CI), on
a grid of FASTLLM_WEBGPU_PERSISTENT_GRID workgroups (default 1 under force; otherwise the
largest of 2048 .. 128 whose probe passes, halved after a launch that timed out).
FASTLLM_WEBGPU_PERSISTENT_SPIN: loads per wait before it times out;
FASTLLM_WEBGPU_PERSISTENT_PHASES: at most this many dispatches merged into one launch (a step
per few layers); FASTLLM_WEBGPU_PERSISTENT_RESIZE=all: the argmax, attention and quantize_x
run at the mat-vecs' workgroup size (not bit-exact: for measuring).
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np

from ...errors import BackendError
from .wgsl_merge import Merged, MergeError, Task, add_task

CTL_WORDS = 4  # ctl[0]: flag bits (TIMEOUT, LOOP_LIMIT), ctl[1]: workgroups gone
# A wait that ran out of loads. Where lavapipe's loop budget ends a wait's loops, the wait sees
# its counter incomplete and sets this bit too, and the host treats the launch as timed out
# (halving the grid) before it looks at LOOP_LIMIT.
TIMEOUT = 1
LOOP_LIMIT = 2  # the sentinel loop was cut short (llvmpipe's loop budget; see above)
SPIN_DEFAULT = 1 << 22
GRID_CANDIDATES = (2048, 1024, 512, 256, 128)
MAX_ROUNDS = 32768  # virtual workgroups per workgroup and phase (lavapipe ends longer loops)
# virtual workgroups per workgroup and launch on a CPU adapter to begin with (llvmpipe's 65,535
# loop iterations an invocation leave ~16 a virtual workgroup); the sentinel halves it if needed
CPU_ROUNDS = 4096
CTL_MAX = 1024  # words of a program's counter buffer: at most CTL_MAX - CTL_WORDS phases
PROBE_PHASES = 6
PROBE_WG = 64

_HELPERS = """
@group(0) @binding(0) var<storage, read_write> pk_ctl: array<atomic<u32>>;
@group(0) @binding(1) var<storage, read> pk_tasks: array<vec4<u32>>;
var<workgroup> pk_flag: u32;

// Thread 0 waits until counter c reaches `want`, making at most spin loads; past them it
// sets the timeout flag. Every thread gets whether to go on (uniformly), then the acquire side
// of the hand-off: storageBarrier() after the counter's load. The loads are two nested loops of
// at most 32768 iterations, and only a complete counter lets the workgroup on however the loops
// ended: lavapipe's compiler leaves any loop after 65535 iterations as if it had finished.
fn pk_wait(c: u32, want: u32, lid: u32) -> bool {
    if (lid == 0u) {
        let spin = pk_tasks[0].z;  // the task list's head: (grid, phases, spin bound, 0)
        var go = atomicLoad(&pk_ctl[0]) == 0u;
        var done = false;
        var n = 0u;
        for (var i = 0u; i < 32768u; i++) {
            if (!go || done || n >= spin) {
                break;
            }
            for (var j = 0u; j < 32768u; j++) {
                if (n >= spin) {
                    break;
                }
                n += 1u;
                if (atomicLoad(&pk_ctl[c]) >= want) {
                    done = true;
                    break;
                }
            }
            if (atomicLoad(&pk_ctl[0]) != 0u) {
                go = false;
            }
        }
        if (go && !done) {
            atomicOr(&pk_ctl[0], 1u);
            go = false;
        }
        pk_flag = select(0u, 1u, go);
    }
    let go = workgroupUniformLoad(&pk_flag);
    storageBarrier();
    return go != 0u;
}

// The release side: every thread's writes, storageBarrier(), then thread 0 counts this
// workgroup in.
fn pk_signal(c: u32, lid: u32) {
    storageBarrier();
    if (lid == 0u) {
        atomicAdd(&pk_ctl[c], 1u);
    }
}

// The last workgroup out zeroes the counters 1 .. n for the next launch. First the sentinel:
// a loop of pk_tasks[0].w (2) iterations that runs fewer where the invocation's loop budget
// is spent (llvmpipe), which flags the launch's results as cut.
fn pk_exit(n: u32, lid: u32) {
    var trips = 0u;
    for (var i = 0u; i < pk_tasks[0].w; i++) {
        trips += 1u;
    }
    if (trips != pk_tasks[0].w) {
        atomicOr(&pk_ctl[0], 2u);
    }
    storageBarrier();
    if (lid == 0u) {
        let g = pk_tasks[0].x;
        if (atomicAdd(&pk_ctl[1], 1u) + 1u == g) {
            for (var c = 2u; c <= n; c++) {
                atomicStore(&pk_ctl[c], 0u);
            }
            atomicStore(&pk_ctl[1], 0u);
        }
    }
}
"""

_PROBE = """
@group(0) @binding(2) var<storage, read_write> data: array<u32>;

// Each phase p > 0: workgroup w reads what workgroup (w + 1) % G wrote in phase p - 1 (another
// thread's word), adds p and writes its own; a missing hand-off shows in the words. Before it,
// each phase spins pk_tasks[1].x loop iterations (kept by a word written past the hand-offs'),
// so that a test can spend a CPU adapter's loop budget and see the sentinel report it.
@compute @workgroup_size(WG)
fn kernel_persistent_probe(@builtin(local_invocation_index) lid: u32,
                           @builtin(workgroup_id) wgid: vec3<u32>) {
    let g = pk_tasks[0].x;
    let w = wgid.x;
    var go = pk_wait(2u, 0u, lid);
    if (go) {
        data[w * WG + lid] = w * 1000u + lid;
        pk_signal(2u, lid);
    }
    for (var p = 1u; p < PHASES; p++) {
        if (go) {
            go = pk_wait(1u + p, g, lid);
        }
        var acc = 0u;
        for (var i = 0u; i < pk_tasks[1].x; i++) {
            acc = acc * 31u + i;
        }
        data[PHASES * g * WG + w * WG + lid] = acc;
        if (go) {
            let src = ((p - 1u) * g + (w + 1u) % g) * WG + (lid + 1u) % WG;
            data[(p * g + w) * WG + lid] = data[src] + p;
            pk_signal(2u + p, lid);
        }
    }
    pk_exit(1u + PHASES, lid);
}
"""


def mode() -> str:
    """FASTLLM_WEBGPU_PERSISTENT as "off", "auto" or "force"."""
    v = os.environ.get("FASTLLM_WEBGPU_PERSISTENT", "").strip().lower()
    # off unless asked for, until a GPU run has measured what it saves (benchmarks/NOTES.md,
    # section 15)
    if v in ("", "0", "off", "false", "no"):
        return "off"
    if v == "force":
        return "force"
    if v in ("1", "auto", "on", "true", "yes"):
        return "auto"
    raise ValueError(f"FASTLLM_WEBGPU_PERSISTENT={v!r}: use 0, 1 or force")


def _env_int(name: str, default: int) -> int:
    v = os.environ.get(name, "").strip()
    if not v:
        return default
    try:
        n = int(v)
    except ValueError:
        raise ValueError(f"{name}={v!r} is not an integer") from None
    if n < 0:
        raise ValueError(f"{name}={v!r} is negative")
    return n


def helpers() -> str:
    return _HELPERS


def _ctl(be, words: int, label: str):
    buf = be.buffer(4 * words, "STORAGE|COPY_DST|COPY_SRC", label)
    be.queue.write_buffer(buf, 0, np.zeros(words, np.uint32))
    return buf


def probe(be, grid: int, spin: int, work: int = 0) -> str | None:
    """Runs the probe kernel on `grid` workgroups: None if every hand-off arrived, else why
    not (a timeout, loops cut short, or words that a hand-off did not carry). `work`: loop
    iterations each phase spends before its hand-off."""
    src = (helpers() + _PROBE).replace("WG", str(PROBE_WG)).replace("PHASES",
                                                                        f"{PROBE_PHASES}u")
    words = (PROBE_PHASES + 1) * grid * PROBE_WG  # the last grid * WG: the spins' words
    with be.errors("the persistent kernel's probe"):
        mod = be._shader_module(src, "persistent probe")
        p = be.device.create_compute_pipeline(
            layout="auto", compute={"module": mod, "entry_point": "kernel_persistent_probe"})
        ctl = _ctl(be, CTL_WORDS + PROBE_PHASES, "probe counters")
        tasks = be.buffer(32, "STORAGE|COPY_DST", "probe tasks")
        be.queue.write_buffer(tasks, 0, np.array([grid, PROBE_PHASES, spin, 2, work, 0, 0, 0],
                                                 np.uint32))
        data = be.buffer(4 * words, "STORAGE|COPY_SRC", "probe data")
        bg = be.device.create_bind_group(layout=p.get_bind_group_layout(0), entries=[
            {"binding": 0, "resource": {"buffer": ctl}},
            {"binding": 1, "resource": {"buffer": tasks}},
            {"binding": 2, "resource": {"buffer": data}}])
        enc = be.device.create_command_encoder()
        cp = enc.begin_compute_pass()
        cp.set_pipeline(p)
        cp.set_bind_group(0, bg)
        for _ in range(2):  # twice: the second launch checks the counters' reset
            cp.dispatch_workgroups(grid, 1, 1)
        cp.end()
        be.queue.submit([enc.finish()])
        flag = np.frombuffer(be.device.queue.read_buffer(ctl), np.uint32)
        got = np.frombuffer(be.device.queue.read_buffer(data), np.uint32)
        for b in (ctl, tasks, data):
            be.free(b)
    if flag[0] & TIMEOUT:
        return f"a wait of the probe timed out on a grid of {grid}"
    if flag[0]:
        return f"the probe's loops were cut short on a grid of {grid}"
    if flag[1:].any():
        return "the probe's counters were not reset"
    want = np.zeros((PROBE_PHASES, grid, PROBE_WG), np.int64)
    want[0] = np.arange(grid)[:, None] * 1000 + np.arange(PROBE_WG)
    for p in range(1, PROBE_PHASES):
        want[p] = np.roll(np.roll(want[p - 1], -1, axis=0), -1, axis=1) + p
    got = got[:want.size].reshape(want.shape)
    if not np.array_equal(got, want.astype(np.uint32)):
        bad = int((got != want).sum())
        return f"the probe read {bad} words that its hand-offs should have carried"
    return None


class Persistent:
    """A backend's persistent-kernel state: whether it is on, its grid, the probe's verdict."""

    def __init__(self, be):
        self.be = be
        self.mode = mode()
        forced = self.mode == "force"
        # 0: the largest of GRID_CANDIDATES whose probe passes (the merged kernels use more
        # registers than the probe: a launch that times out halves it again)
        self.grid = _env_int("FASTLLM_WEBGPU_PERSISTENT_GRID", 1 if forced else 0)
        # on a CPU a load is ~100x cheaper and a task ~100x longer than on a GPU
        self.spin = _env_int("FASTLLM_WEBGPU_PERSISTENT_SPIN",
                             SPIN_DEFAULT << (6 if be.info.get("adapter_type") == "CPU" else 0))
        self.spin = min(self.spin, 0xFFFFFFFF)
        self.refused: str | None = None
        self.timeouts = 0
        # virtual workgroups a workgroup may walk in one launch, summed over its phases (None:
        # only MAX_ROUNDS a phase); halved each time the sentinel reports a cut loop
        self.rounds = CPU_ROUNDS if be.info.get("adapter_type") == "CPU" else None
        self.loop_limits = 0
        if self.mode == "off":
            self.refused = "FASTLLM_WEBGPU_PERSISTENT=0"
        elif not forced and be.info.get("backend_type") != "Vulkan":
            self.refused = f"not measured on {be.info.get('backend_type', '?')}"
        elif not forced and be.info.get("adapter_type", "CPU") == "CPU":
            self.refused = "a CPU adapter"
        self._probed = False
        self.pipelines: dict[str, Any] = {}  # merged kernels by their text
        # phases a launch may hold (FASTLLM_WEBGPU_PERSISTENT_PHASES; default: as many as the
        # bindings allow): fewer launches a step against a kernel the driver compiles at once
        self.phases = min(_env_int("FASTLLM_WEBGPU_PERSISTENT_PHASES", CTL_MAX - CTL_WORDS),
                          CTL_MAX - CTL_WORDS) or 1
        # FASTLLM_WEBGPU_PERSISTENT_RESIZE=all: the kernels _resized names run at the
        # mat-vecs' workgroup size; otherwise every kernel keeps its own
        self.resize = os.environ.get("FASTLLM_WEBGPU_PERSISTENT_RESIZE", "").strip().lower()

    def usable(self) -> bool:
        """Whether programs should build persistent step lists (runs the probe once)."""
        if self.refused is None and not self._probed:
            self._probed = True
            why = None
            for g in (self.grid,) if self.grid else GRID_CANDIDATES:
                try:
                    why = probe(self.be, g, self.spin)
                except BackendError as e:
                    why = f"the probe failed: {e}"
                if why is None:
                    self.grid = g
                    break
            if why is not None:
                self.refused = "probe: " + why
        return self.refused is None

    def timed_out(self) -> None:
        """A launch timed out: the next lists use half the grid (none below one workgroup)."""
        self.timeouts += 1
        if self.grid > 1:
            self.grid //= 2

    def loop_limited(self) -> bool:
        """A launch's loops were cut (llvmpipe's budget): the next lists take half as many
        virtual workgroups a launch. False once that would leave none to merge."""
        self.loop_limits += 1
        rounds = self.rounds or MAX_ROUNDS
        self.rounds = rounds // 2
        return self.rounds >= 2

    def describe(self) -> str:
        return (f"grid {self.grid}" + (f", {self.timeouts} timeouts" if self.timeouts else "")
                + (f", {self.loop_limits} cut loops, {self.rounds} rounds a launch"
                   if self.loop_limits else ""))


# Kernels whose workgroup size the persistent step may change to its runs' (MERGE_WG), and the
# grid that then covers the same work, under FASTLLM_WEBGPU_PERSISTENT_RESIZE=all only (for
# measuring what the last boundaries cost): the argmax's chunks, the one-dispatch attention (its
# key blocks change size, so its sums their order) and quantize_x (its folded norm's sum changes
# order). On lavapipe stories260K, SmolLM2 and Gemma 3 keep their greedy ids with them
# (benchmarks/NOTES.md, section 15).
MERGE_WG = 64


def _resized(be, spec: tuple, wg: int) -> tuple | None:
    p, bindings, grid = spec
    key = be.pipeline_keys.get(id(p))
    if key is None:
        return None
    file, entry, wtype, consts, f16_tile, variant = key
    old = consts.get("WG")
    if old is None or old == wg:
        return None
    if entry == "kernel_argmax_part" or (entry.startswith("kernel_attn_decode_direct_")
                                         and wg >= consts["D"] // 4):
        new_grid = grid
    elif entry == "kernel_quantize_x_f32" and grid[2] == 1 and old % wg == 0:
        new_grid = (grid[0] * (old // wg), grid[1], 1)
    else:
        return None
    q = be.pipeline(file, entry, wtype, {**consts, "WG": wg}, f16_tile, variant)
    return (q, bindings, new_grid)


def lower(prog, specs: list[tuple], args: bytes, label: str) -> tuple[list[tuple], int]:
    """The persistent form of a dispatch list: specs are (pipeline, bindings, grid) in order.
    Returns ((pipeline, bind group, grid) per dispatch, the number of merged launches);
    dispatches that merge with no neighbour keep their ordinary form."""
    be = prog.be
    lim = be.limits
    max_storage = lim.get("max-storage-buffers-per-shader-stage", 8) - 2
    max_uniform = lim.get("max-uniform-buffers-per-shader-stage", 12)
    out: list[tuple] = []
    merged = 0
    if be.persistent.resize == "all":
        specs = [_resized(be, s, MERGE_WG) or s for s in specs]

    def ordinary(s):
        p, bindings, grid = s
        return (p, prog._bind_group(p, bindings, prog._ubuf), grid)

    def fits(chunk: list[tuple]) -> Merged | None:
        if len(chunk) > be.persistent.phases:
            return None
        m = Merged()
        rounds = 0
        try:
            for p, bindings, grid in chunk:
                r = -(-grid[0] * grid[1] * grid[2] // be.persistent.grid)
                rounds += r
                if r > MAX_ROUNDS or (be.persistent.rounds and rounds > be.persistent.rounds):
                    return None
                src, entry = be.pipeline_sources[id(p)]
                add_task(m, Task(src, entry, bindings, grid), args)
        except MergeError:
            return None
        storage = sum(1 for b in m.bound.values() if b[2] == "storage")
        uniform = sum(1 for b in m.bound.values() if b[2] == "uniform")
        return m if storage <= max_storage and uniform <= max_uniform else None

    i = 0
    while i < len(specs):
        j, m = i + 1, fits(specs[i:i + 1])
        while m is not None and j < len(specs):
            m2 = fits(specs[i:j + 1])
            if m2 is None:
                break
            m, j = m2, j + 1
        if m is None or j - i < 2:
            out.append(ordinary(specs[i]))
            i += 1
            continue
        launch = _launch(prog, m, specs[i:j], f"{label} {i}..{j - 1}")
        if launch is None:
            out += [ordinary(s) for s in specs[i:j]]
        else:
            out.append(launch)
            merged += 1
        i = j
    return out, merged


def _source(m: Merged, n_phases: int) -> str:
    lines = sorted(m.enables) + m.text + [helpers()]
    # a buffer is one usage per dispatch: read_write wherever one of its variables writes
    written = {id(b[1]) for b in m.bound.values() if b[3] == "read_write"}
    for b in m.bound.values():
        if b[2] == "storage" and id(b[1]) in written:
            b[3] = "read_write"
    for k, (name, _res, space, access, vtype) in enumerate(m.bound.values()):
        acc = f"storage, {access}" if space == "storage" else "uniform"
        lines.append(f"@group(0) @binding({2 + k}) var<{acc}> {name}: {vtype};")
    body = ["    let lid = ids.lid;", "    let w = ids.wg.x;", "    let g = pk_tasks[0].x;",
            "    var go = pk_wait(2u, 0u, lid);"]
    for ph, entry in enumerate(m.entries):
        if ph:
            body.append(f"    if (go) {{\n        go = pk_wait({1 + ph}u, g, lid);\n    }}")
        body.append(f"""    if (go) {{
        let t = pk_tasks[{1 + ph}];
        for (var v = w; v < t.w; v += g) {{
            var s = ids;
            s.wg = vec3<u32>(v % t.x, (v / t.x) % t.y, v / (t.x * t.y));
            s.nwg = t.xyz;
            {entry}(s);
            workgroupBarrier();
        }}
        pk_signal({2 + ph}u, lid);
    }}""")
    body.append(f"    pk_exit({1 + n_phases}u, lid);")
    lines.append(f"@compute @workgroup_size({m.workgroup_size})\n"
                 f"fn kernel_persistent_step(ids: {m.ids_type}) {{\n" + "\n".join(body) + "\n}")
    return "\n".join(lines)


def _launch(prog, m: Merged, chunk: list[tuple], label: str) -> tuple | None:
    """The merged kernel's pipeline, bind group and grid, or None where it does not compile
    (e.g. its workgroup memory is over the limit): the chunk then stays ordinary."""
    be = prog.be
    pers: Persistent = be.persistent
    n = len(chunk)
    if CTL_WORDS + n > CTL_MAX:
        return None
    src = _source(m, n)
    p = pers.pipelines.get(src)  # nor the grid nor the spin bound is in the text
    if p is None:
        try:
            with be.errors(f"compiling the persistent kernel ({label})"):
                mod = be._shader_module(src, label)  # as the ordinary kernels: unchecked
                p = be.device.create_compute_pipeline(
                    layout="auto",
                    compute={"module": mod, "entry_point": "kernel_persistent_step"}, label=label)
        except BackendError:
            if os.environ.get("FASTLLM_WEBGPU_PERSISTENT_DEBUG"):
                raise
            return None
        pers.pipelines[src] = p
    tasks = np.zeros((n + 1, 4), np.uint32)
    tasks[0] = (pers.grid, n, pers.spin, 2)  # .w: the sentinel's trip count
    for k, (_p, _b, (gx, gy, gz)) in enumerate(chunk):
        tasks[k + 1] = (gx, gy, gz, gx * gy * gz)
    tbuf = prog._buf(tasks.nbytes, "STORAGE|COPY_DST", "persistent tasks")
    be.queue.write_buffer(tbuf, 0, tasks)
    ctl = prog._persist_ctl()
    entries = [{"binding": 0, "resource": {"buffer": ctl}},
               {"binding": 1, "resource": {"buffer": tbuf}}]
    entries += [{"binding": 2 + k, "resource": {"buffer": b[1]}}
                for k, b in enumerate(m.bound.values())]
    with be.errors(f"binding the persistent kernel ({label})"):
        bg = be.device.create_bind_group(layout=p.get_bind_group_layout(0), entries=entries)
    return (p, bg, (pers.grid, 1, 1))
