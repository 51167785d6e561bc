"""Data-parallel training of an LSTM regressor with DistributedDataParallel.

One process per GPU with NCCL, or CPU processes with gloo when there is no GPU:

    torchrun --standalone --nproc_per_node=NUM_GPUS examples/ddp_train.py
    torchrun --standalone --nproc_per_node=2 examples/ddp_train.py --steps 20   # CPU, gloo

Every process trains on its own shard of each batch; DDP averages the gradients, so the
result equals single-process training on the whole batches (tests/test_ddp.py checks
that on 2 CPU processes).
"""

import argparse
import os
import time

import torch
import torch.distributed as dist
from torch import nn

import rnnkernels


class Regressor(nn.Module):
    def __init__(self, features, hidden, layers):
        super().__init__()
        self.lstm = rnnkernels.LSTM(features, hidden, num_layers=layers, batch_first=True)
        self.head = nn.Linear(hidden, 1)

    def forward(self, x):  # x [B, T, features] -> [B, 1]
        return self.head(self.lstm(x)[0][:, -1])


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--batch", type=int, default=64, help="global batch, split over processes")
    parser.add_argument("--seq-len", type=int, default=100)
    parser.add_argument("--features", type=int, default=32)
    parser.add_argument("--hidden", type=int, default=256)
    parser.add_argument("--layers", type=int, default=2)
    args = parser.parse_args()

    use_cuda = torch.cuda.is_available()
    dist.init_process_group("nccl" if use_cuda else "gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    local_rank = int(os.environ.get("LOCAL_RANK", 0))
    device = torch.device("cuda", local_rank) if use_cuda else torch.device("cpu")
    if use_cuda:
        torch.cuda.set_device(device)
    else:
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // world))

    torch.manual_seed(0)  # same initial weights everywhere (DDP also broadcasts rank 0's)
    model = nn.parallel.DistributedDataParallel(
        Regressor(args.features, args.hidden, args.layers).to(device),
        device_ids=[local_rank] if use_cuda else None)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    share = args.batch // world
    generator = torch.Generator().manual_seed(1)  # the same global batches in every process
    start = time.perf_counter()
    for step in range(args.steps):
        x = torch.randn(args.batch, args.seq_len, args.features, generator=generator)
        y = x[:, :, :1].sum(1) / args.seq_len ** 0.5  # a target the LSTM can learn
        x, y = (t[rank * share:(rank + 1) * share].to(device) for t in (x, y))
        optimizer.zero_grad(set_to_none=True)
        loss = nn.functional.mse_loss(model(x), y)
        loss.backward()
        optimizer.step()
        if rank == 0 and (step % 10 == 0 or step == args.steps - 1):
            print(f"step {step:4d}  loss {loss.item():.4f}")
    if rank == 0:
        print(f"{args.steps} steps on {world} {'GPUs' if use_cuda else 'CPU processes'} "
              f"in {time.perf_counter() - start:.1f} s")
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
