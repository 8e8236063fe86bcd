#include "threads.hpp"

#include <fcntl.h>
#include <omp.h>
#include <pthread.h>
#include <sched.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cctype>
#include <cerrno>
#include <condition_variable>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <mutex>
#include <new>
#include <shared_mutex>
#include <system_error>
#include <thread>
#include <utility>
#include <vector>

#if defined(__SSE__)
#include <xmmintrin.h>
#endif

// Not in an MKL build: MKL's per-call thread setting on a libgomp thread would make that
// thread a root of MKL's OpenMP runtime, which a later fork handles badly (see
// before_fork). (The MKL loaded at run time for bfloat16 runs its sequential layer.)
#if defined(SIGLAYER_OPENMP_INTEL) && defined(__linux__)
#include <dlfcn.h>  // the borrowed pool, and libiomp5's registration (forget_registration)
#include <link.h>
#if !defined(SIGLAYER_BLAS_MKL)
#define SIGLAYER_BORROW_POOL 1
#endif
#endif

#include <chrono>
#include <stdexcept>

#if defined(SIGLAYER_OPENMP_INTEL)
// libiomp5's extension; declared here because GCC's omp.h is the header we compile with.
extern "C" {
void kmp_set_blocktime(int milliseconds);
int kmp_get_blocktime(void);
}
#endif

namespace siglayer::threads {

namespace {

// Shared by running regions, exclusive across a fork (see before_fork()). Replaced, not
// unlocked, in a child: glibc's rwlock records its writer by thread id, which the forking
// thread does not keep in the child, so an unlock there would be taken for a reader's.
std::atomic<std::shared_mutex*> regions_mutex{new std::shared_mutex};

std::shared_mutex& regions() {
    return *regions_mutex.load(std::memory_order_acquire);
}

// Set by the first region that may start worker threads, cleared when a fork released them.
std::atomic<bool> pool_started{false};

std::atomic<int> tiles{1};

// Whether the runtime recreates its pool in a forked child by itself (libiomp5 with
// KMP_INIT_AT_FORK not false, see init()). Then before_fork must not release the pool
// too: a pool released in a child of such a fork leaves a lock that libiomp5's own
// handler waits for at the next fork (a fork inside a forked worker hung).
bool runtime_handles_fork = false;

// The thread that imported siglayer (in a forked child: the thread that forked).
std::thread::id home_thread;

// Whether a thread other than the home thread and the leaders has called the OpenMP
// runtime through siglayer (max_threads, set_max_threads, in_parallel): it became a root
// thread of libiomp5, which a hard pause would leave broken (see serial()). Never cleared
// while the process lives: a thread that has ended is counted out by the runtime only in
// its last thread-specific destructors, after anything siglayer could run, and a fork in
// between crashed as a live one did; only a forked child, with one thread, starts afresh.
std::atomic<bool> other_roots{false};

// This process runs regions on one thread (see serial()); set in a child, inherited by
// its own children.
std::atomic<bool> serial_process{false};
// Set by before_fork when it could not release the pool: the child becomes serial.
std::atomic<bool> child_serial{false};

thread_local bool is_leader = false;
thread_local bool noted = false;

// Marks other_roots for a calling thread other than the home thread and the leaders, and
// makes its first runtime call (which registers it as a root) while holding off a fork:
// a fork then finds it either registered and marked, or not yet started (a review's
// stress test forked while a new thread's first call was registering: parent and child
// hung or crashed).
void note_caller() {
    if (noted) return;
    noted = true;
    if (is_leader || std::this_thread::get_id() == home_thread) return;
    std::shared_lock<std::shared_mutex> fork_lock(regions());
    other_roots.store(true, std::memory_order_relaxed);
    (void)omp_get_max_threads();
}

#if defined(SIGLAYER_OPENMP_INTEL)
// Read once: the environment is the user's, and their KMP_BLOCKTIME or OMP_WAIT_POLICY
// (PASSIVE: no spin, ACTIVE: spin for good, as the runtime reads them) wins over ours (a
// review found OMP_WAIT_POLICY=PASSIVE silently turned back into 1 ms).
// Only the values the runtime honours count: it ignores (with a warning) an empty or
// misspelt OMP_WAIT_POLICY and keeps its 200 ms, so siglayer's 1 ms stays then.
bool wait_policy_set() {
    const char* v = std::getenv("OMP_WAIT_POLICY");
    if (v == nullptr) return false;
    std::string s(v);
    for (char& c : s) c = static_cast<char>(std::toupper(static_cast<unsigned char>(c)));
    return s == "PASSIVE" || s == "ACTIVE";
}
// The variable that chose the block time, or null.
const char* const user_blocktime_variable = std::getenv("KMP_BLOCKTIME") ? "KMP_BLOCKTIME"
                                            : wait_policy_set()          ? "OMP_WAIT_POLICY"
                                                                         : nullptr;
#endif

// The block time is an ICV of the thread that leads a region.
void set_idle_spin() {
#if defined(SIGLAYER_OPENMP_INTEL)
    if (user_blocktime_variable == nullptr) kmp_set_blocktime(kIdleSpinMilliseconds);
#endif
}

// Bumped at every fork: the runtime's re-initialization in a child, and the hard pause
// before_fork() may make in the parent, reset every thread's block time, so each
// leading thread sets it again before its next region (a forked worker's idle threads
// spun for 200 ms after each call when it was set once per thread).
std::atomic<unsigned> spin_generation{0};

// Bumped when the teams' workers are gone: the pool released before a fork (the parent
// keeps its workers when the runtime handles the fork itself), and in every child.
std::atomic<unsigned> pool_generation{0};

void keep_idle_spin() {
    thread_local unsigned applied = ~0u;
    const unsigned now = spin_generation.load(std::memory_order_relaxed);
    if (applied != now) {
        set_idle_spin();
        applied = now;
    }
}

// A long-lived thread that leads the regions handed to it, one at a time, until stopped.
struct Leader {
    std::mutex mutex;
    std::condition_variable wake, finished;
    const std::function<void()>* job = nullptr;
    bool stopping = false;
    std::thread thread;

    void loop() {
        is_leader = true;
        std::unique_lock<std::mutex> lock(mutex);
        for (;;) {
            wake.wait(lock, [&] { return job != nullptr || stopping; });
            if (job == nullptr) return;  // stopping, with nothing left to run
            keep_idle_spin();
            (*job)();
            job = nullptr;
            finished.notify_one();
        }
    }

    void run(const std::function<void()>& region) {
        std::unique_lock<std::mutex> lock(mutex);
        job = &region;
        wake.notify_one();
        finished.wait(lock, [&] { return job == nullptr; });
    }

    // Ends the thread (idle: no region runs, see before_fork) and waits until it is gone,
    // its thread-local destructors run: the OpenMP runtime forgets it as a root thread.
    void stop() {
        {
            std::lock_guard<std::mutex> lock(mutex);
            stopping = true;
        }
        wake.notify_one();
        thread.join();
    }
};

struct Leaders {
    std::mutex mutex;
    std::vector<Leader*> idle;
    std::vector<Leader*> all;  // idle or running a region; owned here for the process's life
};
Leaders* leaders_ptr = new Leaders;

Leaders& leaders() {
    return *leaders_ptr;
}

// The borrowed pool (threads.hpp): libgomp's entry points, found in a libgomp loaded by
// someone else. Never freed: the library stays open for the process's life.
struct ForeignPool {
    void (*parallel)(void (*)(void*), void*, unsigned, unsigned) = nullptr;  // GOMP_parallel
    void (*barrier)() = nullptr;                                             // GOMP_barrier
    int (*thread_num)() = nullptr;                                           // omp_get_thread_num
    int (*num_threads)() = nullptr;                                          // omp_get_num_threads
    int (*max_threads)() = nullptr;                                          // omp_get_max_threads
    std::string path;
};
std::atomic<const ForeignPool*> foreign{nullptr};
enum class PoolSetting { own, auto_, shared };
std::atomic<PoolSetting> pool_setting{PoolSetting::auto_};
thread_local bool torch_caller = false;
// A forked child never borrows: a libgomp team its parent used has no threads here.
std::atomic<bool> forked_child{false};

// steady_clock nanoseconds: the clock of the borrowed pool's probe and the registration's look.
std::int64_t now_ns() {
    return std::chrono::duration_cast<std::chrono::nanoseconds>(
               std::chrono::steady_clock::now().time_since_epoch())
        .count();
}

// libiomp5's registration file (threads.hpp, forget_registration). The runtime writes it
// when it starts: at import; again at the first call after before_fork released the pool
// (runtime_released, until siglayer's next call into the runtime); and in a forked child,
// whose runtime its own fork handler resets (KMP_INIT_AT_FORK not false), at some later
// call, in our measurements the first parallel region (libiomp5 does not say). A child
// whose runtime is neither reset nor released goes on with its parent's, registered under
// the parent's pid, and never writes one. While `looking`, this process looks for its file
// after each region and, at most every kLookInterval, after its other calls into the
// runtime (a look that finds nothing costs two failed open()s), until it has removed it.
std::atomic<bool> forgetting{false};
std::atomic<bool> runtime_released{false};
std::atomic<bool> looking{false};
std::atomic<std::int64_t> next_look{0};  // now_ns()

#if defined(SIGLAYER_OPENMP_INTEL) && defined(__linux__)
constexpr std::int64_t kLookInterval = 10'000'000;

// Whether `address` lies in a writable segment of the libiomp5 loaded here: memory that can
// be read, unlike the gaps between its segments, which dladdr would accept too.
bool in_runtime_data(const void* address) {
    struct Query {
        std::uintptr_t address;
        bool found;
    } query{reinterpret_cast<std::uintptr_t>(address), false};
    dl_iterate_phdr(
        [](dl_phdr_info* info, size_t, void* data) {
            auto* q = static_cast<Query*>(data);
            if (info->dlpi_name == nullptr || std::strstr(info->dlpi_name, "libiomp5") == nullptr)
                return 0;
            for (int k = 0; k < info->dlpi_phnum; ++k) {
                const ElfW(Phdr) & segment = info->dlpi_phdr[k];
                if (segment.p_type != PT_LOAD || (segment.p_flags & PF_W) == 0) continue;
                const std::uintptr_t begin = info->dlpi_addr + segment.p_vaddr;
                if (q->address >= begin &&
                    q->address + sizeof(unsigned long) <= begin + segment.p_memsz)
                    q->found = true;
            }
            return q->found ? 1 : 0;
        },
        &query);
    return query.found;
}

// Whether the registration text `text` is this process's runtime's. libiomp5 writes
// "<address>-<value>-<library>": the address of a flag of its own and the value it gave
// that flag when it registered. It is ours when that address lies in the libiomp5 loaded
// here and holds that value, the test libiomp5 itself applies to a file it finds. A file
// of our pid that fails it is not ours: a dead process's, left before pids came round
// again (a forked child, until it registers, holds its parent's value, never a sibling's),
// or, where /dev/shm is shared across pid namespaces, a live one's; it is left alone.
bool registration_is_ours(const char* text) {
    void* address = nullptr;
    unsigned long value = 0;
    if (std::sscanf(text, "%p-%lx-", &address, &value) != 2 || !in_runtime_data(address))
        return false;
    return *static_cast<const volatile unsigned long*>(address) == value;
}

// Removes this process's registration file if the runtime has written it; whether it did.
bool remove_registration() {
    char name[96];
    std::snprintf(name, sizeof name, "__KMP_REGISTERED_LIB_%d_%d", static_cast<int>(getpid()),
                  static_cast<int>(getuid()));
    for (const char* folder : {"/dev/shm/", "/tmp/"}) {
        char path[128];
        std::snprintf(path, sizeof path, "%s%s", folder, name);
        const int fd = open(path, O_RDONLY | O_CLOEXEC);
        if (fd < 0) continue;
        char text[1025] = {};
        const ssize_t got = read(fd, text, sizeof text - 1);
        close(fd);
        if (got > 0 && registration_is_ours(text)) {
            unlink(path);
            return true;
        }
    }
    return false;
}
#endif

// Called after each call into the OpenMP runtime (after_region: a parallel region of ours):
// the runtime has started again if it was released, and a worker looks for its file.
void after_runtime_call(bool after_region) {
    if (runtime_released.load(std::memory_order_relaxed))
        runtime_released.store(false, std::memory_order_relaxed);  // it has started again
#if defined(SIGLAYER_OPENMP_INTEL) && defined(__linux__)
    if (!looking.load(std::memory_order_relaxed)) return;
    if (!after_region) {
        const std::int64_t now = now_ns();
        if (now < next_look.load(std::memory_order_relaxed)) return;
        next_look.store(now + kLookInterval, std::memory_order_relaxed);
    }
    if (remove_registration()) looking.store(false, std::memory_order_relaxed);
#else
    (void)after_region;
#endif
}

// Starts looking (at the next call, whatever the interval).
void look_for_registration() {
    next_look.store(0, std::memory_order_relaxed);
    looking.store(true, std::memory_order_relaxed);
}
std::mutex probe_mutex;
std::atomic<std::int64_t> next_probe{0};  // now_ns()
constexpr std::int64_t kProbeInterval = 100'000'000;

#if defined(SIGLAYER_BORROW_POOL)
template <class F>
bool symbol(void* library, const char* name, F& f) {
    f = reinterpret_cast<F>(dlsym(library, name));
    return f != nullptr;
}

// The libgomp loaded in the process, if any (by soname: PyTorch's torch/lib/libgomp.so.1),
// and not an LLVM or Intel runtime that answers to that name too.
const ForeignPool* find_libgomp() {
    void* library = dlopen("libgomp.so.1", RTLD_NOW | RTLD_NOLOAD);
    if (library == nullptr) return nullptr;
    auto pool = std::make_unique<ForeignPool>();
    if (dlsym(library, "kmp_set_blocktime") != nullptr ||
        !symbol(library, "GOMP_parallel", pool->parallel) ||
        !symbol(library, "GOMP_barrier", pool->barrier) ||
        !symbol(library, "omp_get_thread_num", pool->thread_num) ||
        !symbol(library, "omp_get_num_threads", pool->num_threads) ||
        !symbol(library, "omp_get_max_threads", pool->max_threads)) {
        dlclose(library);
        return nullptr;
    }
    Dl_info info;
    if (dladdr(reinterpret_cast<void*>(pool->parallel), &info) != 0 && info.dli_fname)
        pool->path = info.dli_fname;
    return pool.release();
}
#else
const ForeignPool* find_libgomp() {
    return nullptr;
}
#endif

// The borrowed pool once found; while none is, a new look at most every kProbeInterval.
const ForeignPool* foreign_pool() {
    if (const ForeignPool* pool = foreign.load(std::memory_order_acquire)) return pool;
    const std::int64_t now = now_ns();
    if (now < next_probe.load(std::memory_order_relaxed)) return nullptr;
    std::lock_guard<std::mutex> lock(probe_mutex);
    if (const ForeignPool* pool = foreign.load(std::memory_order_acquire)) return pool;
    const ForeignPool* pool = find_libgomp();
    if (pool != nullptr)
        foreign.store(pool, std::memory_order_release);
    else
        next_probe.store(now + kProbeInterval, std::memory_order_relaxed);
    return pool;
}

// The calling thread's team (TeamScope).
thread_local int team_rank_now = 0;
thread_local int team_threads_now = 1;
thread_local int team_loops = 0;
thread_local TeamKind team_kind = TeamKind::solo;

// take_last_region's record: -1 for none, else the kind in the low byte, the size above.
std::atomic<int> last_region{-1};

}  // namespace

bool borrowing(int size) {
    const PoolSetting setting = pool_setting.load(std::memory_order_relaxed);
    if (setting == PoolSetting::own || (setting == PoolSetting::auto_ && !torch_caller) ||
        forked_child.load(std::memory_order_relaxed))
        return false;
    if (is_leader || std::this_thread::get_id() != home_thread) return false;
    const ForeignPool* pool = foreign_pool();
    // Never more threads than the pool's owner gives its own teams on this thread
    // (torch.set_num_threads): no libgomp worker that PyTorch would not have started.
    return pool != nullptr && pool->max_threads() >= size;
}

void run_borrowed(int size, void (*fn)(void*), void* data) {
    foreign.load(std::memory_order_acquire)->parallel(fn, data, static_cast<unsigned>(size), 0);
}

std::string select_pool(const std::string& pool) {
    static constexpr std::pair<PoolSetting, const char*> kNames[] = {
        {PoolSetting::own, "own"}, {PoolSetting::auto_, "auto"}, {PoolSetting::shared, "shared"}};
    for (const auto& [setting, name] : kNames) {
        if (pool != name) continue;
        const PoolSetting before = pool_setting.exchange(setting, std::memory_order_relaxed);
        for (const auto& [old, old_name] : kNames)
            if (old == before) return old_name;
    }
    throw std::invalid_argument("the pool must be 'auto', 'shared' or 'own', got '" + pool + "'");
}

bool set_torch_caller(bool on) {
    const bool before = torch_caller;
    torch_caller = on;
    return before;
}

std::string pool_description() {
    const PoolSetting setting = pool_setting.load(std::memory_order_relaxed);
    if (setting == PoolSetting::own) return "own";
    const std::string name = setting == PoolSetting::auto_ ? "auto" : "shared";
    const std::string calls =
        setting == PoolSetting::auto_ ? "siglayer.torch's calls" : "every call";
#if !defined(SIGLAYER_BORROW_POOL)
    return name +
           ": own (this build never borrows: its runtime is not libiomp5 on Linux, or its BLAS is "
           "MKL)";
#else
    if (forked_child.load(std::memory_order_relaxed)) return name + ": own (a forked child)";
    const ForeignPool* pool = foreign_pool();
    return pool ? name + ": libgomp's pool (" + pool->path + ") for " + calls +
                      " on the importing thread"
                : name + ": own (no libgomp loaded)";
#endif
}

TeamScope::TeamScope(TeamKind kind)
    : rank_(team_rank_now), threads_(team_threads_now), loops_(team_loops), kind_(team_kind) {
    if (kind == TeamKind::borrowed) {
        const ForeignPool* pool = foreign.load(std::memory_order_acquire);
        team_rank_now = pool->thread_num();
        team_threads_now = pool->num_threads();
    } else if (kind == TeamKind::own) {
        team_rank_now = omp_get_thread_num();
        team_threads_now = omp_get_num_threads();
    } else {
        team_rank_now = 0;
        team_threads_now = 1;
    }
    team_loops = 0;
    team_kind = kind;
    if (team_rank_now == 0)
        last_region.store(static_cast<int>(kind) | team_threads_now << 8,
                          std::memory_order_relaxed);
}

std::string take_last_region() {
    const int last = last_region.exchange(-1, std::memory_order_relaxed);
    if (last < 0) return "none";
    const auto kind = static_cast<TeamKind>(last & 0xff);
    const char* name = kind == TeamKind::own        ? "own"
                       : kind == TeamKind::borrowed ? "borrowed"
                                                    : "solo";
    return std::string(name) + " " + std::to_string(last >> 8);
}

TeamScope::~TeamScope() {
    team_rank_now = rank_;
    team_threads_now = threads_;
    team_loops = loops_;
    team_kind = kind_;
}

int team_rank() {
    return team_rank_now;
}

int team_threads() {
    return team_threads_now;
}

void team_barrier() {
    if (team_threads_now <= 1) return;
    if (team_kind == TeamKind::borrowed) {
        foreign.load(std::memory_order_relaxed)->barrier();
        return;
    }
#pragma omp barrier
}

int next_loop() {
    return team_loops++;
}

#if defined(__SSE__)
unsigned fp_mode() {
    return _mm_getcsr() & ~0x3Fu;  // the mode, without the sticky exception flags
}
void set_fp_mode(unsigned mode) {
    _mm_setcsr((_mm_getcsr() & 0x3Fu) | mode);
}
#else
unsigned fp_mode() {
    return 0;
}
void set_fp_mode(unsigned) {}
#endif

void init() {
    home_thread = std::this_thread::get_id();
    // Also for a fork that does not pass through Python's os.fork (a C extension's own
    // fork(), which skips the os.register_at_fork hooks): a child never borrows. Only an
    // atomic store, as a handler in a child of a multi-threaded process must be.
    // It also makes the child remove its libiomp5 registration (forget_registration).
    pthread_atfork(nullptr, nullptr, [] {
        forked_child.store(true, std::memory_order_relaxed);
        forgetting.store(true, std::memory_order_relaxed);
        if (runtime_handles_fork || runtime_released.load(std::memory_order_relaxed))
            look_for_registration();
    });
#if defined(SIGLAYER_OPENMP_INTEL)
    // Initializes the runtime now, so that the KMP_INIT_AT_FORK it reads is the one read
    // here; it accepts these spellings of false (and any case).
    (void)omp_get_max_threads();
    std::string value = std::getenv("KMP_INIT_AT_FORK") ? std::getenv("KMP_INIT_AT_FORK") : "";
    for (char& c : value) c = char(std::tolower(static_cast<unsigned char>(c)));
    runtime_handles_fork =
        !(value == "0" || value == "f" || value == "false" || value == ".false." || value == "n" ||
          value == "no" || value == "off" || value == "disable" || value == "disabled");
#endif
}

void before_fork() {
    regions().lock();
    child_serial.store(false, std::memory_order_relaxed);
    if (runtime_handles_fork || !pool_started.load(std::memory_order_relaxed)) {
        spin_generation.fetch_add(1, std::memory_order_relaxed);  // in parent and child
        return;
    }
    // The pool can be released only when, once the leaders have ended, the forking thread
    // is the runtime's one root thread: the home thread (a root since init()), with no
    // other caller's thread ever. Otherwise the pool stays and the child is serial().
    if (other_roots.load(std::memory_order_relaxed) || std::this_thread::get_id() != home_thread) {
        child_serial.store(true, std::memory_order_relaxed);
        spin_generation.fetch_add(1, std::memory_order_relaxed);
        return;
    }
    // The leaders go first. Each is a root thread of the runtime (it has led a team); with
    // one alive, libiomp5's hard pause forgot only the calling thread yet left its cached
    // thread id, and its next OpenMP call, in the parent and in every child, crashed
    // (KMP_INIT_AT_FORK=FALSE, as joblib and scikit-learn set it, after a call from a
    // second thread). With the regions lock held exclusively every leader is idle; new
    // ones start on demand after the fork.
    {
        std::lock_guard<std::mutex> lock(leaders().mutex);
        for (Leader* leader : leaders().all) {
            leader->stop();
            delete leader;
        }
        leaders().all.clear();
        leaders().idle.clear();
    }
    pool_started.store(false, std::memory_order_relaxed);
    omp_pause_resource_all(omp_pause_hard);  // also unregisters: the next call registers again
    runtime_released.store(true, std::memory_order_relaxed);
    if (forgetting.load(std::memory_order_relaxed)) look_for_registration();
    pool_generation.fetch_add(1, std::memory_order_relaxed);  // in parent and child
    spin_generation.fetch_add(1, std::memory_order_relaxed);  // in parent and child
}

void after_fork_in_parent() {
    regions().unlock();
}

// The child has one thread, the one that forked: it becomes the home thread, the only one
// using the runtime. The old mutex is left behind, locked, and so are the leaders, whose
// threads the child lacks. A child of a fork that could not release the pool becomes
// serial, and its own children inherit that (the runtime's state they copy is the same).
void after_fork_in_child() {
    regions_mutex.store(new std::shared_mutex, std::memory_order_release);
    pool_generation.fetch_add(1, std::memory_order_relaxed);  // the child has no workers
    leaders_ptr = new Leaders;
    home_thread = std::this_thread::get_id();
    other_roots.store(false, std::memory_order_relaxed);
    noted = false;  // (forked_child: init's pthread_atfork handler, for every fork)
    if (child_serial.exchange(false, std::memory_order_relaxed)) {
        serial_process.store(true, std::memory_order_relaxed);
        pool_started.store(false, std::memory_order_relaxed);
    }
}

bool serial() {
    return serial_process.load(std::memory_order_relaxed);
}

int max_threads() {
    note_caller();
    const int n = serial() ? 1 : omp_get_max_threads();
    after_runtime_call(false);
    return n;
}

void set_max_threads(int n) {
    note_caller();
    omp_set_num_threads(n);
    after_runtime_call(false);
}

bool in_parallel() {
    note_caller();
    const bool inside = omp_in_parallel() != 0;
    after_runtime_call(false);
    return inside;
}

void forget_registration() {
    forgetting.store(true, std::memory_order_relaxed);
    look_for_registration();  // the runtime registered at import (init())
    after_runtime_call(false);
}

bool lead(const std::function<void()>& region) {
    std::shared_lock<std::shared_mutex> fork_lock(regions());
    pool_started.store(true, std::memory_order_relaxed);
    if (std::this_thread::get_id() == home_thread) {
        keep_idle_spin();
        region();
        after_runtime_call(true);
        return true;
    }
    Leader* leader = nullptr;
    {
        std::lock_guard<std::mutex> lock(leaders().mutex);
        if (!leaders().idle.empty()) {
            leader = leaders().idle.back();
            leaders().idle.pop_back();
        }
    }
    if (leader == nullptr) {
        auto fresh = std::make_unique<Leader>();
        try {
            std::lock_guard<std::mutex> lock(leaders().mutex);
            leaders().all.reserve(leaders().all.size() + 1);
            fresh->thread = std::thread(&Leader::loop, fresh.get());
            leader = fresh.release();  // owned by leaders().all (in a forked child: forgotten)
            leaders().all.push_back(leader);
        } catch (const std::system_error&) {
            return false;  // no thread to be had: the caller runs the region's work itself
        } catch (const std::bad_alloc&) {
            return false;
        }
    }
    leader->run(region);
    after_runtime_call(true);
    std::lock_guard<std::mutex> lock(leaders().mutex);
    leaders().idle.push_back(leader);
    return true;
}

namespace {

// A stand-in for a worker: it says who it is, then waits at the gate.
struct StandIn {
    pthread_mutex_t* gate = nullptr;
    pid_t tid = 0;  // written before the gate, read after the join
};

void* wait_at_gate(void* arg) {
    auto* self = static_cast<StandIn*>(arg);
    self->tid = static_cast<pid_t>(syscall(SYS_gettid));
    pthread_mutex_lock(self->gate);
    pthread_mutex_unlock(self->gate);
    return nullptr;
}

// How many threads could be started now (at most `count`), all alive at once; they are
// joined before this returns. Small stacks: this checks the process's and the user's
// thread limits (RLIMIT_NPROC, a container's pids limit), not its address space. (Under
// an address-space limit that leaves no room for a worker's stack, the BLAS ends the
// process at its next call anyway, for want of its buffers; and a worker-sized probe
// made it worse, its stack kept in glibc's cache of stacks.) Returns once the kernel has
// released them: pthread_join returns when a thread's id is cleared, a moment before the
// kernel gives back its count against those limits, and a worker started in that moment
// failed (2 in 20,000 tries at a limit with room for one, a helper's measurement).
// Throws nothing: it runs on a leader thread outside the region's exception handling.
int startable_threads(int count) noexcept {
    std::vector<pthread_t> started;
    std::vector<StandIn> stand_ins;
    try {
        started.reserve(static_cast<size_t>(count));
        stand_ins.resize(static_cast<size_t>(count));
    } catch (const std::bad_alloc&) {
        return 0;
    }
    pthread_attr_t attr;
    if (pthread_attr_init(&attr) != 0) return 0;
    pthread_attr_setstacksize(&attr, 64 << 10);
    pthread_mutex_t gate = PTHREAD_MUTEX_INITIALIZER;
    pthread_mutex_lock(&gate);
    for (StandIn& stand_in : stand_ins) {
        stand_in.gate = &gate;
        pthread_t thread;
        int failed = pthread_create(&thread, &attr, wait_at_gate, &stand_in);
        if (failed == EINVAL)  // a small stack cannot hold a large static TLS: the default
            failed = pthread_create(&thread, nullptr, wait_at_gate, &stand_in);
        if (failed) break;
        started.push_back(thread);
    }
    pthread_mutex_unlock(&gate);
    for (pthread_t thread : started) pthread_join(thread, nullptr);
    pthread_attr_destroy(&attr);
    const pid_t process = getpid();
    for (std::size_t i = 0; i < started.size(); ++i) {
        // Gone when signal 0 finds no such thread; bounded, in case the id is reused.
        for (int tries = 0; tries < 100000; ++tries) {
            if (syscall(SYS_tgkill, process, stand_ins[i].tid, 0) != 0 && errno == ESRCH) break;
            sched_yield();
        }
    }
    return static_cast<int>(started.size());
}

}  // namespace

int team_size(int wanted, bool borrowed) noexcept {
    // The largest team this thread has led since its workers were last released: they
    // exist, and only the rest of a larger team would be new threads. (The borrowed
    // pool's workers are never released by us: a fork makes a child that does not borrow.)
    thread_local unsigned generation = ~0u;
    thread_local int formed_own = 1, formed_borrowed = 1;
    int& formed = borrowed ? formed_borrowed : formed_own;
    const unsigned now = pool_generation.load(std::memory_order_relaxed);
    if (!borrowed && generation != now) {
        generation = now;
        formed = 1;
    }
    if (wanted > formed) formed += startable_threads(wanted - formed);
    return std::min(wanted, formed);
}

int tiles_per_thread() {
    return tiles.load(std::memory_order_relaxed);
}

void set_tiles_per_thread(int n) {
    tiles.store(n < 1 ? 1 : n, std::memory_order_relaxed);
}

std::string runtime_description() {
#if defined(SIGLAYER_OPENMP_INTEL)
    // These runtime calls make the calling thread a root of libiomp5, as any: noted
    // first (a thread that had only read show_config's _core.config() went unnoted, and a
    // child forked with KMP_INIT_AT_FORK=FALSE crashed in its first call; a review's find).
    note_caller();
    set_idle_spin();
    std::string description =
        "intel (libiomp5), idle spin " + std::to_string(kmp_get_blocktime()) + " ms" +
        (user_blocktime_variable ? std::string(" (") + user_blocktime_variable + ")" : "");
    after_runtime_call(false);
    return description;
#else
    return "compiler";
#endif
}

}  // namespace siglayer::threads
