/* Maps C functions over arrays in shmpool's worker processes.
 *
 *   cc -o map examples/c/map.c -Iinclude target/release/libshmpool.a -lpthread -ldl -lm
 *   ./map
 *
 * (or link target/release/libshmpool.so with -Ltarget/release -lshmpool). */
#include <shmpool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* out = in * in + ctx->offset */
struct params { double offset; };
static void square_plus(const void *in, void *out, const void *ctx) {
    const struct params *p = ctx;
    double x = *(const double *)in;
    *(double *)out = x * x + p->offset;
}

static double half(double x) { return x / 2.0; }

static void cube(const void *in, void *out, const void *ctx) {
    (void)ctx;
    long x = *(const long *)in;
    *(long *)out = x * x * x;
}

/* A C function that crashes its worker (a real invalid write). */
static void crash(const void *in, void *out, const void *ctx) {
    (void)in; (void)out; (void)ctx;
    *(volatile int *)8 = 1;
}

int main(void) {
    shmpool_init(); /* first thing: spawned workers take their role here */

    shmpool_options opt = shmpool_options_default();
    opt.processes = 2;
    const char *method = getenv("SHMPOOL_C_EXAMPLE_START"); /* fork (default), forkserver or spawn */
    if (method && strcmp(method, "forkserver") == 0) opt.start_method = SHMPOOL_START_FORKSERVER;
    if (method && strcmp(method, "spawn") == 0) opt.start_method = SHMPOOL_START_SPAWN;
    shmpool_pool *pool = shmpool_pool_new(&opt);
    if (!pool) {
        fprintf(stderr, "shmpool_pool_new: %s\n", shmpool_last_error());
        return 1;
    }
    printf("%zu processes\n", shmpool_processes(pool));

    size_t n = 1000000;
    double *in = malloc(n * sizeof(double)), *out = malloc(n * sizeof(double));
    for (size_t i = 0; i < n; i++) in[i] = (double)i;

    struct params p = { 0.5 };
    int rc = shmpool_map(pool, square_plus, in, sizeof(double), out, sizeof(double), n, 0, &p, sizeof p);
    printf("map: %s, out[3] = %.1f, out[999999] = %.1f\n", rc == SHMPOOL_OK ? "ok" : shmpool_last_error(),
           out[3], out[n - 1]);

    rc = shmpool_map_f64(pool, half, in, out, n);
    printf("map_f64: %s, out[7] = %.1f\n", rc == SHMPOOL_OK ? "ok" : shmpool_last_error(), out[7]);

    long a = 12, b = 0;
    rc = shmpool_apply(pool, cube, &a, sizeof a, &b, sizeof b);
    printf("apply: %s, %ld\n", rc == SHMPOOL_OK ? "ok" : shmpool_last_error(), b);

    rc = shmpool_apply(pool, crash, &a, sizeof a, &b, sizeof b);
    printf("crash: %s\n", rc == SHMPOOL_WORKER_DIED ? "SHMPOOL_WORKER_DIED" : "unexpected");

    rc = shmpool_map_f64(pool, half, in, out, n);
    printf("after the crash: %s, out[9] = %.1f\n", rc == SHMPOOL_OK ? "ok" : shmpool_last_error(), out[9]);

    rc = shmpool_map(pool, NULL, in, sizeof(double), out, sizeof(double), n, 0, NULL, 0);
    printf("a NULL function: %s\n", rc == SHMPOOL_INVALID ? "SHMPOOL_INVALID" : "unexpected");

    shmpool_pool_free(pool);
    free(in);
    free(out);
    return 0;
}
