// CPU path of moe_experts: the routing permutation (counting sort) and the expert MLPs' forward and backward drivers.
//
// The drivers run one OpenMP region per phase over work items (a block of one expert's rows, or one expert's slice
// of a weight gradient); inside an item the GEMMs are single-threaded ATen calls (MKL SGEMM on expert-sized blocks)
// and the glue -- row gathers, SwiGLU forward / backward, the routing-weight dot products -- is plain C++ on data
// that is still in cache.  Versus calling ATen once per expert per GEMM from Python (each call a parallel region
// of its own), this removes ~8 thread fork/joins per expert and the [R, H]-sized gathered copies.
//
// Conventions (all fp32 / int64, contiguous; the Python layer converts and validates first):
//   S = T * k routing slots, slot s = t * k + j (token t, its j-th choice); experts [0, E) are GEMM experts and
//   [E, E + Z) identity experts.  Rows are the routed (GEMM) slots sorted by expert, stably (token order inside an
//   expert); row_of_slot[s] is the row of slot s, or -1 for an identity slot.
#include "common.h"
#include "moe/parallel.h"

#include <algorithm>
#include <cstring>
#include <exception>
#include <vector>

// The 8-wide vector helpers below have internal linkage, so the "AVX vector return without AVX changes the ABI"
// note GCC prints for builds without -mavx2 does not apply.
#pragma GCC diagnostic ignored "-Wpsabi"

namespace lck {

namespace {

// The SwiGLU loops use 8-wide GCC/Clang vector types (one AVX2 register with -mavx2, two SSE halves otherwise)
// instead of a scalar `omp simd` loop over fast_expf: GCC does not if-convert the range clamps of an inlined exp in
// such a loop without -fno-trapping-math, so it stayed scalar (backward on 16384 x 256 rows, 1 thread: 23 ms scalar,
// 4.9 ms with the vector types; ATen's silu/sigmoid ops for the same backward: ~45 ms).
typedef float f8 __attribute__((vector_size(32)));
typedef int32_t i8 __attribute__((vector_size(32)));

inline f8 load8(const float* p) {
  f8 v;
  std::memcpy(&v, p, sizeof v);
  return v;
}
inline void store8(float* p, f8 v) { std::memcpy(p, &v, sizeof v); }
inline f8 splat8(float x) { return f8{} + x; }

// fast_expf (common.h) on 8 lanes: the same range reduction and degree-6 polynomial; inputs below -87.3 give
// ~1e-38 instead of exactly 0, which no caller here can tell apart.
inline f8 exp8(f8 x) {
  x = x < splat8(-87.3f) ? splat8(-87.3f) : x;
  x = x > splat8(88.3f) ? splat8(88.3f) : x;
  const f8 shifted = x * 1.44269504088896341f + 12582912.0f;  // 1.5 * 2^23: round-to-nearest trick
  const f8 n = shifted - 12582912.0f;
  const f8 r = (x - n * 0.693145751953125f) - n * 1.428606765330187e-06f;
  f8 p = splat8(1.3888889e-3f);
  p = p * r + 8.3333333e-3f;
  p = p * r + 4.1666667e-2f;
  p = p * r + 1.6666667e-1f;
  p = p * r + 0.5f;
  p = p * r + 1.0f;
  p = p * r + 1.0f;
  const i8 ni = (i8)shifted - (i8)splat8(12582912.0f);  // vector casts reinterpret the bits
  return p * (f8)((ni + 127) << 23);
}
inline f8 sigmoid8(f8 x) { return 1.0f / (1.0f + exp8(-x)); }

inline float hsum8(f8 v) {
  float s = 0.f;
  for (int i = 0; i < 8; ++i) s += v[i];
  return s;
}

// SwiGLU backward on 8 lanes: dot += d * act; dg, du with the routing weight w applied; d <- w * act (in place)
inline void swiglu_bwd8(const float* g, const float* u, float* d, float* dg, float* du, float w, f8& dot) {
  const f8 gj = load8(g), uj = load8(u), dj = load8(d);
  const f8 s = sigmoid8(gj), silu = gj * s, a = silu * uj;
  dot += dj * a;
  const f8 dw = w * dj;
  store8(dg, dw * uj * s * (1.f + gj * (1.f - s)));
  store8(du, dw * silu);
  store8(d, w * a);
}

// act[j] = silu(g[j]) * u[j] for one row of I columns (8 lanes at a time, ragged tail through zero padding)
void swiglu_fwd_row(const float* g, const float* u, float* a, int64_t I) {
  int64_t j = 0;
  for (; j + 8 <= I; j += 8) {
    const f8 gj = load8(g + j);
    store8(a + j, gj * sigmoid8(gj) * load8(u + j));
  }
  if (j < I) {
    float tg[8] = {}, tu[8] = {}, ta[8];
    const size_t n = static_cast<size_t>(I - j) * sizeof(float);
    std::memcpy(tg, g + j, n);
    std::memcpy(tu, u + j, n);
    const f8 gj = load8(tg);
    store8(ta, gj * sigmoid8(gj) * load8(tu));
    std::memcpy(a + j, ta, n);
  }
}

// SwiGLU backward of one row: returns <d, act>, writes dg / du (routing weight w applied) and d <- w * act.
float swiglu_bwd_row(const float* g, const float* u, float* d, float* dg, float* du, float w, int64_t I) {
  f8 dot = {};
  int64_t j = 0;
  for (; j + 8 <= I; j += 8) swiglu_bwd8(g + j, u + j, d + j, dg + j, du + j, w, dot);
  if (j < I) {  // padding lanes are zero, so they add 0 to the dot product
    float tg[8] = {}, tu[8] = {}, td[8] = {}, tdg[8], tdu[8];
    const size_t n = static_cast<size_t>(I - j) * sizeof(float);
    std::memcpy(tg, g + j, n);
    std::memcpy(tu, u + j, n);
    std::memcpy(td, d + j, n);
    swiglu_bwd8(tg, tu, td, tdg, tdu, w, dot);
    std::memcpy(d + j, td, n);
    std::memcpy(dg + j, tdg, n);
    std::memcpy(du + j, tdu, n);
  }
  return hsum8(dot);
}

// dst[i, :] = src[idx[i], c0 : c0 + width]  (rows of a row-major [*, ld] matrix)
void gather_rows(const float* src, int64_t ld, const int64_t* idx, int64_t n, int64_t c0, int64_t width, float* dst) {
  for (int64_t i = 0; i < n; ++i) std::memcpy(dst + i * width, src + idx[i] * ld + c0, width * sizeof(float));
}

// Serial range check before the parallel loops (an exception must not escape an OpenMP region).
void check_rows(const int64_t* rows, int64_t n, int64_t R) {
  for (int64_t i = 0; i < n; ++i) {
    TORCH_CHECK(rows[i] >= -1 && rows[i] < R, "row_of_slot[", i, "] = ", rows[i], " is outside [-1, ", R, ")");
  }
}

}  // namespace

// Counting sort of the routed slots by expert: O(S), stable, deterministic.
// Returns (sorted_slot [R], sorted_token [R], row_of_slot [S], offsets [E]) where R = number of routed slots and
// offsets[e] is the cumulative end of expert e's rows.
std::vector<torch::Tensor> moe_permute(torch::Tensor top_k_index, int64_t num_experts, int64_t num_identity) {
  LCK_CHECK_INPUT(top_k_index, torch::kInt64);
  TORCH_CHECK(top_k_index.dim() == 2, "top_k_index must be 2-D [T, k], got ", top_k_index.sizes());
  TORCH_CHECK(num_experts >= 0 && num_identity >= 0, "num_experts and num_identity must be >= 0");
  const int64_t T = top_k_index.size(0), K = top_k_index.size(1), S = T * K;
  const int64_t E = num_experts, total = num_experts + num_identity;
  const int64_t* idx = top_k_index.data_ptr<int64_t>();

  std::vector<int64_t> counts(static_cast<size_t>(E), 0);
  for (int64_t s = 0; s < S; ++s) {
    const int64_t e = idx[s];
    TORCH_CHECK(e >= 0 && e < total, "top_k_index must lie in [0, ", total, "); found ", e, " at slot ", s);
    if (e < E) ++counts[static_cast<size_t>(e)];
  }
  auto opts = torch::TensorOptions().dtype(torch::kInt64);
  torch::Tensor offsets = torch::empty({E}, opts);
  int64_t* off = offsets.data_ptr<int64_t>();
  std::vector<int64_t> cursor(static_cast<size_t>(E), 0);
  int64_t run = 0;
  for (int64_t e = 0; e < E; ++e) {
    cursor[static_cast<size_t>(e)] = run;
    run += counts[static_cast<size_t>(e)];
    off[e] = run;
  }
  const int64_t R = run;
  torch::Tensor sorted_slot = torch::empty({R}, opts);
  torch::Tensor sorted_token = torch::empty({R}, opts);
  torch::Tensor row_of_slot = torch::empty({S}, opts);
  int64_t* ss = sorted_slot.data_ptr<int64_t>();
  int64_t* st = sorted_token.data_ptr<int64_t>();
  int64_t* rs = row_of_slot.data_ptr<int64_t>();
  for (int64_t s = 0; s < S; ++s) {
    const int64_t e = idx[s];
    if (e < E) {
      const int64_t r = cursor[static_cast<size_t>(e)]++;
      ss[r] = s;
      st[r] = s / K;
      rs[s] = r;
    } else {
      rs[s] = -1;
    }
  }
  return {sorted_slot, sorted_token, row_of_slot, offsets};
}

// out[t] = sum_j w[t, j] * (row_of_slot[t*k+j] >= 0 ? y[row] : x[t]), j = 0..k-1 in order: deterministic, no atomics.
torch::Tensor moe_combine_fwd(torch::Tensor y, torch::Tensor x, torch::Tensor weights, torch::Tensor row_of_slot) {
  LCK_CHECK_INPUT(y, torch::kFloat32);
  LCK_CHECK_INPUT(x, torch::kFloat32);
  LCK_CHECK_INPUT(weights, torch::kFloat32);
  LCK_CHECK_INPUT(row_of_slot, torch::kInt64);
  TORCH_CHECK(x.dim() == 2 && weights.dim() == 2 && y.dim() == 2, "x [T, H], weights [T, k], y [R, H] expected");
  const int64_t T = x.size(0), H = x.size(1), K = weights.size(1), R = y.size(0);
  TORCH_CHECK(weights.size(0) == T && row_of_slot.numel() == T * K, "weights / row_of_slot do not match x");
  TORCH_CHECK(y.size(1) == H || R == 0, "y must be [R, H]");
  torch::Tensor out = torch::empty({T, H}, x.options());
  const float* Y = y.data_ptr<float>();
  const float* X = x.data_ptr<float>();
  const float* Wt = weights.data_ptr<float>();
  const int64_t* RS = row_of_slot.data_ptr<int64_t>();
  float* O = out.data_ptr<float>();
  check_rows(RS, T * K, R);
#pragma omp parallel for schedule(static) num_threads(lck::num_threads())
  for (int64_t t = 0; t < T; ++t) {
    float* o = O + t * H;
#pragma omp simd
    for (int64_t h = 0; h < H; ++h) o[h] = 0.f;
    for (int64_t j = 0; j < K; ++j) {
      const int64_t r = RS[t * K + j];
      const float w = Wt[t * K + j];
      const float* src = r >= 0 ? Y + r * H : X + t * H;
#pragma omp simd
      for (int64_t h = 0; h < H; ++h) o[h] += w * src[h];
    }
  }
  return out;
}

// Backward of moe_combine_fwd and of the identity experts, in one pass per token:
//   dx_routed[t] = sum_j (row >= 0 ? d_rows[row] : w[t, j] * grad_out[t])    (d_rows = d loss / d gathered x rows)
//   d_weights[t, j] = row >= 0 ? d_row_weight[row] : <grad_out[t], x[t]>
std::vector<torch::Tensor> moe_combine_bwd(torch::Tensor d_rows, torch::Tensor grad_out, torch::Tensor x,
                                           torch::Tensor weights, torch::Tensor row_of_slot,
                                           torch::Tensor d_row_weight) {
  LCK_CHECK_INPUT(d_rows, torch::kFloat32);
  LCK_CHECK_INPUT(grad_out, torch::kFloat32);
  LCK_CHECK_INPUT(x, torch::kFloat32);
  LCK_CHECK_INPUT(weights, torch::kFloat32);
  LCK_CHECK_INPUT(row_of_slot, torch::kInt64);
  LCK_CHECK_INPUT(d_row_weight, torch::kFloat32);
  const int64_t T = x.size(0), H = x.size(1), K = weights.size(1), R = d_rows.size(0);
  TORCH_CHECK(grad_out.sizes() == x.sizes(), "grad_out must match x");
  TORCH_CHECK(weights.size(0) == T && row_of_slot.numel() == T * K, "weights / row_of_slot do not match x");
  TORCH_CHECK(d_row_weight.numel() == R && (d_rows.size(1) == H || R == 0), "d_rows [R, H], d_row_weight [R]");
  torch::Tensor dx = torch::empty({T, H}, x.options());
  torch::Tensor dw = torch::empty({T, K}, x.options());
  const float* DR = d_rows.data_ptr<float>();
  const float* G = grad_out.data_ptr<float>();
  const float* X = x.data_ptr<float>();
  const float* Wt = weights.data_ptr<float>();
  const int64_t* RS = row_of_slot.data_ptr<int64_t>();
  const float* DRW = d_row_weight.data_ptr<float>();
  float* DX = dx.data_ptr<float>();
  float* DW = dw.data_ptr<float>();
  check_rows(RS, T * K, R);
#pragma omp parallel for schedule(static) num_threads(lck::num_threads())
  for (int64_t t = 0; t < T; ++t) {
    float* o = DX + t * H;
    const float* g = G + t * H;
    const float* xt = X + t * H;
#pragma omp simd
    for (int64_t h = 0; h < H; ++h) o[h] = 0.f;
    bool have_dot = false;
    float gx = 0.f;
    for (int64_t j = 0; j < K; ++j) {
      const int64_t r = RS[t * K + j];
      if (r >= 0) {
        const float* src = DR + r * H;
#pragma omp simd
        for (int64_t h = 0; h < H; ++h) o[h] += src[h];
        DW[t * K + j] = DRW[r];
      } else {
        const float w = Wt[t * K + j];
#pragma omp simd
        for (int64_t h = 0; h < H; ++h) o[h] += w * g[h];
        if (!have_dot) {
          float acc = 0.f;
#pragma omp simd reduction(+ : acc)
          for (int64_t h = 0; h < H; ++h) acc += g[h] * xt[h];
          gx = acc;
          have_dot = true;
        }
        DW[t * K + j] = gx;
      }
    }
  }
  return {dx, dw};
}

// The whole forward of the routed experts after the permutation, in two parallel regions:
//   per row block of expert e: xs = hidden[sorted_token[rows]] (gathered into a thread-local block),
//   gate_up[rows] = xs @ gate_up_proj[e].T, act = silu(gate) * up (thread-local), y[rows] = act @ down_proj[e].T;
//   then out = combine(y, hidden) in fixed slot order.
// Returns (out [T, H], gate_up [R, 2I]); gate_up is what the backward needs (act is recomputed there), and is an
// empty [0, 2I] tensor when save_gate_up is false.
std::vector<torch::Tensor> moe_experts_fwd(torch::Tensor hidden, torch::Tensor weights, torch::Tensor gate_up_proj,
                                           torch::Tensor down_proj, torch::Tensor sorted_token,
                                           torch::Tensor row_of_slot, torch::Tensor offsets, int64_t block_rows,
                                           bool save_gate_up) {
  LCK_CHECK_INPUT(hidden, torch::kFloat32);
  LCK_CHECK_INPUT(sorted_token, torch::kInt64);
  LCK_CHECK_INPUT(offsets, torch::kInt64);
  LCK_CHECK_DTYPE(gate_up_proj, torch::kFloat32);
  LCK_CHECK_DTYPE(down_proj, torch::kFloat32);
  TORCH_CHECK(block_rows > 0, "block_rows must be > 0");
  const int64_t T = hidden.size(0), H = hidden.size(1), E = gate_up_proj.size(0), I = down_proj.size(2);
  const int64_t R = sorted_token.numel();
  TORCH_CHECK(gate_up_proj.dim() == 3 && gate_up_proj.size(1) == 2 * I && gate_up_proj.size(2) == H &&
                  down_proj.dim() == 3 && down_proj.size(0) == E && down_proj.size(1) == H,
              "gate_up_proj [E, 2I, H] / down_proj [E, H, I] do not match hidden [T, H]");
  TORCH_CHECK(offsets.numel() == E && (E == 0 || offsets.data_ptr<int64_t>()[E - 1] == R),
              "offsets must be [E] with offsets[E-1] = R");
  const int64_t* tok = sorted_token.data_ptr<int64_t>();
  for (int64_t r = 0; r < R; ++r) TORCH_CHECK(tok[r] >= 0 && tok[r] < T, "sorted_token out of range");
  auto opts = hidden.options();
  // without autograd (inference, rollouts) gate_up lives only in the work item's cache-sized buffer
  torch::Tensor gate_up = save_gate_up ? torch::empty({R, 2 * I}, opts) : torch::empty({0, 2 * I}, opts);
  torch::Tensor y = torch::empty({R, H}, opts);
  const float* X = hidden.data_ptr<float>();
  const auto items = row_items(offsets.data_ptr<int64_t>(), E, block_rows);
  for_each_item(items, [&](const Item& it) {
    const int64_t n = it.r1 - it.r0;
    torch::Tensor xs = torch::empty({n, H}, opts);
    gather_rows(X, H, tok + it.r0, n, 0, H, xs.data_ptr<float>());
    torch::Tensor gu = save_gate_up ? gate_up.narrow(0, it.r0, n) : torch::empty({n, 2 * I}, opts);
    mm_into(gu, xs, gate_up_proj[it.e].t());
    torch::Tensor act = torch::empty({n, I}, opts);
    const float* G = gu.data_ptr<float>();
    float* A = act.data_ptr<float>();
    for (int64_t r = 0; r < n; ++r) swiglu_fwd_row(G + r * 2 * I, G + r * 2 * I + I, A + r * I, I);
    mm_into(y.narrow(0, it.r0, n), act, down_proj[it.e].t());
  });
  return {moe_combine_fwd(y, hidden, weights, row_of_slot), gate_up};
}

// The whole backward (g = grad_out), per expert e with rows_e:
//   d_act = g[tokens] @ down_proj[e]; SwiGLU backward (recomputes act from gate_up) -> d_gate_up,
//   d_row_weight = <d_act, act>, and w * act in place of d_act;  d_xs[rows] = d_gate_up @ gate_up_proj[e];
//   ragged-K weight gradients, each written once: d_down_proj[e] = g[tokens_e].T @ (w * act)_e,
//   d_gate_up_proj[e] = d_gate_up_e.T @ hidden[tokens_e]  (experts without rows get zeros);
// then the combine backward: d_hidden and d_top_k_weights per token in fixed slot order.
// Balanced loads run one work item per expert; skewed ones two phases over row blocks / (expert, H block).
// Returns (d_hidden [T, H], d_top_k_weights [T, k], d_gate_up_proj [E, 2I, H], d_down_proj [E, H, I]); the weight
// gradients are empty tensors when not needed.
std::vector<torch::Tensor> moe_experts_bwd(torch::Tensor grad_out, torch::Tensor hidden, torch::Tensor weights,
                                           torch::Tensor gate_up_proj, torch::Tensor down_proj,
                                           torch::Tensor sorted_slot, torch::Tensor sorted_token,
                                           torch::Tensor row_of_slot, torch::Tensor offsets, torch::Tensor gate_up,
                                           bool need_hidden, bool need_gate_up, bool need_down, int64_t block_rows) {
  LCK_CHECK_INPUT(grad_out, torch::kFloat32);
  LCK_CHECK_INPUT(hidden, torch::kFloat32);
  LCK_CHECK_INPUT(weights, torch::kFloat32);
  LCK_CHECK_INPUT(sorted_slot, torch::kInt64);
  LCK_CHECK_INPUT(sorted_token, torch::kInt64);
  LCK_CHECK_INPUT(offsets, torch::kInt64);
  LCK_CHECK_INPUT(gate_up, torch::kFloat32);
  LCK_CHECK_DTYPE(gate_up_proj, torch::kFloat32);
  LCK_CHECK_DTYPE(down_proj, torch::kFloat32);
  TORCH_CHECK(block_rows > 0, "block_rows must be > 0");
  const int64_t T = hidden.size(0), H = hidden.size(1), E = gate_up_proj.size(0), I = down_proj.size(2);
  const int64_t R = sorted_token.numel(), S = weights.numel();
  TORCH_CHECK(grad_out.sizes() == hidden.sizes(), "grad_out must match hidden");
  TORCH_CHECK(gate_up.size(0) == R && gate_up.size(1) == 2 * I && sorted_slot.numel() == R,
              "gate_up [R, 2I] / sorted_slot [R] do not match sorted_token");
  TORCH_CHECK(offsets.numel() == E && (E == 0 || offsets.data_ptr<int64_t>()[E - 1] == R),
              "offsets must be [E] with offsets[E-1] = R");
  const int64_t* tok = sorted_token.data_ptr<int64_t>();
  const int64_t* slot = sorted_slot.data_ptr<int64_t>();
  const int64_t* off = offsets.data_ptr<int64_t>();
  for (int64_t r = 0; r < R; ++r) {
    TORCH_CHECK(tok[r] >= 0 && tok[r] < T && slot[r] >= 0 && slot[r] < S, "sorted_token / sorted_slot out of range");
  }
  auto opts = hidden.options();
  torch::Tensor d_xs = need_hidden ? torch::empty({R, H}, opts) : torch::zeros({R, H}, opts);
  torch::Tensor d_row_weight = torch::empty({R}, opts);
  torch::Tensor d_gate_up_proj = need_gate_up ? torch::empty({E, 2 * I, H}, opts) : torch::empty({0}, opts);
  torch::Tensor d_down_proj = need_down ? torch::empty({E, H, I}, opts) : torch::empty({0}, opts);
  const float* Gd = grad_out.data_ptr<float>();
  const float* X = hidden.data_ptr<float>();
  const float* Wt = weights.data_ptr<float>();
  const float* GU = gate_up.data_ptr<float>();
  float* DRW = d_row_weight.data_ptr<float>();

  // SwiGLU backward of rows [r0, r1) whose d_act sits in WA (row stride I): -> DGU rows, DRW, WA <- w * act
  auto swiglu_bwd_rows = [&](int64_t r0, int64_t r1, float* WA, float* DGU) {
    for (int64_t r = r0; r < r1; ++r) {
      const float* g = GU + r * 2 * I;
      float* dg = DGU + (r - r0) * 2 * I;
      DRW[r] = swiglu_bwd_row(g, g + I, WA + (r - r0) * I, dg, dg + I, Wt[slot[r]], I);
    }
  };
  std::vector<Item> experts;  // (e, first row, end row) of every expert with rows
  int64_t max_rows = 0;
  for (int64_t e = 0, start = 0; e < E; start = off[e], ++e) {
    if (off[e] > start) experts.push_back({e, start, off[e]});
    max_rows = std::max(max_rows, off[e] - start);
    if (off[e] == start) {  // no rows: zero weight gradient
      if (need_gate_up) d_gate_up_proj[e].zero_();
      if (need_down) d_down_proj[e].zero_();
    }
  }
  const int64_t threads = max_threads();
  if (static_cast<int64_t>(experts.size()) >= 2 * threads && max_rows * threads <= R) {
    // Balanced loads (the common case): one work item per expert does its whole backward, with d_act, w * act and
    // d_gate_up in thread-local buffers that stay in cache; only d_xs and the weight gradients are written out.
    for_each_item(experts, [&](const Item& it) {
      const int64_t n = it.r1 - it.r0;
      torch::Tensor rows = torch::empty({n, H}, opts);
      gather_rows(Gd, H, tok + it.r0, n, 0, H, rows.data_ptr<float>());
      torch::Tensor w_act = at::mm(rows, down_proj[it.e]);  // d_act, then w * act
      torch::Tensor d_gate_up = torch::empty({n, 2 * I}, opts);
      swiglu_bwd_rows(it.r0, it.r1, w_act.data_ptr<float>(), d_gate_up.data_ptr<float>());
      if (need_down) mm_into(d_down_proj[it.e], rows.t(), w_act);
      if (need_gate_up) {
        gather_rows(X, H, tok + it.r0, n, 0, H, rows.data_ptr<float>());
        mm_into(d_gate_up_proj[it.e], d_gate_up.t(), rows);
      }
      if (need_hidden) mm_into(d_xs.narrow(0, it.r0, n), d_gate_up, gate_up_proj[it.e]);
    });
  } else {
    // Skewed loads (few experts, or one expert holding most rows): phase 1 over row blocks, phase 2 over
    // (expert, block of H) so that even a single expert's weight gradient is spread over the threads; every
    // output block is still written exactly once.
    torch::Tensor d_gate_up = torch::empty({R, 2 * I}, opts);
    torch::Tensor w_act = torch::empty({R, I}, opts);
    for_each_item(row_items(off, E, block_rows), [&](const Item& it) {
      const int64_t n = it.r1 - it.r0;
      torch::Tensor g_rows = torch::empty({n, H}, opts);
      gather_rows(Gd, H, tok + it.r0, n, 0, H, g_rows.data_ptr<float>());
      torch::Tensor wa = w_act.narrow(0, it.r0, n), dgu = d_gate_up.narrow(0, it.r0, n);
      mm_into(wa, g_rows, down_proj[it.e]);
      swiglu_bwd_rows(it.r0, it.r1, wa.data_ptr<float>(), dgu.data_ptr<float>());
      if (need_hidden) mm_into(d_xs.narrow(0, it.r0, n), dgu, gate_up_proj[it.e]);
    });
    if (need_gate_up || need_down) {
      const int64_t blocks = std::clamp<int64_t>((4 * threads + static_cast<int64_t>(experts.size()) - 1) /
                                                     std::max<int64_t>(experts.size(), 1),
                                                 1, std::max<int64_t>(H / 64, 1));
      const int64_t hb = (H + blocks - 1) / blocks;
      std::vector<Item> items;
      for (const Item& ex : experts)
        for (int64_t h0 = 0; h0 < H; h0 += hb) items.push_back({ex.e, h0, std::min(H, h0 + hb)});
      for_each_item(items, [&](const Item& it) {
        const int64_t start = it.e == 0 ? 0 : off[it.e - 1], n = off[it.e] - start, w = it.r1 - it.r0;
        torch::Tensor block = torch::empty({n, w}, opts);
        if (need_down) {
          gather_rows(Gd, H, tok + start, n, it.r0, w, block.data_ptr<float>());
          mm_into(d_down_proj[it.e].narrow(0, it.r0, w), block.t(), w_act.narrow(0, start, n));
        }
        if (need_gate_up) {
          gather_rows(X, H, tok + start, n, it.r0, w, block.data_ptr<float>());
          mm_into(d_gate_up_proj[it.e].narrow(1, it.r0, w), d_gate_up.narrow(0, start, n).t(), block);
        }
      });
    }
  }
  auto dx_dw = moe_combine_bwd(d_xs, grad_out, hidden, weights, row_of_slot, d_row_weight);
  return {dx_dw[0], dx_dw[1], d_gate_up_proj, d_down_proj};
}

}  // namespace lck
