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
// Only the sequential part is here. XLA still does everything parallel in time: the input
// projection x @ W_x + b before the loop, and after the backward loop the weight gradients
// as ONE GEMM over all T*B rows (rnnlab/fused.py's fused_param_grads), so those run at
// XLA's big-GEMM speed.
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

// ------------------------------------------------------------------------------------ GEMM
// C[r, v*VL + l] (r < MR, v < NV) = sum_k A[r*lda + k] * P[k*NV*VL + v*VL + l], with P one packed
// panel (K x NV*VL, contiguous). The tile stays in MR*NV vector registers over the whole K loop;
// tile column group v is stored at C + r*ldc + v*vstride.
template <int MR, int NV>
static inline void kernel(int K, const float* __restrict A, int lda, const float* __restrict P,
                          float* __restrict C, int ldc, int vstride) {
  vf acc[MR][NV];
  for (int r = 0; r < MR; r++)
    for (int v = 0; v < NV; v++) acc[r][v] = vf{};
  for (int k = 0; k < K; k++) {
    vf b[NV];
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

template <int MR, int NV>
static void panel_rows(int M, int K, const float* A, int lda, const float* P, float* C, int ldc, int vstride) {
  int m = 0;
  for (; m + MR <= M; m += MR) kernel<MR, NV>(K, A + (size_t)m * lda, lda, P, C + (size_t)m * ldc, ldc, vstride);
  const float* a = A + (size_t)m * lda;
  float* c = C + (size_t)m * ldc;
  switch (M - m) {  // MR <= 8
    case 7: kernel<7, NV>(K, a, lda, P, c, ldc, vstride); break;
    case 6: kernel<6, NV>(K, a, lda, P, c, ldc, vstride); break;
    case 5: kernel<5, NV>(K, a, lda, P, c, ldc, vstride); break;
    case 4: kernel<4, NV>(K, a, lda, P, c, ldc, vstride); break;
    case 3: kernel<3, NV>(K, a, lda, P, c, ldc, vstride); break;
    case 2: kernel<2, NV>(K, a, lda, P, c, ldc, vstride); break;
    case 1: kernel<1, NV>(K, a, lda, P, c, ldc, vstride); break;
    default: break;
  }
}

// Forward panels: units in groups of VL; panel p holds, for k < H, the NG gate columns of units
// [p*VL, p*VL + VL): P[p][k][g*VL + l] = W[k][g*H + p*VL + l] (zero past H). One kernel tile is
// then NG vectors per row: all gates of VL units, so the step's nonlinearities need no other data.
static Buf pack_gate_panels(const float* W, int H, int NG, int n_panels) {
  Buf P = alloc((size_t)n_panels * H * NG * VL);
  const int G = NG * H;
  for (int p = 0; p < n_panels; p++)
    for (int k = 0; k < H; k++)
      for (int g = 0; g < NG; g++)
        for (int l = 0; l < VL; l++) {
          const int u = p * VL + l;
          P[((size_t)p * H + k) * NG * VL + g * VL + l] = u < H ? W[(size_t)k * G + g * H + u] : 0.0f;
        }
  return P;
}

// Backward panels of W^T (G x H): P[p][k][l] = W[p*2VL + l][k], k < G: dh_rec = dhw @ W^T.
constexpr int NVB = 2;  // vectors per backward tile row: 2*VL units
static Buf pack_transposed_panels(const float* W, int H, int G, int n_panels) {
  Buf P = alloc((size_t)n_panels * G * NVB * VL);
  for (int p = 0; p < n_panels; p++)
    for (int k = 0; k < G; k++)
      for (int l = 0; l < NVB * VL; l++) {
        const int u = p * NVB * VL + l;
        P[((size_t)p * G + k) * NVB * VL + l] = u < H ? W[(size_t)u * G + k] : 0.0f;
      }
  return P;
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
  static constexpr int SAVED = NC + NG;            // saved row width in units of H
  static constexpr bool SEPARATE_DHW = false;      // d loss / d (hm @ W_h) equals dxp
  struct Params {
    Params from(int /*u0*/) const { return *this; }
  };

  static inline void forward(int n, int H, const float* __restrict z, int zs, const float* __restrict xp, const float* __restrict saved,
                             float* __restrict acts, float* __restrict c_new, float* __restrict h_new, const Params&) {
    const float* __restrict c = saved;
    for (int u = 0; u < n; u++) {
      const float i = sigmoid_f(z[u] + xp[u]);
      const float f = sigmoid_f(z[zs + u] + xp[H + u]);
      const float g = tanh_f(z[2 * zs + u] + xp[2 * H + u]);
      const float o = sigmoid_f(z[3 * zs + u] + xp[3 * H + u]);
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
  static inline void backward(int n, int H, const float* __restrict saved, const float* __restrict dc, const float* __restrict dh,
                              const float* __restrict dy, float* __restrict dxp, float* /*dhw*/, float* __restrict dc_in, float* __restrict dh_in,
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
  static constexpr int SAVED = NC + 4;
  static constexpr bool SEPARATE_DHW = true;  // the n block of dhw is dn * r
  struct Params {
    const float* b_hn;                                         // H
    Params from(int u0) const { return Params{b_hn + u0}; }  // a block's units start at u0
  };

  static inline void forward(int n, int H, const float* __restrict z, int zs, const float* __restrict xp, const float* __restrict saved,
                             float* __restrict acts, float* __restrict h_new, float* __restrict /*unused*/, const Params& prm) {
    const float* __restrict h = saved;
    for (int u = 0; u < n; u++) {
      const float r = sigmoid_f(xp[u] + z[u]);
      const float zz = sigmoid_f(xp[H + u] + z[zs + u]);
      const float hn = z[2 * zs + u] + prm.b_hn[u];
      const float nn = tanh_f(xp[2 * H + u] + r * hn);
      acts[u] = r;
      acts[H + u] = zz;
      acts[2 * H + u] = nn;
      acts[3 * H + u] = hn;
      h_new[u] = (1.0f - zz) * nn + zz * h[u];
    }
  }

  static inline void backward(int n, int H, const float* __restrict saved, const float* __restrict dh, const float* __restrict /*unused*/,
                              const float* __restrict dy, float* __restrict dxp, float* __restrict dhw, float* __restrict dh_in, float* __restrict /*unused*/,
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

// ------------------------------------------------------------------------------------ forward
// xp: T x B x G; W: H x G; carry0/carry_reset: NC leaves of B x H; outputs ys (T x B x H),
// carry_T (NC leaves), saved (T x B x SAVED*H).
template <class Cell>
static void forward(const Shape& s, const float* xp, const float* W, const float* const* carry0,
                    const float* const* carry_reset, const Masks& m, bool reverse, int threads,
                    const Spawn& spawn, const typename Cell::Params& prm, float* ys, float* const* carry_T,
                    float* saved) {
  const int T = s.T, B = s.B, H = s.H, NG = Cell::NG, NC = Cell::NC, G = NG * H;
  const int SW = Cell::SAVED * H;
  if (T == 0) {
    for (int c = 0; c < NC; c++) std::memcpy(carry_T[c], carry0[c], sizeof(float) * B * H);
    return;
  }
  const Plan plan = make_plan(B, H, G, T, threads);
  const int n_panels = (H + VL - 1) / VL;
  const Buf P = pack_gate_panels(W, H, NG, n_panels);
  const Buf hm_buf = m.h_mask ? alloc(static_cast<size_t>(2) * B * H) : Buf();  // h * mask, double-buffered
  auto step_at = [&](int i) { return reverse ? T - 1 - i : i; };
  std::vector<Block> blocks;
  std::vector<Buf> z_tiles, new_carries;  // per chunk: no two steps of a chunk run at once
  for (int c = 0; c < plan.chunks; c++) {
    const Block k = plan.block(c, B, H);
    blocks.push_back(k);
    z_tiles.push_back(alloc(static_cast<size_t>(k.nb()) * NG * (((k.nu() + VL - 1) / VL) * VL)));
    new_carries.push_back(alloc(static_cast<size_t>(NC) * k.nu()));
  }

  // step t's carry_in for row b, this block's units: from[c] (nu values per leaf), or carry_reset
  // where step t starts a new segment; plus h * mask, the GEMM operand
  auto write_carry_in = [&](const Block& k, int t, int b, const float* const* from) {
    float* row = saved + (static_cast<size_t>(t) * B + b) * SW;
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
    const float* A;
    int lda;
    if (m.h_mask) {
      A = hm_buf.get() + static_cast<size_t>(t & 1) * B * H + static_cast<size_t>(k.b0) * H;
      lda = H;
    } else {
      A = saved + (static_cast<size_t>(t) * B + k.b0) * SW + Cell::H_LEAF * H;
      lda = SW;
    }
    for (int p = k.u0 / VL; p < (k.u1 + VL - 1) / VL; p++)
      panel_rows<tile_rows(NG), NG>(k.nb(), H, A, lda, P.get() + static_cast<size_t>(p) * H * NG * VL,
                                    z + (p - k.u0 / VL) * VL, NG * zs, zs);
    for (int b = k.b0; b < k.b1; b++) {
      const size_t rb = static_cast<size_t>(t) * B + b;
      float* row = saved + rb * SW;
      Cell::forward(nu, H, z + static_cast<size_t>(b - k.b0) * NG * zs, zs, xp + rb * G + k.u0, row + k.u0,
                    row + NC * H + k.u0, cn[0], cn[1], prm.from(k.u0));
      float* y = ys + rb * H + k.u0;
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
// saved: as written by forward; dys: T x B x H; d_carry_T: NC leaves. Outputs dxp (T x B x G),
// dhw (T x B x G, only when Cell::SEPARATE_DHW), d_carry0 and d_carry_reset (NC leaves).
template <class Cell>
static void backward(const Shape& s, const float* W, const float* saved, const float* dys,
                     const float* const* d_carry_T, const Masks& m, bool reverse, int threads, const Spawn& spawn,
                     const typename Cell::Params& prm, float* dxp, float* dhw_out, float* const* d_carry0,
                     float* const* d_reset) {
  const int T = s.T, B = s.B, H = s.H, NG = Cell::NG, NC = Cell::NC, G = NG * H;
  const int SW = Cell::SAVED * H;
  for (int c = 0; c < NC; c++) std::memset(d_reset[c], 0, sizeof(float) * B * H);
  if (T == 0) {
    for (int c = 0; c < NC; c++) std::memcpy(d_carry0[c], d_carry_T[c], sizeof(float) * B * H);
    return;
  }
  const Plan plan = make_plan(B, H, G, T, threads);
  const int n_panels = (H + NVB * VL - 1) / (NVB * VL);
  const Buf P = pack_transposed_panels(W, H, G, n_panels);
  float* dhw = Cell::SEPARATE_DHW ? dhw_out : dxp;
  // d carry (per leaf, B x H), each block's rows x units owned by its chunk; the W_h term of dh
  // lands in dh_rec, written by the chunk that owns those units (the one that reads them next)
  const Buf d_state = alloc(static_cast<size_t>(NC) * B * H);
  const int ldr = n_panels * NVB * VL;
  const Buf dh_rec = alloc(static_cast<size_t>(B) * ldr);
  float* ds[2] = {d_state.get(), d_state.get() + (NC > 1 ? static_cast<size_t>(B) * H : 0)};
  auto step_at = [&](int i) { return reverse ? i : T - 1 - i; };  // the forward order, reversed
  std::vector<Block> blocks;
  std::vector<Buf> d_ins;
  for (int c = 0; c < plan.chunks; c++) {
    const Block k = plan.block(c, B, H);
    blocks.push_back(k);
    d_ins.push_back(alloc(static_cast<size_t>(NC) * k.nu()));
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
  auto through_w = [&](const Block& k, int i) {
    const int t = step_at(i), nu = k.nu();
    const float* A = dhw + (static_cast<size_t>(t) * B + k.b0) * G;
    for (int p = k.u0 / (NVB * VL); p < (k.u1 + NVB * VL - 1) / (NVB * VL); p++)
      panel_rows<tile_rows(NVB), NVB>(k.nb(), G, A, G, P.get() + static_cast<size_t>(p) * G * NVB * VL,
                                      dh_rec.get() + static_cast<size_t>(k.b0) * ldr + p * NVB * VL, ldr, VL);
    for (int b = k.b0; b < k.b1; b++) {
      float* rec = dh_rec.get() + static_cast<size_t>(b) * ldr + k.u0;
      if (m.h_mask) {
        const float* mk = m.h_mask + static_cast<size_t>(b) * H + k.u0;
        for (int u = 0; u < nu; u++) rec[u] *= mk[u];
      }
      float* dh = ds[Cell::H_LEAF] + static_cast<size_t>(b) * H + k.u0;
      for (int u = 0; u < nu; u++) dh[u] += rec[u];
      if (m.reset && m.reset[static_cast<size_t>(t) * B + b]) {
        for (int c = 0; c < NC; c++) {
          float* d = ds[c] + static_cast<size_t>(b) * H + k.u0;
          float* dr = d_reset[c] + static_cast<size_t>(b) * H + k.u0;
          for (int u = 0; u < nu; u++) {
            dr[u] += d[u];
            d[u] = 0.0f;
          }
        }
      }
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
        through_w(blocks[c], i);
      }
      finish(blocks[c]);
    });
  } else {  // ticket step i: W_h term of time step i - 1 (needs every chunk's dhw), then step i
    run_steps(spawn, T + 1, plan.chunks, [&](int i, int c) {
      if (i == 0) start(blocks[c]);
      if (i > 0) through_w(blocks[c], i - 1);
      if (i < T) {
        elementwise(blocks[c], c, i);
      } else {
        finish(blocks[c]);
      }
    });
  }
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
static Masks masks(const U8& reset, const U8& valid, const F32& h_mask) {
  Masks m;
  if (reset.element_count()) m.reset = reset.typed_data();
  if (valid.element_count()) m.valid = valid.typed_data();
  if (h_mask.element_count()) m.h_mask = h_mask.typed_data();
  return m;
}

// helpers run as tasks on XLA's intra-op pool (see run_steps)
static Spawn spawner(ffi::ThreadPool& pool) {
  return [&pool](std::function<void()> task) { pool.Schedule(std::move(task)); };
}

static Shape shape_of(const F32& ys_like) {  // T x B x X with X = H (dys) or G (xp)
  auto d = ys_like.dimensions();
  return Shape{static_cast<int>(d[0]), static_cast<int>(d[1]), 0};
}

static ffi::Error LstmForward(ffi::ThreadPool pool, F32 xp, F32 w, F32 c0, F32 h0, F32 cr, F32 hr, U8 reset, U8 valid, F32 h_mask,
                              int64_t reverse, int64_t threads, Out ys, Out cT, Out hT, Out saved) {
  const Spawn spawn = spawner(pool);
  Shape s = shape_of(xp);
  s.H = static_cast<int>(w.dimensions()[0]);
  const float* carry0[2] = {c0.typed_data(), h0.typed_data()};
  const float* carry_reset[2] = {cr.typed_data(), hr.typed_data()};
  float* carry_T[2] = {cT->typed_data(), hT->typed_data()};
  forward<Lstm>(s, xp.typed_data(), w.typed_data(), carry0, carry_reset, masks(reset, valid, h_mask), reverse != 0,
                static_cast<int>(threads), spawn, Lstm::Params{}, ys->typed_data(), carry_T, saved->typed_data());
  return ffi::Error::Success();
}

static ffi::Error LstmBackward(ffi::ThreadPool pool, F32 w, F32 saved, F32 dys, F32 dcT, F32 dhT, U8 reset, U8 valid, F32 h_mask,
                               int64_t reverse, int64_t threads, Out dxp, Out dc0, Out dh0, Out dcr, Out dhr) {
  const Spawn spawn = spawner(pool);
  Shape s = shape_of(dys);
  s.H = static_cast<int>(w.dimensions()[0]);
  const float* d_carry_T[2] = {dcT.typed_data(), dhT.typed_data()};
  float* d_carry0[2] = {dc0->typed_data(), dh0->typed_data()};
  float* d_reset[2] = {dcr->typed_data(), dhr->typed_data()};
  backward<Lstm>(s, w.typed_data(), saved.typed_data(), dys.typed_data(), d_carry_T, masks(reset, valid, h_mask),
                 reverse != 0, static_cast<int>(threads), spawn, Lstm::Params{}, dxp->typed_data(), nullptr, d_carry0,
                 d_reset);
  return ffi::Error::Success();
}

static ffi::Error GruForward(ffi::ThreadPool pool, F32 xp, F32 w, F32 b_hn, F32 h0, F32 hr, U8 reset, U8 valid, F32 h_mask,
                             int64_t reverse, int64_t threads, Out ys, Out hT, Out saved) {
  const Spawn spawn = spawner(pool);
  Shape s = shape_of(xp);
  s.H = static_cast<int>(w.dimensions()[0]);
  const float* carry0[1] = {h0.typed_data()};
  const float* carry_reset[1] = {hr.typed_data()};
  float* carry_T[1] = {hT->typed_data()};
  forward<Gru>(s, xp.typed_data(), w.typed_data(), carry0, carry_reset, masks(reset, valid, h_mask), reverse != 0,
               static_cast<int>(threads), spawn, Gru::Params{b_hn.typed_data()}, ys->typed_data(), carry_T,
               saved->typed_data());
  return ffi::Error::Success();
}

static ffi::Error GruBackward(ffi::ThreadPool pool, F32 w, F32 b_hn, F32 saved, F32 dys, F32 dhT, U8 reset, U8 valid, F32 h_mask,
                              int64_t reverse, int64_t threads, Out dxp, Out dhw, Out dh0, Out dhr) {
  const Spawn spawn = spawner(pool);
  Shape s = shape_of(dys);
  s.H = static_cast<int>(w.dimensions()[0]);
  const float* d_carry_T[1] = {dhT.typed_data()};
  float* d_carry0[1] = {dh0->typed_data()};
  float* d_reset[1] = {dhr->typed_data()};
  backward<Gru>(s, w.typed_data(), saved.typed_data(), dys.typed_data(), d_carry_T, masks(reset, valid, h_mask),
                reverse != 0, static_cast<int>(threads), spawn, Gru::Params{b_hn.typed_data()}, dxp->typed_data(),
                dhw->typed_data(), d_carry0, d_reset);
  return ffi::Error::Success();
}

}  // namespace rnnlab

#define RNNLAB_ATTRS .Attr<int64_t>("reverse").Attr<int64_t>("threads")

XLA_FFI_DEFINE_HANDLER_SYMBOL(rnnlab_lstm_forward, rnnlab::LstmForward,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<F32>().Arg<F32>().Arg<F32>().Arg<F32>().Arg<F32>().Arg<F32>()
                                  .Arg<U8>().Arg<U8>().Arg<F32>() RNNLAB_ATTRS
                                  .Ret<F32>().Ret<F32>().Ret<F32>().Ret<F32>());
XLA_FFI_DEFINE_HANDLER_SYMBOL(rnnlab_lstm_backward, rnnlab::LstmBackward,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<F32>().Arg<F32>().Arg<F32>().Arg<F32>().Arg<F32>()
                                  .Arg<U8>().Arg<U8>().Arg<F32>() RNNLAB_ATTRS
                                  .Ret<F32>().Ret<F32>().Ret<F32>().Ret<F32>().Ret<F32>());
XLA_FFI_DEFINE_HANDLER_SYMBOL(rnnlab_gru_forward, rnnlab::GruForward,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<F32>().Arg<F32>().Arg<F32>().Arg<F32>().Arg<F32>()
                                  .Arg<U8>().Arg<U8>().Arg<F32>() RNNLAB_ATTRS
                                  .Ret<F32>().Ret<F32>().Ret<F32>());
XLA_FFI_DEFINE_HANDLER_SYMBOL(rnnlab_gru_backward, rnnlab::GruBackward,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<F32>().Arg<F32>().Arg<F32>().Arg<F32>().Arg<F32>()
                                  .Arg<U8>().Arg<U8>().Arg<F32>() RNNLAB_ATTRS
                                  .Ret<F32>().Ret<F32>().Ret<F32>().Ret<F32>());
#endif  // RNNLAB_NO_FFI
