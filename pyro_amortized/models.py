"""Reusable example models: a variational autoencoder for the 8x8 digits, and
the varying-intercept model of radon in Minnesota's houses.

The examples, the benchmarks and the tests share these definitions:

* :func:`digits_vae_model` builds the Pyro model, a VAE with a
  ``Bernoulli`` likelihood over binary pixels and an optionally subsampled
  data plate;
* :class:`Decoder` is its neural network;
* :class:`DigitsEncoderGuide` is the guide a user would write by hand for
  that model (an encoder network with ``loc`` and ``scale`` heads). It is the
  reference that :class:`~pyro_amortized.AutoAmortizedGuide` is compared with;
* :func:`elbo_per_point` estimates the ELBO per data point on a whole data set;
* :func:`radon_model` is the hierarchical model of log radon with an intercept
  per county (Gelman and Hill, 2007), in the gather form: the counties and the
  houses in plates side by side, linked by each house's county;
* :func:`chick_growth_model` is a state-space model of the chicks' growth, a
  latent log weight per weighing that drifts at its diet's rate.
"""

from __future__ import annotations

from collections.abc import Callable

import pyro
import pyro.distributions as dist
import torch
from pyro.distributions import transforms as T
from pyro.infer import Trace_ELBO
from torch import nn
from torch.nn.functional import softplus

MIN_SCALE = 1e-5
"""Floor added to the softplus scale of :class:`DigitsEncoderGuide`."""


class Decoder(nn.Module):
    """Latent code -> Bernoulli logits of every pixel: one hidden layer.

    :param latent_dim: size of the latent code.
    :param hidden_dim: width of the hidden layer.
    :param out_dim: number of pixels.

    Usage::

        decoder = Decoder(latent_dim=2, hidden_dim=256, out_dim=64)
        logits = decoder(torch.randn(10, 2))      # (10, 64)
    """

    def __init__(self, latent_dim: int, hidden_dim: int, out_dim: int) -> None:
        super().__init__()
        self.latent_dim = latent_dim
        self.layers = nn.Sequential(
            nn.Linear(latent_dim, hidden_dim), nn.ReLU(), nn.Linear(hidden_dim, out_dim)
        )

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        """Maps codes of shape ``(..., latent_dim)`` to logits ``(..., out_dim)``."""
        return self.layers(z)


def _subsample_size(batch_size: int | None, num_rows: int) -> int | None:
    """A plate's ``subsample_size``: ``None`` when the batch covers every row."""
    return None if batch_size is None or batch_size >= num_rows else batch_size


def digits_vae_model(
    decoder: Decoder,
    latent_dim: int,
    *,
    batch_size: int | None = None,
    name: str = "decoder",
) -> Callable[[torch.Tensor], None]:
    """A VAE as a Pyro model ``model(x)`` over binary images ``x`` of shape
    ``(num_images, num_pixels)``::

        z_i ~ Normal(0, I_latent_dim)
        x_i ~ Bernoulli(logits=decoder(z_i))          (pixels independent)

    for every row ``i`` of ``x``, in the data plate ``"data"``. With
    ``batch_size`` the plate draws a random minibatch of that many rows at each
    call (``pyro.plate("data", len(x), subsample_size=batch_size)``) and the
    likelihood is scaled up to the full data; pass the full data set.

    :param decoder: the decoder network, registered with
        ``pyro.module(name, decoder)``.
    :param latent_dim: size of each latent code ``z_i``.
    :param batch_size: minibatch size, or ``None`` to use every row.
    :param name: the decoder's name in Pyro's param store; give two models
        sharing a param store different names.
    :returns: the model function.

    Usage::

        model = digits_vae_model(Decoder(2, 256, 64), latent_dim=2, batch_size=128)
        guide = AutoAmortizedGuide(model)
        svi = pyro.infer.SVI(model, guide, pyro.optim.Adam({"lr": 1e-3}), Trace_ELBO())
        svi.step(x_train)
    """

    def model(x: torch.Tensor) -> None:
        pyro.module(name, decoder)
        prior = dist.Normal(x.new_zeros(latent_dim), x.new_ones(latent_dim)).to_event(1)
        subsample_size = _subsample_size(batch_size, x.shape[0])
        with pyro.plate("data", x.shape[0], subsample_size=subsample_size):
            z = pyro.sample("z", prior)
            logits = decoder(z)
            pyro.sample(
                "x",
                dist.Bernoulli(logits=logits).to_event(1),
                obs=pyro.subsample(x, event_dim=1),
            )

    return model


class DigitsEncoderGuide(nn.Module):
    """The guide a user would write by hand for :func:`digits_vae_model`, used as
    a reference: ``q(z_i | x_i) = Normal(loc(h_i), softplus(s(h_i)) + 1e-5)`` with
    ``h_i = ReLU(W x_i + b)``, the same architecture as
    ``AutoAmortizedGuide(model, hidden_dims=(hidden_dim,))``. Its layers keep
    PyTorch's default initialization (``AutoAmortizedGuide`` starts its heads with
    zero weights, at its initial location and scale).

    The guide subsamples its data plate as the model does: give it the model's
    ``batch_size``. Its network is registered under ``name`` in Pyro's param
    store.

    :param data_dim: number of pixels per image.
    :param latent_dim: size of each latent code.
    :param hidden_dim: width of the encoder's hidden layer.
    :param batch_size: the model's minibatch size, or ``None``.
    :param name: the encoder's name in Pyro's param store.
    :param family: the variational family, as the amortized guides name it:
        ``"normal"`` (above), ``"multivariate_normal"`` (``scale_tril`` with a
        softplus diagonal and a linear strict lower triangle),
        ``"lowrank_multivariate_normal"`` (a linear ``latent_dim x rank`` factor
        and a softplus diagonal), ``"normalizing_flow"`` (two conditional affine
        autoregressive flows on the features, reversed between them, then the
        affine map of ``"normal"``, as ``AutoAmortizedNormalizingFlow(flow="iaf")``)
        or ``"delta"``; the reference of each family.
    :param rank: the factor's rank for ``"lowrank_multivariate_normal"``.

    Usage::

        guide = DigitsEncoderGuide(64, latent_dim=2, batch_size=128)
        svi = pyro.infer.SVI(model, guide, pyro.optim.Adam({"lr": 1e-3}), Trace_ELBO())
        svi.step(x_train)
        q = guide.encode(x_test)        # Normal over z for every row of x_test
    """

    def __init__(
        self,
        data_dim: int,
        latent_dim: int,
        hidden_dim: int = 256,
        *,
        batch_size: int | None = None,
        name: str = "digits_encoder",
        family: str = "normal",
        rank: int = 3,
    ) -> None:
        super().__init__()
        self.batch_size = batch_size
        self.name = name
        self.family = family
        self.latent_dim = latent_dim
        self.rank = rank
        self.trunk = nn.Sequential(nn.Linear(data_dim, hidden_dim), nn.ReLU())
        self.loc = nn.Linear(hidden_dim, latent_dim)
        extra = {
            "multivariate_normal": latent_dim * (latent_dim - 1) // 2,
            "lowrank_multivariate_normal": latent_dim * rank,
        }
        if family != "delta":
            self.scale = nn.Linear(hidden_dim, latent_dim)
        if family in extra:
            self.extra = nn.Linear(hidden_dim, extra[family])
        if family == "normalizing_flow":
            self.flows = nn.ModuleList(
                T.conditional_affine_autoregressive(latent_dim, hidden_dim, [hidden_dim])
                for _ in range(2)
            )

    def encode(self, x: torch.Tensor) -> dist.Distribution:
        """``q(z_i | x_i)`` for every row of ``x``: batch shape ``(len(x),)``."""
        features = self.trunk(x)
        loc = self.loc(features)
        if self.family == "delta":
            return dist.Delta(loc, event_dim=1)
        scale = softplus(self.scale(features)) + MIN_SCALE
        if self.family == "multivariate_normal":
            rows, cols = torch.tril_indices(self.latent_dim, self.latent_dim, -1)
            scale_tril = torch.diag_embed(scale)
            scale_tril[..., rows, cols] = self.extra(features)
            return dist.MultivariateNormal(loc, scale_tril=scale_tril)
        if self.family == "lowrank_multivariate_normal":
            factor = self.extra(features).reshape(loc.shape + (self.rank,))
            return dist.LowRankMultivariateNormal(loc, factor, scale)
        if self.family == "normalizing_flow":
            reversal = torch.arange(self.latent_dim - 1, -1, -1)
            first, second = (flow.condition(features) for flow in self.flows)
            # Cached, so the log density of a sample reuses the forward pass
            # rather than inverting the autoregressive flows one coordinate at a time.
            permute = T.Permute(reversal, cache_size=1)
            affine = T.AffineTransform(loc, scale, event_dim=1, cache_size=1)
            transforms = [first, permute, second, affine]
            noise = dist.Normal(torch.zeros_like(loc), 1.0).to_event(1)
            return dist.TransformedDistribution(noise, transforms)
        return dist.Normal(loc, scale).to_event(1)

    def forward(self, x: torch.Tensor) -> None:
        """Samples ``z`` for the rows of the minibatch, with the model's arguments."""
        pyro.module(self.name, self)
        subsample_size = _subsample_size(self.batch_size, x.shape[0])
        with pyro.plate("data", x.shape[0], subsample_size=subsample_size) as rows:
            pyro.sample("z", self.encode(x.index_select(0, rows)))


@torch.no_grad()
def elbo_per_point(
    model: Callable[[torch.Tensor], None],
    guide: Callable[[torch.Tensor], object],
    x: torch.Tensor,
    *,
    num_particles: int = 10,
    chunk_size: int = 128,
    max_plate_nesting: int = 1,
) -> float:
    """The ELBO of ``x`` per data point (in nats; higher is better), estimated
    with ``num_particles`` vectorized particles.

    ``x`` is split into chunks of at most ``chunk_size`` rows, each chunk small
    enough for the guide's and the model's data plates to take all of its rows:
    a guide built for minibatches of ``B`` rows subsamples any larger input to
    ``B`` rows, so an ELBO of the whole of ``x`` in one call would only be a
    random-minibatch estimate. Keep ``chunk_size`` at most the training batch
    size; the model's ``batch_size`` does not matter then.

    :param model: the model, called as ``model(chunk)``.
    :param guide: the guide, called as ``guide(chunk)``.
    :param x: the data, one row per data point.
    :param num_particles: Monte Carlo samples per data point.
    :param chunk_size: rows per ELBO evaluation.
    :param max_plate_nesting: the model's number of nested plates (1 for
        :func:`digits_vae_model`).
    :returns: the ELBO summed over rows, divided by ``len(x)``.

    Usage::

        elbo = elbo_per_point(model, guide, x_test, num_particles=10)
    """
    elbo = Trace_ELBO(
        num_particles=num_particles,
        vectorize_particles=True,
        max_plate_nesting=max_plate_nesting,
    )
    total = 0.0
    for chunk in torch.split(x, chunk_size):
        total -= elbo.loss(model, guide, chunk)
    return total / len(x)


def radon_model(
    county: torch.Tensor,
    floor: torch.Tensor,
    log_radon: torch.Tensor | None = None,
    num_counties: int | None = None,
) -> None:
    """Log radon of houses with an intercept per county and a floor effect:
    ``a_c ~ N(mu_a, sigma_a)`` per county, ``log_radon_i ~ N(a_{county_i} + b
    floor_i, sigma_y)`` per house, with weak priors on ``mu_a``, ``sigma_a``,
    ``b`` and ``sigma_y``.

    :param county: each house's county, integers from 0.
    :param floor: 1 for a house measured on its first floor, 0 in its basement.
    :param log_radon: the observed log radon, or ``None`` to simulate it.
    :param num_counties: the number of counties (by default the largest
        county index plus one).

    Usage::

        data = load_radon()
        pyro.infer.Predictive(radon_model, num_samples=10)(data["county"], data["floor"])
    """
    num_counties = int(county.max()) + 1 if num_counties is None else num_counties
    mu_a = pyro.sample("mu_a", dist.Normal(0.0, 10.0))
    sigma_a = pyro.sample("sigma_a", dist.HalfNormal(5.0))
    b = pyro.sample("b", dist.Normal(0.0, 10.0))
    sigma_y = pyro.sample("sigma_y", dist.HalfNormal(5.0))
    with pyro.plate("counties", num_counties):
        a = pyro.sample("a", dist.Normal(mu_a, sigma_a))
    with pyro.plate("houses", len(county)):
        mean = a[county] + b * floor
        pyro.sample("log_radon", dist.Normal(mean, sigma_y), obs=log_radon)


def chick_growth_model(
    log_weight: torch.Tensor, mask: torch.Tensor, diet: torch.Tensor, num_diets: int = 4
) -> None:
    """Chicks' growth as a state-space model: each chick's true log weight
    ``z_t`` starts near hatching weight and drifts from one weighing to the next
    at its diet's rate ``drift[diet]`` with noise ``sigma_z``; the scale weighs
    it with noise ``sigma_x``. The weighings after a chick's last are padding,
    masked (``mask``), as :func:`~pyro_amortized.datasets.load_chick_weights`
    gives them; its log weights there are latent still (what it would have
    weighed), so that every posterior is proper.

    :param log_weight: each chick's log weight at each weighing, ``(chicks, steps)``.
    :param mask: its weighings, ``(chicks, steps)`` (bool).
    :param diet: each chick's diet (int64, from 0).
    :param num_diets: the number of diets.

    Usage::

        data = load_chick_weights()
        guide = AutoAmortizedGuide(chick_growth_model)
        svi = SVI(chick_growth_model, guide, pyro.optim.Adam({"lr": 0.01}), Trace_ELBO())
        svi.step(data["log_weight"], data["mask"], data["diet"])
    """
    drift = pyro.sample("drift", dist.Normal(0.2, 0.2).expand([num_diets]).to_event(1))
    sigma_z = pyro.sample("sigma_z", dist.HalfNormal(0.2))
    sigma_x = pyro.sample("sigma_x", dist.HalfNormal(0.1))
    with pyro.plate("chicks", log_weight.shape[0]):
        z = pyro.sample("z_0", dist.Normal(3.7, 0.1))
        pyro.sample("x_0", dist.Normal(z, sigma_x).mask(mask[:, 0]), obs=log_weight[:, 0])
        for t in pyro.markov(range(1, log_weight.shape[1])):
            z = pyro.sample(f"z_{t}", dist.Normal(z + drift[diet], sigma_z))
            pyro.sample(f"x_{t}", dist.Normal(z, sigma_x).mask(mask[:, t]), obs=log_weight[:, t])
