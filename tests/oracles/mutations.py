"""Mutation check of the policy-loss and objective tests (``make test-mutations``).

Each mutation replaces one exact line fragment (asserted to occur exactly once) of
``lckernels/ops/policy_loss/math.py``, ``config.py`` or an objective module -- a sign, a bound, a clamp, a divisor,
a detach, a default -- in a temporary COPY of ``lckernels/``, ``lckernels_rl/`` and ``tests/`` (the C extension
``lckernels/_C*.so`` included), then runs only the relevant tests there::

    tests/oracles  tests/ops/test_policy_loss.py  tests/rl/test_objectives.py

with ``PYTHONPATH`` pointing at the copy.  A mutation is KILLED when some test fails (the first failing test is
reported; ``--all-failures`` lists all of them), SURVIVED when every test passes.  The real sources are only read.
Exit code 1 if any mutation survived (or the unmutated copy fails).

    .venv/bin/python tests/oracles/mutations.py                  # every mutation
    .venv/bin/python tests/oracles/mutations.py --only M01,M07   # a few
    .venv/bin/python tests/oracles/mutations.py --without-oracles  # what the pre-existing tests alone catch
    .venv/bin/python tests/oracles/mutations.py --tests tests/oracles/test_policy_loss_oracle.py
    .venv/bin/python tests/oracles/mutations.py --list
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
MATH = "lckernels/ops/policy_loss/math.py"
CONFIG = "lckernels/ops/policy_loss/config.py"
OBJ = "lckernels_rl/objectives/"
ORACLE_TESTS = ["tests/oracles"]
EXISTING_TESTS = ["tests/ops/test_policy_loss.py", "tests/rl/test_objectives.py"]
TIMEOUT_S = 120

# (id, file, exact fragment, replacement, what it breaks)
MUTATIONS = [
    # ---------------------------------------------------------------- math.py: KL / entropy
    ("M01", MATH, "loss = loss - cfg.entropy_coef * (prep.weight * ent).sum()",
     "loss = loss + cfg.entropy_coef * (prep.weight * ent).sum()", "entropy bonus sign flipped"),
    ("M02", MATH, "        return lp - ref\n", "        return ref - lp\n", "k1 KL sign flipped"),
    ("M03", MATH, "return torch.exp(d) - d - 1", "return torch.exp(d) - d", "k3 without its -1"),
    ("M04", MATH, "d = (ref - lp).clamp(", "d = (lp - ref).clamp(", "k3 log-ratio direction reversed"),
    ("M05", MATH, "loss = loss + cfg.kl_beta * (prep.weight * kl).sum()",
     "loss = loss + cfg.kl_beta * (prep.pg_weight * kl).sum()", "KL weighted by the rollout-corrected pg weight"),
    # ---------------------------------------------------------------- math.py: rollout correction
    ("M06", MATH, "keep = keep & (w_tok >= low) & (w_tok <= high)", "keep = keep & (w_tok <= high)",
     "token_mask: lower bound dropped"),
    ("M07", MATH, "keep = keep & (w_tok >= low) & (w_tok <= high)", "keep = keep & (w_tok >= low)",
     "token_mask: upper bound dropped"),
    ("M08", MATH, "keep = keep & (w_seq >= low) & (w_seq <= high)", "keep = keep & (w_seq <= high)",
     "sequence_mask: lower bound dropped"),
    ("M09", MATH, "pg_weight = pg_weight * w_seq.clamp(max=high)", "pg_weight = pg_weight * w_seq",
     "sequence_truncate: clamp removed"),
    ("M10", MATH, "pg_weight = pg_weight * w_tok.clamp(max=high)", "pg_weight = pg_weight * w_tok",
     "token_truncate: clamp removed"),
    ("M11", MATH, "low = cfg.rc_threshold_low if cfg.rc_threshold_low is not None else 1.0 / high",
     "low = 1.0 / high", "rc_threshold_low ignored"),
    ("M12", MATH, "low = cfg.rc_threshold_low if cfg.rc_threshold_low is not None else 1.0 / high",
     "low = cfg.rc_threshold_low if cfg.rc_threshold_low is not None else 0.0", "default lower bound 0, not 1/high"),
    ("M13", MATH, "log_w = (old - rollout).clamp(", "log_w = (rollout - old).clamp(",
     "rollout weight inverted (mu / pi_old)"),
    ("M14", MATH, "w_seq = clamped_exp(log_w.sum(1))", "w_seq = clamped_exp(log_w.mean(1))",
     "sequence weight: mean instead of product"),
    # ---------------------------------------------------------------- math.py: aggregation
    ("M15", MATH, "return vf / max(n_seq, 1)", "return vf / b", "seq-mean-token-sum: divides by B, not n_seq"),
    ("M16", MATH, "return vf / (per_seq.clamp_min(1)[:, None] * max(n_seq, 1))",
     "return vf / (per_seq.clamp_min(1)[:, None] * b)", "seq-mean-token-mean: divides by B, not n_seq"),
    ("M17", MATH, "return vf / max(n_valid, 1)", "return vf / (b * t)", "token-mean: divides by B*T"),
    ("M18", MATH, "return vf / (b * (loss_norm_constant if loss_norm_constant is not None else t))",
     "return vf / (b * t)", "loss_norm_constant ignored"),
    # ---------------------------------------------------------------- math.py: policy-gradient terms
    ("M19", MATH, "pg = torch.maximum(-adv * r, -adv * r.clamp(lo, hi))",
     "pg = torch.minimum(-adv * r, -adv * r.clamp(lo, hi))", "PPO clip: min instead of max (pessimism lost)"),
    ("M20", MATH, "lo, hi = 1 - cfg.eps_low, 1 + cfg.eps_high", "lo, hi = 1 - cfg.eps_low, 1 + cfg.eps_low",
     "clip: eps_high ignored"),
    ("M21", MATH, "pg = torch.where(adv < 0, torch.minimum(pg, -adv * c), pg)",
     "pg = torch.where(adv > 0, torch.minimum(pg, -adv * c), pg)", "dual clip applied to A > 0"),
    ("M22", MATH, "lo, hi = 1 - cfg.hispo_eps_neg_low, 1 + cfg.hispo_eps_pos_high",
     "lo, hi = 1 - cfg.hispo_eps_neg_low, 1 + cfg.eps_high", "hispo: upper clip from eps_high"),
    ("M23", MATH, "w = rd.clamp(lo, hi)", "w = r.clamp(lo, hi)", "cispo: IS weight not detached"),
    ("M24", MATH, "tau = torch.where(adv > 0, ", "tau = torch.where(adv < 0, ", "sapo: tau_pos / tau_neg swapped"),
    ("M25", MATH, "pg = -adv * sig * (4 / tau)", "pg = -adv * sig * 4", "sapo: 4 / tau scale dropped"),
    ("M26", MATH, "return -adv * w * r, torch.zeros_like", "return -adv * w * rd, torch.zeros_like",
     "maspo: ratio detached (no gradient)"),
    ("M27", MATH, "beta_pos=cfg.maspo_beta_pos, beta_neg=cfg.maspo_beta_neg",
     "beta_pos=cfg.maspo_beta_neg, beta_neg=cfg.maspo_beta_pos", "maspo: beta_pos / beta_neg swapped"),
    ("M28", MATH, "s = d.sum(1) / vf.sum(1).clamp_min(1)", "s = d.sum(1)", "gspo: sum instead of mean log-ratio"),
    ("M29", MATH, "d = (lp.detach().float() - old) * vf", "d = (lp.float() - old) * vf",
     "gspo: sequence ratio not detached (reference path)"),
    ("M30", MATH, "old_eff = lp.detach() if old is None else old", "old_eff = lp if old is None else old",
     "on-policy: pi_old not detached (no gradient)"),
    ("M31", MATH, "seq_ratio = torch.exp(log_w.sum(1) / per_seq.clamp_min(1))", "seq_ratio = torch.exp(log_w.sum(1))",
     "hispo: sequence product instead of geometric mean"),
    ("M32", MATH, "tok_ok = (torch.exp(log_w) - 1).abs() < cfg.hispo_delta_tok",
     "tok_ok = (torch.exp(log_w) - 1).abs() < cfg.hispo_delta_seq", "hispo: token mask uses delta_seq"),
    ("M33", MATH, "LOG_RATIO_CLAMP = 20.0", "LOG_RATIO_CLAMP = 2.0", "log-ratio clamp 2 instead of 20"),
    # ---------------------------------------------------------------- math.py: masks and stats
    ("M34", MATH, "valid = valid & (targets != ignore_index)", "valid = valid", "ignore_index not masked"),
    ("M35", MATH, "return valid & ~bad, n_bad", "return valid, n_bad", "nonfinite='mask' does not drop"),
    ("M36", MATH, '"nonfinite_frac": prep.nonfinite / max(total, 1)', '"nonfinite_frac": prep.nonfinite / n',
     "nonfinite_frac over the remaining tokens"),
    ("M37", MATH, "return pg, (rd < lo) & (adv < 0), (rd > hi) & (adv > 0), one, rd",
     "return pg, (rd < lo) & (adv > 0), (rd > hi) & (adv < 0), one, rd", "clip stats: advantage signs swapped"),
    ("M38", MATH, "masked = int((valid & ~keep).sum())", "masked = int((~keep).sum())",
     "masked_frac counts padding"),
    ("M39", MATH, "gate = 4 * sd * (1 - sd)", "gate = sd", "sapo gate stat"),
    # ---------------------------------------------------------------- math.py: pg_weight, ratio-weighted KL (issue 16)
    ("M40", MATH, "pg_weight = weight if pw is None else weight * pw",
     "pg_weight = weight if pw is None else -weight * pw", "pg_weight: sign flipped"),
    ("M41", MATH, "pg_weight = weight if pw is None else weight * pw", "pg_weight = weight",
     "pg_weight ignored"),
    ("M42", MATH, "weight = aggregation_weights(valid, cfg.loss_agg, cfg.loss_norm_constant)",
     "weight = aggregation_weights(valid, cfg.loss_agg, cfg.loss_norm_constant) * (1 if pw is None else pw)",
     "pg_weight also scales the KL / entropy terms and the stats' weights"),
    ("M43", MATH, "loss = loss + cfg.kl_beta * (prep.weight * kl * kl_ratio(lp, prep.old, gspo_log_s)).sum()",
     "loss = loss + cfg.kl_beta * (prep.weight * kl).sum()", "ratio-weighted KL: ratio weight dropped"),
    ("M44", MATH, "return clamped_exp(gspo_log_s)", "return clamped_exp(lp - (lp.detach() if old is None else old))",
     "ratio-weighted KL, gspo: token ratio instead of the sequence ratio"),
    ("M45", MATH, '("ref_logprobs", ref), ("pg_weight", pw)):', '("ref_logprobs", ref)):',
     "pg_weight: NaN/inf not checked"),
    ("M46", MATH, "if n_neg:", "if False:", "pg_weight: negative values accepted"),
    # ---------------------------------------------------------------- config.py
    ("C01", CONFIG, 'return self.mode == "hispo" or self.rollout_correction is not None',
     'return self.mode == "hispo"', "rollout corrections never applied"),
    ("C02", CONFIG, "rc_threshold_low: Optional[float] = None", "rc_threshold_low: Optional[float] = 0.25",
     "default rc_threshold_low 0.25 instead of 1/rc_threshold"),
    ("C03", CONFIG, "tau_neg: float = 1.05", "tau_neg: float = 1.0", "sapo default tau_neg"),
    ("C04", CONFIG, "maspo_alpha: float = 0.3", "maspo_alpha: float = 0.5", "maspo default alpha"),
    ("C05", CONFIG, "hispo_delta_tok: float = 1.0", "hispo_delta_tok: float = 0.5", "hispo default delta_tok"),
    ("C06", CONFIG, "not (0 < self.rc_threshold_low < self.rc_threshold)", "not (0 < self.rc_threshold_low)",
     "rc_threshold_low > rc_threshold accepted"),
    # ---------------------------------------------------------------- objectives
    ("O01", OBJ + "grpo.py", 'loss_agg: str = "seq-mean-token-mean"', 'loss_agg: str = "token-mean"',
     "grpo: token-mean instead of 1/G sum 1/|o|"),
    ("O02", OBJ + "dapo.py", "eps_high: float = 0.28", "eps_high: float = 0.2", "dapo: no clip-higher"),
    ("O03", OBJ + "dr_grpo.py", 'loss_agg: str = "seq-mean-token-sum-norm"', 'loss_agg: str = "seq-mean-token-sum"',
     "dr_grpo: per-sequence mean instead of constant"),
    ("O04", OBJ + "gspo.py", 'return dict(mode="gspo"', 'return dict(mode="clip"', "gspo: token ratio"),
    ("O05", OBJ + "gspo.py", "eps_high: float = 4e-4", "eps_high: float = 3e-4", "gspo: default eps_high"),
    ("O06", OBJ + "cispo.py", "cispo_eps_low=self.eps_low, cispo_eps_high=self.eps_high",
     "cispo_eps_low=self.eps_high, cispo_eps_high=self.eps_low", "cispo: bounds swapped"),
    ("O07", OBJ + "sapo.py", "tau_pos=self.tau_pos, tau_neg=self.tau_neg", "tau_pos=self.tau_neg, tau_neg=self.tau_pos",
     "sapo: temperatures swapped"),
    ("O08", OBJ + "sapo.py", "tau_neg: float = 1.05", "tau_neg: float = 1.0", "sapo: default tau_neg"),
    ("O09", OBJ + "maspo.py", "maspo_beta_pos=self.beta_pos, maspo_beta_neg=self.beta_neg",
     "maspo_beta_pos=self.beta_neg, maspo_beta_neg=self.beta_pos", "maspo: betas swapped"),
    ("O10", OBJ + "maspo.py", "alpha: float = 0.3", "alpha: float = 0.5", "maspo: default alpha"),
    ("O11", OBJ + "lcft_tis.py", "rc_threshold=self.tis_cap", "rc_threshold=2.0", "lcft_tis: tis_cap ignored"),
    ("O12", OBJ + "lcft_tis.py", "loss_norm_constant=self.t_max if self.t_max is not None else self.loss_norm_constant",
     "loss_norm_constant=self.loss_norm_constant", "lcft_tis: t_max ignored"),
    ("O13", OBJ + "lcft_tis.py", "clip_c=self.eps_neg_high", "clip_c=3.0", "lcft_tis: eps_neg_high ignored"),
    ("O14", OBJ + "lcft_tis.py", "eps_pos_high: float = 0.28", "eps_pos_high: float = 0.2", "lcft_tis: default"),
    ("O15", OBJ + "hispo.py", "hispo_eps_neg_low=self.eps_neg_low, hispo_eps_pos_high=self.eps_pos_high",
     "hispo_eps_neg_low=self.eps_pos_high, hispo_eps_pos_high=self.eps_neg_low", "hispo: clip bounds swapped"),
    # O16-O19: the objectives' ratio-weighted KL and token_weight, since issue 16 the kernel's kl_ratio_weighted and
    # pg_weight (O17 / O18 now mutate the kernel's math.py)
    ("O16", OBJ + "base.py", "kl_ratio_weighted=self.kl_ratio_weighted,", "kl_ratio_weighted=False,",
     "ratio-weighted KL not passed to the kernel (plain KL)"),
    ("O17", MATH, "return clamped_exp(lp - (lp.detach() if old is None else old))",
     "return clamped_exp(lp - (lp.detach() if old is None else old)).detach()", "ratio-weighted KL: ratio detached"),
    ("O18", MATH, "if gspo_kl_c is not None:  # value 0", "if False:  # value 0",
     "ratio-weighted KL, gspo: the sequence ratio's gradient through the other tokens dropped"),
    ("O19", OBJ + "base.py", "w = token_weight.detach().float()",
     "w = 1 / token_weight.detach().float().clamp_min(1e-6)",
     "token_weight inverted (1 / w)"),
    ("O20", OBJ + "base.py", 'kl: str = "k3"', 'kl: str = "k1"', "default KL estimator k1 instead of k3"),
]

FAIL_RE = re.compile(r"^(FAILED|ERROR) (\S+)", re.M)


def check_fragments(mutations):
    for mid, path, old, _new, _what in mutations:
        n = (ROOT / path).read_text().count(old)
        if n != 1:
            raise SystemExit(f"{mid}: fragment {old!r} occurs {n} times in {path} (expected exactly once)")


def make_copy() -> Path:
    tmp = Path(tempfile.mkdtemp(prefix="lck-mutations-"))
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc", ".pytest_cache")
    for tree in ("lckernels", "lckernels_rl", "tests"):   # lckernels/ holds the C extension lckernels/_C*.so
        shutil.copytree(ROOT / tree, tmp / tree, ignore=ignore)
    shutil.copy2(ROOT / "pyproject.toml", tmp / "pyproject.toml")  # pytest options and markers
    return tmp


def env_for(tmp: Path) -> dict:
    env = dict(os.environ)
    env.update(PYTHONPATH=str(tmp), PYTHONDONTWRITEBYTECODE="1", OMP_NUM_THREADS="1", OMP_WAIT_POLICY="PASSIVE",
               MKL_NUM_THREADS="1")
    env.pop("LCK_BACKEND", None)
    return env


def sanity(tmp: Path):
    code = ("import lckernels, lckernels_rl, tests, lckernels._ext as e; "
            "print(lckernels.__file__); print(lckernels_rl.__file__); print(tests.__file__); print(e.available())")
    out = subprocess.run([sys.executable, "-c", code], cwd=tmp, env=env_for(tmp), capture_output=True, text=True,
                         check=True).stdout.split()
    for f in out[:3]:
        if not f.startswith(str(tmp)):
            raise SystemExit(f"the copy is not the one imported: {f} (expected under {tmp})")
    return out[3] == "True"


def run_tests(tmp: Path, tests, stop_first: bool):
    cmd = [sys.executable, "-m", "pytest", *tests, "-q", "-p", "no:cacheprovider", "-rfE", "--no-header"]
    if stop_first:
        cmd.append("-x")
    t0 = time.monotonic()
    try:
        res = subprocess.run(cmd, cwd=tmp, env=env_for(tmp), capture_output=True, text=True, timeout=TIMEOUT_S)
    except subprocess.TimeoutExpired:
        return "timeout", ["(timeout)"], time.monotonic() - t0, ""
    dt = time.monotonic() - t0
    out = res.stdout + res.stderr
    failed = [m.group(2) for m in FAIL_RE.finditer(out)]
    return res.returncode, failed, dt, out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--only", help="comma-separated mutation ids")
    ap.add_argument("--list", action="store_true", help="list the mutations and exit")
    ap.add_argument("--all-failures", action="store_true", help="run every test (no -x) and list all failures")
    ap.add_argument("--without-oracles", action="store_true",
                    help="run only the pre-existing tests (shows what tests/oracles adds)")
    ap.add_argument("--tests", help="comma-separated test paths to run instead (e.g. one oracle file)")
    ap.add_argument("--keep", action="store_true", help="keep the temporary copy")
    args = ap.parse_args(argv)

    muts = MUTATIONS
    if args.only:
        wanted = set(args.only.split(","))
        muts = [m for m in MUTATIONS if m[0] in wanted]
        if len(muts) != len(wanted):
            raise SystemExit(f"unknown ids: {sorted(wanted - {m[0] for m in MUTATIONS})}")
    if args.list:
        for mid, path, old, new, what in muts:
            print(f"{mid}  {path}: {what}\n      {old.strip()!r} -> {new.strip()!r}")
        return 0
    check_fragments(muts)
    tests = EXISTING_TESTS if args.without_oracles else ORACLE_TESTS + EXISTING_TESTS
    if args.tests:
        tests = args.tests.split(",")

    t_start = time.monotonic()
    tmp = make_copy()
    try:
        ext = sanity(tmp)
        print(f"copy: {tmp} (C extension {'available' if ext else 'MISSING: cpu-backend tests skip'})")
        print(f"tests: {' '.join(tests)}")
        rc, failed, dt, out = run_tests(tmp, tests, stop_first=False)
        if rc != 0:
            print(out[-4000:])
            print(f"the UNMUTATED copy fails ({failed or rc}); fix that first")
            return 1
        print(f"baseline: all pass ({dt:.1f} s)\n")
        rows = []
        for mid, path, old, new, what in muts:
            src = tmp / path
            original = src.read_text()
            assert original.count(old) == 1
            src.write_text(original.replace(old, new))
            try:
                rc, failed, dt, out = run_tests(tmp, tests, stop_first=not args.all_failures)
            finally:
                src.write_text(original)
            if rc == 0:
                verdict, by = "SURVIVED", ""
            elif rc in (1, 2, "timeout"):   # 1: tests failed, 2: collection / import error, or a hang
                verdict = "KILLED"
                by = ", ".join(failed) if failed else f"pytest exit {rc}"
            else:
                print(out[-3000:])
                raise SystemExit(f"{mid}: unexpected pytest exit code {rc}")
            rows.append((mid, path, what, verdict, by, dt))
            line = f"{mid:4} {verdict:8} {dt:5.1f}s  {path.split('/')[-1]:12} {what}"
            print(line + (f"\n{'':21}by {by}" if by else ""), flush=True)
    finally:
        if args.keep:
            print(f"kept {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)
    killed = sum(r[3] == "KILLED" for r in rows)
    survived = [r[0] for r in rows if r[3] == "SURVIVED"]
    print(f"\n{killed}/{len(rows)} killed, {len(survived)} survived{': ' + ', '.join(survived) if survived else ''} "
          f"({time.monotonic() - t_start:.0f} s in all)")
    return 1 if survived else 0


if __name__ == "__main__":
    sys.exit(main())
