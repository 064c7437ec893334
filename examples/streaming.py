"""Training from a data set on disk, one minibatch at a time, in constant memory.

The rows live in a memory-mapped ``.npy`` file (by default a million rows of
synthetic factor-model data, written once in chunks); a
``torch.utils.data.DataLoader`` reads a shuffled minibatch of them per step
(one read of the whole minibatch);
the model is told the data set's size and the minibatch's row indices
(``pyro.plate("data", num_data, subsample=indices)``), so the likelihood is
scaled to the whole data set. ``AutoAmortizedGuide`` needs no change: its
encoder reads the minibatch it is given, and its parameters do not grow with
the number of rows. The script prints the loss, the guide's parameter count and
the process's peak anonymous memory (Linux), which stays flat while rows stream.

Usage::

    python examples/streaming.py                          # 1e6 rows, 2,000 steps
    python examples/streaming.py --rows 100000 --steps 200 --path /tmp/rows.npy
"""

from __future__ import annotations

import argparse
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pyro
import pyro.distributions as dist
import torch
from pyro.infer import SVI, Trace_ELBO
from torch.utils.data import DataLoader, Dataset, Sampler

from pyro_amortized import AutoAmortizedGuide

LATENT_DIM, NUM_FEATURES, NOISE = 4, 32, 0.5


def write_rows(path: Path, num_rows: int, *, seed: int = 0, chunk: int = 100_000) -> None:
    """Writes ``num_rows`` rows of a factor model to ``path``, one chunk at a
    time, so the data set never has to fit in memory."""
    generator = np.random.default_rng(seed)
    loadings = generator.normal(size=(LATENT_DIM, NUM_FEATURES)).astype(np.float32)
    rows = np.lib.format.open_memmap(
        path, mode="w+", dtype=np.float32, shape=(num_rows, NUM_FEATURES)
    )
    for start in range(0, num_rows, chunk):
        size = min(chunk, num_rows - start)
        codes = generator.normal(size=(size, LATENT_DIM)).astype(np.float32)
        noise = NOISE * generator.normal(size=(size, NUM_FEATURES)).astype(np.float32)
        rows[start : start + size] = codes @ loadings + noise
    rows.flush()
    del rows


class MemmapRows(Dataset):
    """The rows of a ``.npy`` file, read from disk on demand: indexed by a list
    of row indices (a whole minibatch, one read), it gives them and their rows."""

    def __init__(self, path: Path) -> None:
        self.rows = np.load(path, mmap_mode="r")

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, indices: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
        indices = np.sort(indices)  # reads in file order
        return torch.from_numpy(indices), torch.from_numpy(self.rows[indices])


class ShuffledBatches(Sampler):
    """Minibatches of row indices, a new permutation each epoch, kept as one
    tensor (8 bytes a row) rather than the Python list of a ``RandomSampler``
    (about 36 bytes a row: 36 MB for a million rows)."""

    def __init__(self, num_rows: int, batch_size: int) -> None:
        self.num_rows, self.batch_size = num_rows, batch_size

    def __len__(self) -> int:
        return self.num_rows // self.batch_size

    def __iter__(self) -> Iterator[list[int]]:
        permutation = torch.randperm(self.num_rows)
        for start in range(0, len(self) * self.batch_size, self.batch_size):
            yield permutation[start : start + self.batch_size].tolist()


def minibatches(rows: MemmapRows, batch_size: int) -> DataLoader:
    """Shuffled minibatches of row indices, each read from disk at once."""
    return DataLoader(rows, sampler=ShuffledBatches(len(rows), batch_size), batch_size=None)


def model(x: torch.Tensor, indices: torch.Tensor, num_data: int) -> None:
    """Factor analysis of a minibatch ``x``: rows ``indices`` of ``num_data``."""
    loadings = pyro.sample(
        "loadings", dist.Normal(0.0, 1.0).expand([LATENT_DIM, x.shape[-1]]).to_event(2)
    )
    with pyro.plate("data", num_data, subsample=indices):
        z = pyro.sample("z", dist.Normal(0.0, 1.0).expand([LATENT_DIM]).to_event(1))
        pyro.sample("x", dist.Normal(z @ loadings, NOISE).to_event(1), obs=x)


def anonymous_memory_mb() -> float | None:
    """Anonymous resident memory of this process now (Linux), in MB: the heap,
    not the file pages of the memory map, which the kernel may drop. Callers
    keep the peak themselves."""
    status = Path("/proc/self/status")
    if not status.exists():
        return None
    fields = dict(line.split(":", 1) for line in status.read_text().splitlines())
    return int(fields["RssAnon"].split()[0]) / 1024


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000, help="rows in the data set")
    parser.add_argument("--steps", type=int, default=2000, help="SVI steps")
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--path", type=Path, help="the .npy file (written if missing)")
    parser.add_argument("--log-every", type=int, default=250, help="steps between reports")
    return parser.parse_args()


def main() -> None:
    args = parse_args()
    torch.set_num_threads(1)
    pyro.set_rng_seed(0)
    with tempfile.TemporaryDirectory() as folder:
        path = args.path or Path(folder) / "rows.npy"
        if not path.exists():
            start = time.perf_counter()
            write_rows(path, args.rows)
            print(f"wrote {args.rows:,} rows to {path} in {time.perf_counter() - start:.1f} s")
        train(MemmapRows(path), args)


def train(rows: MemmapRows, args: argparse.Namespace) -> None:
    loader = minibatches(rows, args.batch_size)
    # The codes' heads read only the data (the loadings have too many values).
    guide = AutoAmortizedGuide(model, dependencies="mean_field")
    svi = SVI(model, guide, pyro.optim.Adam({"lr": 0.01}), Trace_ELBO())
    step, start, peak = 0, time.perf_counter(), 0.0
    while step < args.steps:
        for indices, x in loader:
            loss = svi.step(x, indices, len(rows)) / len(rows)
            step += 1
            peak = max(peak, anonymous_memory_mb() or 0.0)
            if step % args.log_every == 0 or step == args.steps:
                print(
                    f"step {step:5d}  loss {loss:8.3f} nats per row  "
                    f"peak memory {peak:6.1f} MB  {time.perf_counter() - start:5.1f} s",
                    flush=True,
                )
            if step == args.steps:
                break
    count = sum(p.numel() for p in guide.parameters())
    print(f"{len(rows):,} rows; guide parameters: {count:,}")


if __name__ == "__main__":
    main()
