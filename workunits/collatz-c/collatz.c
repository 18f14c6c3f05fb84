/* Example work unit in C: Collatz statistics over [start, end).
 *
 * Usage: collatz START END
 * Prints the number in the range with the longest trajectory and its
 * length, plus the total steps. Speaks Cobble's checkpoint and progress
 * protocol with plain file calls (workunits/README.md): no SDK needed.
 * Build: clang --target=wasm32-wasi --sysroot=/usr/share/wasi-sysroot -O2
 */
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>

#define CHECKPOINT_EVERY 100000u

struct state {
    uint64_t next;       /* first number not yet done */
    uint64_t best;       /* number with the longest trajectory so far */
    uint64_t best_steps;
    uint64_t total_steps;
    uint64_t resumes;    /* how often this unit resumed: proves checkpoints work */
};

/* Steps from n down to 1, counting 3n+1 and n/2 each as one step, as
 * the textbook loop `n = n odd ? 3n+1 : n/2` does, but taking them in
 * bigger strides: all the halvings of a run of trailing zeros at once,
 * and an odd step together with the halving that always follows it,
 * (3n+1)/2 = n + (n >> 1) + 1 for odd n. Same counts, a third of the
 * loop trips, and no multiplication on the dependency chain. */
static uint64_t trajectory(uint64_t n) {
    unsigned zeros = (unsigned)__builtin_ctzll(n);
    uint64_t steps = zeros;
    n >>= zeros;
    /* Unrolled: in wasm every loop trip pays a fuel check, which in a loop
     * this short is a quarter of its time; natively unrolling changes
     * nothing (workunits/README.md, "Fast units"). */
#pragma clang loop unroll_count(4)
    while (n != 1) {
        n = n + (n >> 1) + 1;
        zeros = (unsigned)__builtin_ctzll(n);
        n >>= zeros;
        steps += 2 + zeros;
    }
    return steps;
}

/* Atomic save: write beside, then rename over the old state. */
static void save(const struct state *s) {
    FILE *f = fopen("/checkpoint/state.partial", "wb");
    if (!f) return; /* no checkpoint directory offered: run straight through */
    int ok = fwrite(s, sizeof *s, 1, f) == 1;
    ok = (fclose(f) == 0) && ok;
    if (ok) rename("/checkpoint/state.partial", "/checkpoint/state");
}

static int load(struct state *s) {
    FILE *f = fopen("/checkpoint/state", "rb");
    if (!f) return 0;
    int ok = fread(s, sizeof *s, 1, f) == 1;
    fclose(f);
    return ok;
}

static void progress(double fraction) {
    FILE *f = fopen("/checkpoint/progress.partial", "w");
    if (!f) return;
    fprintf(f, "%.4f", fraction);
    if (fclose(f) == 0) rename("/checkpoint/progress.partial", "/checkpoint/progress");
}

int main(int argc, char **argv) {
    if (argc != 3) {
        fprintf(stderr, "usage: collatz START END\n");
        return 2;
    }
    uint64_t start = strtoull(argv[1], NULL, 10), end = strtoull(argv[2], NULL, 10);
    if (start < 1 || end <= start) {
        fprintf(stderr, "need 1 <= START < END\n");
        return 2;
    }
    struct state s = {start, start, 0, 0, 0};
    if (load(&s) && s.next >= start && s.next <= end) {
        s.resumes++;
        fprintf(stderr, "resumed at %" PRIu64 " (resume %" PRIu64 ")\n", s.next, s.resumes);
    } else {
        s = (struct state){start, start, 0, 0, 0};
    }
    for (; s.next < end; s.next++) {
        if (s.next > start && (s.next - start) % CHECKPOINT_EVERY == 0) {
            save(&s);
            progress((double)(s.next - start) / (double)(end - start));
        }
        uint64_t steps = trajectory(s.next);
        s.total_steps += steps;
        if (steps > s.best_steps) {
            s.best_steps = steps;
            s.best = s.next;
        }
    }
    progress(1.0);
    /* The result must not depend on resumes; that count goes to stderr only. */
    printf("longest trajectory in [%" PRIu64 ", %" PRIu64 "): %" PRIu64 " takes %" PRIu64
           " steps; %" PRIu64 " steps in all\n",
           start, end, s.best, s.best_steps, s.total_steps);
    fprintf(stderr, "resumes: %" PRIu64 "\n", s.resumes);
    return 0;
}
