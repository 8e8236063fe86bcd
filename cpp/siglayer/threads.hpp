// How siglayer's OpenMP pool behaves in a process it shares with other libraries and
// with the processes it forks.
#pragma once

#include <functional>
#include <string>

namespace siglayer::threads {

// Milliseconds an idle worker of ours keeps spinning after a parallel region before it
// sleeps. Long enough that back-to-back siglayer calls (and backward's barrier) find the
// team awake; short enough that the next library's threads get both cores soon after.
// With the runtime's default (200 ms for libiomp5, ~300k pause loops for libgomp) the
// spinning workers halved NumPy's and PyTorch's next products on a 2-core machine.
constexpr int kIdleSpinMilliseconds = 1;

// Around a fork (the package calls these from os.register_at_fork hooks): before_fork
// waits until no siglayer region runs, then releases the OpenMP pool
// (omp_pause_resource_all(omp_pause_hard)); the after_fork functions let regions start
// again, each process with a fresh pool at its next region. Without this
// a child forked after a parallel region waits forever for worker threads that exist
// only in the parent: libgomp never recreates them, and libiomp5 does so only while
// KMP_INIT_AT_FORK is not FALSE, which scikit-learn's and joblib's imports set. (Not a
// pthread_atfork handler: libiomp5's own prepare handler, which runs first when it was
// registered last, holds the locks the pause needs.)
// init() runs once, at import, and decides whether before_fork needs to release the
// pool (libiomp5 recreates it in the child by itself unless KMP_INIT_AT_FORK is false).
// The pool is released only when no thread but the home one (forking) and siglayer's
// leaders (which before_fork ends first) has ever used the runtime; otherwise the child
// is serial().
void init();
void before_fork();
void after_fork_in_parent();
void after_fork_in_child();

// libiomp5 registers each process that starts it in a file named by its pid,
// /dev/shm/__KMP_REGISTERED_LIB_<pid>_<uid> (/tmp/... where /dev/shm is unusable), to catch
// a second OpenMP runtime in the process, and removes the file at exit from a destructor.
// A worker process that ends with _exit (every multiprocessing worker) or is killed
// (Pool.terminate, which `with Pool()` calls) runs none, and its file stayed in /dev/shm
// for good, 4 KB of shared memory each. So a worker removes its own file once the runtime
// has written it: every child forked after import (init's pthread_atfork handler, also for
// a fork made from C), and a process whose package calls forget_registration() (one that
// multiprocessing started by spawn or forkserver, or torchrun). It looks after its calls
// into the runtime until it finds the file (threads.cpp says when), and removes only a
// file whose text is its runtime's registration, never another process's. What such a
// worker gives up is only the runtime's check for a second OpenMP runtime loaded later in
// it. The main process keeps its file, removed at its exit.
void forget_registration();

// The OpenMP runtime's per-thread queries and setting, on the calling thread
// (omp_get_max_threads, omp_set_num_threads, omp_in_parallel). siglayer calls the runtime
// on a caller's thread only through these, so that it knows which threads the runtime has
// taken as root threads (see before_fork); in a serial process (below) max_threads is 1.
int max_threads();
void set_max_threads(int n);
bool in_parallel();

// Whether this process runs every region on the calling thread alone, with no team: a
// child forked, while libiomp5 does not recreate its pool in children (KMP_INIT_AT_FORK
// false), at a moment the pool could not be released safely: another thread than the
// home one had used the runtime (libiomp5's hard pause forgets only the calling root
// thread, and the next call of the other roots, in the parent and in the child,
// crashed), or the fork came from another thread. Such a child computes on one thread;
// the parent keeps its pool.
bool serial();

// Runs region(), code that opens one OpenMP parallel region, while holding off a fork
// (see before_fork). The region is led by a thread whose team lives as long as the
// process: the thread that imported siglayer runs it itself; any other calling thread
// hands it to one of a few long-lived leader threads (one per concurrent caller) and
// waits. libiomp5 keeps the team of every thread that ever led a region until the
// process ends, so short-lived calling threads would each leave an idle worker behind.
// The leading thread's idle spin is set unless the user chose one (KMP_BLOCKTIME,
// OMP_WAIT_POLICY).
// False, without running region, when a leader was needed and no thread could be
// started (the process is at its thread or address-space limit): the caller then does
// the region's work itself, on one thread.
bool lead(const std::function<void()>& region);

// The size of the team the calling thread (a region's leader) can have, at most
// `wanted`: `wanted` when it led a team that large before (since its workers were last
// released: a fork), else its largest team so far plus the threads that could be
// started now, all of them alive at once. The OpenMP runtimes end the
// process when they cannot start a worker (libiomp5: "OMP: Error #34", libgomp: "Thread
// creation failed"), so a region that needs new workers first checks that they can be
// had under the process's thread limits and, when not, runs with the threads it can
// have (down to one), and checks again at its next region. A check, not a reservation:
// another thread of the process may take the room in between; and it counts the teams
// it asked for, while a runtime may form a smaller one (OMP_DYNAMIC) or lend a shrunk
// team's workers to another thread's team (libiomp5), and need new threads later.
// The borrowed pool's teams are counted apart from siglayer's own (borrowed).
int team_size(int wanted, bool borrowed = false) noexcept;

// Another library's OpenMP pool, borrowed. PyTorch's CPU wheels run their operators on
// GCC's libgomp, whose idle workers spin for milliseconds after each operator; a siglayer
// region on its own pool (libiomp5) right after one found a core taken and took up to
// twice its time (docs/reliability.md, "Threads beside other libraries"). Where a libgomp
// other than siglayer's own runtime is loaded in the process (PyTorch's, found by its
// soname, libgomp.so.1), a region started on the home thread can run on that thread's
// libgomp team instead: the workers PyTorch just used, still awake, and no third thread
// for two cores. But libgomp's workers spin for milliseconds after our region too, and
// its barriers do not yield: a NumPy product right after such a region, or a region right
// after NumPy's (whose OpenBLAS thread spins for 0.1 s), took up to 4.6x and 12x the time
// they took with siglayer's own pool (M float32, Zen 5). So the setting (SIGLAYER_POOL,
// select_pool):
//   "auto" (the default): borrow for the calls siglayer.torch's operators make (the
//       thread's torch_caller flag), whose neighbours are PyTorch's operators;
//   "shared": borrow for every region of the home thread;
//   "own": never borrow.
// Regions led by other threads, and every region in a forked child (whose libgomp team, if
// the parent used one, exists only in the parent; any fork, also one that skips Python's
// hooks), keep siglayer's own pool. Builds whose own runtime is libgomp ("compiler")
// share one with PyTorch already, and MKL builds (MKL's thread setting on a libgomp
// thread) never borrow.
// Only for a team no larger than the one the pool's owner gives itself on this thread
// (libgomp's omp_get_max_threads: torch.set_num_threads), so that siglayer does not start
// more libgomp workers than PyTorch would (libgomp is not fork-safe: in a forked child, a
// region waits forever for its parent's workers); a larger team runs on siglayer's own
// pool, as many threads as asked.
// borrowing(size): whether the calling thread's next region, of `size` threads, runs on
// the borrowed pool (rechecked for a newly loaded libgomp at most every 100 ms while none
// is found). run_borrowed(size, fn, data): fn(data) on a team of `size` threads of it.
bool borrowing(int size);
void run_borrowed(int size, void (*fn)(void*), void* data);
// Returns the setting it replaces; anything but "auto", "shared" or "own":
// std::invalid_argument, the setting unchanged.
std::string select_pool(const std::string& pool);
// The setting and what it does now, e.g. "auto: libgomp's pool (<path>) for siglayer.torch".
std::string pool_description();
// Marks the calling thread's calls as made by siglayer.torch's operators (or no more);
// returns the mark it had.
bool set_torch_caller(bool on);
// For the tests: the kind and size of the team of the last region any thread started
// ("own 2", "borrowed 2", "solo 1"; "none" if none since the last call), then "none".
std::string take_last_region();

// The team the calling thread computes in: set on each thread of a region by a
// TeamScope (run_parallel), from the runtime that formed it; rank 0 of 1 outside one.
// team_barrier() waits for the whole team (nothing with a team of one).
// next_loop(): the index of the calling thread's next worksharing loop in this region,
// the same on every thread for the same loop (for_each_tile's shared counters).
int team_rank();
int team_threads();
void team_barrier();
int next_loop();
enum class TeamKind {
    own,       // a team of siglayer's own runtime
    borrowed,  // a team of the borrowed pool (run_borrowed)
    solo,      // the caller alone, in a region nested in someone else's
};
class TeamScope {
public:
    explicit TeamScope(TeamKind kind);
    ~TeamScope();
    TeamScope(const TeamScope&) = delete;
    TeamScope& operator=(const TeamScope&) = delete;

private:
    int rank_, threads_, loops_;
    TeamKind kind_;
};

// Tiles of each product per thread of the team (partition.hpp); settable for the
// benchmarks. One (the default): each thread takes one tile, or both when the other
// thread starts late. More let a thread take over the work of one slowed by another
// library's spinning pool, but each tile is a BLAS call that packs its operands again:
// on the Zen 3 machine 2 and 4 tiles per thread made fwd+bwd 5-11 % and 10-18 % slower
// alone (M, L, N), and did not help beside NumPy, whose spinning thread leaves both of
// ours on one core (docs/reliability.md, "Threads beside other libraries").
int tiles_per_thread();
void set_tiles_per_thread(int tiles);

// The calling thread's floating-point mode (SSE control: flush-to-zero,
// denormals-are-zero, rounding; not the sticky exception flags), and setting it.
// run_parallel (partition.hpp) gives every thread of a region its caller's mode, and
// each its own back when the region ends (the pool's threads also run other libraries'
// regions, MKL's GNU threading layer among them): a
// region computes as a call on the caller's own thread does, on one thread or two, with
// either OpenMP runtime (libgomp's workers keep whatever mode they had), and a mode
// another thread set (PyTorch's set_flush_denormal) never leaks into this call.
unsigned fp_mode();
void set_fp_mode(unsigned mode);

// "intel (libiomp5), idle spin 1 ms", or "compiler" for the compiler's own runtime.
std::string runtime_description();

}  // namespace siglayer::threads
