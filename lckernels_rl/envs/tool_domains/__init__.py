"""Generated tool domains (LongCat-Flash-Thinking-2601 §3.1.1 environment scaling), τ²-style verification, a
scripted user, and noise (§3.3.3; AgentNoiseBench).  See docs/tool_domains.md."""

from .domains import DOMAIN_SPECS, HELDOUT_DOMAINS, TRAIN_DOMAINS, Domain, DomainSpec, TableSpec, get_domain
from .env import ToolDomainEnv, scripted_turn
from .noise import EpisodeCounter, NoiseCurriculum, NoiseWrapper, get_curriculum
from .tasks import Task, TaskGenerator, generate_task
from .user_sim import ScriptedUser
from .verify import COMPONENTS, DEFAULT_COMPONENTS, verify_episode

__all__ = ["DOMAIN_SPECS", "TRAIN_DOMAINS", "HELDOUT_DOMAINS", "Domain", "DomainSpec", "TableSpec", "get_domain",
           "ToolDomainEnv", "scripted_turn", "NoiseWrapper", "NoiseCurriculum", "EpisodeCounter", "get_curriculum",
           "Task", "TaskGenerator", "generate_task", "ScriptedUser", "COMPONENTS", "DEFAULT_COMPONENTS",
           "verify_episode"]
