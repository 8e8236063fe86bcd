#include "kernels.hpp"

#include <atomic>

#include "dtypes.hpp"

namespace siglayer::kernels {

// Each copy of kernels_isa.cpp defines table<T>() in its own namespace.
#define SIGLAYER_EXTERN_TABLE(T) extern template const Table<T>& table<T>();
#define SIGLAYER_DECLARE_ISA(isa)                  \
    namespace isa {                                \
    template <class T>                             \
    const Table<T>& table();                       \
    SIGLAYER_FOR_EACH_DTYPE(SIGLAYER_EXTERN_TABLE) \
    }
SIGLAYER_DECLARE_ISA(baseline)
#if defined(SIGLAYER_HAVE_X86_ISAS)
SIGLAYER_DECLARE_ISA(avx2)
SIGLAYER_DECLARE_ISA(avx512)
SIGLAYER_DECLARE_ISA(avx512bf16)
#endif
#undef SIGLAYER_DECLARE_ISA
#undef SIGLAYER_EXTERN_TABLE

namespace {

enum class Isa { baseline, avx2, avx512, avx512bf16 };

// Most preferred first.
constexpr Isa all_isas[] = {Isa::avx512bf16, Isa::avx512, Isa::avx2, Isa::baseline};

bool cpu_has(Isa isa) {
#if defined(SIGLAYER_HAVE_X86_ISAS)
    __builtin_cpu_init();
    switch (isa) {
        case Isa::avx512bf16:
            return cpu_has(Isa::avx512) && __builtin_cpu_supports("avx512bf16");
        case Isa::avx512:
            return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512dq") &&
                   __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512bw");
        case Isa::avx2:
            return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
        case Isa::baseline:
            return true;
    }
    return false;
#else
    return isa == Isa::baseline;
#endif
}

Isa best_isa() {
    for (Isa isa : all_isas)
        if (cpu_has(isa)) return isa;
    return Isa::baseline;
}

std::atomic<Isa> current{best_isa()};

const char* isa_name(Isa isa) {
    switch (isa) {
        case Isa::avx512bf16:
            return "avx512bf16";
        case Isa::avx512:
            return "avx512";
        case Isa::avx2:
            return "avx2";
        case Isa::baseline:
            return "baseline";
    }
    return "?";
}

template <class T>
struct Tables {
    const Table<T>& baseline_table = baseline::table<T>();
#if defined(SIGLAYER_HAVE_X86_ISAS)
    const Table<T>& avx2_table = avx2::table<T>();
    const Table<T>& avx512_table = avx512::table<T>();
    const Table<T>& avx512bf16_table = avx512bf16::table<T>();
#endif
    const Table<T>& get(Isa isa) const {
#if defined(SIGLAYER_HAVE_X86_ISAS)
        if (isa == Isa::avx512bf16) return avx512bf16_table;
        if (isa == Isa::avx512) return avx512_table;
        if (isa == Isa::avx2) return avx2_table;
#endif
        return baseline_table;
    }
};

}  // namespace

template <class T>
const Table<T>& active() {
    static const Tables<T> tables;
    return tables.get(current.load(std::memory_order_relaxed));
}

#define SIGLAYER_INSTANTIATE(T) template const Table<T>& active<T>();
SIGLAYER_FOR_EACH_DTYPE(SIGLAYER_INSTANTIATE)
#undef SIGLAYER_INSTANTIATE

std::string active_isa() {
    return isa_name(current.load());
}

std::string available_isas() {
    std::string names;
    for (Isa isa : all_isas) {
        if (!cpu_has(isa)) continue;
        if (!names.empty()) names += ",";
        names += isa_name(isa);
    }
    return names;
}

bool cpu_has_avx512bf16() {
    return cpu_has(Isa::avx512bf16);
}

void select_isa(const std::string& name) {
    for (Isa isa : all_isas) {
        if (name != isa_name(isa)) continue;
        if (!cpu_has(isa)) throw InvalidArgument("isa: this CPU cannot run '" + name + "'");
        current.store(isa);
        return;
    }
    throw InvalidArgument("isa: expected one of avx512bf16, avx512, avx2, baseline, got '" + name +
                          "'");
}

}  // namespace siglayer::kernels
