# Sourced by .ci/sanitize.sh, which reruns the tests that failed only by LeakSanitizer's
# tracer thread crashing ("Tracer caught signal 11 ...": a crash of the sanitizer, not a
# report; see there); tests/test_ci_scripts.py runs it on made-up logs.
# tracer_crashed_ids LOG: the ids of the failed tests in pytest's log LOG whose failure
# carries the tracer's message. pytest's short summary gives each failure a
# "FAILED <id> - <message>" line whose message may go on over further lines (a child's
# usage text first, the tracer's line after it), so a failure's text runs up to the next
# FAILED/ERROR line or the final count. Ids may hold spaces ("test_x[--epochs 0]"): an id
# ends at the first " - ". The summary shows only the line of the child's stderr that the
# test's assertion quoted: the tracer's own line, or (2026-12-07, test_mkl_runtime, which
# quoted the child's last line) one of the three LeakSanitizer prints after it (its fatal
# error, then two HINT lines). Any of the four marks the crash (tracer_crash); a leak
# report reads "ERROR: LeakSanitizer: detected memory leaks" instead, and sanitize.sh
# fails on it at once.
tracer_crash="Tracer caught signal|LeakSanitizer has encountered a fatal error"
tracer_crash+="|HINT: For debugging, try setting environment variable LSAN_OPTIONS"
tracer_crash+="|HINT: LeakSanitizer does not work under ptrace"
tracer_crashed_ids() {
    awk 'function flush() { if (id != "" && hit) print id; id = ""; hit = 0 }
         /^(FAILED|ERROR) / { flush(); s = substr($0, index($0, " ") + 1); i = index(s, " - ")
                              id = (i ? substr(s, 1, i - 1) : s); hit = ($0 ~ crash); next }
         /^[0-9]+ (failed|passed)|^=+ / { flush(); next }
         id != "" && $0 ~ crash { hit = 1 }
         END { flush() }' crash="$tracer_crash" "$1"
}
