/* fp32 kernels for the decode path on x86-64 CPUs, built and loaded by cpu_ops.py: linear layers,
 * RMSNorm, decode attention over the paged cache, RoPE with the cache write, silu(gate)*up and
 * the LoRA of decode steps.
 *
 * The kernels are written once against a 16-lane vector layer (below): on a CPU with AVX-512F a
 * vector is one zmm register and a mask one __mmask16; on one with AVX2 and FMA (no AVX-512) a
 * vector is a pair of ymm registers and a mask the count of leading lanes it keeps (every mask
 * the kernels use is a prefix of the lanes). The tile sizes that set how many vectors a loop
 * keeps in registers (MR, NV, K1, PV_H, PV_C, LU) follow the ISA: 32 registers for AVX-512, 16 for
 * AVX2.
 *
 *     y[m, n] = x[m, k] . W[n, k]^T (+ bias[n]) (+ res[m, n])
 *
 * W is stored in panels of 32 output features: wp[p][i][j] = W[32p + j][i] for p < ceil(n/32),
 * zero past n. Every k-step of a panel is then 128 contiguous bytes (two 16-lane vectors), and a
 * whole panel is one sequential stream, so a decode step with one row reads the weights at
 * close to the memory's streaming rate, and a many-row step keeps a panel (k x 128 bytes) in L2
 * while MR rows at a time are multiplied against it (MR NV accumulators, x broadcast per k-step).
 * Work is split over OpenMP threads by (MC-row chunk, panel, MR-row block), chunk-major.
 */
#include <immintrin.h>
#include <math.h>
#include <stdint.h>
#ifdef _OPENMP
#include <omp.h>
#endif

/* e^x, both vector layers: x = n ln2 + r with |r| <= ln2/2 (ln2 split in two for precision), e^r
 * by its Taylor polynomial to degree 7 (relative error under 1e-8 there), times 2^n. Lanes below
 * EXP_LO come out 0. */
#define EXP_LO -87.3f
#define EXP_LOG2E 1.44269504088896341f
#define EXP_LN2_HI 0.693145751953125f
#define EXP_LN2_LO 1.428606765330187045e-06f
static const float EXP_TAYLOR[8] = {1.0f / 5040.0f, 1.0f / 720.0f, 1.0f / 120.0f, 1.0f / 24.0f,
                                    1.0f / 6.0f,    0.5f,           1.0f,           1.0f};

#if defined(__AVX512F__)

#define ISA 2
#define MR 8   /* rows per linear tile ... */
#define NV 2   /* ... times 16-column vectors per row: 16 accumulators */
#define K1 4   /* k-steps in flight for one row */
#define PV_H 4 /* attention P.V: heads x 16-lane chunks of d held in registers */
#define PV_C 4
#define LU 4   /* LoRA shrink: ranks reduced together */

typedef __m512 vf;
typedef __mmask16 vm;
static inline vf v_zero(void) { return _mm512_setzero_ps(); }
static inline vf v_set1(float a) { return _mm512_set1_ps(a); }
static inline vf v_load(const float* p) { return _mm512_loadu_ps(p); }
static inline vm v_tail(int64_t left) {
  return left >= 16 ? (vm)0xFFFF : left <= 0 ? (vm)0 : (vm)((1u << left) - 1);
}
static inline vf v_loadm(vm m, const float* p) { return _mm512_maskz_loadu_ps(m, p); }
static inline vf v_loadm_or(vf src, vm m, const float* p) { return _mm512_mask_loadu_ps(src, m, p); }
static inline void v_storem(float* p, vm m, vf a) { _mm512_mask_storeu_ps(p, m, a); }
static inline vf v_add(vf a, vf b) { return _mm512_add_ps(a, b); }
static inline vf v_sub(vf a, vf b) { return _mm512_sub_ps(a, b); }
static inline vf v_mul(vf a, vf b) { return _mm512_mul_ps(a, b); }
static inline vf v_div(vf a, vf b) { return _mm512_div_ps(a, b); }
static inline vf v_max(vf a, vf b) { return _mm512_max_ps(a, b); }
static inline vf v_fma(vf a, vf b, vf c) { return _mm512_fmadd_ps(a, b, c); }  /* a b + c */
static inline vf v_keep(vm m, vf a) { return _mm512_maskz_mov_ps(m, a); }     /* zero past the mask */
static inline float v_sum(vf a) { return _mm512_reduce_add_ps(a); }
static inline float v_hmax(vf a) { return _mm512_reduce_max_ps(a); }

/* The sums of four vectors' lanes, as one 4-lane vector (a, b, c, d). */
static inline __m128 v_sum4(vf a, vf b, vf c, vf d) {
  __m512 ab = _mm512_add_ps(_mm512_unpacklo_ps(a, b), _mm512_unpackhi_ps(a, b));   /* a0+a2 b0+b2 a1+a3 b1+b3 per 128 */
  __m512 cd = _mm512_add_ps(_mm512_unpacklo_ps(c, d), _mm512_unpackhi_ps(c, d));
  __m512 abcd = _mm512_add_ps(_mm512_shuffle_ps(ab, cd, _MM_SHUFFLE(1, 0, 1, 0)),
                              _mm512_shuffle_ps(ab, cd, _MM_SHUFFLE(3, 2, 3, 2)));  /* a b c d per 128-bit lane */
  __m512 half = _mm512_add_ps(abcd, _mm512_shuffle_f32x4(abcd, abcd, _MM_SHUFFLE(1, 0, 3, 2)));
  __m512 all = _mm512_add_ps(half, _mm512_shuffle_f32x4(half, half, _MM_SHUFFLE(2, 3, 0, 1)));
  return _mm512_castps512_ps128(all);
}

/* e^x (see EXP_TAYLOR): 2^n by scalef, which saturates to inf. */
static inline vf v_exp(vf x) {
  const __m512 lo = _mm512_set1_ps(EXP_LO);
  __mmask16 tiny = _mm512_cmp_ps_mask(x, lo, _CMP_LT_OQ);
  x = _mm512_max_ps(x, lo);
  __m512 n = _mm512_roundscale_ps(_mm512_mul_ps(x, _mm512_set1_ps(EXP_LOG2E)),
                                  _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  __m512 r = _mm512_fnmadd_ps(n, _mm512_set1_ps(EXP_LN2_HI), x);
  r = _mm512_fnmadd_ps(n, _mm512_set1_ps(EXP_LN2_LO), r);
  __m512 p = _mm512_set1_ps(EXP_TAYLOR[0]);
#pragma GCC unroll 8
  for (int i = 1; i < 8; i++) p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(EXP_TAYLOR[i]));
  return _mm512_maskz_mov_ps((__mmask16)~tiny, _mm512_scalef_ps(p, n));
}

#elif defined(__AVX2__) && defined(__FMA__)

#define ISA 1
#define MR 6
#define NV 1
#define K1 2
#define PV_H 2
#define PV_C 2
#define LU 1

typedef struct { __m256 l, h; } vf;
typedef int vm; /* lanes 0 ... vm-1 are kept (0 to 16) */
static inline vf v_zero(void) { vf r = {_mm256_setzero_ps(), _mm256_setzero_ps()}; return r; }
static inline vf v_set1(float a) { vf r = {_mm256_set1_ps(a), _mm256_set1_ps(a)}; return r; }
static inline vf v_load(const float* p) { vf r = {_mm256_loadu_ps(p), _mm256_loadu_ps(p + 8)}; return r; }
static inline vm v_tail(int64_t left) { return left >= 16 ? 16 : left <= 0 ? 0 : (int)left; }
static inline __m256i lanes8(int n) {   /* all-ones in lanes 0 ... n-1 of eight */
  return _mm256_cmpgt_epi32(_mm256_set1_epi32(n), _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
}
static inline vf v_loadm(vm m, const float* p) {
  if (m >= 16) return v_load(p);
  vf r;
  r.l = m >= 8 ? _mm256_loadu_ps(p) : _mm256_maskload_ps(p, lanes8(m));
  r.h = m > 8 ? _mm256_maskload_ps(p + 8, lanes8(m - 8)) : _mm256_setzero_ps();
  return r;
}
static inline vf v_keep(vm m, vf a) {
  if (m >= 16) return a;
  vf r = {_mm256_and_ps(a.l, _mm256_castsi256_ps(lanes8(m))), _mm256_and_ps(a.h, _mm256_castsi256_ps(lanes8(m - 8)))};
  return r;
}
static inline vf v_loadm_or(vf src, vm m, const float* p) {
  if (m >= 16) return v_load(p);
  __m256 kl = _mm256_castsi256_ps(lanes8(m)), kh = _mm256_castsi256_ps(lanes8(m - 8));
  vf v = v_loadm(m, p);
  vf r = {_mm256_blendv_ps(src.l, v.l, kl), _mm256_blendv_ps(src.h, v.h, kh)};
  return r;
}
static inline void v_storem(float* p, vm m, vf a) {
  if (m >= 16) {
    _mm256_storeu_ps(p, a.l);
    _mm256_storeu_ps(p + 8, a.h);
    return;
  }
  if (m >= 8) _mm256_storeu_ps(p, a.l);
  else if (m > 0) _mm256_maskstore_ps(p, lanes8(m), a.l);
  if (m > 8) _mm256_maskstore_ps(p + 8, lanes8(m - 8), a.h);
}
#define V_BINARY(name, op) \
  static inline vf name(vf a, vf b) { vf r = {op(a.l, b.l), op(a.h, b.h)}; return r; }
V_BINARY(v_add, _mm256_add_ps)
V_BINARY(v_sub, _mm256_sub_ps)
V_BINARY(v_mul, _mm256_mul_ps)
V_BINARY(v_div, _mm256_div_ps)
V_BINARY(v_max, _mm256_max_ps)
static inline vf v_fma(vf a, vf b, vf c) {
  vf r = {_mm256_fmadd_ps(a.l, b.l, c.l), _mm256_fmadd_ps(a.h, b.h, c.h)};
  return r;
}
static inline __m128 sum8x4(__m256 a, __m256 b, __m256 c, __m256 d) {
  __m256 ab = _mm256_add_ps(_mm256_unpacklo_ps(a, b), _mm256_unpackhi_ps(a, b));
  __m256 cd = _mm256_add_ps(_mm256_unpacklo_ps(c, d), _mm256_unpackhi_ps(c, d));
  __m256 abcd = _mm256_add_ps(_mm256_shuffle_ps(ab, cd, _MM_SHUFFLE(1, 0, 1, 0)),
                              _mm256_shuffle_ps(ab, cd, _MM_SHUFFLE(3, 2, 3, 2)));  /* a b c d per 128-bit lane */
  return _mm_add_ps(_mm256_castps256_ps128(abcd), _mm256_extractf128_ps(abcd, 1));
}
static inline __m128 v_sum4(vf a, vf b, vf c, vf d) {
  return sum8x4(_mm256_add_ps(a.l, a.h), _mm256_add_ps(b.l, b.h), _mm256_add_ps(c.l, c.h), _mm256_add_ps(d.l, d.h));
}
/* A horizontal reduction of 16 lanes by op (add or max), halving the width each time. */
#define V_REDUCE(name, op256, op128, opss)                                        \
  static inline float name(vf a) {                                                \
    __m256 s = op256(a.l, a.h);                                                   \
    __m128 q = op128(_mm256_castps256_ps128(s), _mm256_extractf128_ps(s, 1));     \
    q = op128(q, _mm_movehl_ps(q, q));                                            \
    return _mm_cvtss_f32(opss(q, _mm_movehdup_ps(q)));                            \
  }
V_REDUCE(v_sum, _mm256_add_ps, _mm_add_ps, _mm_add_ss)
V_REDUCE(v_hmax, _mm256_max_ps, _mm_max_ps, _mm_max_ss)

/* e^x for 8 lanes (see EXP_TAYLOR): 2^n built in two exponent-field halves (2^(n>>1) 2^(n - (n>>1))),
 * so that n = 128 and above saturate to inf as scalef does; x is capped at 100 (e^100 is already
 * inf in fp32) before the conversion to an integer. */
static inline __m256 exp8(__m256 x) {
  const __m256 lo = _mm256_set1_ps(EXP_LO);
  __m256 tiny = _mm256_cmp_ps(x, lo, _CMP_LT_OQ);
  x = _mm256_min_ps(_mm256_max_ps(x, lo), _mm256_set1_ps(100.0f));
  __m256 n = _mm256_round_ps(_mm256_mul_ps(x, _mm256_set1_ps(EXP_LOG2E)), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  __m256 r = _mm256_fnmadd_ps(n, _mm256_set1_ps(EXP_LN2_HI), x);
  r = _mm256_fnmadd_ps(n, _mm256_set1_ps(EXP_LN2_LO), r);
  __m256 p = _mm256_set1_ps(EXP_TAYLOR[0]);
#pragma GCC unroll 8
  for (int i = 1; i < 8; i++) p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(EXP_TAYLOR[i]));
  __m256i ni = _mm256_cvtps_epi32(n), h1 = _mm256_srai_epi32(ni, 1), h2 = _mm256_sub_epi32(ni, h1);
  const __m256i bias = _mm256_set1_epi32(127);
  __m256 e1 = _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_add_epi32(h1, bias), 23));
  __m256 e2 = _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_add_epi32(h2, bias), 23));
  return _mm256_andnot_ps(tiny, _mm256_mul_ps(_mm256_mul_ps(p, e1), e2));
}
static inline vf v_exp(vf x) { vf r = {exp8(x.l), exp8(x.h)}; return r; }

#else
#error "cpu_ops.c needs AVX-512F, or AVX2 with FMA"
#endif

#define NR 32
#define MC (8 * MR)

/* Below this many multiply-adds (or elements) a call runs on one thread: waking a second one
 * costs more than it saves, and an idle OpenMP thread spins after each parallel region, which
 * takes CPU from the other replicas and processes of a small host. */
#define PAR_WORK ((int64_t)1 << 18)
static inline int team(int64_t work, int nthreads) { return work >= PAR_WORK ? nthreads : 1; }

/* One 16-column vector of an output row: the columns the mask keeps, optional bias and residual
 * (masked loads never touch memory past the valid columns). */
static inline __attribute__((always_inline)) void store_vec(vf a, float* y, const float* bias, const float* res,
                                                            vm m) {
  if (bias) a = v_add(a, v_loadm(m, bias));
  if (res) a = v_add(a, v_loadm(m, res));
  v_storem(y, m, a);
}

/* One row against one panel, K1 k-steps in flight (one row alone would otherwise wait on the
 * FMA latency of a single accumulator pair). */
static void tile1(const float* x, const float* wp, int64_t k, float* y, const float* bias, const float* res, int c) {
  vf a0[K1], a1[K1];
#pragma GCC unroll 4
  for (int u = 0; u < K1; u++) {
    a0[u] = v_zero();
    a1[u] = v_zero();
  }
  int64_t i = 0;
  for (; i + K1 <= k; i += K1) {
    const float* w = wp + i * NR;
#pragma GCC unroll 4
    for (int u = 0; u < K1; u++) {
      vf xb = v_set1(x[i + u]);
      a0[u] = v_fma(v_load(w + u * NR), xb, a0[u]);
      a1[u] = v_fma(v_load(w + u * NR + 16), xb, a1[u]);
    }
  }
  for (; i < k; i++) {
    a0[0] = v_fma(v_load(wp + i * NR), v_set1(x[i]), a0[0]);
    a1[0] = v_fma(v_load(wp + i * NR + 16), v_set1(x[i]), a1[0]);
  }
#if K1 == 4
  a0[0] = v_add(v_add(a0[0], a0[1]), v_add(a0[2], a0[3]));
  a1[0] = v_add(v_add(a1[0], a1[1]), v_add(a1[2], a1[3]));
#else
  a0[0] = v_add(a0[0], a0[1]);
  a1[0] = v_add(a1[0], a1[1]);
#endif
  store_vec(a0[0], y, bias, res, v_tail(c));
  store_vec(a1[0], y + 16, bias ? bias + 16 : 0, res ? res + 16 : 0, v_tail(c - 16));
}

/* R rows (2 <= R <= MR, a constant once inlined) against one panel, NV of its two 16-column
 * halves per pass (AVX-512: both at once; AVX2: one half at a time, so that 6 rows' accumulators,
 * the weights and a broadcast fit the 16 ymm registers). */
static inline __attribute__((always_inline)) void tile(const int R, const float* x, int64_t ldx, const float* wp,
                                                       int64_t k, float* y, int64_t ldy, const float* bias,
                                                       const float* res, int64_t ldr, int c, const float* pf,
                                                       int64_t pfj, int64_t pfp) {
  for (int half = 0; half < 2 && 16 * half < c; half += NV) {
    vf acc[MR][NV];
#pragma GCC unroll 8
    for (int r = 0; r < R; r++)
#pragma GCC unroll 2
      for (int v = 0; v < NV; v++) acc[r][v] = v_zero();
    const float* w = wp + 16 * half;
    int64_t ph = pfj * 2 / NV + half / NV;      /* this pass's share of the next panel's k-rows */
    int64_t next_pf = pf ? ph : k;
    for (int64_t i = 0; i < k; i++) {
      if (i == next_pf) {              /* every pfp-th k-row of the next panel, into L2 */
        __builtin_prefetch(pf + i * NR, 0, 2);
        __builtin_prefetch(pf + i * NR + 16, 0, 2);
        next_pf += pfp;
      }
      vf wv[NV];
#pragma GCC unroll 2
      for (int v = 0; v < NV; v++) wv[v] = v_load(w + i * NR + 16 * v);
#pragma GCC unroll 8
      for (int r = 0; r < R; r++) {
        vf xb = v_set1(x[r * ldx + i]);
#pragma GCC unroll 2
        for (int v = 0; v < NV; v++) acc[r][v] = v_fma(wv[v], xb, acc[r][v]);
      }
    }
#pragma GCC unroll 8
    for (int r = 0; r < R; r++)
#pragma GCC unroll 2
      for (int v = 0; v < NV; v++) {
        int col = 16 * (half + v);
        store_vec(acc[r][v], y + r * ldy + col, bias ? bias + col : 0, res ? res + r * ldr + col : 0,
                  v_tail(c - col));
      }
  }
}

/* The ABI version cpu_ops.py checks before it calls anything else. */
int atoll_linear_abi(void) { return 1; }

/* Which vector layer this build uses: 2 for AVX-512F, 1 for AVX2 with FMA. */
int atoll_isa(void) { return ISA; }

void atoll_linear(const float* x, int64_t ldx, const float* wp, const float* bias, const float* res, int64_t ldr,
                  float* y, int64_t ldy, int64_t m, int64_t n, int64_t k, int nthreads) {
  int64_t np = (n + NR - 1) / NR, nmc = (m + MC - 1) / MC, mbc = MC / MR;
  int64_t tasks = nmc * np * mbc;
#pragma omp parallel for num_threads(team(m * n * k, nthreads)) schedule(static)
  for (int64_t t = 0; t < tasks; t++) {
    int64_t mc = t / (np * mbc), p = (t / mbc) % np, b = t % mbc;
    int64_t r0 = mc * MC + b * MR;
    if (r0 >= m) continue;
    int rows = (int)((m - r0) < MR ? (m - r0) : MR);
    int c = (int)((n - p * NR) < NR ? (n - p * NR) : NR);
    const float* xr = x + r0 * ldx;
    const float* w = wp + p * k * NR;
    float* yr = y + r0 * ldy + p * NR;
    const float* bb = bias ? bias + p * NR : 0;
    const float* rr = res ? res + r0 * ldr + p * NR : 0;
    /* The first row block of a panel reads it from memory; the passes of the later blocks find
     * it in cache and, being bound by arithmetic, fetch the next panel into L2, each pass a share
     * of its k-rows, so that the next panel's first block finds it there too. */
    int64_t nb = (m - mc * MC) < MC ? (m - mc * MC + MR - 1) / MR : mbc;   /* row blocks of this panel */
    int64_t pfp = (nb - 1) * (2 / NV);                                      /* passes after the first block */
    const float* pf = (b >= 1 && pfp > 0 && p + 1 < np) ? wp + (p + 1) * k * NR : 0;
    switch (rows) {
      case 1: tile1(xr, w, k, yr, bb, rr, c); break;
      case 2: tile(2, xr, ldx, w, k, yr, ldy, bb, rr, ldr, c, pf, b - 1, pfp); break;
      case 3: tile(3, xr, ldx, w, k, yr, ldy, bb, rr, ldr, c, pf, b - 1, pfp); break;
      case 4: tile(4, xr, ldx, w, k, yr, ldy, bb, rr, ldr, c, pf, b - 1, pfp); break;
      case 5: tile(5, xr, ldx, w, k, yr, ldy, bb, rr, ldr, c, pf, b - 1, pfp); break;
#if MR > 6
      case 6: tile(6, xr, ldx, w, k, yr, ldy, bb, rr, ldr, c, pf, b - 1, pfp); break;
      case 7: tile(7, xr, ldx, w, k, yr, ldy, bb, rr, ldr, c, pf, b - 1, pfp); break;
#endif
      default: tile(MR, xr, ldx, w, k, yr, ldy, bb, rr, ldr, c, pf, b - 1, pfp); break;
    }
  }
}

/* y[r] = w * (x[r] * 1/sqrt(mean(x[r]^2) + eps)) for m rows of n (Llama's RMSNorm in fp32; gemma2
 * passes its 1 + w as w). Rows split over threads when there are many. */
void atoll_rms_norm(const float* x, int64_t ldx, const float* w, float* y, int64_t ldy, int64_t m, int64_t n,
                    float eps, int nthreads) {
#pragma omp parallel for num_threads(team(m * n * 8, nthreads)) schedule(static)
  for (int64_t r = 0; r < m; r++) {
    const float* xr = x + r * ldx;
    float* yr = y + r * ldy;
    vf s0 = v_zero(), s1 = v_zero();
    int64_t i = 0;
    for (; i + 32 <= n; i += 32) {
      vf a = v_load(xr + i), b = v_load(xr + i + 16);
      s0 = v_fma(a, a, s0);
      s1 = v_fma(b, b, s1);
    }
    for (; i < n; i += 16) {
      vf a = v_loadm(v_tail(n - i), xr + i);
      s0 = v_fma(a, a, s0);
    }
    float inv = 1.0f / sqrtf(v_sum(v_add(s0, s1)) / (float)n + eps);
    vf vi = v_set1(inv);
    for (i = 0; i < n; i += 16) {
      vm mk = v_tail(n - i);
      vf v = v_mul(v_loadm(mk, xr + i), vi);
      v_storem(yr + i, mk, v_mul(v_loadm(mk, w + i), v));
    }
  }
}

static inline float dot(const float* a, const float* b, int64_t d) {
  vf s = v_zero();
  for (int64_t i = 0; i < d; i += 16) {
    vm m = v_tail(d - i);
    s = v_fma(v_loadm(m, a + i), v_loadm(m, b + i), s);
  }
  return v_sum(s);
}

/* Attention of one new token per request over its paged KV cache, read in place.
 *
 * q: row b holds the request's nh query heads (head h at q + b*ldq + h*d, RoPE applied);
 * cache: one layer, [2][nkv][rows][d] (K then V); the request's position t lives in row
 * table[b*nbmax + t/bs]*bs + t%bs; it attends to positions k0 ... lens[b]-1, where k0 is
 * lens[b] - window when a window is set. Query head h reads kv head h / (nh/nkv).
 * scores = scale q.k (then cap tanh(s/cap) when cap > 0), softmax, times V;
 * out: [B][nh*d]. scratch: per thread, (nh/nkv) * max_len floats. */
void atoll_decode_attention(const float* q, int64_t ldq, const float* cache, int64_t rows, const int64_t* table,
                            int64_t nbmax, const int64_t* lens, int64_t bs, int64_t B, int64_t nh, int64_t nkv,
                            int64_t d, float scale, float cap, int64_t window, float* out, float* scratch,
                            int64_t scratch_per_thread, int nthreads) {
  int64_t g = nh / nkv, keys = 0;
  for (int64_t b = 0; b < B; b++) keys += lens[b];
#pragma omp parallel num_threads(B * nkv >= 2 ? team(keys * nh * d * 2, nthreads) : 1)
  {
#ifdef _OPENMP
    float* s = scratch + (int64_t)omp_get_thread_num() * scratch_per_thread;
#else
    float* s = scratch;
#endif
#pragma omp for schedule(dynamic, 1)
    for (int64_t task = 0; task < B * nkv; task++) {
      int64_t b = task / nkv, j = task % nkv;
      int64_t len = lens[b], k0 = (window > 0 && len > window) ? len - window : 0, L = len - k0;
      const int64_t* tb = table + b * nbmax;
      const float* kbase = cache + j * rows * d;
      const float* vbase = cache + (nkv + j) * rows * d;
      const float* qb = q + b * ldq + j * g * d;
      float* ob = out + b * nh * d + j * g * d;
      /* scores, four keys at a time: each head's four dot products reduced together */
      int64_t t = 0;
      for (; t + 4 <= L; t += 4) {
        const float* kr[4];
        for (int u = 0; u < 4; u++) {
          int64_t pos = k0 + t + u;
          kr[u] = kbase + (tb[pos / bs] * bs + pos % bs) * d;
        }
        for (int64_t h = 0; h < g; h++) {
          const float* qh = qb + h * d;
          vf a0 = v_zero(), a1 = v_zero(), a2 = v_zero(), a3 = v_zero();
          for (int64_t i = 0; i < d; i += 16) {
            vm m = v_tail(d - i);
            vf qv = v_loadm(m, qh + i);
            a0 = v_fma(qv, v_loadm(m, kr[0] + i), a0);
            a1 = v_fma(qv, v_loadm(m, kr[1] + i), a1);
            a2 = v_fma(qv, v_loadm(m, kr[2] + i), a2);
            a3 = v_fma(qv, v_loadm(m, kr[3] + i), a3);
          }
          __m128 four = _mm_mul_ps(v_sum4(a0, a1, a2, a3), _mm_set1_ps(scale));
          if (cap > 0.0f) {
            float v[4];
            _mm_storeu_ps(v, four);
            for (int u = 0; u < 4; u++) s[h * L + t + u] = cap * tanhf(v[u] / cap);
          } else {
            _mm_storeu_ps(s + h * L + t, four);
          }
        }
      }
      for (; t < L; t++) {
        int64_t pos = k0 + t, row = tb[pos / bs] * bs + pos % bs;
        const float* kr = kbase + row * d;
        for (int64_t h = 0; h < g; h++) {
          float v = scale * dot(qb + h * d, kr, d);
          if (cap > 0.0f) v = cap * tanhf(v / cap);
          s[h * L + t] = v;
        }
      }
      for (int64_t h = 0; h < g; h++) {
        float* sh = s + h * L;
        vf mx = v_set1(-INFINITY);
        for (int64_t t = 0; t < L; t += 16) mx = v_max(mx, v_loadm_or(mx, v_tail(L - t), sh + t));
        vf m = v_set1(v_hmax(mx)), sum = v_zero();
        for (int64_t t = 0; t < L; t += 16) {
          vm k = v_tail(L - t);
          vf e = v_keep(k, v_exp(v_sub(v_loadm(k, sh + t), m)));
          v_storem(sh + t, k, e);
          sum = v_add(sum, e);
        }
        vf inv = v_set1(1.0f / v_sum(sum));
        for (int64_t t = 0; t < L; t += 16) {
          vm k = v_tail(L - t);
          v_storem(sh + t, k, v_mul(v_loadm(k, sh + t), inv));
        }
      }
      /* probabilities times V: PV_H heads x 16 PV_C dims of accumulators held in registers */
      for (int64_t h0 = 0; h0 < g; h0 += PV_H) {
        int64_t hn = (g - h0) < PV_H ? (g - h0) : PV_H;
        for (int64_t i0 = 0; i0 < d; i0 += 16 * PV_C) {
          vm mk[PV_C];
          for (int c = 0; c < PV_C; c++) mk[c] = v_tail(d - i0 - 16 * c);
          vf acc[PV_H][PV_C];
#pragma GCC unroll 4
          for (int hh = 0; hh < PV_H; hh++)
#pragma GCC unroll 4
            for (int c = 0; c < PV_C; c++) acc[hh][c] = v_zero();
          for (int64_t tt = 0; tt < L; tt++) {
            int64_t pos = k0 + tt, row = tb[pos / bs] * bs + pos % bs;
            const float* vr = vbase + row * d + i0;
            vf vv[PV_C];
#pragma GCC unroll 4
            for (int c = 0; c < PV_C; c++) vv[c] = v_loadm(mk[c], vr + 16 * c);
#pragma GCC unroll 4
            for (int hh = 0; hh < PV_H; hh++) {
              if (hh < hn) {
                vf p = v_set1(s[(h0 + hh) * L + tt]);
#pragma GCC unroll 4
                for (int c = 0; c < PV_C; c++) acc[hh][c] = v_fma(p, vv[c], acc[hh][c]);
              }
            }
          }
#pragma GCC unroll 4
          for (int hh = 0; hh < PV_H; hh++)
            if (hh < hn)
#pragma GCC unroll 4
              for (int c = 0; c < PV_C; c++) v_storem(ob + (h0 + hh) * d + i0 + 16 * c, mk[c], acc[hh][c]);
        }
      }
    }
  }
}

/* RoPE in place on the q and k heads of t rows, then each row's k and v heads written to the
 * cache. Row r of qkv: nh q heads, nkv k heads, nkv v heads of d floats (row stride ldq). The
 * first rd dims of each q/k head rotate: with h = rd/2, x[i] <- x[i] cos[i] + x[i+h] sin[i] and
 * x[i+h] <- x[i+h] cos[i+h] + x[i] sin[i+h], where cos/sin are the row's tables (sin with its
 * first half negated, as the runtime keeps it). cache: [2][nkv][rows][d]; row r goes to
 * cache row write_rows[r]. */
void atoll_rope_write(float* qkv, int64_t ldq, int64_t t, int64_t nh, int64_t nkv, int64_t d, int64_t rd,
                      const float* cos_t, const float* sin_t, int64_t ldc, float* cache, int64_t rows,
                      const int64_t* write_rows, int nthreads) {
  int64_t h = rd / 2;
#pragma omp parallel for num_threads(team(t * (nh + 2 * nkv) * d * 8, nthreads)) schedule(static)
  for (int64_t r = 0; r < t; r++) {
    float* row = qkv + r * ldq;
    const float* c = cos_t + r * ldc;
    const float* s = sin_t + r * ldc;
    for (int64_t hd = 0; hd < nh + nkv; hd++) {
      float* x = row + hd * d;
      for (int64_t i = 0; i < h; i += 16) {
        vm m = v_tail(h - i);
        vf a = v_loadm(m, x + i), b = v_loadm(m, x + h + i);
        vf na = v_fma(b, v_loadm(m, s + i), v_mul(a, v_loadm(m, c + i)));
        vf nb = v_fma(a, v_loadm(m, s + h + i), v_mul(b, v_loadm(m, c + h + i)));
        v_storem(x + i, m, na);
        v_storem(x + h + i, m, nb);
      }
    }
    int64_t wr = write_rows[r];
    for (int64_t j = 0; j < nkv; j++) {
      const float* k = row + (nh + j) * d;
      const float* v = row + (nh + nkv + j) * d;
      float* kc = cache + (j * rows + wr) * d;
      float* vc = cache + ((nkv + j) * rows + wr) * d;
      for (int64_t i = 0; i < d; i += 16) {
        vm m = v_tail(d - i);
        v_storem(kc + i, m, v_loadm(m, k + i));
        v_storem(vc + i, m, v_loadm(m, v + i));
      }
    }
  }
}

/* out[r][i] = silu(gu[r][i]) * gu[r][n + i] for m rows of 2n (row stride ldg); out is [m][n]. */
void atoll_silu_mul(const float* gu, int64_t ldg, int64_t m, int64_t n, float* out, int nthreads) {
#pragma omp parallel for num_threads(team(m * n * 8, nthreads)) schedule(static)
  for (int64_t r = 0; r < m; r++) {
    const float* g = gu + r * ldg;
    const float* u = g + n;
    float* o = out + r * n;
    for (int64_t i = 0; i < n; i += 16) {
      vm k = v_tail(n - i);
      vf x = v_loadm(k, g + i);
      vf e = v_exp(v_sub(v_zero(), x));
      vf sg = v_div(x, v_add(v_set1(1.0f), e));
      v_storem(o + i, k, v_mul(sg, v_loadm(k, u + i)));
    }
  }
}

/* Batched LoRA for rows that each carry their own adapter slot (decode steps), in place on y:
 *
 *     y[t, slice n] += scales[s] * (x[t] . a[s, n]^T) . b[s, slice n]^T     with s = slots[t] >= 0
 *
 * a: [S][N][R][hin] (the shrink of each slice); bp: b in panels of 16 output columns,
 * [S][NB][R][16], where slice n (output columns offsets[n] ... offsets[n+1]-1) owns
 * ceil(width / 16) consecutive panels, zero past its width, and NB is the sum over the slices;
 * scales: [S]. Rows with slot -1 are left alone.
 *
 * Rows come in groups of up to 4 that share a slot (``order`` lists the rows grouped by slot,
 * group g is order[gstart[g]] ... order[gstart[g+1]-1]): a group reads its adapter's weights
 * once, for all its rows, so the weights' trip from memory is shared (at batch 32 with 8
 * adapters these reads are most of the work). Per row the R shrink sums of a slice stay on the
 * stack (R <= 512), LU ranks reduced together; the expand adds one panel (16 output columns) at
 * a time, one multiply-add per rank, reading the panel's R x 16 floats as one contiguous run
 * (rows of b^T one output width apart alias in L1 when that width is a multiple of 1024 floats,
 * as gate_up's often is). Whole 16-lane vectors take plain loads and stores and only the last,
 * partial one a masked access (masked loads in the inner loops ran this kernel 2.5x slower on
 * Zen 3). Groups are split over threads. */
static inline void lora_shrink16(vf acc[4][LU], const float* ar, int64_t hin, const float* const xr[4], int64_t i,
                                 int64_t gm, vm mk) {
  vf av[LU];
#pragma GCC unroll 4
  for (int u = 0; u < LU; u++) av[u] = v_loadm(mk, ar + u * hin + i);
#pragma GCC unroll 4
  for (int m = 0; m < 4; m++) {
    if (m < gm) {
      vf xv = v_loadm(mk, xr[m] + i);
#pragma GCC unroll 4
      for (int u = 0; u < LU; u++) acc[m][u] = v_fma(xv, av[u], acc[m][u]);
    }
  }
}

static inline void lora_expand16(float* const yr[4], const float* panel, float h[4][512], int64_t R, int64_t gm,
                                 vm mk) {
  vf c[4];
#pragma GCC unroll 4
  for (int m = 0; m < 4; m++) c[m] = v_zero();
  for (int64_t r2 = 0; r2 < R; r2++) {
    vf bv = v_load(panel + r2 * 16);
#pragma GCC unroll 4
    for (int m = 0; m < 4; m++)
      if (m < gm) c[m] = v_fma(v_set1(h[m][r2]), bv, c[m]);
  }
  for (int m = 0; m < gm; m++) v_storem(yr[m], mk, v_add(v_loadm(mk, yr[m]), c[m]));
}

void atoll_lora(float* y, int64_t ldy, const float* x, int64_t ldx, const float* a, const float* bp,
                const float* scales, const int32_t* slots, const int64_t* order, const int64_t* gstart, int64_t G,
                int64_t N, int64_t R, int64_t hin, int64_t hout, const int64_t* offsets, int nthreads) {
#pragma omp parallel for num_threads(G >= 2 ? team(G * 4 * N * R * (hin + hout), nthreads) : 1) schedule(static)
  for (int64_t gi = 0; gi < G; gi++) {
    int64_t k0 = gstart[gi], gm = gstart[gi + 1] - k0;
    int32_t s = slots[order[k0]];
    if (s < 0 || gm < 1 || gm > 4) continue;
    const float* xr[4];
    float* yr[4];
    for (int m = 0; m < 4; m++) {
      int64_t t = order[k0 + (m < gm ? m : 0)];
      xr[m] = x + t * ldx;
      yr[m] = y + t * ldy;
    }
    float sc = scales[s];
    float h[4][512];
    int64_t hin16 = hin & ~(int64_t)15, nb = 0, pb = 0;
    for (int64_t n = 0; n < N; n++) nb += (offsets[n + 1] - offsets[n] + 15) / 16;
    for (int64_t n = 0; n < N; n++) {
      const float* an = a + ((int64_t)s * N + n) * R * hin;
      int64_t r = 0;
      for (; r + LU <= R; r += LU) {
        vf acc[4][LU];
#pragma GCC unroll 4
        for (int m = 0; m < 4; m++)
#pragma GCC unroll 4
          for (int u = 0; u < LU; u++) acc[m][u] = v_zero();
        const float* ar = an + r * hin;
        for (int64_t i = 0; i < hin16; i += 16) lora_shrink16(acc, ar, hin, xr, i, gm, 16);
        if (hin16 < hin) lora_shrink16(acc, ar, hin, xr, hin16, gm, v_tail(hin - hin16));
#if LU == 4
        for (int m = 0; m < gm; m++) _mm_storeu_ps(h[m] + r, v_sum4(acc[m][0], acc[m][1], acc[m][2], acc[m][3]));
#else
        for (int m = 0; m < gm; m++)
          for (int u = 0; u < LU; u++) h[m][r + u] = v_sum(acc[m][u]);
#endif
      }
      for (; r < R; r++)
        for (int m = 0; m < gm; m++) h[m][r] = dot(xr[m], an + r * hin, hin);
      /* expand: the slice's panels, 16 output columns each */
      const float* pn = bp + ((int64_t)s * nb + pb) * R * 16;
      for (int m = 0; m < gm; m++)
        for (int64_t r2 = 0; r2 < R; r2++) h[m][r2] *= sc;
      int64_t j = offsets[n];
      for (; j < offsets[n + 1]; j += 16, pn += R * 16) {
        float* yj[4] = {yr[0] + j, yr[1] + j, yr[2] + j, yr[3] + j};
        if (j + 16 <= offsets[n + 1])
          lora_expand16(yj, pn, h, R, gm, 16);
        else
          lora_expand16(yj, pn, h, R, gm, v_tail(offsets[n + 1] - j));
      }
      pb += (offsets[n + 1] - offsets[n] + 15) / 16;
    }
  }
}
