"""Cross-process consistency of a data-parallel run: the weights every rank holds, compared by hash.

DDP keeps parameters equal by all-reducing gradients, but BatchNorm's running statistics are buffers that each rank
updates from its own minibatch; DDP copies rank 0's buffers to the others only at the start of each forward. So after
the last step the ranks' buffers differ by construction, and a hash over them would cry wolf for every BN model.
`sync_buffers` does what DDP's next forward would (rank 0's buffers everywhere); `rank_weight_hashes` hashes
parameters and the synchronised buffers, so unequal hashes mean parameters really diverged.
"""
import hashlib

import torch
from accelerate.utils import broadcast, gather_object
from torch import nn

__all__ = ["rank_weight_hashes", "sync_buffers", "weights_sha256"]


def sync_buffers(model: nn.Module, accelerator) -> None:
    """Give every rank rank 0's buffers (BN running statistics), as DDP does at the start of each forward."""
    if accelerator.num_processes > 1:
        for b in model.buffers():
            b.data.copy_(broadcast(b.data.clone(), from_process=0))


def weights_sha256(model: nn.Module) -> str:
    """sha256 over the state dict (names, parameters, buffers) in a fixed order."""
    h = hashlib.sha256()
    for k, v in sorted(model.state_dict().items()):
        h.update(k.encode())
        h.update(v.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def rank_weight_hashes(model: nn.Module, accelerator) -> list[str]:
    """Every rank's weight hash (rank order), buffers synchronised first; all equal when training is in sync."""
    sync_buffers(model, accelerator)
    return gather_object([weights_sha256(model)])
