"""Run under `accelerate launch` with 2 processes: BN buffers that differ per rank do not make the weight check fail,
a parameter that differs does. Prints `RANKS {json}` on the main process."""
import json

import timm
import torch
from accelerate import Accelerator
from accelerate.utils import gather_object

import atcd  # noqa: F401  (registers preact_resnet18_cifar)
from atcd.ranks import rank_weight_hashes, weights_sha256

acc = Accelerator()
torch.manual_seed(0)
model = acc.prepare(timm.create_model("preact_resnet18_cifar", num_classes=10))
inner = acc.unwrap_model(model)
model.train()
torch.manual_seed(1 + acc.process_index)  # each rank's own minibatch: its BN running statistics move apart
model(torch.rand(4, 3, 32, 32, device=acc.device)).sum().backward()
raw = gather_object([weights_sha256(inner)])  # buffers as each rank left them
synced = rank_weight_hashes(inner, acc)
if acc.process_index == 1:  # a parameter that really diverged
    with torch.no_grad():
        next(inner.parameters()).view(-1)[0] += 1e-3
diverged = rank_weight_hashes(inner, acc)
if acc.is_main_process:
    print("RANKS " + json.dumps({"num_processes": acc.num_processes, "raw": raw, "synced": synced,
                                 "diverged": diverged}))
acc.wait_for_everyone()  # both ranks reach teardown together (gloo aborts when a peer tears down early)
acc.end_training()
