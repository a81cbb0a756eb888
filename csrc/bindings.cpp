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
  m.attr("WITH_OPENMP") =
#ifdef _OPENMP
      true;
#else
      false;
#endif
}
