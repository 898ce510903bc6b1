// rnnlab's CPU time loop for the fused LSTM and GRU layers, called from XLA as FFI
// custom calls (rnnlab/native/__init__.py builds and registers it; rnnlab/fused.py
// uses it on CPU). What XLA:CPU does per step of a scanned recurrence: one small
// GEMM dispatched to its thread pool plus a few elementwise kernels, about 140 us for
// (32x256)@(256x1024) on this kind of 2-core machine. What this file does instead: the
// whole loop in one call, on a persistent team of threads, with W_h packed once per call
// into panels that stay in cache, a register-blocked GEMM kernel (GCC vector extensions,
// so it compiles to AVX-512, AVX2 or NEON with -march=native) and the gate nonlinearities
// applied while the step's gate tile is still in L1.
//
// The products that are parallel in time run in the same call as ONE blocked GEMM each over the
// live (t, b) rows (see "live rows"): the input projection x @ W_x before the loop (or inside
// each step's GEMM while the packed weights fit in cache), and after the backward loop d x and
// the weight gradients.
//
// Semantics are those of rnnlab.fused.run (and so of scan.run): gate orders (LSTM i,f,g,o;
// GRU r,z,n reset-after with b_hn), resets (carry_in = reset ? carry_reset : carry),
// lengths (past a sequence's end the carry is frozen and the output is 0), reverse
// direction, a recurrent dropout mask on h where it enters W_h. The saved residual has the
// layout of fused._pack: per step and row [carry_in leaves | gate activations], so the XLA
// and native paths are interchangeable.
//
// Numerics: float32 throughout; sums over k in order (k = 0..K-1) for every output, so the
// results do not depend on the number of threads. tanh is Eigen's rational approximation
// (max abs error 4e-7), sigmoid(x) = 0.5 tanh(x/2) + 0.5.

#include <algorithm>
#include <cmath>
#include <atomic>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <memory>
#include <vector>

#include <sched.h>

namespace rnnlab {

// ------------------------------------------------------------------------------------ vectors
#if defined(__AVX512F__)
constexpr int VL = 16, N_VREGS = 32;  // floats per vector register (zmm), registers
#else
constexpr int VL = 8, N_VREGS = 16;  // AVX2 ymm (and what GCC makes of 8-float vectors elsewhere)
#endif
// rows per GEMM tile for NV vectors per row: accumulators + the NV loaded B vectors + a broadcast
// fit in the register file (AVX-512, NV=4: 6 rows, 24 accumulators).
constexpr int tile_rows(int nv) { return std::min(8, std::max(1, (N_VREGS - nv - 1) / nv)); }
typedef float vf __attribute__((vector_size(VL * sizeof(float)), aligned(64)));
typedef float vfu __attribute__((vector_size(VL * sizeof(float)), aligned(4)));  // unaligned access

static inline float tanh_f(float a) {
  // Eigen's generic_fast_tanh_float: odd/even minimax rational on [-7.9, 7.9].
  const float x = std::min(std::max(a, -7.90531110763549805f), 7.90531110763549805f);
  const float x2 = x * x;
  float p = x2 * -2.76076847742355e-16f + 2.00018790482477e-13f;
  p = x2 * p + -8.60467152213735e-11f;
  p = x2 * p + 5.12229709037114e-08f;
  p = x2 * p + 1.48572235717979e-05f;
  p = x2 * p + 6.37261928875436e-04f;
  p = x2 * p + 4.89352455891786e-03f;
  p = x * p;
  float q = x2 * 1.19825839466702e-06f + 1.18534705686654e-04f;
  q = x2 * q + 2.26843463243900e-03f;
  q = x2 * q + 4.89352518554385e-03f;
  const float r = p / q;
  return std::fabs(a) < 0.0004f ? a : r;
}
static inline float sigmoid_f(float x) { return 0.5f * tanh_f(0.5f * x) + 0.5f; }

// ------------------------------------------------------------------------------------ threads
// Work is a sequence of steps, each cut into chunks; every chunk of step s must finish before any
// chunk of step s+1 starts. Participants take tickets k = 0, 1, 2, ... (chunk k % n_chunks of step
// k / n_chunks) and wait only for tickets taken before theirs, which are being worked on: nobody
// waits for a participant that has not started. So the helpers can be tasks on XLA's own
// intra-op pool (whose threads would otherwise spin idle during this call, on the same cores):
// a helper may join late or never (a busy pool), the caller then takes its chunks, and nothing
// deadlocks. A helper that starts after the work is done finds no ticket and leaves, touching
// only the shared, reference-counted ticket state.
using Spawn = std::function<void(std::function<void()>)>;

static inline void cpu_relax() {
#if defined(__x86_64__)
  __builtin_ia32_pause();
#endif
}

struct Tickets {
  int64_t total = 0;
  int n_chunks = 1;
  std::atomic<int64_t> next{0}, completed{0};
  const std::function<void(int, int)>* work = nullptr;  // dereferenced only for a valid ticket
};

static void wait_for(const std::atomic<int64_t>& counter, int64_t target) {
  for (int spins = 0; counter.load(std::memory_order_acquire) < target; spins++) {
    if (spins < 4000) {
      cpu_relax();
    } else {
      sched_yield();  // oversubscribed (another process on these cores): give the core away
    }
  }
}

static void participate(Tickets& tk) {
  for (;;) {
    const int64_t k = tk.next.fetch_add(1, std::memory_order_relaxed);
    if (k >= tk.total) return;
    const int64_t step = k / tk.n_chunks;
    wait_for(tk.completed, step * tk.n_chunks);
    (*tk.work)(static_cast<int>(step), static_cast<int>(k % tk.n_chunks));
    tk.completed.fetch_add(1, std::memory_order_acq_rel);
  }
}

// work(step, chunk) for every step < n_steps and chunk < n_chunks, steps in order
static void run_steps(const Spawn& spawn, int n_steps, int n_chunks, const std::function<void(int, int)>& work) {
  auto tk = std::make_shared<Tickets>();
  tk->total = static_cast<int64_t>(n_steps) * n_chunks;
  tk->n_chunks = n_chunks;
  tk->work = &work;
  if (spawn)
    for (int i = 1; i < n_chunks; i++) spawn([tk] { participate(*tk); });
  participate(*tk);
  wait_for(tk->completed, tk->total);
}

// fn(i) for i < n, in contiguous chunks over the threads (independent items)
static void parallel_for(int n, int threads, const Spawn& spawn, const std::function<void(int)>& fn) {
  const int chunks = std::max(1, std::min(threads, n));
  run_steps(spawn, 1, chunks, [&](int, int c) {
    const int i0 = static_cast<int>(static_cast<int64_t>(n) * c / chunks);
    const int i1 = static_cast<int>(static_cast<int64_t>(n) * (c + 1) / chunks);
    for (int i = i0; i < i1; i++) fn(i);
  });
}

struct AlignedFree {
  void operator()(float* p) const { std::free(p); }
};
using Buf = std::unique_ptr<float[], AlignedFree>;
static Buf alloc(size_t n) {
  size_t bytes = ((n * sizeof(float) + 63) / 64) * 64;
  float* p = static_cast<float*>(std::aligned_alloc(64, bytes == 0 ? 64 : bytes));
  std::memset(p, 0, bytes == 0 ? 64 : bytes);
  return Buf(p);
}

// Grow-only buffers kept per calling thread and reused by later calls. A fresh allocation of
// tens of MB per call would be mmap-ed and page-faulted in again every time (one fault per
// 4 KB, about 1 ms per 4 MB on this kind of machine). Contents are not preserved.
// weights packed for the step GEMM up to this size keep the input projection in the loop: they are
// read again every step and must stay in cache (L2 + a share of L3 here)
#ifndef RNNLAB_FUSE_MB
#define RNNLAB_FUSE_MB 8
#endif
constexpr double FUSE_BYTES = RNNLAB_FUSE_MB * double(1 << 20);

enum Slot { XP, DXP, DHW, HM, PACK_F, PACK_B, RING, GEMM_A, GEMM_B, GEMM_TILE, LIVE_X, LIVE_G, LIVE_G2, LIVE_Y,
            N_SLOTS };
static float* scratch(Slot slot, size_t n) {
  static thread_local Buf bufs[N_SLOTS];
  static thread_local size_t sizes[N_SLOTS] = {};
  if (sizes[slot] < n) {
    bufs[slot] = alloc(n);
    sizes[slot] = n;
  }
  return bufs[slot].get();
}

// ------------------------------------------------------------------------------------ GEMM
// C[r, v*VL + l] (r < MR, v < NV) = sum_k A[r*lda + k] * P[k*NV*VL + v*VL + l], with P one packed
// panel (K x NV*VL, contiguous). The tile stays in MR*NV vector registers over the whole K loop;
// tile column group v is stored at C + r*ldc + v*vstride.
template <int MR, int NV, bool ACC = false>
static inline void kernel(int K, const float* __restrict A, int lda, const float* __restrict P,
                          float* __restrict C, int ldc, int vstride) {
  vf acc[MR][NV];
  for (int r = 0; r < MR; r++)
    for (int v = 0; v < NV; v++)
      acc[r][v] = ACC ? *reinterpret_cast<const vfu*>(C + (size_t)r * ldc + v * vstride) : vf{};
#if RNNLAB_KUNROLL == 4
#pragma GCC unroll 4
#elif RNNLAB_KUNROLL == 2
#pragma GCC unroll 2
#endif
  for (int k = 0; k < K; k++) {
    vf b[NV];
#ifdef RNNLAB_PREFETCH
    __builtin_prefetch(P + (size_t)(k + RNNLAB_PREFETCH) * NV * VL);
    if (NV > 1) __builtin_prefetch(P + (size_t)(k + RNNLAB_PREFETCH) * NV * VL + 16);
    if (NV > 2) __builtin_prefetch(P + (size_t)(k + RNNLAB_PREFETCH) * NV * VL + 32);
    if (NV > 3) __builtin_prefetch(P + (size_t)(k + RNNLAB_PREFETCH) * NV * VL + 48);
#endif
    for (int v = 0; v < NV; v++) b[v] = *reinterpret_cast<const vf*>(P + (size_t)k * NV * VL + v * VL);
#pragma GCC unroll 8
    for (int r = 0; r < MR; r++) {
      const float a = A[(size_t)r * lda + k];
      for (int v = 0; v < NV; v++) acc[r][v] += a * b[v];
    }
  }
  for (int r = 0; r < MR; r++)
    for (int v = 0; v < NV; v++) *reinterpret_cast<vfu*>(C + (size_t)r * ldc + v * vstride) = acc[r][v];
}

// a tile of m < MR rows: the kernel instantiated for exactly m
template <int M, int NV, bool ACC>
static inline void rows_tail(int m, int K, const float* A, int lda, const float* P, float* C, int ldc, int vstride) {
  if constexpr (M > 0) {
    if (m == M) {
      kernel<M, NV, ACC>(K, A, lda, P, C, ldc, vstride);
    } else {
      rows_tail<M - 1, NV, ACC>(m, K, A, lda, P, C, ldc, vstride);
    }
  }
}

template <int MR, int NV, bool ACC = false>
static void panel_rows(int M, int K, const float* A, int lda, const float* P, float* C, int ldc, int vstride) {
  int m = 0;
  for (; m + MR <= M; m += MR)
    kernel<MR, NV, ACC>(K, A + (size_t)m * lda, lda, P, C + (size_t)m * ldc, ldc, vstride);
  if (m < M) rows_tail<MR - 1, NV, ACC>(M - m, K, A + (size_t)m * lda, lda, P, C + (size_t)m * ldc, ldc, vstride);
}

// The forward step's tile: NACC vectors per row, the sum of two products over two operands,
//   x_t (K1 = D columns, panel P1 with NV1 vectors per k) and h_{t-1} (K2 = H, P2 with NV2),
// vector v of the second segment adding into accumulator acc2(v): the identity, except that with
// NACC > NV2 its last vector goes to the last accumulator (GRU: r, z, n_x from x; r, z, n_h from h).
// K1 = 0: the x part was projected before the loop (xp) and the tile is the h part alone.
template <int NACC, int NV2>
constexpr int acc2(int v) {
  return (NACC > NV2 && v == NV2 - 1) ? NACC - 1 : v;
}

template <int MR, int NACC, int NV1, int NV2>
static inline void kernel2(int K1, const float* __restrict A1, int lda1, const float* __restrict P1, int K2,
                           const float* __restrict A2, int lda2, const float* __restrict P2, float* __restrict C,
                           int ldc, int vstride) {
  vf acc[MR][NACC];
  for (int r = 0; r < MR; r++)
    for (int v = 0; v < NACC; v++) acc[r][v] = vf{};
  for (int k = 0; k < K1; k++) {
    vf b[NV1];
    for (int v = 0; v < NV1; v++) b[v] = *reinterpret_cast<const vf*>(P1 + (size_t)k * NV1 * VL + v * VL);
#pragma GCC unroll 8
    for (int r = 0; r < MR; r++) {
      const float a = A1[(size_t)r * lda1 + k];
      for (int v = 0; v < NV1; v++) acc[r][v] += a * b[v];
    }
  }
  for (int k = 0; k < K2; k++) {
    vf b[NV2];
    for (int v = 0; v < NV2; v++) b[v] = *reinterpret_cast<const vf*>(P2 + (size_t)k * NV2 * VL + v * VL);
#pragma GCC unroll 8
    for (int r = 0; r < MR; r++) {
      const float a = A2[(size_t)r * lda2 + k];
      for (int v = 0; v < NV2; v++) acc[r][acc2<NACC, NV2>(v)] += a * b[v];
    }
  }
  for (int r = 0; r < MR; r++)
    for (int v = 0; v < NACC; v++) *reinterpret_cast<vfu*>(C + (size_t)r * ldc + v * vstride) = acc[r][v];
}

template <int M, int NACC, int NV1, int NV2>
static inline void rows_tail2(int m, int K1, const float* A1, int lda1, const float* P1, int K2, const float* A2,
                              int lda2, const float* P2, float* C, int ldc, int vstride) {
  if constexpr (M > 0) {
    if (m == M) {
      kernel2<M, NACC, NV1, NV2>(K1, A1, lda1, P1, K2, A2, lda2, P2, C, ldc, vstride);
    } else {
      rows_tail2<M - 1, NACC, NV1, NV2>(m, K1, A1, lda1, P1, K2, A2, lda2, P2, C, ldc, vstride);
    }
  }
}

template <int MR, int NACC, int NV1, int NV2>
static void panel_rows2(int M, int K1, const float* A1, int lda1, const float* P1, int K2, const float* A2, int lda2,
                        const float* P2, float* C, int ldc, int vstride) {
  int m = 0;
  for (; m + MR <= M; m += MR)
    kernel2<MR, NACC, NV1, NV2>(K1, A1 + (size_t)m * lda1, lda1, P1, K2, A2 + (size_t)m * lda2, lda2, P2,
                                C + (size_t)m * ldc, ldc, vstride);
  if (m < M)
    rows_tail2<MR - 1, NACC, NV1, NV2>(M - m, K1, A1 + (size_t)m * lda1, lda1, P1, K2, A2 + (size_t)m * lda2, lda2,
                                       P2, C + (size_t)m * ldc, ldc, vstride);
}

// Forward step panels, units in groups of VL: panel p holds the x part (K1 = D rows, the NV1
// gate columns of W_x that the cell sums into its accumulators) and then the h part (K2 = H rows
// of W_h's NV2 gate columns), each for units [p*VL, p*VL + VL), zero past H. One tile is then
// all the gates of VL units, so the step's nonlinearities need no other data.
static float* pack_step_panels(const float* W_x, int D, const float* W_h, int H, int NG, int NV1, int NV2,
                               int n_panels, int threads, const Spawn& spawn) {
  const size_t per_panel = (static_cast<size_t>(D) * NV1 + static_cast<size_t>(H) * NV2) * VL;
  float* P = scratch(PACK_F, n_panels * per_panel);
  const int G = NG * H;
  // a row of VL units of one gate column block: contiguous in W and in the panel
  auto copy_units = [H](float* dst, const float* src, int u0) {
    const int n = std::max(0, std::min(VL, H - u0));
    std::memcpy(dst, src, sizeof(float) * n);
    std::memset(dst + n, 0, sizeof(float) * (VL - n));
  };
  parallel_for(n_panels, threads, spawn, [&](int p) {
    float* x_part = P + p * per_panel;
    float* h_part = x_part + static_cast<size_t>(D) * NV1 * VL;
    const int u0 = p * VL;
    for (int k = 0; k < D; k++)
      for (int v = 0; v < NV1; v++)
        copy_units(x_part + ((size_t)k * NV1 + v) * VL, W_x + (size_t)k * G + v * H + u0, u0);
    for (int k = 0; k < H; k++)
      for (int v = 0; v < NV2; v++)
        copy_units(h_part + ((size_t)k * NV2 + v) * VL, W_h + (size_t)k * G + v * H + u0, u0);
  });
  return P;
}

// Backward panels of W^T (G x H): P[p][k][l] = W[p*2VL + l][k], k < G: dh_rec = dhw @ W^T.
constexpr int NVB = 2;  // vectors per backward tile row: 2*VL units
static float* pack_transposed_panels(const float* W, int H, int G, int n_panels, int threads, const Spawn& spawn) {
  constexpr int W_ = NVB * VL;
  float* P = scratch(PACK_B, static_cast<size_t>(n_panels) * G * W_);
  parallel_for(n_panels, threads, spawn, [&](int p) {
    float* panel = P + static_cast<size_t>(p) * G * W_;
    for (int k0 = 0; k0 < G; k0 += 16) {  // a W_ x 16 block: read along W's rows, write along the panel's
      const int nk = std::min(16, G - k0);
      for (int l = 0; l < W_; l++) {
        const int u = p * W_ + l;
        const float* src = W + (size_t)u * G + k0;
        for (int j = 0; j < nk; j++) panel[(size_t)(k0 + j) * W_ + l] = u < H ? src[j] : 0.0f;
      }
    }
  });
  return P;
}


// ------------------------------------------------------------------------------------ blocked GEMM
// C (M x N, row stride ldc) = [C +] A @ B, for the products that are parallel in time: the input
// projection before the loop, d x and the weight gradients after it (ONE GEMM each over all
// T*B rows). Element (i, j) of A is A.p[i*A.rs + j*A.cs], so a transposed operand is only other
// strides; likewise B. B is packed per KC-block into panels of GNR columns, A per MC x KC block
// into rows, and the register kernel runs on each tile; columns (or rows, when there are too
// few column panels) are split over the threads. Every element sums over k in order, so the
// result does not depend on the split.
struct Mat {
  const float* p;
  ptrdiff_t rs, cs;
  float at(ptrdiff_t i, ptrdiff_t j) const { return p[i * rs + j * cs]; }
};
#ifndef RNNLAB_GNV
#define RNNLAB_GNV 4
#endif
#ifndef RNNLAB_KC
#define RNNLAB_KC 512
#endif
#ifndef RNNLAB_MCB
#define RNNLAB_MCB 8
#endif
constexpr int GNV = RNNLAB_GNV, GNR = GNV * VL, GMR = tile_rows(GNV), KC = RNNLAB_KC, MC = RNNLAB_MCB * GMR;

// dst[i*ld + j] = src(i0 + i, j0 + j) for i < ni, j < nj: row copies when src's rows are
// contiguous, else 16 x 16 blocks (read along src's columns, write along dst's rows)
static void pack(float* __restrict dst, Mat src, int i0, int ni, int j0, int nj, int ld) {
  if (src.cs == 1) {
    for (int i = 0; i < ni; i++)
      std::memcpy(dst + (size_t)i * ld, src.p + (i0 + i) * src.rs + j0, sizeof(float) * nj);
    return;
  }
  if (src.rs == 1) {
    for (int jb = 0; jb < nj; jb += 16)
      for (int ib = 0; ib < ni; ib += 16) {
        const int ie = std::min(ni, ib + 16), je = std::min(nj, jb + 16);
        for (int j = jb; j < je; j++) {
          const float* col = src.p + (j0 + j) * src.cs + i0;
          for (int i = ib; i < ie; i++) dst[(size_t)i * ld + j] = col[i];
        }
      }
    return;
  }
  for (int i = 0; i < ni; i++)
    for (int j = 0; j < nj; j++) dst[(size_t)i * ld + j] = src.at(i0 + i, j0 + j);
}

// one A operand and its C: C (M x N, row stride ldc) = A (M x K) @ B
struct Part {
  int M;
  Mat A;
  float* C;
  int ldc;
};

// every part's C = [C +] A @ B, for parts that share B (packed once per KC block)
static void gemm_parts(std::vector<Part> parts, int N, int K, Mat B, bool accumulate, int threads,
                       const Spawn& spawn) {
  int rows = 0;
  for (const Part& pt : parts) rows += pt.M;
  if (rows <= 0 || N <= 0) return;
  if (K <= 0) {
    if (!accumulate)
      for (const Part& pt : parts)
        for (int i = 0; i < pt.M; i++) std::memset(pt.C + (size_t)i * pt.ldc, 0, sizeof(float) * N);
    return;
  }
  const int n_panels = (N + GNR - 1) / GNR;
  int m_blocks = 0;
  for (const Part& pt : parts) m_blocks += (pt.M + GMR - 1) / GMR;
  int chunks = 2.0 * rows * N * K < 4e6 ? 1 : std::max(1, threads);
  const bool split_n = n_panels >= chunks;
  if (!split_n) chunks = std::max(1, std::min(chunks, m_blocks));
  auto cut = [chunks](int n, int c) { return static_cast<int>(static_cast<int64_t>(n) * c / chunks); };
  run_steps(spawn, 1, chunks, [&](int, int c) {
    const int p0 = split_n ? cut(n_panels, c) : 0, p1 = split_n ? cut(n_panels, c + 1) : n_panels;
    // rows: blocks of GMR counted over the parts in order; this chunk's [b0, b1)
    const int b0 = split_n ? 0 : cut(m_blocks, c), b1 = split_n ? m_blocks : cut(m_blocks, c + 1);
    if (p0 >= p1 || b0 >= b1) return;
    const int kc_max = std::min(KC, K);
    float* Bp = scratch(GEMM_B, (size_t)(p1 - p0) * kc_max * GNR);
    float* Ap = scratch(GEMM_A, (size_t)MC * kc_max);
    float* tile = scratch(GEMM_TILE, (size_t)MC * GNR);
    for (int k0 = 0; k0 < K; k0 += KC) {
      const int kc = std::min(KC, K - k0);
      for (int p = p0; p < p1; p++) {  // panel p: kc x GNR, zero past column N
        float* panel = Bp + (size_t)(p - p0) * kc * GNR;
        const int j0 = p * GNR, nj = std::min(GNR, N - j0);
        pack(panel, B, k0, kc, j0, nj, GNR);
        if (nj < GNR)
          for (int k = 0; k < kc; k++) std::memset(panel + (size_t)k * GNR + nj, 0, sizeof(float) * (GNR - nj));
      }
      const bool acc = accumulate || k0 > 0;
      int block = 0;
      for (const Part& pt : parts) {
        const int nb = (pt.M + GMR - 1) / GMR;
        const int m0 = std::min(pt.M, std::max(0, b0 - block) * GMR);
        const int m1 = std::min(pt.M, std::max(0, b1 - block) * GMR);
        block += nb;
        for (int i0 = m0; i0 < m1; i0 += MC) {
          const int mc = std::min(MC, m1 - i0);
          pack(Ap, pt.A, i0, mc, k0, kc, kc);
          for (int p = p0; p < p1; p++) {
            const float* panel = Bp + (size_t)(p - p0) * kc * GNR;
            const int j0 = p * GNR, nj = std::min(GNR, N - j0);
            float* cc = pt.C + (size_t)i0 * pt.ldc + j0;
            if (nj == GNR) {
              if (acc) {
                panel_rows<GMR, GNV, true>(mc, kc, Ap, kc, panel, cc, pt.ldc, VL);
              } else {
                panel_rows<GMR, GNV, false>(mc, kc, Ap, kc, panel, cc, pt.ldc, VL);
              }
            } else {  // a partial panel: through a full-width tile
              for (int i = 0; i < mc; i++) {
                float* t = tile + (size_t)i * GNR;
                if (acc) std::memcpy(t, cc + (size_t)i * pt.ldc, sizeof(float) * nj);
                std::memset(t + (acc ? nj : 0), 0, sizeof(float) * (GNR - (acc ? nj : 0)));
              }
              panel_rows<GMR, GNV, true>(mc, kc, Ap, kc, panel, tile, GNR, VL);
              for (int i = 0; i < mc; i++)
                std::memcpy(cc + (size_t)i * pt.ldc, tile + (size_t)i * GNR, sizeof(float) * nj);
            }
          }
        }
      }
    }
  });
}

static void gemm(int M, int N, int K, Mat A, Mat B, float* C, int ldc, bool accumulate, int threads,
                 const Spawn& spawn) {
  gemm_parts({Part{M, A, C, ldc}}, N, K, B, accumulate, threads, spawn);
}

// out[j] = sum over rows i (in order) of X[i*ld + j], j < n: bias gradients
static void column_sums(int rows, int n, const float* X, int ld, float* out, int threads, const Spawn& spawn) {
  const int blocks = (n + 255) / 256;
  const int chunks = std::max(1, std::min(threads, blocks));
  run_steps(spawn, 1, chunks, [&](int, int c) {
    const int j0 = std::min(n, static_cast<int>(static_cast<int64_t>(blocks) * c / chunks) * 256);
    const int j1 = std::min(n, static_cast<int>(static_cast<int64_t>(blocks) * (c + 1) / chunks) * 256);
    std::memset(out + j0, 0, sizeof(float) * (j1 - j0));
    for (int i = 0; i < rows; i++) {
      const float* x = X + (size_t)i * ld;
      for (int j = j0; j < j1; j++) out[j] += x[j];
    }
  });
}

// ------------------------------------------------------------------------------------ cells
// A cell says how many gates and carry leaves it has, where h (the leaf that enters W_h) sits
// among the carry leaves, and does one step's elementwise work for one row over units [0, n):
//   forward(z: NG gate pre-activation rows from h @ W_h (each at z + g*zs), xp row, carry_in
//           leaves (saved row), acts out (saved row), new carry leaves out)
//   backward(saved row, d_carry leaves (in), dy, dxp out, dhw out, d_in leaves out (the part
//            that does not go through W_h))
struct Lstm {
  static constexpr int NG = 4, NC = 2, H_LEAF = 1;  // carry (c, h); acts i, f, g, o
  static constexpr int NACC = 4, NV1 = 4, NV2 = 4;  // step tile: i, f, g, o (x and h parts summed)
  static constexpr int SAVED = NC + NG;            // saved row width in units of H
  static constexpr bool SEPARATE_DHW = false;      // d loss / d (hm @ W_h) equals dxp
  struct Params {
    Params from(int /*u0*/) const { return *this; }
  };

  // z: the NACC accumulator rows of the step tile (each at z + g*zs); xp: the x part when it was
  // projected before the loop (else null: z holds it already); b: the bias (G)
  static inline void forward(int n, int H, const float* __restrict z, int zs, const float* __restrict xp,
                             const float* __restrict b, const float* __restrict saved, float* __restrict acts,
                             float* __restrict c_new, float* __restrict h_new, const Params& prm) {
    if (xp) {
      forward_rows<true>(n, H, z, zs, xp, b, saved, acts, c_new, h_new, prm);
    } else {
      forward_rows<false>(n, H, z, zs, xp, b, saved, acts, c_new, h_new, prm);
    }
  }
  template <bool XP>
  static inline void forward_rows(int n, int H, const float* __restrict z, int zs, const float* __restrict xp,
                                  const float* __restrict b, const float* __restrict c, float* __restrict acts,
                                  float* __restrict c_new, float* __restrict h_new, const Params&) {
    for (int u = 0; u < n; u++) {
      const float i = sigmoid_f(z[u] + ((XP ? xp[u] : 0.0f) + b[u]));
      const float f = sigmoid_f(z[zs + u] + ((XP ? xp[H + u] : 0.0f) + b[H + u]));
      const float g = tanh_f(z[2 * zs + u] + ((XP ? xp[2 * H + u] : 0.0f) + b[2 * H + u]));
      const float o = sigmoid_f(z[3 * zs + u] + ((XP ? xp[3 * H + u] : 0.0f) + b[3 * H + u]));
      const float cn = f * c[u] + i * g;
      acts[u] = i;
      acts[H + u] = f;
      acts[2 * H + u] = g;
      acts[3 * H + u] = o;
      c_new[u] = cn;
      h_new[u] = o * tanh_f(cn);
    }
  }

  // d_carry: (dc, dh) of carry_out; returns d_in (dc_in, dh_in without the W_h term)
  static inline void backward(int n, int H, const float* __restrict saved, const float* __restrict dc,
                              const float* __restrict dh, const float* __restrict dy, float* __restrict dxp,
                              float* /*dhw*/, float* __restrict dc_in, float* __restrict dh_in,
                              const Params&) {
    const float* __restrict c = saved;
    const float* __restrict a = saved + NC * H;
    for (int u = 0; u < n; u++) {
      const float i = a[u], f = a[H + u], g = a[2 * H + u], o = a[3 * H + u];
      const float tc = tanh_f(f * c[u] + i * g);
      const float dht = dh[u] + dy[u];
      const float dct = dc[u] + dht * o * (1.0f - tc * tc);
      dxp[u] = dct * g * i * (1.0f - i);
      dxp[H + u] = dct * c[u] * f * (1.0f - f);
      dxp[2 * H + u] = dct * i * (1.0f - g * g);
      dxp[3 * H + u] = dht * tc * o * (1.0f - o);
      dc_in[u] = dct * f;
      dh_in[u] = 0.0f;
    }
  }
};

struct Gru {
  static constexpr int NG = 3, NC = 1, H_LEAF = 0;  // carry h; acts r, z, n, hn
  static constexpr int NACC = 4, NV1 = 3, NV2 = 3;  // step tile: r, z (x + h), n from x, n from h
  static constexpr int SAVED = NC + 4;
  static constexpr bool SEPARATE_DHW = true;  // the n block of dhw is dn * r
  struct Params {
    const float* b_hn;                                         // H
    Params from(int u0) const { return Params{b_hn + u0}; }  // a block's units start at u0
  };

  static inline void forward(int n, int H, const float* __restrict z, int zs, const float* __restrict xp,
                             const float* __restrict b, const float* __restrict saved, float* __restrict acts,
                             float* __restrict h_new, float* __restrict /*unused*/, const Params& prm) {
    if (xp) {
      forward_rows<true>(n, H, z, zs, xp, b, saved, acts, h_new, prm);
    } else {
      forward_rows<false>(n, H, z, zs, xp, b, saved, acts, h_new, prm);
    }
  }
  // tile: r, z (x + h parts), n from x (0 when XP: xp has it), n from h (W_hn part, without b_hn)
  template <bool XP>
  static inline void forward_rows(int n, int H, const float* __restrict z, int zs, const float* __restrict xp,
                                  const float* __restrict b, const float* __restrict h, float* __restrict acts,
                                  float* __restrict h_new, const Params& prm) {
    const float* __restrict b_hn = prm.b_hn;
    for (int u = 0; u < n; u++) {
      const float r = sigmoid_f(((XP ? xp[u] : 0.0f) + b[u]) + z[u]);
      const float zz = sigmoid_f(((XP ? xp[H + u] : 0.0f) + b[H + u]) + z[zs + u]);
      const float hn = z[3 * zs + u] + b_hn[u];
      const float nn = tanh_f((XP ? xp[2 * H + u] : z[2 * zs + u]) + b[2 * H + u] + r * hn);
      acts[u] = r;
      acts[H + u] = zz;
      acts[2 * H + u] = nn;
      acts[3 * H + u] = hn;
      h_new[u] = (1.0f - zz) * nn + zz * h[u];
    }
  }

  static inline void backward(int n, int H, const float* __restrict saved, const float* __restrict dh,
                              const float* __restrict /*unused*/, const float* __restrict dy, float* __restrict dxp,
                              float* __restrict dhw, float* __restrict dh_in, float* __restrict /*unused*/,
                              const Params&) {
    const float* __restrict h = saved;
    const float* __restrict a = saved + NC * H;
    for (int u = 0; u < n; u++) {
      const float r = a[u], zz = a[H + u], nn = a[2 * H + u], hn = a[3 * H + u];
      const float dht = dh[u] + dy[u];
      const float dn = dht * (1.0f - zz) * (1.0f - nn * nn);
      const float dr = dn * hn * r * (1.0f - r);
      const float dz = dht * (h[u] - nn) * zz * (1.0f - zz);
      dxp[u] = dr;
      dxp[H + u] = dz;
      dxp[2 * H + u] = dn;
      dhw[u] = dr;
      dhw[H + u] = dz;
      dhw[2 * H + u] = dn * r;
      dh_in[u] = dht * zz;
    }
  }
};

// ------------------------------------------------------------------------------------ layout
struct Shape {
  int T, B, H;
};

struct Masks {
  const uint8_t* reset = nullptr;  // T x B, or null
  const uint8_t* valid = nullptr;  // T x B, or null
  const float* h_mask = nullptr;   // B x H, or null
  bool skip_dead = true;           // dead rows (valid 0) take no part in the GEMMs (see "live rows")
};

// Parallel plan. Splitting batch rows needs no synchronisation at all (rows are independent
// recurrences): each chunk runs the whole sequence for its rows. With too few rows for that
// (B < 16 on two threads) the units are split instead, in chunks of 2*VL units (the backward
// tile width, a multiple of the forward's VL), and every step ends with the chunks of all
// units done, since each reads the whole h_{t-1}.
struct Block;
struct Plan {
  bool split_rows = true;
  int chunks = 1;
  int unit_chunks = 1;  // of 2*VL units
  Block block(int c, int B, int H) const;
};

static Plan make_plan(int B, int H, int G, int T, int threads) {
  Plan p;
  p.unit_chunks = (H + NVB * VL - 1) / (NVB * VL);
  // below ~0.1 MFLOP per step a second core costs more in synchronisation than it gains
  const double step_flops = 2.0 * B * H * G;
  if (threads <= 1 || step_flops < 1e5 || T == 0) return p;
  const int row_chunks = std::min(threads, B / 8);
  if (row_chunks >= 2) {
    p.chunks = row_chunks;
  } else if (p.unit_chunks >= 2) {
    p.split_rows = false;
    p.chunks = std::min(threads, p.unit_chunks);
  }
  return p;
}

// rows [b0, b1) x units [u0, u1) of one chunk
struct Block {
  int b0, b1, u0, u1;
  int nb() const { return b1 - b0; }
  int nu() const { return u1 - u0; }
};

Block Plan::block(int c, int B, int H) const {
  auto cut = [this](int n, int i) { return static_cast<int>(static_cast<int64_t>(n) * i / chunks); };
  if (split_rows) return Block{cut(B, c), cut(B, c + 1), 0, H};
  return Block{0, B, std::min(H, cut(unit_chunks, c) * NVB * VL), std::min(H, cut(unit_chunks, c + 1) * NVB * VL)};
}

// ------------------------------------------------------------------------------------ live rows
// A row is dead at step t where valid[t, b] is 0: past its sequence's end, where the carry is
// frozen, the output is 0 and no gradient flows into the gates. Dead rows take no part in any
// GEMM: a step's GEMM runs on the block's live rows (their operands gathered into contiguous
// rows when some are dead), and the GEMMs that are parallel in time (the input projection, d x,
// the weight gradients) run on the live (t, b) rows only. A padded batch of mixed lengths (half
// of its frames are padding in the speech recipe) then costs the work of its real frames. Every
// output element sums over k in order, and a dead row contributes exact zeros to the weight
// gradients' sums, so the results are bitwise those of the full GEMMs.

// the block's rows that are live at step t, in order; returns how many
static inline int live_rows(const Masks& m, int t, int B, int b0, int b1, int* out) {
  int n = 0;
  for (int b = b0; b < b1; b++)
    if (!m.skip_dead || !m.valid || m.valid[static_cast<size_t>(t) * B + b]) out[n++] = b;
  return n;
}
static inline bool dead(const Masks& m, size_t rb) { return m.skip_dead && m.valid && !m.valid[rb]; }

// the (t, b) rows (t * B + b) of a T x B layout that are live, when dead ones are worth leaving
// out (more than 1/16 of them; else every row: copying costs more than it saves)
static std::vector<int> live_flat_rows(const Masks& m, int TB) {
  std::vector<int> rows;
  if (!m.valid || !m.skip_dead) return rows;
  rows.reserve(TB);
  for (int r = 0; r < TB; r++)
    if (m.valid[r]) rows.push_back(r);
  if (static_cast<int64_t>(rows.size()) * 16 > static_cast<int64_t>(TB) * 15) rows.clear();
  return rows;
}

// dst row i = src row rows[i] (ld floats each), over the threads
static void gather_rows(const std::vector<int>& rows, const float* src, float* dst, size_t ld, int threads,
                        const Spawn& spawn) {
  parallel_for(static_cast<int>(rows.size()), threads, spawn, [&](int i) {
    std::memcpy(dst + i * ld, src + rows[i] * ld, sizeof(float) * ld);
  });
}

// dst row rows[i] = src row i (ld floats each), over the threads: gather_rows's inverse
static void scatter_rows(const std::vector<int>& rows, const float* src, float* dst, size_t ld, int threads,
                         const Spawn& spawn) {
  parallel_for(static_cast<int>(rows.size()), threads, spawn, [&](int i) {
    std::memcpy(dst + rows[i] * ld, src + i * ld, sizeof(float) * ld);
  });
}

// ------------------------------------------------------------------------------------ forward
// X: T x B x D, W_x: D x G, b: G, W: H x G (W_h); carry0/carry_reset: NC leaves of B x H;
// outputs ys (T x B x H), carry_T (NC leaves), saved (T x B x SAVED*H; null: not kept, inference).
template <class Cell>
static void forward(const Shape& s, int D, const float* X, const float* W_x, const float* bias, const float* W,
                    const float* const* carry0, const float* const* carry_reset, const Masks& m, bool reverse,
                    int threads, const Spawn& spawn, const typename Cell::Params& prm, float* ys,
                    float* const* carry_T, float* saved) {
  const int T = s.T, B = s.B, H = s.H, NG = Cell::NG, NC = Cell::NC, G = NG * H;
  const int SW = Cell::SAVED * H;
  if (T == 0) {
    for (int c = 0; c < NC; c++) std::memcpy(carry_T[c], carry0[c], sizeof(float) * B * H);
    return;
  }
  // The input projection: inside each step's GEMM (x_t and h_{t-1} against W_x and W_h stacked)
  // while the packed weights stay in cache, else for all steps before the loop as ONE GEMM
  // (xp; the bias is added with the gates either way).
  const int NACC = Cell::NACC, NV1 = Cell::NV1, NV2 = Cell::NV2;
  const int n_panels = (H + VL - 1) / VL;
  const bool fuse_x = static_cast<double>(n_panels) * (D * NV1 + H * NV2) * VL * sizeof(float) <= FUSE_BYTES;
  const int K1 = fuse_x ? D : 0;
  float* xp = nullptr;
  if (!fuse_x) {
    xp = scratch(XP, static_cast<size_t>(T) * B * G);
    const std::vector<int> rows = live_flat_rows(m, T * B);
    if (rows.empty()) {
      gemm(T * B, G, D, Mat{X, D, 1}, Mat{W_x, G, 1}, xp, G, false, threads, spawn);
    } else {  // the live rows only (a dead row's xp is never read)
      const int R = static_cast<int>(rows.size());
      float* cx = scratch(LIVE_X, static_cast<size_t>(R) * D);
      float* cxp = scratch(LIVE_G, static_cast<size_t>(R) * G);
      gather_rows(rows, X, cx, D, threads, spawn);
      gemm(R, G, D, Mat{cx, D, 1}, Mat{W_x, G, 1}, cxp, G, false, threads, spawn);
      scatter_rows(rows, cxp, xp, G, threads, spawn);
    }
  }
  const Plan plan = make_plan(B, H, G, T, threads);
  const float* P = pack_step_panels(W_x, K1, W, H, NG, NV1, NV2, n_panels, threads, spawn);
  const size_t per_panel = (static_cast<size_t>(K1) * NV1 + static_cast<size_t>(H) * NV2) * VL;
  const Buf hm_buf = m.h_mask ? alloc(static_cast<size_t>(2) * B * H) : Buf();  // h * mask, double-buffered
  auto step_at = [&](int i) { return reverse ? T - 1 - i : i; };
  std::vector<Block> blocks;
  std::vector<Buf> z_tiles, new_carries;  // per chunk: no two steps of a chunk run at once
  std::vector<Buf> live_x, live_h;        // per chunk: the live rows' x_t and h_{t-1}, when some are dead
  std::vector<std::vector<int>> live(plan.chunks);
  for (int c = 0; c < plan.chunks; c++) {
    const Block k = plan.block(c, B, H);
    blocks.push_back(k);
    z_tiles.push_back(alloc(static_cast<size_t>(k.nb()) * NACC * (((k.nu() + VL - 1) / VL) * VL)));
    new_carries.push_back(alloc(static_cast<size_t>(NC) * k.nu()));
    live[c].resize(k.nb());
    live_x.push_back(m.valid ? alloc(static_cast<size_t>(k.nb()) * K1) : Buf());
    live_h.push_back(m.valid ? alloc(static_cast<size_t>(k.nb()) * H) : Buf());
  }

  // step t's saved row for batch row b; without a saved output (inference) two steps' rows in turn
  float* ring = saved ? nullptr : scratch(RING, static_cast<size_t>(2) * B * SW);
  auto row_at = [&](int t, int b) {
    return saved ? saved + (static_cast<size_t>(t) * B + b) * SW : ring + (static_cast<size_t>(t & 1) * B + b) * SW;
  };
  // step t's carry_in for row b, this block's units: from[c] (nu values per leaf), or carry_reset
  // where step t starts a new segment; plus h * mask, the GEMM operand
  auto write_carry_in = [&](const Block& k, int t, int b, const float* const* from) {
    float* row = row_at(t, b);
    const bool r = m.reset && m.reset[static_cast<size_t>(t) * B + b];
    for (int c = 0; c < NC; c++)
      std::memcpy(row + c * H + k.u0, r ? carry_reset[c] + static_cast<size_t>(b) * H + k.u0 : from[c],
                  sizeof(float) * k.nu());
    if (m.h_mask) {
      float* hm = hm_buf.get() + static_cast<size_t>(t & 1) * B * H + static_cast<size_t>(b) * H + k.u0;
      const float* h = row + Cell::H_LEAF * H + k.u0;
      const float* mk = m.h_mask + static_cast<size_t>(b) * H + k.u0;
      for (int u = 0; u < k.nu(); u++) hm[u] = h[u] * mk[u];
    }
  };
  auto first_carry_in = [&](const Block& k) {
    for (int b = k.b0; b < k.b1; b++) {
      const float* from[2] = {carry0[0] + static_cast<size_t>(b) * H + k.u0,
                              carry0[NC - 1] + static_cast<size_t>(b) * H + k.u0};
      write_carry_in(k, step_at(0), b, from);
    }
  };
  auto step = [&](const Block& k, int chunk, int i) {
    const int t = step_at(i), nu = k.nu(), zs = ((nu + VL - 1) / VL) * VL;
    float* z = z_tiles[chunk].get();
    float* cn[2] = {new_carries[chunk].get(), new_carries[chunk].get() + (NC > 1 ? nu : 0)};
    // h_{t-1} of row b as the GEMM reads it (times the dropout mask where there is one)
    auto h_of = [&](int b) -> const float* {
      return m.h_mask ? hm_buf.get() + static_cast<size_t>(t & 1) * B * H + static_cast<size_t>(b) * H
                      : row_at(t, b) + Cell::H_LEAF * H;
    };
    int* lv = live[chunk].data();
    const int n_live = live_rows(m, t, B, k.b0, k.b1, lv);
    const float *A, *x_t;
    int lda;
    if (n_live == k.nb()) {
      A = h_of(k.b0);
      lda = m.h_mask ? H : SW;
      x_t = X + (static_cast<size_t>(t) * B + k.b0) * D;
    } else {  // some rows are dead: the live ones' operands, contiguous
      float* gh = live_h[chunk].get();
      float* gx = live_x[chunk].get();
      for (int j = 0; j < n_live; j++) {
        std::memcpy(gh + static_cast<size_t>(j) * H, h_of(lv[j]), sizeof(float) * H);
        if (K1) std::memcpy(gx + static_cast<size_t>(j) * K1, X + (static_cast<size_t>(t) * B + lv[j]) * D,
                            sizeof(float) * K1);
      }
      A = gh;
      lda = H;
      x_t = gx;
    }
    if (n_live > 0)
      for (int p = k.u0 / VL; p < (k.u1 + VL - 1) / VL; p++) {
        const float* panel = P + p * per_panel;
        panel_rows2<tile_rows(NACC), NACC, NV1, NV2>(n_live, K1, x_t, D, panel, H, A, lda,
                                                     panel + static_cast<size_t>(K1) * NV1 * VL,
                                                     z + (p - k.u0 / VL) * VL, NACC * zs, zs);
      }
    int j = 0;  // the live row's place in the tile
    for (int b = k.b0; b < k.b1; b++) {
      const size_t rb = static_cast<size_t>(t) * B + b;
      float* row = row_at(t, b);
      float* y = ys + rb * H + k.u0;
      if (dead(m, rb)) {  // no gate activations (zeros)
        for (int g = 0; g < Cell::SAVED - NC; g++) std::memset(row + (NC + g) * H + k.u0, 0, sizeof(float) * nu);
      } else {
        Cell::forward(nu, H, z + static_cast<size_t>(j++) * NACC * zs, zs, xp ? xp + rb * G + k.u0 : nullptr,
                      bias + k.u0, row + k.u0, row + NC * H + k.u0, cn[0], cn[1], prm.from(k.u0));
      }
      if (!m.valid || m.valid[rb]) {
        std::memcpy(y, cn[Cell::H_LEAF], sizeof(float) * nu);
      } else {  // past the sequence's end: output 0, carry frozen
        std::memset(y, 0, sizeof(float) * nu);
        for (int c = 0; c < NC; c++) std::memcpy(cn[c], row + c * H + k.u0, sizeof(float) * nu);
      }
      if (i + 1 < T) {
        write_carry_in(k, step_at(i + 1), b, cn);
      } else {
        for (int c = 0; c < NC; c++)
          std::memcpy(carry_T[c] + static_cast<size_t>(b) * H + k.u0, cn[c], sizeof(float) * nu);
      }
    }
  };
  if (plan.split_rows) {
    run_steps(spawn, 1, plan.chunks, [&](int, int c) {
      first_carry_in(blocks[c]);
      for (int i = 0; i < T; i++) step(blocks[c], c, i);
    });
  } else {  // ticket step 0: the first carry_in; ticket step i + 1: time step i
    run_steps(spawn, T + 1, plan.chunks, [&](int i, int c) {
      if (i == 0) {
        first_carry_in(blocks[c]);
      } else {
        step(blocks[c], c, i - 1);
      }
    });
  }
}

// ------------------------------------------------------------------------------------ backward
// saved: as written by forward; dys: T x B x H; d_carry_T: NC leaves. Outputs: the gradients
// w.r.t. X (T x B x D), W_x (D x G), b (G), W_h (H x G), for GRU b_hn (H), and d_carry0 and
// d_carry_reset (NC leaves). The loop leaves d loss / d xp (dxp) and d loss / d (hm @ W_h)
// (dhw; the same for LSTM) for every step; the rest is four GEMM-shaped products after it.
// The sequential part of backward: dxp and dhw for every step, d_carry0, d_carry_reset.
template <class Cell>
static void backward_loop(const Shape& s, const float* W, const float* saved, const float* dys,
                          const float* const* d_carry_T, const Masks& m, bool reverse, int threads,
                          const Spawn& spawn, const typename Cell::Params& prm, float* dxp, float* dhw,
                          float* const* d_carry0, float* const* d_reset) {
  const int T = s.T, B = s.B, H = s.H, NG = Cell::NG, NC = Cell::NC, G = NG * H;
  const int SW = Cell::SAVED * H;
  const Plan plan = make_plan(B, H, G, T, threads);
  const int n_panels = (H + NVB * VL - 1) / (NVB * VL);
  const float* P = pack_transposed_panels(W, H, G, n_panels, threads, spawn);
  // d carry (per leaf, B x H), each block's rows x units owned by its chunk; the W_h term of dh
  // lands in dh_rec, written by the chunk that owns those units (the one that reads them next)
  const Buf d_state = alloc(static_cast<size_t>(NC) * B * H);
  const int ldr = n_panels * NVB * VL;
  const Buf dh_rec = alloc(static_cast<size_t>(B) * ldr);
  float* ds[2] = {d_state.get(), d_state.get() + (NC > 1 ? static_cast<size_t>(B) * H : 0)};
  auto step_at = [&](int i) { return reverse ? i : T - 1 - i; };  // the forward order, reversed
  std::vector<Block> blocks;
  std::vector<Buf> d_ins;
  std::vector<Buf> live_dhw, live_rec;  // per chunk: the live rows' dhw_t and their W_h term, when some are dead
  std::vector<std::vector<int>> live(plan.chunks);
  for (int c = 0; c < plan.chunks; c++) {
    const Block k = plan.block(c, B, H);
    blocks.push_back(k);
    d_ins.push_back(alloc(static_cast<size_t>(NC) * k.nu()));
    live[c].resize(k.nb());
    live_dhw.push_back(m.valid ? alloc(static_cast<size_t>(k.nb()) * G) : Buf());
    live_rec.push_back(m.valid ? alloc(static_cast<size_t>(k.nb()) * ldr) : Buf());
  }

  auto start = [&](const Block& k) {
    for (int c = 0; c < NC; c++)
      for (int b = k.b0; b < k.b1; b++)
        std::memcpy(ds[c] + static_cast<size_t>(b) * H + k.u0, d_carry_T[c] + static_cast<size_t>(b) * H + k.u0,
                    sizeof(float) * k.nu());
  };
  // this step's gate gradients and the part of d carry_in that does not go through W_h
  auto elementwise = [&](const Block& k, int chunk, int i) {
    const int t = step_at(i), nu = k.nu();
    float* di[2] = {d_ins[chunk].get(), d_ins[chunk].get() + (NC > 1 ? nu : 0)};
    for (int b = k.b0; b < k.b1; b++) {
      const size_t rb = static_cast<size_t>(t) * B + b;
      float* dx = dxp + rb * G + k.u0;
      float* dw = dhw + rb * G + k.u0;
      float* dc[2] = {ds[0] + static_cast<size_t>(b) * H + k.u0, ds[NC - 1] + static_cast<size_t>(b) * H + k.u0};
      if (!m.valid || m.valid[rb]) {
        Cell::backward(nu, H, saved + rb * SW + k.u0, dc[0], dc[1], dys + rb * H + k.u0, dx, dw, di[0], di[1],
                       prm.from(k.u0));
        for (int c = 0; c < NC; c++) std::memcpy(dc[c], di[c], sizeof(float) * nu);
      } else {  // past the sequence's end: the carry passed through, nothing flows into the gates
        for (int g = 0; g < NG; g++) {
          std::memset(dx + static_cast<size_t>(g) * H, 0, sizeof(float) * nu);
          if (Cell::SEPARATE_DHW) std::memset(dw + static_cast<size_t>(g) * H, 0, sizeof(float) * nu);
        }
      }
    }
  };
  // the W_h term of d h_in, dhw_t @ W^T (rows x units of the block), then resets: a reset step
  // read carry_reset, not the carry before it
  auto reset_at = [&](const Block& k, int t, int b) {
    if (!m.reset || !m.reset[static_cast<size_t>(t) * B + b]) return;
    for (int c = 0; c < NC; c++) {
      float* d = ds[c] + static_cast<size_t>(b) * H + k.u0;
      float* dr = d_reset[c] + static_cast<size_t>(b) * H + k.u0;
      for (int u = 0; u < k.nu(); u++) {
        dr[u] += d[u];
        d[u] = 0.0f;
      }
    }
  };
  // (a dead row's dhw_t is zero: its W_h term is too, and it is left out)
  auto through_w = [&](const Block& k, int chunk, int i) {
    const int t = step_at(i), nu = k.nu();
    int* lv = live[chunk].data();
    const int n_live = live_rows(m, t, B, k.b0, k.b1, lv);
    const float* A = dhw + (static_cast<size_t>(t) * B + k.b0) * G;
    float* rec0 = dh_rec.get() + static_cast<size_t>(k.b0) * ldr;
    if (n_live < k.nb()) {  // some rows are dead: the live ones' dhw_t, contiguous
      float* g = live_dhw[chunk].get();
      for (int j = 0; j < n_live; j++)
        std::memcpy(g + static_cast<size_t>(j) * G,
                    dhw + (static_cast<size_t>(t) * B + lv[j]) * G, sizeof(float) * G);
      A = g;
      rec0 = live_rec[chunk].get();
    }
    if (n_live > 0)
      for (int p = k.u0 / (NVB * VL); p < (k.u1 + NVB * VL - 1) / (NVB * VL); p++)
        panel_rows<tile_rows(NVB), NVB>(n_live, G, A, G, P + static_cast<size_t>(p) * G * NVB * VL,
                                        rec0 + p * NVB * VL, ldr, VL);
    int j = 0;  // the live row's place in rec0
    for (int b = k.b0; b < k.b1; b++) {
      if (dead(m, static_cast<size_t>(t) * B + b)) {  // nothing to add; resets still apply
        reset_at(k, t, b);
        continue;
      }
      float* rec = rec0 + static_cast<size_t>(j++) * ldr + k.u0;
      if (m.h_mask) {
        const float* mk = m.h_mask + static_cast<size_t>(b) * H + k.u0;
        for (int u = 0; u < nu; u++) rec[u] *= mk[u];
      }
      float* dh = ds[Cell::H_LEAF] + static_cast<size_t>(b) * H + k.u0;
      for (int u = 0; u < nu; u++) dh[u] += rec[u];
      reset_at(k, t, b);
    }
  };
  auto finish = [&](const Block& k) {
    for (int c = 0; c < NC; c++)
      for (int b = k.b0; b < k.b1; b++)
        std::memcpy(d_carry0[c] + static_cast<size_t>(b) * H + k.u0, ds[c] + static_cast<size_t>(b) * H + k.u0,
                    sizeof(float) * k.nu());
  };
  if (plan.split_rows) {
    run_steps(spawn, 1, plan.chunks, [&](int, int c) {
      start(blocks[c]);
      for (int i = 0; i < T; i++) {
        elementwise(blocks[c], c, i);
        through_w(blocks[c], c, i);
      }
      finish(blocks[c]);
    });
  } else {  // ticket step i: W_h term of time step i - 1 (needs every chunk's dhw), then step i
    run_steps(spawn, T + 1, plan.chunks, [&](int i, int c) {
      if (i == 0) start(blocks[c]);
      if (i > 0) through_w(blocks[c], c, i - 1);
      if (i < T) {
        elementwise(blocks[c], c, i);
      } else {
        finish(blocks[c]);
      }
    });
  }
}

struct Grads {
  float *dx, *dw_x, *db, *dw_h, *db_hn;
};

template <class Cell>
static void backward(const Shape& s, int D, const float* X, const float* W_x, const float* W, const float* saved,
                     const float* dys, const float* const* d_carry_T, const Masks& m, bool reverse, int threads,
                     const Spawn& spawn, const typename Cell::Params& prm, const Grads& out,
                     float* const* d_carry0, float* const* d_reset) {
  const int T = s.T, B = s.B, H = s.H, NG = Cell::NG, NC = Cell::NC, G = NG * H;
  const int SW = Cell::SAVED * H;
  for (int c = 0; c < NC; c++) std::memset(d_reset[c], 0, sizeof(float) * B * H);
  float* dxp = scratch(DXP, static_cast<size_t>(T) * B * G);
  float* dhw = Cell::SEPARATE_DHW ? scratch(DHW, static_cast<size_t>(T) * B * G) : dxp;
  if (T > 0) backward_loop<Cell>(s, W, saved, dys, d_carry_T, m, reverse, threads, spawn, prm, dxp, dhw, d_carry0,
                                 d_reset);
  else
    for (int c = 0; c < NC; c++) std::memcpy(d_carry0[c], d_carry_T[c], sizeof(float) * B * H);
  const int TB = T * B;
  // The products below run over the live (t, b) rows only where enough are dead (a dead row's dxp
  // and dhw are zero: its d x is zero and it adds nothing to the weight gradients): X, dxp, dhw
  // and hm gathered into contiguous rows, d x scattered back.
  const std::vector<int> rows = live_flat_rows(m, TB);
  const bool packed = !rows.empty();
  const int R = packed ? static_cast<int>(rows.size()) : TB;
  const float *Xr = X, *dxpr = dxp, *dhwr = dhw;
  float* dxr = out.dx;
  if (packed) {
    float* cx = scratch(LIVE_X, static_cast<size_t>(R) * D);
    float* cg = scratch(LIVE_G, static_cast<size_t>(R) * G);
    gather_rows(rows, X, cx, D, threads, spawn);
    gather_rows(rows, dxp, cg, G, threads, spawn);
    Xr = cx;
    dxpr = dhwr = cg;
    if (Cell::SEPARATE_DHW) {
      float* cw = scratch(LIVE_G2, static_cast<size_t>(R) * G);
      gather_rows(rows, dhw, cw, G, threads, spawn);
      dhwr = cw;
    }
    dxr = scratch(LIVE_Y, static_cast<size_t>(R) * D);
  }
  // d x = dxp @ W_x^T; d W_x = X^T @ dxp; d W_h = hm^T @ dhw (hm: h_in * mask, what entered W_h)
  gemm(R, D, G, Mat{dxpr, G, 1}, Mat{W_x, 1, G}, dxr, D, false, threads, spawn);
  if (packed) {
    std::memset(out.dx, 0, sizeof(float) * TB * D);
    scatter_rows(rows, dxr, out.dx, D, threads, spawn);
  }
  Mat hm{saved + Cell::H_LEAF * H, 1, SW};
  if ((m.h_mask || packed) && R > 0) {
    float* h = scratch(HM, static_cast<size_t>(R) * H);
    parallel_for(R, threads, spawn, [&](int i) {
      const size_t r = packed ? rows[i] : i;
      const float* src = saved + r * SW + Cell::H_LEAF * H;
      float* dst = h + static_cast<size_t>(i) * H;
      if (m.h_mask) {
        for (int u = 0; u < H; u++) dst[u] = src[u] * m.h_mask[(r % B) * H + u];
      } else {
        std::memcpy(dst, src, sizeof(float) * H);
      }
    });
    hm = Mat{h, 1, H};
  }
  if (!Cell::SEPARATE_DHW) {  // LSTM: both weight gradients against the same dxp, packed once
    gemm_parts({Part{D, Mat{Xr, 1, D}, out.dw_x, G}, Part{H, hm, out.dw_h, G}}, G, R, Mat{dxpr, G, 1}, false,
               threads, spawn);
  } else {
    gemm(D, G, R, Mat{Xr, 1, D}, Mat{dxpr, G, 1}, out.dw_x, G, false, threads, spawn);
    gemm(H, G, R, hm, Mat{dhwr, G, 1}, out.dw_h, G, false, threads, spawn);
  }
  column_sums(R, G, dxpr, G, out.db, threads, spawn);
  if (out.db_hn) column_sums(R, H, dhwr + 2 * H, G, out.db_hn, threads, spawn);  // GRU: the n block of dhw
}

}  // namespace rnnlab

// ------------------------------------------------------------------------------------ XLA FFI
#ifndef RNNLAB_NO_FFI
#include "xla/ffi/api/ffi.h"

namespace ffi = xla::ffi;
using F32 = ffi::Buffer<ffi::F32>;
using U8 = ffi::Buffer<ffi::U8>;
using Out = ffi::ResultBuffer<ffi::F32>;

namespace rnnlab {

// reset and valid are T x B uint8 (an empty array: none); h_mask B x H float (empty: none)
static Masks masks(const U8& reset, const U8& valid, const F32& h_mask, int64_t skip_dead) {
  Masks m;
  m.skip_dead = skip_dead != 0;
  if (reset.element_count()) m.reset = reset.typed_data();
  if (valid.element_count()) m.valid = valid.typed_data();
  if (h_mask.element_count()) m.h_mask = h_mask.typed_data();
  return m;
}

// helpers run as tasks on XLA's intra-op pool (see run_steps)
static Spawn spawner(ffi::ThreadPool& pool) {
  return [&pool](std::function<void()> task) { pool.Schedule(std::move(task)); };
}

static Shape shape_of(const F32& x, const F32& w_h) {  // x: T x B x D, w_h: H x G
  auto d = x.dimensions();
  return Shape{static_cast<int>(d[0]), static_cast<int>(d[1]), static_cast<int>(w_h.dimensions()[0])};
}
static int d_in(const F32& x) { return static_cast<int>(x.dimensions()[2]); }

static ffi::Error LstmForward(ffi::ThreadPool pool, F32 x, F32 w_x, F32 b, F32 w_h, F32 c0, F32 h0, F32 cr, F32 hr,
                              U8 reset, U8 valid, F32 h_mask, int64_t reverse, int64_t threads, int64_t skip_dead,
                              Out ys, Out cT, Out hT, Out saved) {
  const Spawn spawn = spawner(pool);
  const Shape s = shape_of(x, w_h);
  const float* carry0[2] = {c0.typed_data(), h0.typed_data()};
  const float* carry_reset[2] = {cr.typed_data(), hr.typed_data()};
  float* carry_T[2] = {cT->typed_data(), hT->typed_data()};
  forward<Lstm>(s, d_in(x), x.typed_data(), w_x.typed_data(), b.typed_data(), w_h.typed_data(), carry0, carry_reset,
                masks(reset, valid, h_mask, skip_dead), reverse != 0, static_cast<int>(threads), spawn,
                Lstm::Params{}, ys->typed_data(), carry_T, saved->typed_data());
  return ffi::Error::Success();
}

static ffi::Error LstmInfer(ffi::ThreadPool pool, F32 x, F32 w_x, F32 b, F32 w_h, F32 c0, F32 h0, F32 cr, F32 hr,
                            U8 reset, U8 valid, F32 h_mask, int64_t reverse, int64_t threads, int64_t skip_dead,
                            Out ys, Out cT, Out hT) {
  const Spawn spawn = spawner(pool);
  const Shape s = shape_of(x, w_h);
  const float* carry0[2] = {c0.typed_data(), h0.typed_data()};
  const float* carry_reset[2] = {cr.typed_data(), hr.typed_data()};
  float* carry_T[2] = {cT->typed_data(), hT->typed_data()};
  forward<Lstm>(s, d_in(x), x.typed_data(), w_x.typed_data(), b.typed_data(), w_h.typed_data(), carry0, carry_reset,
                masks(reset, valid, h_mask, skip_dead), reverse != 0, static_cast<int>(threads), spawn,
                Lstm::Params{}, ys->typed_data(), carry_T, nullptr);
  return ffi::Error::Success();
}

static ffi::Error LstmBackward(ffi::ThreadPool pool, F32 x, F32 w_x, F32 w_h, F32 saved, F32 dys, F32 dcT, F32 dhT,
                               U8 reset, U8 valid, F32 h_mask, int64_t reverse, int64_t threads, int64_t skip_dead,
                               Out dx, Out dw_x, Out db, Out dw_h, Out dc0, Out dh0, Out dcr, Out dhr) {
  const Spawn spawn = spawner(pool);
  const Shape s = shape_of(x, w_h);
  const float* d_carry_T[2] = {dcT.typed_data(), dhT.typed_data()};
  float* d_carry0[2] = {dc0->typed_data(), dh0->typed_data()};
  float* d_reset[2] = {dcr->typed_data(), dhr->typed_data()};
  const Grads g{dx->typed_data(), dw_x->typed_data(), db->typed_data(), dw_h->typed_data(), nullptr};
  backward<Lstm>(s, d_in(x), x.typed_data(), w_x.typed_data(), w_h.typed_data(), saved.typed_data(), dys.typed_data(),
                 d_carry_T, masks(reset, valid, h_mask, skip_dead), reverse != 0, static_cast<int>(threads), spawn,
                 Lstm::Params{}, g, d_carry0, d_reset);
  return ffi::Error::Success();
}

static ffi::Error GruForward(ffi::ThreadPool pool, F32 x, F32 w_x, F32 b, F32 w_h, F32 b_hn, F32 h0, F32 hr, U8 reset,
                             U8 valid, F32 h_mask, int64_t reverse, int64_t threads, int64_t skip_dead, Out ys,
                             Out hT, Out saved) {
  const Spawn spawn = spawner(pool);
  const Shape s = shape_of(x, w_h);
  const float* carry0[1] = {h0.typed_data()};
  const float* carry_reset[1] = {hr.typed_data()};
  float* carry_T[1] = {hT->typed_data()};
  forward<Gru>(s, d_in(x), x.typed_data(), w_x.typed_data(), b.typed_data(), w_h.typed_data(), carry0, carry_reset,
               masks(reset, valid, h_mask, skip_dead), reverse != 0, static_cast<int>(threads), spawn,
               Gru::Params{b_hn.typed_data()}, ys->typed_data(), carry_T, saved->typed_data());
  return ffi::Error::Success();
}

static ffi::Error GruInfer(ffi::ThreadPool pool, F32 x, F32 w_x, F32 b, F32 w_h, F32 b_hn, F32 h0, F32 hr, U8 reset,
                           U8 valid, F32 h_mask, int64_t reverse, int64_t threads, int64_t skip_dead,
                           Out ys, Out hT) {
  const Spawn spawn = spawner(pool);
  const Shape s = shape_of(x, w_h);
  const float* carry0[1] = {h0.typed_data()};
  const float* carry_reset[1] = {hr.typed_data()};
  float* carry_T[1] = {hT->typed_data()};
  forward<Gru>(s, d_in(x), x.typed_data(), w_x.typed_data(), b.typed_data(), w_h.typed_data(), carry0, carry_reset,
               masks(reset, valid, h_mask, skip_dead), reverse != 0, static_cast<int>(threads), spawn,
               Gru::Params{b_hn.typed_data()}, ys->typed_data(), carry_T, nullptr);
  return ffi::Error::Success();
}

static ffi::Error GruBackward(ffi::ThreadPool pool, F32 x, F32 w_x, F32 w_h, F32 b_hn, F32 saved, F32 dys, F32 dhT,
                              U8 reset, U8 valid, F32 h_mask, int64_t reverse, int64_t threads, int64_t skip_dead,
                              Out dx, Out dw_x, Out db, Out dw_h, Out db_hn, Out dh0, Out dhr) {
  const Spawn spawn = spawner(pool);
  const Shape s = shape_of(x, w_h);
  const float* d_carry_T[1] = {dhT.typed_data()};
  float* d_carry0[1] = {dh0->typed_data()};
  float* d_reset[1] = {dhr->typed_data()};
  const Grads g{dx->typed_data(), dw_x->typed_data(), db->typed_data(), dw_h->typed_data(), db_hn->typed_data()};
  backward<Gru>(s, d_in(x), x.typed_data(), w_x.typed_data(), w_h.typed_data(), saved.typed_data(), dys.typed_data(),
                d_carry_T, masks(reset, valid, h_mask, skip_dead), reverse != 0, static_cast<int>(threads), spawn,
                Gru::Params{b_hn.typed_data()}, g, d_carry0, d_reset);
  return ffi::Error::Success();
}

}  // namespace rnnlab

#define RNNLAB_ATTRS .Attr<int64_t>("reverse").Attr<int64_t>("threads").Attr<int64_t>("skip_dead")

#define RNNLAB_ARGS_4 .Arg<F32>().Arg<F32>().Arg<F32>().Arg<F32>()
#define RNNLAB_MASKS .Arg<U8>().Arg<U8>().Arg<F32>() RNNLAB_ATTRS
#define RNNLAB_RETS_4 .Ret<F32>().Ret<F32>().Ret<F32>().Ret<F32>()

// x, w_x, b, w_h, c0, h0, c_reset, h_reset, reset, valid, h_mask -> ys, c_T, h_T, saved
XLA_FFI_DEFINE_HANDLER_SYMBOL(rnnlab_lstm_forward, rnnlab::LstmForward,
                              ffi::Ffi::Bind().Ctx<ffi::ThreadPool>() RNNLAB_ARGS_4 RNNLAB_ARGS_4 RNNLAB_MASKS
                                  RNNLAB_RETS_4);
// the same, without saved (inference)
XLA_FFI_DEFINE_HANDLER_SYMBOL(rnnlab_lstm_infer, rnnlab::LstmInfer,
                              ffi::Ffi::Bind().Ctx<ffi::ThreadPool>() RNNLAB_ARGS_4 RNNLAB_ARGS_4 RNNLAB_MASKS
                                  .Ret<F32>().Ret<F32>().Ret<F32>());
// x, w_x, w_h, saved, dys, dc_T, dh_T, reset, valid, h_mask -> dx, dw_x, db, dw_h, dc0, dh0, dc_reset, dh_reset
XLA_FFI_DEFINE_HANDLER_SYMBOL(rnnlab_lstm_backward, rnnlab::LstmBackward,
                              ffi::Ffi::Bind().Ctx<ffi::ThreadPool>() RNNLAB_ARGS_4 .Arg<F32>().Arg<F32>().Arg<F32>()
                                  RNNLAB_MASKS RNNLAB_RETS_4 RNNLAB_RETS_4);
// x, w_x, b, w_h, b_hn, h0, h_reset, reset, valid, h_mask -> ys, h_T, saved
XLA_FFI_DEFINE_HANDLER_SYMBOL(rnnlab_gru_forward, rnnlab::GruForward,
                              ffi::Ffi::Bind().Ctx<ffi::ThreadPool>() RNNLAB_ARGS_4 .Arg<F32>().Arg<F32>().Arg<F32>()
                                  RNNLAB_MASKS .Ret<F32>().Ret<F32>().Ret<F32>());
XLA_FFI_DEFINE_HANDLER_SYMBOL(rnnlab_gru_infer, rnnlab::GruInfer,
                              ffi::Ffi::Bind().Ctx<ffi::ThreadPool>() RNNLAB_ARGS_4 .Arg<F32>().Arg<F32>().Arg<F32>()
                                  RNNLAB_MASKS .Ret<F32>().Ret<F32>());
// x, w_x, w_h, b_hn, saved, dys, dh_T, reset, valid, h_mask -> dx, dw_x, db, dw_h, db_hn, dh0, dh_reset
XLA_FFI_DEFINE_HANDLER_SYMBOL(rnnlab_gru_backward, rnnlab::GruBackward,
                              ffi::Ffi::Bind().Ctx<ffi::ThreadPool>() RNNLAB_ARGS_4 .Arg<F32>().Arg<F32>().Arg<F32>()
                                  RNNLAB_MASKS RNNLAB_RETS_4 .Ret<F32>().Ret<F32>().Ret<F32>());
#endif  // RNNLAB_NO_FFI
