// Work-item parallelism for the CPU GEMM drivers of grouped_mm and moe_experts.
//
// A phase is a list of work items (a block of one group's rows, or a slice of one group's weight gradient) run by
// for_each_item in ONE OpenMP region.  Inside an item, ATen GEMMs run single-threaded (ATen and MKL do not nest
// parallelism inside an OpenMP region), so each is a whole single-core MKL SGEMM on a block that stays in cache --
// instead of one fork/join of all threads per GEMM when a Python loop calls torch.mm per group.
#pragma once

#include "common.h"

#include <torch/extension.h>

#include <algorithm>
#include <exception>
#include <vector>

namespace lck {

// out = a @ b into a view of a larger buffer (ATen's mm_out wants an lvalue; the view shares the storage)
inline void mm_into(torch::Tensor out, const torch::Tensor& a, const torch::Tensor& b) { at::mm_out(out, a, b); }

// One unit of parallel work: rows [r0, r1) of group e (row-tiled phases), or columns [r0, r1) of group e's
// weight gradient (ragged-K phases).
struct Item {
  int64_t e, r0, r1;
};

// Runs body(item) for every item on the OpenMP threads (dynamic schedule: groups have uneven loads) and rethrows
// the first exception after the region (an exception must not escape an OpenMP region).
template <typename F>
void for_each_item(const std::vector<Item>& items, F body) {
  std::exception_ptr error = nullptr;
#pragma omp parallel for schedule(dynamic, 1) num_threads(lck::num_threads())
  for (size_t i = 0; i < items.size(); ++i) {
    try {
      at::NoGradGuard no_grad;  // grad mode is thread-local: the OpenMP workers must not record autograd for mm_out
      body(items[i]);
    } catch (...) {
#pragma omp critical(lck_for_each_item_error)
      if (!error) error = std::current_exception();
    }
  }
  if (error) std::rethrow_exception(error);
}

// Row blocks of at most `block` rows inside each group's range, split evenly (300 rows -> 150 + 150, not 256 + 44).
inline std::vector<Item> row_items(const int64_t* offsets, int64_t G, int64_t block) {
  std::vector<Item> items;
  int64_t start = 0;
  for (int64_t e = 0; e < G; ++e) {
    const int64_t n = offsets[e] - start;
    if (n > 0) {
      const int64_t pieces = (n + block - 1) / block, size = (n + pieces - 1) / pieces;
      for (int64_t r = start; r < offsets[e]; r += size) items.push_back({e, r, std::min(offsets[e], r + size)});
    }
    start = offsets[e];
  }
  return items;
}

// the threads for_each_item runs on (torch's budget, see lck::num_threads in common.h)
inline int64_t max_threads() { return num_threads(); }

}  // namespace lck
