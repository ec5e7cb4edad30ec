// The end of one step of a chain of batched decode steps (backends/metal/rows_loops.py's
// run_rows_chain): after kernel_sample_rows_final has written each row's token, this kernel makes
// the next step's inputs on the device, as kernel_argmax_greedy does for one sequence, so the
// steps follow each other in one command buffer with nothing read back between them:
// - the tokens become the next step's token ids (the arena's, read by get_rows) and go into the
//   history at the block of the step that ended (counter[0]);
// - every row's (slot, position) pair moves one position on;
// - each row's kargs_sample_row gets its uniform number for the next step, from uniforms (one
//   row of args.n numbers per step, with a row past the last step so that the last step reads
//   inside the buffer);
// - the counter moves on.
#include <metal_stdlib>
using namespace metal;
#include "kargs.h"

// One threadgroup; args.n is the number of rows.
kernel void kernel_rows_chain_next(constant kargs_unary &args [[buffer(0)]],
                                   device const int *ids [[buffer(1)]],
                                   device int *tokens [[buffer(2)]],
                                   device uint2 *rows [[buffer(3)]],
                                   device kargs_sample_row *chains [[buffer(4)]],
                                   device const float *uniforms [[buffer(5)]],
                                   device int *history [[buffer(6)]],
                                   device uint *counter [[buffer(7)]],
                                   ushort tiitg [[thread_index_in_threadgroup]],
                                   ushort ntg [[threads_per_threadgroup]]) {
    const uint n = args.n;
    const uint step = counter[0];
    for (uint r = tiitg; r < n; r += ntg) {
        const int id = ids[r];
        tokens[r] = id;
        history[step * n + r] = id;
        rows[r].y = rows[r].y + 1u;
        chains[r].u = uniforms[(step + 1u) * n + r];
    }
    // every thread has read the counter before thread 0 moves it on
    threadgroup_barrier(mem_flags::mem_device);
    if (tiitg == 0) {
        counter[0] = step + 1u;
    }
}
