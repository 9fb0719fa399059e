// Thread count of the CPU kernels, and what happens to it across fork().
//
// Every OpenMP region of csrc/cpu sizes its team with num_threads(kgpt::num_threads()): one
// process-wide count (set_num_threads from any thread, not OpenMP's per-thread ICV), so Python
// threads calling GIL-released kernels all see the same value.
//
// fork(): GNU libgomp's thread pool does not survive fork (the child has only the forking thread,
// but the pool still lists the parent's workers, and the first parallel region waits for them
// forever). A pthread_atfork child handler (registered by threads_init) marks the child, and
// num_threads() is 1 there for good: every region runs as a team of one on the calling thread,
// which never touches the pool. The kernels' results are those of a 1-thread run (bitwise those of
// any thread count where ops.h/gemm.h say so). set_num_threads in a forked child is recorded
// (requested_threads) but the child keeps running on one thread.
#pragma once

namespace kgpt {

constexpr int kMaxThreads = 4096;  // set_num_threads' upper bound (a clear error above it)

// Threads a kernel may use: the last set_num_threads value (initially OpenMP's default, i.e.
// OMP_NUM_THREADS or the core count), 1 in a process forked after threads_init.
int num_threads();
// The count asked for (what num_threads returns outside a forked child).
int requested_threads();
// 1 <= n <= kMaxThreads (the binding checks; here it is clamped).
void set_num_threads(int n);
// Whether this process is a fork child of the one that loaded the module.
bool in_forked_child();
// Reads the initial count and registers the fork handler (idempotent; the module init calls it).
void threads_init();

}  // namespace kgpt
