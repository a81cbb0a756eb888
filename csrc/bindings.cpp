// The single Python module lckernels._C.  Every kernel TORCH_CHECKs its inputs; the Python layer validates first and
// gives the user-facing ValueError/TypeError, these checks are the last line of defence against a crash.
#include "common.h"

namespace lck {
void logprobs_fwd_chunk(torch::Tensor logits, torch::Tensor targets, int64_t chunk_start, double inv_temperature,
                        torch::Tensor m, torch::Tensor s, torch::Tensor t, torch::Tensor zy);
void logprobs_bwd_chunk(torch::Tensor logits, torch::Tensor targets, int64_t chunk_start, double inv_temperature,
                        torch::Tensor lse, torch::Tensor entropy, torch::Tensor grad_logprobs,
                        torch::Tensor grad_entropy, int64_t ignore_index);
torch::Tensor soft_gaussian_gate(torch::Tensor ratio, torch::Tensor old_logprobs, torch::Tensor advantages,
                                 double sigma_base, double alpha, double beta_pos, double beta_neg, double sigma_high,
                                 double a_low, double a_high);
void grouped_mm_rows(torch::Tensor a, torch::Tensor w, torch::Tensor offsets, torch::Tensor out, int64_t block_rows);
void grouped_mm_tn(torch::Tensor a, torch::Tensor b, torch::Tensor offsets, torch::Tensor out);
std::vector<torch::Tensor> moe_permute(torch::Tensor top_k_index, int64_t num_experts, int64_t num_identity);
std::vector<torch::Tensor> moe_experts_fwd(torch::Tensor hidden, torch::Tensor weights, torch::Tensor gate_up_proj,
                                           torch::Tensor down_proj, torch::Tensor sorted_token,
                                           torch::Tensor row_of_slot, torch::Tensor offsets, int64_t block_rows,
                                           bool save_gate_up);
std::vector<torch::Tensor> moe_experts_bwd(torch::Tensor grad_out, torch::Tensor hidden, torch::Tensor weights,
                                           torch::Tensor gate_up_proj, torch::Tensor down_proj,
                                           torch::Tensor sorted_slot, torch::Tensor sorted_token,
                                           torch::Tensor row_of_slot, torch::Tensor offsets, torch::Tensor gate_up,
                                           bool need_hidden, bool need_gate_up, bool need_down, int64_t block_rows);
}  // namespace lck

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.doc() = "lckernels C++ CPU kernels";
  m.def("logprobs_fwd_chunk", &lck::logprobs_fwd_chunk,
        "fused_logprobs forward: online logsumexp/entropy update over one vocabulary chunk (in place)",
        py::arg("logits"), py::arg("targets"), py::arg("chunk_start"), py::arg("inv_temperature"), py::arg("m"),
        py::arg("s"), py::arg("t"), py::arg("zy"));
  m.def("logprobs_bwd_chunk", &lck::logprobs_bwd_chunk,
        "fused_logprobs backward: logits chunk -> d loss / d logits chunk (in place)", py::arg("logits"),
        py::arg("targets"), py::arg("chunk_start"), py::arg("inv_temperature"), py::arg("lse"), py::arg("entropy"),
        py::arg("grad_logprobs"), py::arg("grad_entropy"), py::arg("ignore_index"));
  m.def("soft_gaussian_gate", &lck::soft_gaussian_gate, "MASPO soft Gaussian gate (elementwise, fp32)",
        py::arg("ratio"), py::arg("old_logprobs"), py::arg("advantages"), py::arg("sigma_base"), py::arg("alpha"),
        py::arg("beta_pos"), py::arg("beta_neg"), py::arg("sigma_high"), py::arg("a_low"), py::arg("a_high"));
  m.def("grouped_mm_rows", &lck::grouped_mm_rows, "grouped_mm: out[rows_g] = a[rows_g] @ w[g] (fp32, in place)",
        py::arg("a"), py::arg("w"), py::arg("offsets"), py::arg("out"), py::arg("block_rows"));
  m.def("grouped_mm_tn", &lck::grouped_mm_tn, "grouped_mm weight gradient: out[g] = a[rows_g].T @ b[rows_g] (fp32)",
        py::arg("a"), py::arg("b"), py::arg("offsets"), py::arg("out"));
  m.def("moe_permute", &lck::moe_permute,
        "moe_experts: counting sort of routed slots by expert -> (sorted_slot, sorted_token, row_of_slot, offsets)",
        py::arg("top_k_index"), py::arg("num_experts"), py::arg("num_identity"));
  m.def("moe_experts_fwd", &lck::moe_experts_fwd,
        "moe_experts forward after the permutation -> (out [T, H], gate_up [R, 2I]) (fp32)", py::arg("hidden"),
        py::arg("weights"), py::arg("gate_up_proj"), py::arg("down_proj"), py::arg("sorted_token"),
        py::arg("row_of_slot"), py::arg("offsets"), py::arg("block_rows"), py::arg("save_gate_up") = true);
  m.def("moe_experts_bwd", &lck::moe_experts_bwd,
        "moe_experts backward -> (d_hidden, d_top_k_weights, d_gate_up_proj, d_down_proj) (fp32)",
        py::arg("grad_out"), py::arg("hidden"), py::arg("weights"), py::arg("gate_up_proj"), py::arg("down_proj"),
        py::arg("sorted_slot"), py::arg("sorted_token"), py::arg("row_of_slot"), py::arg("offsets"),
        py::arg("gate_up"), py::arg("need_hidden"), py::arg("need_gate_up"), py::arg("need_down"),
        py::arg("block_rows"));
  m.attr("WITH_OPENMP") =
#ifdef _OPENMP
      true;
#else
      false;
#endif
}
