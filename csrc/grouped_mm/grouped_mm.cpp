// CPU path of grouped_mm: the row-tiled grouped GEMM and the ragged-K weight gradient, one OpenMP region each over
// work items (see moe/parallel.h), single-threaded MKL SGEMMs inside.  fp32; the Python layer upcasts 16-bit inputs.
#include "common.h"
#include "moe/parallel.h"

namespace lck {

namespace {

void check_offsets(const torch::Tensor& offsets, int64_t G, int64_t M) {
  LCK_CHECK_INPUT(offsets, torch::kInt64);
  TORCH_CHECK(offsets.numel() == G, "offsets must have one entry per group (", G, ")");
  const int64_t* off = offsets.data_ptr<int64_t>();
  for (int64_t g = 0, prev = 0; g < G; prev = off[g], ++g) {
    TORCH_CHECK(off[g] >= prev && off[g] <= M, "offsets must be non-decreasing in [0, ", M, "]");
  }
}

}  // namespace

// out[r] = a[r] @ w[g] for the rows r of each group g; rows at or past offsets[G-1] are left untouched.
// a [M, K] fp32, w [G, K, N] fp32 (any strides: a transposed view is read as a transposed operand), out [M, N].
void grouped_mm_rows(torch::Tensor a, torch::Tensor w, torch::Tensor offsets, torch::Tensor out, int64_t block_rows) {
  LCK_CHECK_CPU(a);
  LCK_CHECK_DTYPE(a, torch::kFloat32);
  LCK_CHECK_DTYPE(w, torch::kFloat32);
  LCK_CHECK_INPUT(out, torch::kFloat32);
  TORCH_CHECK(a.dim() == 2 && w.dim() == 3 && w.size(1) == a.size(1) && out.dim() == 2 &&
                  out.size(0) == a.size(0) && out.size(1) == w.size(2),
              "grouped_mm_rows: a [M, K], w [G, K, N], out [M, N] expected");
  TORCH_CHECK(block_rows > 0, "block_rows must be > 0");
  check_offsets(offsets, w.size(0), a.size(0));
  for_each_item(row_items(offsets.data_ptr<int64_t>(), w.size(0), block_rows), [&](const Item& it) {
    mm_into(out.narrow(0, it.r0, it.r1 - it.r0), a.narrow(0, it.r0, it.r1 - it.r0), w[it.e]);
  });
}

// out[g] = a[rows_g].T @ b[rows_g] (the ragged-K weight gradient): every out[g] block written once, zeros for groups
// without rows.  The N columns are split into blocks only when there are too few groups to keep the threads busy.
// a [M, P], b [M, Q], out [G, P, Q] (contiguous).
void grouped_mm_tn(torch::Tensor a, torch::Tensor b, torch::Tensor offsets, torch::Tensor out) {
  LCK_CHECK_CPU(a);
  LCK_CHECK_DTYPE(a, torch::kFloat32);
  LCK_CHECK_DTYPE(b, torch::kFloat32);
  LCK_CHECK_INPUT(out, torch::kFloat32);
  TORCH_CHECK(a.dim() == 2 && b.dim() == 2 && b.size(0) == a.size(0) && out.dim() == 3 && out.size(1) == a.size(1) &&
                  out.size(2) == b.size(1),
              "grouped_mm_tn: a [M, P], b [M, Q], out [G, P, Q] expected");
  const int64_t G = out.size(0), Q = out.size(2);
  check_offsets(offsets, G, a.size(0));
  const int64_t* off = offsets.data_ptr<int64_t>();
  int64_t busy = 0;
  for (int64_t g = 0, start = 0; g < G; start = off[g], ++g) {
    if (off[g] > start) ++busy;
    else out[g].zero_();
  }
  const int64_t blocks = std::clamp<int64_t>((4 * max_threads() + busy - 1) / std::max<int64_t>(busy, 1), 1,
                                             std::max<int64_t>(Q / 64, 1));
  const int64_t qb = (Q + blocks - 1) / blocks;
  std::vector<Item> items;
  for (int64_t g = 0, start = 0; g < G; start = off[g], ++g)
    if (off[g] > start)
      for (int64_t q0 = 0; q0 < Q; q0 += qb) items.push_back({g, q0, std::min(Q, q0 + qb)});
  for_each_item(items, [&](const Item& it) {
    const int64_t start = it.e == 0 ? 0 : off[it.e - 1], n = off[it.e] - start, w = it.r1 - it.r0;
    mm_into(out[it.e].narrow(1, it.r0, w), a.narrow(0, start, n).t(), b.narrow(0, start, n).narrow(1, it.r0, w));
  });
}

}  // namespace lck
