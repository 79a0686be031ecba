/* fp32 linear layers for x86-64 CPUs with AVX-512F, built and loaded by cpu_ops.py.
 *
 *     y[m, n] = x[m, k] . W[n, k]^T (+ bias[n]) (+ res[m, n])
 *
 * W is stored in panels of 32 output features: wp[p][i][j] = W[32p + j][i] for p < ceil(n/32),
 * zero past n. Every k-step of a panel is then 128 contiguous bytes (two 16-lane vectors), and a
 * whole panel is one sequential stream, so a decode step with one row reads the weights at
 * close to the memory's streaming rate, and a 32-row step keeps a panel (k x 128 bytes) in L2
 * while 8 rows at a time are multiplied against it (16 accumulators, x broadcast per k-step).
 * Work is split over OpenMP threads by (64-row chunk, panel, 8-row block), chunk-major.
 */
#ifndef __AVX512F__
#error "cpu_ops.c needs AVX-512F"
#endif
#include <immintrin.h>
#include <math.h>
#include <stdint.h>
#ifdef _OPENMP
#include <omp.h>
#endif

#define NR 32
#define MR 8
#define MC 64

/* Below this many multiply-adds (or elements) a call runs on one thread: waking a second one
 * costs more than it saves, and an idle OpenMP thread spins after each parallel region, which
 * takes CPU from the other replicas and processes of a small host. */
#define PAR_WORK ((int64_t)1 << 18)
static inline int team(int64_t work, int nthreads) { return work >= PAR_WORK ? nthreads : 1; }

static inline __mmask16 lo_mask(int c) { return c >= 16 ? (__mmask16)0xFFFF : (__mmask16)((1u << c) - 1); }
static inline __mmask16 hi_mask(int c) {
  return c >= 32 ? (__mmask16)0xFFFF : c <= 16 ? (__mmask16)0 : (__mmask16)((1u << (c - 16)) - 1);
}

/* One output row of a panel: c <= 32 valid columns, optional bias and residual (masked loads
 * never touch memory past the valid columns). */
static inline __attribute__((always_inline)) void store_row(__m512 a0, __m512 a1, float* y, const float* bias,
                                                            const float* res, int c) {
  __mmask16 m0 = lo_mask(c), m1 = hi_mask(c);
  if (bias) {
    a0 = _mm512_add_ps(a0, _mm512_maskz_loadu_ps(m0, bias));
    a1 = _mm512_add_ps(a1, _mm512_maskz_loadu_ps(m1, bias + 16));
  }
  if (res) {
    a0 = _mm512_add_ps(a0, _mm512_maskz_loadu_ps(m0, res));
    a1 = _mm512_add_ps(a1, _mm512_maskz_loadu_ps(m1, res + 16));
  }
  _mm512_mask_storeu_ps(y, m0, a0);
  _mm512_mask_storeu_ps(y + 16, m1, a1);
}

/* One row against one panel, four k-steps in flight (one row alone would otherwise wait on the
 * FMA latency of a single accumulator pair). */
static void tile1(const float* x, const float* wp, int64_t k, float* y, const float* bias, const float* res, int c) {
  __m512 a0 = _mm512_setzero_ps(), a1 = _mm512_setzero_ps(), b0 = _mm512_setzero_ps(), b1 = _mm512_setzero_ps();
  __m512 c0 = _mm512_setzero_ps(), c1 = _mm512_setzero_ps(), d0 = _mm512_setzero_ps(), d1 = _mm512_setzero_ps();
  int64_t i = 0;
  for (; i + 4 <= k; i += 4) {
    const float* w = wp + i * NR;
    a0 = _mm512_fmadd_ps(_mm512_loadu_ps(w), _mm512_set1_ps(x[i]), a0);
    a1 = _mm512_fmadd_ps(_mm512_loadu_ps(w + 16), _mm512_set1_ps(x[i]), a1);
    b0 = _mm512_fmadd_ps(_mm512_loadu_ps(w + 32), _mm512_set1_ps(x[i + 1]), b0);
    b1 = _mm512_fmadd_ps(_mm512_loadu_ps(w + 48), _mm512_set1_ps(x[i + 1]), b1);
    c0 = _mm512_fmadd_ps(_mm512_loadu_ps(w + 64), _mm512_set1_ps(x[i + 2]), c0);
    c1 = _mm512_fmadd_ps(_mm512_loadu_ps(w + 80), _mm512_set1_ps(x[i + 2]), c1);
    d0 = _mm512_fmadd_ps(_mm512_loadu_ps(w + 96), _mm512_set1_ps(x[i + 3]), d0);
    d1 = _mm512_fmadd_ps(_mm512_loadu_ps(w + 112), _mm512_set1_ps(x[i + 3]), d1);
  }
  for (; i < k; i++) {
    a0 = _mm512_fmadd_ps(_mm512_loadu_ps(wp + i * NR), _mm512_set1_ps(x[i]), a0);
    a1 = _mm512_fmadd_ps(_mm512_loadu_ps(wp + i * NR + 16), _mm512_set1_ps(x[i]), a1);
  }
  a0 = _mm512_add_ps(_mm512_add_ps(a0, b0), _mm512_add_ps(c0, d0));
  a1 = _mm512_add_ps(_mm512_add_ps(a1, b1), _mm512_add_ps(c1, d1));
  store_row(a0, a1, y, bias, res, c);
}

/* R rows (2 <= R <= 8, a constant once inlined) against one panel. */
static inline __attribute__((always_inline)) void tile(const int R, const float* x, int64_t ldx, const float* wp,
                                                       int64_t k, float* y, int64_t ldy, const float* bias,
                                                       const float* res, int64_t ldr, int c) {
  __m512 a0[MR], a1[MR];
#pragma GCC unroll 8
  for (int r = 0; r < R; r++) {
    a0[r] = _mm512_setzero_ps();
    a1[r] = _mm512_setzero_ps();
  }
  for (int64_t i = 0; i < k; i++) {
    __m512 w0 = _mm512_loadu_ps(wp + i * NR), w1 = _mm512_loadu_ps(wp + i * NR + 16);
#pragma GCC unroll 8
    for (int r = 0; r < R; r++) {
      __m512 xb = _mm512_set1_ps(x[r * ldx + i]);
      a0[r] = _mm512_fmadd_ps(w0, xb, a0[r]);
      a1[r] = _mm512_fmadd_ps(w1, xb, a1[r]);
    }
  }
#pragma GCC unroll 8
  for (int r = 0; r < R; r++) store_row(a0[r], a1[r], y + r * ldy, bias, res ? res + r * ldr : 0, c);
}

/* The ABI version cpu_ops.py checks before it calls anything else. */
int atoll_linear_abi(void) { return 1; }

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
    switch (rows) {
      case 1: tile1(xr, w, k, yr, bb, rr, c); break;
      case 2: tile(2, xr, ldx, w, k, yr, ldy, bb, rr, ldr, c); break;
      case 3: tile(3, xr, ldx, w, k, yr, ldy, bb, rr, ldr, c); break;
      case 4: tile(4, xr, ldx, w, k, yr, ldy, bb, rr, ldr, c); break;
      case 5: tile(5, xr, ldx, w, k, yr, ldy, bb, rr, ldr, c); break;
      case 6: tile(6, xr, ldx, w, k, yr, ldy, bb, rr, ldr, c); break;
      case 7: tile(7, xr, ldx, w, k, yr, ldy, bb, rr, ldr, c); break;
      default: tile(8, xr, ldx, w, k, yr, ldy, bb, rr, ldr, c); break;
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
    __m512 s0 = _mm512_setzero_ps(), s1 = _mm512_setzero_ps();
    int64_t i = 0;
    for (; i + 32 <= n; i += 32) {
      __m512 a = _mm512_loadu_ps(xr + i), b = _mm512_loadu_ps(xr + i + 16);
      s0 = _mm512_fmadd_ps(a, a, s0);
      s1 = _mm512_fmadd_ps(b, b, s1);
    }
    for (; i < n; i += 16) {
      __mmask16 mk = (n - i) >= 16 ? (__mmask16)0xFFFF : (__mmask16)((1u << (n - i)) - 1);
      __m512 a = _mm512_maskz_loadu_ps(mk, xr + i);
      s0 = _mm512_fmadd_ps(a, a, s0);
    }
    float inv = 1.0f / sqrtf(_mm512_reduce_add_ps(_mm512_add_ps(s0, s1)) / (float)n + eps);
    __m512 vi = _mm512_set1_ps(inv);
    for (i = 0; i < n; i += 16) {
      __mmask16 mk = (n - i) >= 16 ? (__mmask16)0xFFFF : (__mmask16)((1u << (n - i)) - 1);
      __m512 v = _mm512_mul_ps(_mm512_maskz_loadu_ps(mk, xr + i), vi);
      _mm512_mask_storeu_ps(yr + i, mk, _mm512_mul_ps(_mm512_maskz_loadu_ps(mk, w + i), v));
    }
  }
}

/* e^x for 16 lanes: x = n ln2 + r with |r| <= ln2/2, e^r by its Taylor polynomial to degree 7
 * (relative error under 1e-8 there), times 2^n by scalef. Lanes below -87.3 come out as 0. */
static inline __m512 exp16(__m512 x) {
  const __m512 lo = _mm512_set1_ps(-87.3f);
  __mmask16 tiny = _mm512_cmp_ps_mask(x, lo, _CMP_LT_OQ);
  x = _mm512_max_ps(x, lo);
  __m512 n = _mm512_roundscale_ps(_mm512_mul_ps(x, _mm512_set1_ps(1.44269504088896341f)),
                                  _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  __m512 r = _mm512_fnmadd_ps(n, _mm512_set1_ps(0.693145751953125f), x);
  r = _mm512_fnmadd_ps(n, _mm512_set1_ps(1.428606765330187045e-06f), r);
  __m512 p = _mm512_set1_ps(1.0f / 5040.0f);
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f / 720.0f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f / 120.0f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f / 24.0f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f / 6.0f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(0.5f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f));
  return _mm512_maskz_mov_ps((__mmask16)~tiny, _mm512_scalef_ps(p, n));
}

static inline __mmask16 tail_mask(int64_t left) {
  return left >= 16 ? (__mmask16)0xFFFF : (__mmask16)((1u << left) - 1);
}

/* The sums of four vectors' lanes, as one 4-lane vector (a, b, c, d). */
static inline __m128 reduce4(__m512 a, __m512 b, __m512 c, __m512 d) {
  __m512 ab = _mm512_add_ps(_mm512_unpacklo_ps(a, b), _mm512_unpackhi_ps(a, b));   /* a0+a2 b0+b2 a1+a3 b1+b3 per 128 */
  __m512 cd = _mm512_add_ps(_mm512_unpacklo_ps(c, d), _mm512_unpackhi_ps(c, d));
  __m512 abcd = _mm512_add_ps(_mm512_shuffle_ps(ab, cd, _MM_SHUFFLE(1, 0, 1, 0)),
                              _mm512_shuffle_ps(ab, cd, _MM_SHUFFLE(3, 2, 3, 2)));  /* a b c d per 128-bit lane */
  __m512 half = _mm512_add_ps(abcd, _mm512_shuffle_f32x4(abcd, abcd, _MM_SHUFFLE(1, 0, 3, 2)));
  __m512 all = _mm512_add_ps(half, _mm512_shuffle_f32x4(half, half, _MM_SHUFFLE(2, 3, 0, 1)));
  return _mm512_castps512_ps128(all);
}

static inline float dot(const float* a, const float* b, int64_t d) {
  __m512 s = _mm512_setzero_ps();
  for (int64_t i = 0; i < d; i += 16) {
    __mmask16 m = tail_mask(d - i);
    s = _mm512_fmadd_ps(_mm512_maskz_loadu_ps(m, a + i), _mm512_maskz_loadu_ps(m, b + i), s);
  }
  return _mm512_reduce_add_ps(s);
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
          __m512 a0 = _mm512_setzero_ps(), a1 = _mm512_setzero_ps(), a2 = _mm512_setzero_ps(), a3 = _mm512_setzero_ps();
          for (int64_t i = 0; i < d; i += 16) {
            __mmask16 m = tail_mask(d - i);
            __m512 qv = _mm512_maskz_loadu_ps(m, qh + i);
            a0 = _mm512_fmadd_ps(qv, _mm512_maskz_loadu_ps(m, kr[0] + i), a0);
            a1 = _mm512_fmadd_ps(qv, _mm512_maskz_loadu_ps(m, kr[1] + i), a1);
            a2 = _mm512_fmadd_ps(qv, _mm512_maskz_loadu_ps(m, kr[2] + i), a2);
            a3 = _mm512_fmadd_ps(qv, _mm512_maskz_loadu_ps(m, kr[3] + i), a3);
          }
          __m128 four = _mm_mul_ps(reduce4(a0, a1, a2, a3), _mm_set1_ps(scale));
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
        __m512 mx = _mm512_set1_ps(-INFINITY);
        for (int64_t t = 0; t < L; t += 16) mx = _mm512_max_ps(mx, _mm512_mask_loadu_ps(mx, tail_mask(L - t), sh + t));
        __m512 m = _mm512_set1_ps(_mm512_reduce_max_ps(mx)), sum = _mm512_setzero_ps();
        for (int64_t t = 0; t < L; t += 16) {
          __mmask16 k = tail_mask(L - t);
          __m512 e = exp16(_mm512_sub_ps(_mm512_maskz_loadu_ps(k, sh + t), m));
          e = _mm512_maskz_mov_ps(k, e);
          _mm512_mask_storeu_ps(sh + t, k, e);
          sum = _mm512_add_ps(sum, e);
        }
        float inv = 1.0f / _mm512_reduce_add_ps(sum);
        for (int64_t t = 0; t < L; t += 16) {
          __mmask16 k = tail_mask(L - t);
          _mm512_mask_storeu_ps(sh + t, k, _mm512_mul_ps(_mm512_maskz_loadu_ps(k, sh + t), _mm512_set1_ps(inv)));
        }
      }
      /* probabilities times V: up to 4 heads x 64 dims of accumulators held in registers */
      for (int64_t h0 = 0; h0 < g; h0 += 4) {
        int64_t hn = (g - h0) < 4 ? (g - h0) : 4;
        for (int64_t i0 = 0; i0 < d; i0 += 64) {
          __mmask16 mk[4];
          for (int c = 0; c < 4; c++) mk[c] = (i0 + 16 * c < d) ? tail_mask(d - i0 - 16 * c) : (__mmask16)0;
          __m512 acc[4][4];
#pragma GCC unroll 4
          for (int hh = 0; hh < 4; hh++)
#pragma GCC unroll 4
            for (int c = 0; c < 4; c++) acc[hh][c] = _mm512_setzero_ps();
          for (int64_t tt = 0; tt < L; tt++) {
            int64_t pos = k0 + tt, row = tb[pos / bs] * bs + pos % bs;
            const float* vr = vbase + row * d + i0;
            __m512 vv[4];
#pragma GCC unroll 4
            for (int c = 0; c < 4; c++) vv[c] = _mm512_maskz_loadu_ps(mk[c], vr + 16 * c);
#pragma GCC unroll 4
            for (int hh = 0; hh < 4; hh++) {
              if (hh < hn) {
                __m512 p = _mm512_set1_ps(s[(h0 + hh) * L + tt]);
#pragma GCC unroll 4
                for (int c = 0; c < 4; c++) acc[hh][c] = _mm512_fmadd_ps(p, vv[c], acc[hh][c]);
              }
            }
          }
#pragma GCC unroll 4
          for (int hh = 0; hh < 4; hh++)
            if (hh < hn)
#pragma GCC unroll 4
              for (int c = 0; c < 4; c++) _mm512_mask_storeu_ps(ob + (h0 + hh) * d + i0 + 16 * c, mk[c], acc[hh][c]);
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
        __mmask16 m = tail_mask(h - i);
        __m512 a = _mm512_maskz_loadu_ps(m, x + i), b = _mm512_maskz_loadu_ps(m, x + h + i);
        __m512 na = _mm512_fmadd_ps(b, _mm512_maskz_loadu_ps(m, s + i),
                                    _mm512_mul_ps(a, _mm512_maskz_loadu_ps(m, c + i)));
        __m512 nb = _mm512_fmadd_ps(a, _mm512_maskz_loadu_ps(m, s + h + i),
                                    _mm512_mul_ps(b, _mm512_maskz_loadu_ps(m, c + h + i)));
        _mm512_mask_storeu_ps(x + i, m, na);
        _mm512_mask_storeu_ps(x + h + i, m, nb);
      }
    }
    int64_t wr = write_rows[r];
    for (int64_t j = 0; j < nkv; j++) {
      const float* k = row + (nh + j) * d;
      const float* v = row + (nh + nkv + j) * d;
      float* kc = cache + (j * rows + wr) * d;
      float* vc = cache + ((nkv + j) * rows + wr) * d;
      for (int64_t i = 0; i < d; i += 16) {
        __mmask16 m = tail_mask(d - i);
        _mm512_mask_storeu_ps(kc + i, m, _mm512_maskz_loadu_ps(m, k + i));
        _mm512_mask_storeu_ps(vc + i, m, _mm512_maskz_loadu_ps(m, v + i));
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
      __mmask16 k = tail_mask(n - i);
      __m512 x = _mm512_maskz_loadu_ps(k, g + i);
      __m512 e = exp16(_mm512_sub_ps(_mm512_setzero_ps(), x));
      __m512 sg = _mm512_div_ps(x, _mm512_add_ps(_mm512_set1_ps(1.0f), e));
      _mm512_mask_storeu_ps(o + i, k, _mm512_mul_ps(sg, _mm512_maskz_loadu_ps(k, u + i)));
    }
  }
}

/* Batched LoRA for rows that each carry their own adapter slot (decode steps), in place on y:
 *
 *     y[t, slice n] += scales[s] * (x[t] . a[s, n]^T) . b[s, slice n]^T     with s = slots[t] >= 0
 *
 * a: [S][N][R][hin] (the shrink of each slice), bt: [S][R][hout], b transposed (slice n owns the
 * output columns offsets[n] ... offsets[n+1]-1), scales: [S]. Rows with slot -1 are left alone.
 *
 * Rows come in groups of up to 4 that share a slot (``order`` lists the rows grouped by slot,
 * group g is order[gstart[g]] ... order[gstart[g+1]-1]): a group reads its adapter's weights
 * once, for all its rows, so the weights' trip from memory is shared (at batch 32 with 8
 * adapters these reads are most of the work). Per row the R shrink sums of a slice stay on the
 * stack (R <= 512), reduced four at a time; the expand adds 16 output columns at a time, one
 * multiply-add per rank. Groups are split over threads. */
void atoll_lora(float* y, int64_t ldy, const float* x, int64_t ldx, const float* a, const float* bt,
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
    for (int64_t n = 0; n < N; n++) {
      const float* an = a + ((int64_t)s * N + n) * R * hin;
      int64_t r = 0;
      for (; r + 4 <= R; r += 4) {
        __m512 acc[4][4];
#pragma GCC unroll 4
        for (int m = 0; m < 4; m++)
#pragma GCC unroll 4
          for (int u = 0; u < 4; u++) acc[m][u] = _mm512_setzero_ps();
        for (int64_t i = 0; i < hin; i += 16) {
          __mmask16 mk = tail_mask(hin - i);
          __m512 av[4];
#pragma GCC unroll 4
          for (int u = 0; u < 4; u++) av[u] = _mm512_maskz_loadu_ps(mk, an + (r + u) * hin + i);
#pragma GCC unroll 4
          for (int m = 0; m < 4; m++) {
            if (m < gm) {
              __m512 xv = _mm512_maskz_loadu_ps(mk, xr[m] + i);
#pragma GCC unroll 4
              for (int u = 0; u < 4; u++) acc[m][u] = _mm512_fmadd_ps(xv, av[u], acc[m][u]);
            }
          }
        }
        for (int m = 0; m < gm; m++) _mm_storeu_ps(h[m] + r, reduce4(acc[m][0], acc[m][1], acc[m][2], acc[m][3]));
      }
      for (; r < R; r++)
        for (int m = 0; m < gm; m++) h[m][r] = dot(xr[m], an + r * hin, hin);
      /* expand from bt [R][hout]: 16 output columns at a time, bt's rows read once for the group */
      const float* bts = bt + (int64_t)s * R * hout;
      for (int m = 0; m < gm; m++)
        for (int64_t r2 = 0; r2 < R; r2++) h[m][r2] *= sc;
      for (int64_t j = offsets[n]; j < offsets[n + 1]; j += 16) {
        __mmask16 mk = tail_mask(offsets[n + 1] - j);
        __m512 c[4];
#pragma GCC unroll 4
        for (int m = 0; m < 4; m++) c[m] = _mm512_setzero_ps();
        for (int64_t r2 = 0; r2 < R; r2++) {
          __m512 bv = _mm512_maskz_loadu_ps(mk, bts + r2 * hout + j);
#pragma GCC unroll 4
          for (int m = 0; m < 4; m++)
            if (m < gm) c[m] = _mm512_fmadd_ps(_mm512_set1_ps(h[m][r2]), bv, c[m]);
        }
        for (int m = 0; m < gm; m++)
          _mm512_mask_storeu_ps(yr[m] + j, mk, _mm512_add_ps(_mm512_maskz_loadu_ps(mk, yr[m] + j), c[m]));
      }
    }
  }
}
