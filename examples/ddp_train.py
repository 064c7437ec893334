"""Data-parallel training of an amortized guide with PyTorch's DistributedDataParallel.

Bayesian factor analysis of scikit-learn's 8x8 digits: global loadings, means
and noise, and a local code per image, guided by ``AutoAmortizedGuide`` (or
``AutoAmortizedDelta`` with ``--family delta``). The loss is Pyro's
ELBO-as-module, ``Trace_ELBO()(model, guide)``, an ``nn.Module`` holding every
parameter (with ``module_local_params``), wrapped in
``torch.nn.parallel.DistributedDataParallel``. Each process reads its share of
every global minibatch through a ``DistributedSampler``; DDP averages the
gradients, so the processes take the steps of one process with the global
minibatch. Launched without ``torchrun``, the script runs as that one process.

Usage::

    torchrun --standalone --nproc_per_node=2 examples/ddp_train.py
    python examples/ddp_train.py                   # one process, same global batch
    torchrun --standalone --nproc_per_node=2 examples/ddp_train.py --steps 50 \\
        --family delta --save /tmp/ddp.pt
"""

from __future__ import annotations

import argparse
import os
import time

import pyro
import pyro.distributions as dist
import torch
import torch.distributed as torch_dist
from pyro.infer import Trace_ELBO
from sklearn.datasets import load_digits
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, DistributedSampler, TensorDataset

from pyro_amortized import AutoAmortizedDelta, AutoAmortizedGuide

LATENT_DIM = 8
FAMILIES = {"normal": AutoAmortizedGuide, "delta": AutoAmortizedDelta}


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=500, help="optimizer steps")
    parser.add_argument("--batch-size", type=int, default=128, help="global minibatch")
    parser.add_argument("--lr", type=float, default=0.01, help="Adam learning rate")
    parser.add_argument("--family", choices=sorted(FAMILIES), default="normal")
    parser.add_argument("--log-every", type=int, default=100, help="steps between reports")
    parser.add_argument("--save", help="write the trained guide's state_dict here")
    return parser.parse_args()


def load_data() -> torch.Tensor:
    """The 1,797 digits, pixel intensities scaled to [0, 1]."""
    return torch.tensor(load_digits().data, dtype=torch.float32) / 16.0


def model(x: torch.Tensor, num_data: int) -> None:
    """Factor analysis; ``x`` is a minibatch of a data set of ``num_data`` rows."""
    num_pixels = x.shape[-1]
    loadings = pyro.sample(
        "loadings", dist.Normal(0.0, 1.0).expand([LATENT_DIM, num_pixels]).to_event(2)
    )
    mean = pyro.sample("mean", dist.Normal(0.0, 1.0).expand([num_pixels]).to_event(1))
    noise = pyro.sample("noise", dist.LogNormal(-2.0, 1.0).expand([num_pixels]).to_event(1))
    with pyro.plate("data", num_data, subsample_size=x.shape[0]):
        z = pyro.sample("z", dist.Normal(0.0, 1.0).expand([LATENT_DIM]).to_event(1))
        pyro.sample("x", dist.Normal(z @ loadings + mean, noise).to_event(1), obs=x)


def setup() -> tuple[int, int]:
    """Joins the process group that ``torchrun`` describes; (0, 1) without it."""
    if "WORLD_SIZE" not in os.environ:
        return 0, 1
    torch_dist.init_process_group("gloo")
    return torch_dist.get_rank(), torch_dist.get_world_size()


def minibatches(data: torch.Tensor, rank: int, world_size: int, batch_size: int):
    """This process's share of every global minibatch, epoch after epoch."""
    sampler = DistributedSampler(
        TensorDataset(data), num_replicas=world_size, rank=rank, shuffle=True, seed=0
    )
    loader = DataLoader(
        TensorDataset(data), batch_size=batch_size // world_size, sampler=sampler, drop_last=True
    )
    epoch = 0
    while True:
        sampler.set_epoch(epoch)
        for (batch,) in loader:
            yield batch
        epoch += 1


def train(args: argparse.Namespace) -> None:
    rank, world_size = setup()
    if args.batch_size % world_size:
        raise SystemExit(f"--batch-size must be a multiple of the {world_size} processes.")
    torch.set_num_threads(1)
    pyro.settings.set(module_local_params=True)  # parameters live in the modules
    pyro.set_rng_seed(rank)  # each process draws its own latent samples
    data = load_data()
    guide = FAMILIES[args.family](model, dependencies="mean_field")  # heads read the data
    guide(data[:2], len(data))  # reads the model and creates every parameter
    loss_fn = Trace_ELBO()(model, guide)
    if world_size > 1:
        loss_fn = DistributedDataParallel(loss_fn)  # broadcasts rank 0's parameters
    optimizer = torch.optim.Adam(loss_fn.parameters(), lr=args.lr)
    batches = minibatches(data, rank, world_size, args.batch_size)
    begin = time.perf_counter()
    for step in range(1, args.steps + 1):
        optimizer.zero_grad()
        loss = loss_fn(next(batches), len(data))
        loss.backward()  # DDP averages the gradients over the processes
        optimizer.step()
        if rank == 0 and (step % args.log_every == 0 or step == args.steps):
            print(f"step {step:5d}  loss {loss.item() / len(data):9.3f} nats per image", flush=True)
    report(guide, data, rank, world_size, time.perf_counter() - begin)
    if args.save and rank == 0:
        torch.save(guide.state_dict(), args.save)
    if world_size > 1:
        torch_dist.destroy_process_group()


def report(
    guide: AutoAmortizedGuide, data: torch.Tensor, rank: int, world_size: int, seconds: float
) -> None:
    """The final ELBO on every image and, with several processes, whether
    their parameters agree."""
    vector = torch.cat([p.detach().reshape(-1) for p in guide.parameters()])
    if world_size > 1:
        gathered = [torch.empty_like(vector) for _ in range(world_size)]
        torch_dist.all_gather(gathered, vector)
        difference = max((other - vector).abs().max().item() for other in gathered)
    if rank != 0:
        return
    with torch.no_grad():
        pyro.set_rng_seed(0)
        elbo = -Trace_ELBO(num_particles=10).loss(model, guide, data, len(data)) / len(data)
    print(f"{world_size} process(es), {seconds:.1f} s; final ELBO {elbo:.3f} nats per image")
    if world_size > 1:
        print(f"parameters in sync across {world_size} processes: max difference {difference:.3g}")


if __name__ == "__main__":
    train(parse_args())
