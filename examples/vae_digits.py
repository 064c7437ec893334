"""A variational autoencoder on scikit-learn's 8x8 digits, with no guide code.

The model (:func:`pyro_amortized.models.digits_vae_model`) has a 2-dimensional
latent code per image and a subsampled data plate; ``AutoAmortizedGuide``
builds the encoder from it. The script trains on 80% of the images in
minibatches of 128, prints the ELBO per image on the training and held-out
images, and draws the held-out latent space and some reconstructions.

Usage::

    python examples/vae_digits.py                    # writes vae_digits.png
    python examples/vae_digits.py --steps 500 --output /tmp/vae.png
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import matplotlib
import pyro
import torch
from matplotlib.figure import Figure
from pyro.infer import SVI, Trace_ELBO
from tqdm import tqdm

from pyro_amortized import AutoAmortizedGuide
from pyro_amortized.datasets import train_test_split_digits
from pyro_amortized.models import Decoder, digits_vae_model, elbo_per_point

LATENT_DIM = 2
HIDDEN_DIM = 256
BATCH_SIZE = 128
LEARNING_RATE = 3e-3


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=3000, help="SVI steps (default 3000)")
    parser.add_argument("--output", type=Path, default=Path("vae_digits.png"), help="figure path")
    parser.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    return parser.parse_args()


def train(model, guide, x_train: torch.Tensor, steps: int) -> None:
    """Runs ``steps`` SVI steps, showing the running ELBO per image."""
    svi = SVI(model, guide, pyro.optim.Adam({"lr": LEARNING_RATE}), Trace_ELBO())
    running = None
    with tqdm(range(steps), desc="training", unit="step") as progress:
        for step in progress:
            loss = svi.step(x_train) / len(x_train)
            running = loss if running is None else 0.98 * running + 0.02 * loss
            if step % 50 == 0 or step == steps - 1:
                progress.set_postfix(elbo_per_image=f"{-running:.2f}")


def plot(
    guide: AutoAmortizedGuide,
    decoder: Decoder,
    x_test: torch.Tensor,
    y_test: torch.Tensor,
    output: Path,
) -> None:
    """Held-out latent means by label, and originals above their reconstructions."""
    with torch.no_grad():
        # The posterior median of a Normal is its mean.
        z_mean = guide.median(x_test)["z"]
        # The first two held-out images of each digit, and their reconstructions.
        picks = [(y_test == digit).nonzero()[:2, 0] for digit in range(10)]
        picks = torch.stack(picks, dim=1)  # (2, 10): example, digit
        recon = torch.sigmoid(decoder(z_mean[picks]))
    rows = torch.stack([x_test[picks[0]], recon[0], x_test[picks[1]], recon[1]])
    rows = rows.reshape(4, 10, 8, 8)
    # One 8x8 tile per image, separated by a one-pixel gap (NaN, drawn in colour).
    mosaic = torch.full((4 * 9 - 1, 10 * 9 - 1), float("nan"))
    for row in range(4):
        for column in range(10):
            mosaic[row * 9 : row * 9 + 8, column * 9 : column * 9 + 8] = rows[row, column]
    cmap = matplotlib.colormaps["gray_r"].with_extremes(bad="0.75")

    figure = Figure(figsize=(13, 5), layout="tight")
    left, right = figure.subplots(1, 2, width_ratios=[1, 1.25])
    points = left.scatter(
        z_mean[:, 0], z_mean[:, 1], c=y_test, cmap="tab10", vmin=-0.5, vmax=9.5, s=12
    )
    figure.colorbar(points, ax=left, ticks=range(10), label="digit")
    left.set(title="Held-out images: posterior mean of z", xlabel="$z_1$", ylabel="$z_2$")
    right.imshow(mosaic, cmap=cmap, vmin=0.0, vmax=1.0)
    right.set_xticks([column * 9 + 3.5 for column in range(10)], labels=range(10))
    labels = ["original", "reconstruction"] * 2
    right.set_yticks([row * 9 + 3.5 for row in range(4)], labels=labels)
    right.set_title("Held-out images and their reconstructions\n(pixel probabilities)")
    figure.savefig(output, dpi=120)


def main() -> None:
    args = parse_args()
    start = time.perf_counter()
    # The networks are small: one thread is as fast as several, and leaves the
    # other cores free.
    torch.set_num_threads(1)
    pyro.set_rng_seed(args.seed)
    pyro.clear_param_store()
    x_train, _, x_test, y_test = train_test_split_digits(seed=args.seed)
    print(
        f"digits: {len(x_train)} training and {len(x_test)} held-out images "
        f"of {x_train.shape[1]} binary pixels"
    )

    decoder = Decoder(LATENT_DIM, HIDDEN_DIM, x_train.shape[1])
    model = digits_vae_model(decoder, LATENT_DIM, batch_size=BATCH_SIZE)
    guide = AutoAmortizedGuide(model, hidden_dims=(HIDDEN_DIM,))
    train(model, guide, x_train, args.steps)
    print(f"local sites: {guide.local_sites}, data plates: {guide.data_plates}")

    # 10-particle estimates over every image, in chunks of at most BATCH_SIZE
    # rows so that the guide's minibatch plate covers each chunk.
    elbo_train = elbo_per_point(model, guide, x_train, num_particles=10)
    elbo_test = elbo_per_point(model, guide, x_test, num_particles=10)
    print(f"ELBO per image (nats): train {elbo_train:.2f}, held-out {elbo_test:.2f}")

    plot(guide, decoder, x_test, y_test, args.output)
    print(f"figure: {args.output.resolve()}")
    print(f"total time: {time.perf_counter() - start:.1f} s")


if __name__ == "__main__":
    main()
