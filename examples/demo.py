"""`make demo-kernels`: run the fused ops on CPU, check them against their references, print a side-by-side table.

It shows the op agrees with its reference on values and gradients, then times it against the reference, the PyTorch
anchors and the bare-GEMM limit, with peak memory.  (`make demo` is the end-to-end trainer.)
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)  # so `benchmarks` imports when run as a script

import lckernels  # noqa: E402
from lckernels import _ext  # noqa: E402


def check_against_reference() -> None:
    torch.manual_seed(0)
    n, d, v = 300, 64, 5000
    h = torch.randn(n, d, requires_grad=True)
    w = (torch.randn(v, d) / d ** 0.5).requires_grad_()
    y = torch.randint(0, v, (n,))
    y[:40] = -100  # a masked prompt
    results = {}
    for backend in ("cpu", "reference"):
        h.grad = w.grad = None
        lp, ent = lckernels.fused_logprobs(h, w, y, temperature=0.8, return_entropy=True, backend=backend)
        (lp.sum() + 0.1 * ent.sum()).backward()
        results[backend] = (lp.detach(), ent.detach(), h.grad.clone(), w.grad.clone())
    print(f"fused_logprobs(backend='cpu') vs reference on N={n}, D={d}, V={v}, T=0.8, 40 masked tokens:")
    for name, a, b in zip(("logprobs", "entropy", "grad_hidden", "grad_weight"), results["cpu"], results["reference"]):
        rel = ((a - b).abs().max() / b.abs().max()).item()
        print(f"  {name:12s} max relative error {rel:.2e}")
        if rel > 1e-5:
            raise SystemExit(f"demo: {name} disagrees with the reference ({rel:.2e})")


def check_policy_loss() -> None:
    torch.manual_seed(0)
    b, t, d, v = 4, 32, 64, 3000
    h = torch.randn(b, t, d, requires_grad=True)
    w = (torch.randn(v, d) / d ** 0.5).requires_grad_()
    y = torch.randint(0, v, (b, t))
    mask = torch.ones(b, t)
    mask[:, 28:] = 0
    adv = torch.randn(b)
    with torch.no_grad():
        old = lckernels.fused_logprobs(h, w, y) + 0.2 * torch.randn(b, t)
    print(f"\nfused_policy_loss(backend='cpu') vs reference, B={b}, T={t}, D={d}, V={v}:")
    for mode in ("clip", "gspo", "maspo", "sapo"):
        cfg = lckernels.PolicyLossConfig(mode=mode, entropy_coef=0.01)
        got = {}
        for backend in ("cpu", "reference"):
            h.grad = w.grad = None
            out = lckernels.fused_policy_loss(h, w, y, adv, old, mask=mask, config=cfg, backend=backend)
            out.loss.backward()
            got[backend] = (out.loss.detach(), h.grad.clone(), w.grad.clone(), out.stats)
        errs = [((a - r).abs().max() / r.abs().max().clamp_min(1e-12)).item()
                for a, r in zip(got["cpu"][:3], got["reference"][:3])]
        st = got["cpu"][3]
        print(f"  {mode:6s} loss {got['cpu'][0].item():+.5f}  max rel err loss/dH/dW {max(errs):.1e}  "
              f"clip_frac {st['clip_frac_low'] + st['clip_frac_high']:.3f}  gate {st['gate_mean']:.3f}  "
              f"entropy {st['entropy_mean']:.3f}  |dW|^2 {st['lm_head_grad_sq_norm']:.3e}")
        if max(errs) > 1e-5:
            raise SystemExit(f"demo: fused_policy_loss({mode}) disagrees with the reference")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--N", default="1024", help="token counts to sweep (comma-separated)")
    parser.add_argument("--V", type=int, default=32000)
    parser.add_argument("--D", type=int, default=512)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--no-memory", action="store_true", help="skip the per-provider peak-memory subprocesses")
    args = parser.parse_args(argv)

    print(f"lckernels {lckernels.__version__} · torch {torch.__version__} · {torch.get_num_threads()} threads · "
          f"C++ extension {'loaded' if _ext.available() else 'MISSING (streamed PyTorch fallback)'}\n")
    check_against_reference()
    check_policy_loss()

    from benchmarks.run import format_table, run

    out_dir = os.path.join(ROOT, "benchmarks", "out", "demo")
    t0 = time.perf_counter()
    xs = [int(x) for x in args.N.split(",")]
    common = dict(V=args.V, D=args.D, dtype="float32", device="cpu", repeats=args.repeats,
                  memory=not args.no_memory, out=os.path.join(out_dir, "results.csv"), plot_dir=out_dir)
    rows = run("fused_logprobs", N=xs, **common)
    rows += run("fused_policy_loss", N=xs, T=256, modes=["fwd_bwd"], **common)
    print(f"\nside by side on CPU, fp32, D={args.D}, V={args.V} ({time.perf_counter() - t0:.0f} s):\n")
    print(format_table(rows))
    print(f"\nCSV and plots: {out_dir}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
