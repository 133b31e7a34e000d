/* Fused CPU kernels for the elementwise chains around the matrix multiplies (issue #28).
 *
 * Built on first use by cpu_build.py with the machine's C compiler (-O3 -march=native, OpenMP) and
 * called through ctypes; cpu_fused.py holds the autograd functions.  Plain C, vectorised by the
 * compiler: every loop body is branch-free so that it becomes SIMD code (-fno-trapping-math lets the
 * compiler turn the selects into blends).
 *
 * geglu_norm:  y = LayerNorm(gelu(a) * b) over the last dimension (width F), the GeGLU and the
 *              Magneto sub-LayerNorm of each modality's FFN.  One read of a and b, one write of y, in
 *              float arithmetic throughout; torch's stock chain makes four passes and, in bf16, rounds
 *              gelu(a) and the product before the LayerNorm.
 *
 * norm_gelu:   y = gelu(LayerNorm(x)) over the last dimension, the audio front end's channel LayerNorm and
 *              GELU after each of its convolutions.  One read of x and one write of y; the backward
 *              recomputes the normalised row from x and the row statistics.
 *
 * Each kernel exists for float (suffix f32) and bfloat16 stored as uint16 (suffix bf16).  Rows are
 * split over `threads` OpenMP threads; the weight and bias gradients are summed per thread and then
 * across threads, in float.
 */
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#ifdef _OPENMP
#include <omp.h>
#else
static int omp_get_thread_num(void) { return 0; }
#endif

static inline float load_f32(float x) { return x; }
static inline float store_f32(float x) { return x; }
static inline float load_bf16(uint16_t h) {
  uint32_t u = (uint32_t)h << 16;
  float f;
  memcpy(&f, &u, 4);
  return f;
}
static inline uint16_t store_bf16(float f) { /* round to nearest even; NaN stays NaN */
  uint32_t u;
  memcpy(&u, &f, 4);
  uint32_t rounded = (u + 0x7fffu + ((u >> 16) & 1u)) >> 16;
  uint32_t quiet = (u >> 16) | 0x40u;
  return (uint16_t)(((u & 0x7fffffffu) > 0x7f800000u) ? quiet : rounded);
}

/* exp(x) for x <= 0: Cephes' polynomial after reduction by ln 2, scaled by 2^n through the exponent bits. */
static inline float exp_nonpositive(float x) {
  x = x > -87.0f ? x : -87.0f;
  float n = floorf(x * 1.44269504088896341f + 0.5f);
  float r = x - n * 0.693359375f + n * 2.12194440e-4f;
  float p = 1.9875691500e-4f;
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  p = p * r * r + r + 1.0f;
  int32_t bits = ((int32_t)n + 127) << 23;
  float scale;
  memcpy(&scale, &bits, 4);
  return p * scale;
}

/* The normal CDF 0.5 (1 + erf(a / sqrt 2)), erf by Abramowitz & Stegun 7.1.26 (|error| < 1.5e-7), the
 * formula of torch's vectorised GELU on x86. */
static inline float normal_cdf(float a) {
  float x = a * 0.70710678118654752f;
  float t = 1.0f / (0.3275911f * fabsf(x) + 1.0f);
  float poly = ((((1.061405429f * t - 1.453152027f) * t + 1.421413741f) * t - 0.284496736f) * t + 0.254829592f) * t;
  float erf_abs = 1.0f - poly * exp_nonpositive(-x * x);
  return 0.5f * (1.0f + copysignf(erf_abs, x));
}

/* a * pdf(a), the second term of gelu'(a) = cdf(a) + a pdf(a). */
static inline float x_normal_pdf(float a) { return a * 0.39894228040143268f * exp_nonpositive(-0.5f * a * a); }

/* Adds each thread's (weight, bias) gradient sums, `threads` pairs of `width` floats, into dweight and dbias,
 * and frees them. */
static void add_partials(float *partial, int threads, int64_t width, float *dweight, float *dbias) {
  for (int t = 0; t < threads; t++) {
    const float *p = partial + (size_t)t * 2 * width;
    for (int64_t j = 0; j < width; j++) {
      dweight[j] += p[j];
      dbias[j] += p[width + j];
    }
  }
  free(partial);
}

#define GEGLU_NORM_FORWARD(NAME, T, LOAD, STORE)                                                          \
  void NAME(const T *A, const T *B, const T *weight, const T *bias, T *Y, float *mean_out, float *rstd_out, \
            int64_t rows, int64_t width, float eps, int threads) {                                        \
    _Pragma("omp parallel num_threads(threads)") {                                                        \
      float *g = (float *)malloc(sizeof(float) * width);                                                  \
      _Pragma("omp for schedule(static)") for (int64_t i = 0; i < rows; i++) {                            \
        const T *a = A + i * width, *b = B + i * width;                                                   \
        T *y = Y + i * width;                                                                             \
        float sum = 0.0f, squares = 0.0f;                                                                 \
        _Pragma("omp simd reduction(+ : sum)") for (int64_t j = 0; j < width; j++) {                      \
          float x = LOAD(a[j]);                                                                           \
          g[j] = x * normal_cdf(x) * LOAD(b[j]);                                                          \
          sum += g[j];                                                                                    \
        }                                                                                                 \
        float mean = sum / width;                                                                         \
        _Pragma("omp simd reduction(+ : squares)") for (int64_t j = 0; j < width; j++) {                  \
          float d = g[j] - mean;                                                                          \
          squares += d * d;                                                                               \
        }                                                                                                 \
        float rstd = 1.0f / sqrtf(squares / width + eps);                                                 \
        _Pragma("omp simd") for (int64_t j = 0; j < width; j++)                                           \
            y[j] = STORE((g[j] - mean) * rstd * LOAD(weight[j]) + LOAD(bias[j]));                         \
        mean_out[i] = mean;                                                                               \
        rstd_out[i] = rstd;                                                                               \
      }                                                                                                   \
      free(g);                                                                                            \
    }                                                                                                     \
  }

/* dweight and dbias are float, zeroed by the caller, and receive the sums over all rows. */
#define GEGLU_NORM_BACKWARD(NAME, T, LOAD, STORE)                                                         \
  void NAME(const T *dY, const T *A, const T *B, const T *weight, const float *mean_in,                   \
            const float *rstd_in, T *dA, T *dB, float *dweight, float *dbias, int64_t rows,               \
            int64_t width, int threads) {                                                                 \
    float *partial = (float *)calloc((size_t)threads * 2 * width, sizeof(float));                         \
    _Pragma("omp parallel num_threads(threads)") {                                                        \
      float *dw = partial + (size_t)omp_get_thread_num() * 2 * width, *db = dw + width;                   \
      float *xhat = (float *)malloc(sizeof(float) * width * 3), *cdf = xhat + width, *dxhat = cdf + width; \
      _Pragma("omp for schedule(static)") for (int64_t i = 0; i < rows; i++) {                            \
        const T *a = A + i * width, *b = B + i * width, *dy = dY + i * width;                             \
        T *da = dA + i * width, *dbb = dB + i * width;                                                    \
        float mean = mean_in[i], rstd = rstd_in[i], sum_dxhat = 0.0f, sum_dxhat_xhat = 0.0f;              \
        _Pragma("omp simd reduction(+ : sum_dxhat, sum_dxhat_xhat)") for (int64_t j = 0; j < width; j++) { \
          float x = LOAD(a[j]), c = normal_cdf(x), d = LOAD(dy[j]);                                       \
          float xh = (x * c * LOAD(b[j]) - mean) * rstd, dxh = d * LOAD(weight[j]);                       \
          xhat[j] = xh;                                                                                   \
          cdf[j] = c;                                                                                     \
          dxhat[j] = dxh;                                                                                 \
          dw[j] += d * xh;                                                                                \
          db[j] += d;                                                                                     \
          sum_dxhat += dxh;                                                                               \
          sum_dxhat_xhat += dxh * xh;                                                                     \
        }                                                                                                 \
        float c1 = sum_dxhat / width, c2 = sum_dxhat_xhat / width;                                        \
        _Pragma("omp simd") for (int64_t j = 0; j < width; j++) {                                         \
          float x = LOAD(a[j]);                                                                           \
          float dg = rstd * (dxhat[j] - c1 - xhat[j] * c2);                                               \
          da[j] = STORE(dg * LOAD(b[j]) * (cdf[j] + x_normal_pdf(x)));                                    \
          dbb[j] = STORE(dg * x * cdf[j]);                                                                \
        }                                                                                                 \
      }                                                                                                   \
      free(xhat);                                                                                         \
    }                                                                                                     \
    add_partials(partial, threads, width, dweight, dbias);                                                \
  }

GEGLU_NORM_FORWARD(geglu_norm_forward_f32, float, load_f32, store_f32)
GEGLU_NORM_FORWARD(geglu_norm_forward_bf16, uint16_t, load_bf16, store_bf16)
GEGLU_NORM_BACKWARD(geglu_norm_backward_f32, float, load_f32, store_f32)
GEGLU_NORM_BACKWARD(geglu_norm_backward_bf16, uint16_t, load_bf16, store_bf16)

#define NORM_GELU_FORWARD(NAME, T, LOAD, STORE)                                                           \
  void NAME(const T *X, const T *weight, const T *bias, T *Y, float *mean_out, float *rstd_out,            \
            int64_t rows, int64_t width, float eps, int threads) {                                        \
    _Pragma("omp parallel for num_threads(threads) schedule(static)") for (int64_t i = 0; i < rows; i++) { \
      const T *x = X + i * width;                                                                         \
      T *y = Y + i * width;                                                                               \
      float sum = 0.0f, squares = 0.0f;                                                                   \
      _Pragma("omp simd reduction(+ : sum)") for (int64_t j = 0; j < width; j++) sum += LOAD(x[j]);       \
      float mean = sum / width;                                                                           \
      _Pragma("omp simd reduction(+ : squares)") for (int64_t j = 0; j < width; j++) {                    \
        float d = LOAD(x[j]) - mean;                                                                      \
        squares += d * d;                                                                                 \
      }                                                                                                   \
      float rstd = 1.0f / sqrtf(squares / width + eps);                                                   \
      _Pragma("omp simd") for (int64_t j = 0; j < width; j++) {                                           \
        float z = (LOAD(x[j]) - mean) * rstd * LOAD(weight[j]) + LOAD(bias[j]);                           \
        y[j] = STORE(z * normal_cdf(z));                                                                  \
      }                                                                                                   \
      mean_out[i] = mean;                                                                                 \
      rstd_out[i] = rstd;                                                                                 \
    }                                                                                                     \
  }

#define NORM_GELU_BACKWARD(NAME, T, LOAD, STORE)                                                          \
  void NAME(const T *dY, const T *X, const T *weight, const T *bias, const float *mean_in,                \
            const float *rstd_in, T *dX, float *dweight, float *dbias, int64_t rows, int64_t width,       \
            int threads) {                                                                                \
    float *partial = (float *)calloc((size_t)threads * 2 * width, sizeof(float));                         \
    _Pragma("omp parallel num_threads(threads)") {                                                        \
      float *dw = partial + (size_t)omp_get_thread_num() * 2 * width, *db = dw + width;                   \
      float *dxhat = (float *)malloc(sizeof(float) * width * 2), *xhat = dxhat + width;                   \
      _Pragma("omp for schedule(static)") for (int64_t i = 0; i < rows; i++) {                            \
        const T *x = X + i * width, *dy = dY + i * width;                                                 \
        T *dx = dX + i * width;                                                                           \
        float mean = mean_in[i], rstd = rstd_in[i], sum_dxhat = 0.0f, sum_dxhat_xhat = 0.0f;              \
        _Pragma("omp simd reduction(+ : sum_dxhat, sum_dxhat_xhat)") for (int64_t j = 0; j < width; j++) { \
          float xh = (LOAD(x[j]) - mean) * rstd, z = xh * LOAD(weight[j]) + LOAD(bias[j]);                \
          float dz = LOAD(dy[j]) * (normal_cdf(z) + x_normal_pdf(z)), dxh = dz * LOAD(weight[j]);         \
          xhat[j] = xh;                                                                                   \
          dxhat[j] = dxh;                                                                                 \
          dw[j] += dz * xh;                                                                               \
          db[j] += dz;                                                                                    \
          sum_dxhat += dxh;                                                                               \
          sum_dxhat_xhat += dxh * xh;                                                                     \
        }                                                                                                 \
        float c1 = sum_dxhat / width, c2 = sum_dxhat_xhat / width;                                        \
        _Pragma("omp simd") for (int64_t j = 0; j < width; j++)                                           \
            dx[j] = STORE(rstd * (dxhat[j] - c1 - xhat[j] * c2));                                         \
      }                                                                                                   \
      free(dxhat);                                                                                        \
    }                                                                                                     \
    add_partials(partial, threads, width, dweight, dbias);                                                \
  }

NORM_GELU_FORWARD(norm_gelu_forward_f32, float, load_f32, store_f32)
NORM_GELU_FORWARD(norm_gelu_forward_bf16, uint16_t, load_bf16, store_bf16)
NORM_GELU_BACKWARD(norm_gelu_backward_f32, float, load_f32, store_f32)
NORM_GELU_BACKWARD(norm_gelu_backward_bf16, uint16_t, load_bf16, store_bf16)

/* fairseq's Adam step (fairseq/optim/adam.py) in float over n values, for bf16 parameters on the CPU, in the
 * order and with the roundings of its torch ops, so that the result is fairseq's to the bit:
 *   g = grad * factor                                      (multiply_grads: the wrapper's gradient factor)
 *   m = fma(g, 1 - beta1, m * beta1)                       (exp_avg.mul_(beta1).add_(grad, alpha=1 - beta1))
 *   v = fma((1 - beta2) * g, g, v * beta2)                 (exp_avg_sq.mul_(beta2).addcmul_(grad, grad, 1 - beta2))
 *   p = fma(p, -lr * weight_decay, p)                      (p.add_(p, alpha=-weight_decay * lr))
 *   p = p + (-step_size * m) / (sqrt(v) + eps)             (p.addcdiv_(exp_avg, denom, value=-step_size))
 * torch's vectorised add with alpha and addcmul end in one fused multiply-add; addcdiv rounds each operation.
 * The loop has no multiply whose product is added outside fmaf, so the compiler's own contraction of a * b + c
 * (-ffp-contract) cannot change a result.  The scalars come from the caller as float (torch casts them so for
 * float tensors), computed there in double.  torch's CPU sqrt is not correctly rounded (off by up to 0.75 of a
 * float step in 16% of values, torch 2.13 on AVX2); sqrtf here is, the one difference.
 * grad: bf16, or NULL where the parameter got no gradient this step (zeros, as fairseq's --bf16 gives them);
 * master: the float32 master weight (--bf16), or NULL where the bf16 weight is the parameter itself
 * (--memory-efficient-bf16).  The bf16 weight is written from the new value, rounded once.  One pass reads
 * the bf16 gradient where --bf16's wrapper made three: a float32 copy of the gradient, the update, and the copy
 * of the master back into the model. */
static inline void adam_span(const uint16_t *g, float *master, uint16_t *w, float *m, float *v, int64_t n,
                             const int has_grad, const int has_master, float factor, float beta1, float beta2,
                             float one_minus_beta1, float one_minus_beta2, float neg_lr_decay, float eps,
                             float neg_step_size) {
#pragma omp simd
  for (int64_t j = 0; j < n; j++) {
    float grad = has_grad ? load_bf16(g[j]) * factor : 0.0f;
    float p = has_master ? master[j] : load_bf16(w[j]);
    float mj = fmaf(grad, one_minus_beta1, m[j] * beta1);
    float vj = fmaf(one_minus_beta2 * grad, grad, v[j] * beta2);
    p = fmaf(p, neg_lr_decay, p);
    p = p + (neg_step_size * mj) / (sqrtf(vj) + eps);
    m[j] = mj;
    v[j] = vj;
    if (has_master) master[j] = p;
    w[j] = store_bf16(p);
  }
}

/* Work over many tensors at once (one call per optimizer step or bucket, so a model of many small tensors pays
 * one call and one thread team): each tensor is cut into blocks of BLOCK values, and the blocks are split over
 * the threads.  first_blocks returns first[i] = tensor i's first block, first[count] = the number of blocks
 * (malloc'ed); tensor_of finds the tensor that holds block b. */
#define BLOCK 8192
static int64_t *first_blocks(int64_t count, const int64_t *sizes) {
  int64_t *first = (int64_t *)malloc(sizeof(int64_t) * (count + 1));
  first[0] = 0;
  for (int64_t i = 0; i < count; i++) first[i + 1] = first[i] + (sizes[i] + BLOCK - 1) / BLOCK;
  return first;
}
static inline int64_t tensor_of(const int64_t *first, int64_t count, int64_t b) {
  int64_t lo = 0, hi = count - 1; /* the last i with first[i] <= b */
  while (lo < hi) {
    int64_t mid = (lo + hi + 1) / 2;
    if (first[mid] <= b) lo = mid;
    else hi = mid - 1;
  }
  return lo;
}
/* Block b's tensor (*i), its first value in that tensor (*start) and its length (returned). */
static inline int64_t block_span(const int64_t *first, const int64_t *sizes, int64_t count, int64_t b, int64_t *i,
                                 int64_t *start) {
  *i = tensor_of(first, count, b);
  *start = (b - first[*i]) * BLOCK;
  return sizes[*i] - *start < BLOCK ? sizes[*i] - *start : BLOCK;
}
/* The threads for `blocks` blocks: no more than blocks, at least one (OpenMP needs one). */
static inline int team_for(int64_t blocks, int threads) {
  return blocks < threads ? (blocks > 0 ? (int)blocks : 1) : threads;
}

/* grads[i] and masters[i] may be NULL (see adam_span). */
void adam_step_bf16(int64_t count, const uint16_t *const *grads, float *const *masters, uint16_t *const *weights,
                    float *const *exp_avgs, float *const *exp_avg_sqs, const int64_t *sizes, float factor,
                    float beta1, float beta2, float one_minus_beta1, float one_minus_beta2, float neg_lr_decay,
                    float eps, float neg_step_size, int threads) {
  int64_t *first = first_blocks(count, sizes), blocks = first[count];
  _Pragma("omp parallel for num_threads(team_for(blocks, threads)) schedule(static)")
  for (int64_t b = 0; b < blocks; b++) {
    int64_t i, start, len = block_span(first, sizes, count, b, &i, &start);
    const uint16_t *g = grads[i] ? grads[i] + start : NULL;
    float *ms = masters[i] ? masters[i] + start : NULL;
    uint16_t *w = weights[i] + start;
#define ADAM_ARGS exp_avgs[i] + start, exp_avg_sqs[i] + start, len
#define ADAM_SCALARS factor, beta1, beta2, one_minus_beta1, one_minus_beta2, neg_lr_decay, eps, neg_step_size
    if (g && ms) adam_span(g, ms, w, ADAM_ARGS, 1, 1, ADAM_SCALARS);
    else if (g) adam_span(g, NULL, w, ADAM_ARGS, 1, 0, ADAM_SCALARS);
    else if (ms) adam_span(NULL, ms, w, ADAM_ARGS, 0, 1, ADAM_SCALARS);
    else adam_span(NULL, NULL, w, ADAM_ARGS, 0, 0, ADAM_SCALARS);
  }
  free(first);
}

/* out[i] = the sum of the squares of bf16 tensor i, for the gradient norm before clipping: each block summed
 * in float, the blocks of a tensor in double and in order, so the result does not depend on the threads. */
void sum_squares_bf16(int64_t count, const uint16_t *const *tensors, const int64_t *sizes, double *out,
                      int threads) {
  int64_t *first = first_blocks(count, sizes), blocks = first[count];
  double *partial = (double *)malloc(sizeof(double) * (blocks ? blocks : 1));
  _Pragma("omp parallel for num_threads(team_for(blocks, threads)) schedule(static)")
  for (int64_t b = 0; b < blocks; b++) {
    int64_t i, start, len = block_span(first, sizes, count, b, &i, &start);
    const uint16_t *t = tensors[i] + start;
    float sum = 0.0f;
    _Pragma("omp simd reduction(+ : sum)") for (int64_t j = 0; j < len; j++) {
      float x = load_bf16(t[j]);
      sum += x * x;
    }
    partial[b] = sum;
  }
  for (int64_t i = 0; i < count; i++) {
    double sum = 0.0;
    for (int64_t b = first[i]; b < first[i + 1]; b++) sum += partial[b];
    out[i] = sum;
  }
  free(partial);
  free(first);
}
