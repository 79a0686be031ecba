"""atoll.kernels: batched multi-LoRA operators (SGMV/BGMV) in Triton with torch references.

Public API (see :mod:`atoll.kernels.lora`): :class:`LoraMeta`, :func:`lora_shrink`,
:func:`lora_expand`, :func:`lora_apply`; the Triton launchers raise
:class:`LoraArgumentError` (a ``ValueError``) listing every problem with their arguments.
"""

from atoll.kernels.checks import LoraArgumentError
from atoll.kernels.lora import LoraMeta, lora_apply, lora_expand, lora_shrink

__all__ = ["LoraArgumentError", "LoraMeta", "lora_apply", "lora_expand", "lora_shrink"]
