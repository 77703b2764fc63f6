"""torchrun's elastic restarts: when to continue the run directory instead of refusing it.

Under ``torchrun --max-restarts N``, a failed worker makes the agent restart the whole worker group with the same
command line and ``TORCHELASTIC_RESTART_COUNT`` raised by one. A restarted run with an explicit ``--output``
continues from the last checkpoint there, as ``--resume`` would. Two checks keep it from continuing a run it did
not start: the checkpoint must carry this job's ``TORCHELASTIC_RUN_ID`` (torchrun's ``--rdzv_id``; random per
``--standalone`` launch), and the command line's settings must match the run's ``config.yaml``.
"""
from __future__ import annotations

import os
from typing import Any, Optional

import torch
import torch.distributed as dist

from mixconv.inference.distributed import DistInfo

RUN_ID_KEY = "elastic_run_id"  # in the resume state: the torchrun job that wrote it


def run_id() -> Optional[str]:
    """This torchrun job's id (``TORCHELASTIC_RUN_ID``), or None outside torchrun."""
    return os.environ.get("TORCHELASTIC_RUN_ID") or None


def restart_count(info: DistInfo) -> int:
    """The highest ``TORCHELASTIC_RESTART_COUNT`` over all ranks (0 on a first start or outside torchrun).

    The maximum, because in a multi-node job only the agent whose worker failed counts a restart; the agents of
    the healthy nodes restart their workers with the count unchanged.
    """
    try:
        count = int(os.environ.get("TORCHELASTIC_RESTART_COUNT", "0") or 0)
    except ValueError:
        count = 0
    if not info.distributed:
        return count
    t = torch.tensor([count], dtype=torch.int64, device=info.device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return int(t.item())


def foreign_run(saved: dict[str, Any]) -> Optional[str]:
    """Why ``saved`` (a resume state) was not written by this torchrun job, or None when it was."""
    mine, theirs = run_id(), saved.get(RUN_ID_KEY)
    if mine is not None and theirs == mine:
        return None
    return f"it was written by torchrun job {theirs!r}, not this job ({mine!r})" if theirs else \
        "it was not written under torchrun"
