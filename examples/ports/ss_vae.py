"""The semi-supervised VAE (M2) of Pyro's ``examples/vae/ss_vae_M2.py``, with the
networks of ``examples/vae/utils/custom_mlp.py``.

Kept: the ``SSVAE`` module whose ``model(xs, ys=None)`` registers itself as
``"ss_vae"`` and, in the unsized plate ``"data"``, samples the style ``z``, the
one-hot digit ``y`` (observed through ``obs=ys`` in labelled batches, latent in
unlabelled ones) and the image ``x`` (a ``Bernoulli``, validation off); the
guide ``q(y | x) q(z | x, y)`` that samples ``y`` only when it is not given;
the multilayer perceptrons (inputs concatenated with broadcasting, softplus
hidden layers initialized with ``Normal(0, 0.001)``, softmax, sigmoid and
``exp`` outputs); the auxiliary classification loss (``model_classify`` under
``poutine.scale``, with its empty guide), off by default as in the program;
training with ``Adam(lr=0.00042, betas=(0.9, 0.999))``, the guide wrapped in
``config_enumerate(..., "parallel", expand=True)`` and
``TraceEnum_ELBO(max_plate_nesting=1, strict_enumeration_warning=False)``,
labelled batches interleaved every ``train size / labelled`` batches as in
``run_inference_for_epoch``; the metric is the classifier's test accuracy.

Data: Fashion-MNIST from Debian's ``dataset-fashion-mnist`` stands in for
MNIST, split as the program splits MNIST (3000 of the first 50,000 training
images labelled; the validation images not used); or, where it is not
installed, scikit-learn's 8x8 digits, binarized
(:func:`pyro_amortized.datasets.train_test_split_digits`): 64 pixels instead of
784, 300 of the 1438 training images labelled.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import pyro
import pyro.distributions as dist
import torch
from pyro import poutine
from pyro.distributions.util import broadcast_shape
from pyro.infer import SVI, Trace_ELBO, TraceEnum_ELBO, config_enumerate
from pyro.optim import Adam
from torch import nn

from pyro_amortized import AutoAmortizedGuide, LocalRWS
from pyro_amortized.datasets import load_fashion_mnist, train_test_split_digits

from ._shared import check_guide_kind, check_objective, minibatch_indices, result, timed_steps

NUM_CLASSES = 10
DEFAULT_BATCH_SIZE = 200
DEFAULT_HIDDEN = 500

OBJECTIVES = ("enumerated", "score_function", "rws")
"""How ``y`` is handled where it is latent: summed out in the guide (the
program's ``TraceEnum_ELBO``), sampled and scored by the ELBO's score-function
gradient (``Trace_ELBO``), or sampled and trained by reweighted wake-sleep
(:class:`pyro_amortized.LocalRWS`, amortized guide only)."""


def concatenate(inputs: Sequence[torch.Tensor]) -> torch.Tensor:
    """Joins tensors along the last dimension, broadcasting the others (an
    enumerated ``y`` has an extra leading dimension that ``x`` lacks)."""
    shape = broadcast_shape(*(value.shape[:-1] for value in inputs))
    return torch.cat([value.expand(*shape, value.shape[-1]) for value in inputs], dim=-1)


class MLP(nn.Module):
    """Concatenated inputs, softplus hidden layers, then one linear output per
    entry of ``output_sizes``, each followed by its activation (or none).

    :param input_size: total width of the concatenated inputs.
    :param hidden_sizes: widths of the hidden layers.
    :param output_sizes: width of each output.
    :param output_activations: a module (or ``None``) per output.
    """

    def __init__(
        self,
        input_size: int,
        hidden_sizes: Sequence[int],
        output_sizes: Sequence[int],
        output_activations: Sequence[nn.Module | None],
    ) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        width = input_size
        for hidden_size in hidden_sizes:
            linear = nn.Linear(width, hidden_size)
            linear.weight.data.normal_(0, 0.001)
            linear.bias.data.normal_(0, 0.001)
            layers += [linear, nn.Softplus()]
            width = hidden_size
        self.trunk = nn.Sequential(*layers)
        self.outputs = nn.ModuleList(
            nn.Sequential(nn.Linear(width, size), *([activation] if activation else []))
            for size, activation in zip(output_sizes, output_activations, strict=True)
        )

    def forward(self, inputs: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        hidden = self.trunk(concatenate(inputs))
        return [output(hidden) for output in self.outputs]


class Exp(nn.Module):
    """``exp`` as a module: a positive scale."""

    def forward(self, value: torch.Tensor) -> torch.Tensor:
        return torch.exp(value)


class SSVAE(nn.Module):
    """The M2 model and its guide.

    :param output_size: number of classes of ``y``.
    :param input_size: pixels of an image.
    :param z_dim: dimension of the style ``z``.
    :param hidden_layers: widths of every network's hidden layers.
    :param aux_loss_multiplier: weight of the auxiliary classification loss.
    """

    def __init__(
        self,
        output_size: int = NUM_CLASSES,
        input_size: int = 64,
        z_dim: int = 50,
        hidden_layers: Sequence[int] = (DEFAULT_HIDDEN,),
        aux_loss_multiplier: float | None = None,
    ) -> None:
        super().__init__()
        self.output_size = output_size
        self.z_dim = z_dim
        self.aux_loss_multiplier = aux_loss_multiplier
        self.encoder_y = MLP(input_size, hidden_layers, [output_size], [nn.Softmax(dim=-1)])
        self.encoder_z = MLP(input_size + output_size, hidden_layers, [z_dim, z_dim], [None, Exp()])
        self.decoder = MLP(z_dim + output_size, hidden_layers, [input_size], [nn.Sigmoid()])

    def model(self, xs: torch.Tensor, ys: torch.Tensor | None = None) -> torch.Tensor:
        """``p(z) p(y) p(x | y, z)``; ``ys`` (one-hot) observes ``y`` when given."""
        pyro.module("ss_vae", self)
        batch_size = xs.size(0)
        options = {"dtype": xs.dtype, "device": xs.device}
        with pyro.plate("data"):
            prior_loc = torch.zeros(batch_size, self.z_dim, **options)
            prior_scale = torch.ones(batch_size, self.z_dim, **options)
            zs = pyro.sample("z", dist.Normal(prior_loc, prior_scale).to_event(1))
            alpha_prior = torch.ones(batch_size, self.output_size, **options) / self.output_size
            ys = pyro.sample("y", dist.OneHotCategorical(alpha_prior), obs=ys)
            (loc,) = self.decoder([zs, ys])
            pyro.sample("x", dist.Bernoulli(loc, validate_args=False).to_event(1), obs=xs)
            return loc

    def guide(self, xs: torch.Tensor, ys: torch.Tensor | None = None) -> None:
        """``q(y | x)`` where ``y`` is not given, then ``q(z | x, y)``."""
        with pyro.plate("data"):
            if ys is None:
                (alpha,) = self.encoder_y([xs])
                ys = pyro.sample("y", dist.OneHotCategorical(alpha))
            loc, scale = self.encoder_z([xs, ys])
            pyro.sample("z", dist.Normal(loc, scale).to_event(1))

    def classifier(self, xs: torch.Tensor) -> torch.Tensor:
        """The most probable class of each image under ``q(y | x)``, one-hot."""
        (alpha,) = self.encoder_y([xs])
        return nn.functional.one_hot(alpha.argmax(-1), self.output_size).to(xs.dtype)

    def model_classify(self, xs: torch.Tensor, ys: torch.Tensor | None = None) -> None:
        """The auxiliary loss: ``q(y | x)`` scores the given labels, scaled."""
        pyro.module("ss_vae", self)
        with pyro.plate("data"):
            if ys is not None:
                (alpha,) = self.encoder_y([xs])
                with poutine.scale(scale=self.aux_loss_multiplier):
                    pyro.sample("y_aux", dist.OneHotCategorical(alpha), obs=ys)

    def guide_classify(self, xs: torch.Tensor, ys: torch.Tensor | None = None) -> None:
        """The auxiliary loss has no latent site."""


def one_hot(labels: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """Class labels as one-hot rows of :data:`NUM_CLASSES` columns."""
    return nn.functional.one_hot(labels, NUM_CLASSES).to(dtype)


DATASETS = ("digits", "fashion_mnist")
"""The images :func:`make_data` can split."""


def make_data(
    *, small: bool = False, seed: int = 0, sup_num: int | None = None, dataset: str = "digits"
) -> dict[str, torch.Tensor]:
    """Binarized images with one-hot labels, split into labelled, unlabelled and test.

    :param small: 200 training images (40 labelled) and 100 test images.
    :param seed: seed of the split.
    :param sup_num: labelled training images (by default 300 digits or 3000
        Fashion-MNIST images, as the program labels 3000 of MNIST's; 40 if small).
    :param dataset: ``"digits"`` (scikit-learn's 8x8 digits, split at random)
        or ``"fashion_mnist"`` (Debian's package; as the program splits MNIST:
        the first 50,000 training images, the last 10,000 held out for
        validation and not used, and the 10,000 test images).
    :returns: ``{"x_sup", "y_sup", "x_unsup", "x_test", "y_test"}``.
    """
    if dataset not in DATASETS:
        raise ValueError(f"dataset must be one of {DATASETS}, but got {dataset!r}.")
    if dataset == "digits":
        x_train, y_train, x_test, y_test = train_test_split_digits(seed=seed)
    else:
        (x_train, y_train), (x_test, y_test) = (load_fashion_mnist(s) for s in ("train", "test"))
        x_train, y_train = x_train[:50_000], y_train[:50_000]
        order = torch.randperm(len(x_train), generator=torch.Generator().manual_seed(seed))
        x_train, y_train = x_train[order], y_train[order]
    if small:
        x_train, y_train, x_test, y_test = x_train[:200], y_train[:200], x_test[:100], y_test[:100]
    sup_num = sup_num or (40 if small else 300 if dataset == "digits" else 3000)
    y_train, y_test = (one_hot(labels, x_train.dtype) for labels in (y_train, y_test))
    return {
        "x_sup": x_train[:sup_num],
        "y_sup": y_train[:sup_num],
        "x_unsup": x_train[sup_num:],
        "x_test": x_test,
        "y_test": y_test,
    }


def interleaved_batches(
    data: dict[str, torch.Tensor], batch_size: int, seed: int
) -> Iterator[tuple[torch.Tensor, torch.Tensor | None]]:
    """``(xs, ys)`` for labelled batches and ``(xs, None)`` for the others, one
    labelled batch every ``train size / labelled`` batches while an epoch's
    labelled batches last, as the program's ``run_inference_for_epoch``."""
    num_sup, num_unsup = len(data["x_sup"]), len(data["x_unsup"])
    period = max(int((num_sup + num_unsup) / num_sup), 1)
    sup_per_epoch = -(-num_sup // batch_size)
    batches_per_epoch = sup_per_epoch + -(-num_unsup // batch_size)
    sup = minibatch_indices(num_sup, batch_size, seed)
    unsup = minibatch_indices(num_unsup, batch_size, seed + 1)
    while True:
        sup_seen = 0
        for index in range(batches_per_epoch):
            if index % period == 1 and sup_seen < sup_per_epoch:
                sup_seen += 1
                rows = next(sup)
                yield data["x_sup"][rows], data["y_sup"][rows]
            else:
                yield data["x_unsup"][next(unsup)], None


def accuracy(predicted: torch.Tensor, labels: torch.Tensor) -> float:
    """Fraction of rows where two one-hot tensors agree."""
    return float((predicted.argmax(-1) == labels.argmax(-1)).double().mean())


def amortized_classifier(guide: AutoAmortizedGuide, xs: torch.Tensor) -> torch.Tensor:
    """The most probable class of each image under the amortized guide's ``q(y | x)``."""
    with torch.no_grad():
        probs = guide.encode(xs)["y"].probs
    return nn.functional.one_hot(probs.argmax(-1), NUM_CLASSES).to(xs.dtype)


def run(
    guide_kind: str,
    *,
    steps: int = 100,
    batch_size: int = DEFAULT_BATCH_SIZE,
    seed: int = 0,
    hidden: int = DEFAULT_HIDDEN,
    z_dim: int = 50,
    learning_rate: float = 0.00042,
    beta_1: float = 0.9,
    aux_loss: bool = False,
    aux_loss_multiplier: float = 46.0,
    small: bool = False,
    dataset: str = "digits",
    objective: str = "enumerated",
    num_particles: int = 10,
) -> dict:
    """Trains the M2 model with one guide and measures the test accuracy.

    :param guide_kind: ``"hand"`` (the program's guide, enumerated) or
        ``"amortized"`` (``AutoAmortizedGuide(ss_vae.model,
        hidden_dims=(hidden,), enumerate_discrete="parallel")``).
    :param steps: minibatches, labelled and unlabelled together.
    :param batch_size: images per minibatch.
    :param seed: seed of the parameters, the split and the batches.
    :param hidden: width of the networks' hidden layer.
    :param z_dim: dimension of ``z``.
    :param learning_rate: Adam's learning rate.
    :param beta_1: Adam's first beta.
    :param aux_loss: add the auxiliary classification loss: the program's
        ``model_classify`` for the hand-written guide, the guide's
        ``supervise={"y": aux_loss_multiplier}`` for the amortized one (the
        same term: the multiplier times ``log q(y | x)`` of the labels).
    :param aux_loss_multiplier: its weight.
    :param small: train on the tiny data set of :func:`make_data`.
    :param dataset: the images (see :func:`make_data`).
    :param objective: one of :data:`OBJECTIVES`.
    :param num_particles: particles per image of ``"rws"``.
    :returns: see :func:`examples.ports._shared.result`; the metric is the test
        accuracy of ``q(y | x)``'s most probable class.
    """
    check_guide_kind(guide_kind)
    check_objective(guide_kind, objective, OBJECTIVES)
    pyro.clear_param_store()
    pyro.set_rng_seed(seed)
    data = make_data(small=small, seed=seed, dataset=dataset)
    ss_vae = SSVAE(
        input_size=data["x_sup"].shape[1],
        z_dim=z_dim,
        hidden_layers=(hidden,),
        aux_loss_multiplier=aux_loss_multiplier,
    )
    optimizer = Adam({"lr": learning_rate, "betas": (beta_1, 0.999)})
    enumerated = objective == "enumerated"
    if guide_kind == "hand":
        guide = (
            config_enumerate(ss_vae.guide, "parallel", expand=True) if enumerated else ss_vae.guide
        )
    else:
        guide = AutoAmortizedGuide(
            ss_vae.model,
            hidden_dims=(hidden,),
            enumerate_discrete="parallel" if enumerated else None,
            supervise={"y": aux_loss_multiplier} if aux_loss else None,
        )
    losses = [SVI(ss_vae.model, guide, optimizer, loss=_loss(objective, num_particles))]
    if aux_loss and guide_kind == "hand":
        losses.append(SVI(ss_vae.model_classify, ss_vae.guide_classify, optimizer, Trace_ELBO()))
    batches = interleaved_batches(data, batch_size, seed)

    def step(_: int) -> float:
        xs, ys = next(batches)
        args = (xs,) if ys is None else (xs, ys)
        return sum(loss.step(*args) for loss in losses)

    history, step_seconds = timed_steps(step, steps)
    if guide_kind == "hand":
        predicted = ss_vae.classifier(data["x_test"])
    else:
        predicted = amortized_classifier(guide, data["x_test"])
    metric = accuracy(predicted, data["y_test"])
    return result("test accuracy", metric, history, step_seconds, step)


def _loss(objective: str, num_particles: int) -> TraceEnum_ELBO | Trace_ELBO | LocalRWS:
    if objective == "enumerated":
        return TraceEnum_ELBO(max_plate_nesting=1, strict_enumeration_warning=False)
    if objective == "score_function":
        return Trace_ELBO()
    return LocalRWS(num_particles=num_particles)
