"""RL objectives of the seed papers on top of :func:`lckernels.fused_policy_loss`.

Every objective is a callable on per-token tensors returning ``(loss, metrics)`` and has a ``fused`` variant from
hidden states and the lm_head weight; both give the same loss and gradients (see :mod:`.base`).  Each module's
docstring cites its paper and equation and marks what is verified / third-party / inferred.

>>> import torch, lckernels
>>> from lckernels_rl.objectives import get_objective, list_objectives
>>> list_objectives()  # doctest: +NORMALIZE_WHITESPACE
['aopd', 'cispo', 'dapo', 'dr_grpo', 'dual_track_grpo', 'grpo', 'gspo', 'hispo', 'lcft_tis', 'maspo', 'sapo',
 'self_verify']
>>> dapo = get_objective("dapo")                      # eps 0.2 / 0.28, token-mean
>>> h = torch.randn(2, 5, 16, requires_grad=True); w = torch.randn(40, 16, requires_grad=True)
>>> y = torch.randint(0, 40, (2, 5)); adv = torch.tensor([1.0, -1.0])
>>> loss, metrics = dapo.fused(h, w, y, adv)          # hidden states -> loss, no [B, T, V] logits
>>> loss.backward()
>>> lp = lckernels.fused_logprobs(h.detach(), w.detach(), y)
>>> loss2, _ = dapo(lp, None, adv, None)              # the same loss from per-token log-probs
>>> torch.allclose(loss, loss2), sorted(metrics)[:3]
(True, ['clip_frac_high', 'clip_frac_low', 'entropy_mean'])
"""

from .base import Objective, PolicyObjective
from .registry import get_objective, list_objectives, objective_sources, register_objective
from .grpo import GRPO
from .dapo import DAPO
from .dr_grpo import DrGRPO
from .gspo import GSPO
from .cispo import CISPO
from .sapo import SAPO
from .maspo import MASPO
from .hispo import HisPO
from .lcft_tis import LCFTTIS
from .aopd import AOPD, local_kl, teacher_token_log_prob
from .dual_track_grpo import DualTrackGRPO, public_group_advantages
from .self_verify import (SelfVerify, SelfVerifySchedule, VerificationExample, build_verification_examples,
                          parse_verdict, verification_reward)

__all__ = ["Objective", "PolicyObjective", "get_objective", "list_objectives", "objective_sources",
           "register_objective", "GRPO", "DAPO", "DrGRPO", "GSPO", "CISPO", "SAPO", "MASPO", "HisPO", "LCFTTIS",
           "AOPD", "local_kl", "teacher_token_log_prob", "DualTrackGRPO", "public_group_advantages",
           "SelfVerify", "SelfVerifySchedule", "VerificationExample", "build_verification_examples", "parse_verdict",
           "verification_reward"]
