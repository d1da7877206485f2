/* Forwarders from the CBLAS names MLX imports to scipy-openblas32's prefixed ones.
 * sweep.runtime.blas compiles this once per machine (cc -shared) into ~/.cache and loads it
 * into the global scope before mlx, so MLX's cblas_* calls reach OpenBLAS. The counter is
 * read by tests (sweep.runtime.blas.shim_calls) and costs one relaxed atomic add per call. */
typedef int blasint;
static unsigned long sgemm_calls;
unsigned long sweep_sgemm_calls(void) { return __atomic_load_n(&sgemm_calls, __ATOMIC_RELAXED); }
extern void scipy_cblas_sgemm(int, int, int, blasint, blasint, blasint, float, const float *,
    blasint, const float *, blasint, float, float *, blasint);
extern void scipy_cblas_dgemm(int, int, int, blasint, blasint, blasint, double, const double *,
    blasint, const double *, blasint, double, double *, blasint);
extern void scipy_cblas_cgemm(int, int, int, blasint, blasint, blasint, const void *,
    const void *, blasint, const void *, blasint, const void *, void *, blasint);
void cblas_sgemm(int o, int ta, int tb, blasint m, blasint n, blasint k, float alpha,
    const float *a, blasint lda, const float *b, blasint ldb, float beta, float *c, blasint ldc) {
  __atomic_fetch_add(&sgemm_calls, 1, __ATOMIC_RELAXED);
  scipy_cblas_sgemm(o, ta, tb, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc);
}
void cblas_dgemm(int o, int ta, int tb, blasint m, blasint n, blasint k, double alpha,
    const double *a, blasint lda, const double *b, blasint ldb, double beta, double *c,
    blasint ldc) {
  scipy_cblas_dgemm(o, ta, tb, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc);
}
void cblas_cgemm(int o, int ta, int tb, blasint m, blasint n, blasint k, const void *alpha,
    const void *a, blasint lda, const void *b, blasint ldb, const void *beta, void *c,
    blasint ldc) {
  scipy_cblas_cgemm(o, ta, tb, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc);
}
