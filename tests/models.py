"""Small Pyro models shared by the tests (module level, so guides pickle)."""

import math

import pyro
import pyro.distributions as dist
import torch
from torch.nn.functional import one_hot

LATENT, FEATURES = 2, 5


def factor_model(x):
    """Global loadings and noise, a local code per row; subsampled data plate."""
    w = pyro.sample("w", dist.Normal(0.0, 1.0).expand([LATENT, FEATURES]).to_event(2))
    noise = pyro.sample("noise", dist.LogNormal(0.0, 1.0))
    with pyro.plate("data", x.shape[0], subsample_size=min(32, x.shape[0])):
        z = pyro.sample("z", dist.Normal(0.0, 1.0).expand([LATENT]).to_event(1))
        mean = (z.unsqueeze(-2) @ w).squeeze(-2)
        pyro.sample(
            "x", dist.Normal(mean, noise[..., None]).to_event(1), obs=pyro.subsample(x, event_dim=1)
        )


def minibatch_model(x):
    """The user makes the minibatches: the plate's size is the batch's."""
    w = pyro.sample("w", dist.Normal(0.0, 1.0).expand([LATENT, FEATURES]).to_event(2))
    with pyro.plate("data", x.shape[0]):
        z = pyro.sample("z", dist.Normal(0.0, 1.0).expand([LATENT]).to_event(1))
        pyro.sample("x", dist.Normal((z.unsqueeze(-2) @ w).squeeze(-2), 0.5).to_event(1), obs=x)


def presubsampled_model(x, num_data):
    """A minibatch ``x`` of a data set of ``num_data`` rows, scaled by the plate."""
    w = pyro.sample("w", dist.Normal(0.0, 1.0).expand([LATENT, FEATURES]).to_event(2))
    with pyro.plate("data", num_data, subsample_size=x.shape[0]):
        z = pyro.sample("z", dist.Normal(0.0, 1.0).expand([LATENT]).to_event(1))
        pyro.sample("x", dist.Normal((z.unsqueeze(-2) @ w).squeeze(-2), 0.5).to_event(1), obs=x)


def regression_model(covariates, y):
    """A per-unit effect with covariates: two data arguments feed the encoder."""
    coef = pyro.sample("coef", dist.Normal(0.0, 1.0).expand([3]).to_event(1))
    with pyro.plate("units", y.shape[0]):
        effect = pyro.sample("effect", dist.Normal(0.0, 1.0))
        scale = pyro.sample("scale", dist.Gamma(2.0, 2.0))
        pyro.sample("y", dist.Normal(covariates @ coef + effect, scale), obs=y)


def nested_model(counts):
    """Documents x words: proportions per document, a positive rate per word slot,
    a correlation-Cholesky factor and a covariance matrix per document."""
    num_docs, num_words = counts.shape
    topics = pyro.sample("topics", dist.Gamma(2.0, 1.0).expand([3]).to_event(1))
    with pyro.plate("docs", num_docs, dim=-2):
        theta = pyro.sample("theta", dist.Dirichlet(torch.ones(3)))
        corr = pyro.sample("corr", dist.LKJCholesky(2, 1.0))
        cov = pyro.sample("cov", dist.Wishart(df=4.0, covariance_matrix=torch.eye(2)))
        with pyro.plate("words", num_words, dim=-1):
            rate = pyro.sample("rate", dist.Gamma(2.0, 2.0))
            mean = rate * (theta * topics).sum(-1)  # (docs, words)
            mean = mean + corr[..., 1, 0] ** 2 + cov[..., 0, 0] * 0.01
            pyro.sample("counts", dist.Poisson(mean), obs=counts)


def mixture_model(x):
    """A local continuous offset and a local assignment the model enumerates."""
    locs = pyro.sample("locs", dist.Normal(0.0, 5.0).expand([2]).to_event(1))
    with pyro.plate("data", x.shape[0]):
        offset = pyro.sample("offset", dist.Normal(0.0, 0.5))
        assignment = pyro.sample(
            "assignment", dist.Categorical(torch.ones(2) / 2), infer={"enumerate": "parallel"}
        )
        pyro.sample("x", dist.Normal(locs[assignment] + offset, 1.0), obs=x)


def global_only_model(y):
    """No plate at all: nothing to amortize."""
    loc = pyro.sample("loc", dist.Normal(0.0, 10.0))
    pyro.sample("y", dist.Normal(loc, 1.0).expand(y.shape).to_event(1), obs=y)


def factor_data(num_rows, seed=0):
    generator = torch.Generator().manual_seed(seed)
    w = torch.randn(LATENT, FEATURES, generator=generator)
    z = torch.randn(num_rows, LATENT, generator=generator)
    return z @ w + 0.5 * torch.randn(num_rows, FEATURES, generator=generator)


def regression_data(num_rows, seed=0):
    generator = torch.Generator().manual_seed(seed)
    covariates = torch.randn(num_rows, 3, generator=generator)
    effect = torch.randn(num_rows, generator=generator)
    y = covariates @ torch.tensor([1.0, -1.0, 0.5]) + effect
    return covariates, y + 0.3 * torch.randn(num_rows, generator=generator)


def count_data(num_docs, num_words=4, seed=0):
    generator = torch.Generator().manual_seed(seed)
    return torch.poisson(3.0 * torch.ones(num_docs, num_words), generator=generator)


def mixture_data(num_rows, seed=0, with_centers=False):
    """Points around -3 and 3; with ``with_centers``, also each point's center."""
    generator = torch.Generator().manual_seed(seed)
    centers = torch.tensor([-3.0, 3.0])[torch.randint(2, (num_rows,), generator=generator)]
    x = centers + torch.randn(num_rows, generator=generator)
    return (x, centers) if with_centers else x


def shared_mean_model(x):
    """A global mean ``loc``, a local z per row around it, x around z."""
    loc = pyro.sample("loc", dist.Normal(0.0, 1.0))
    with pyro.plate("data", len(x)):
        z = pyro.sample("z", dist.Normal(loc, 1.0))
        pyro.sample("x", dist.Normal(z, 1.0), obs=x)


def indexed_model(x, indices):
    """The user draws the minibatch: ``indices`` of the rows of ``x``."""
    w = pyro.sample("w", dist.Normal(0.0, 1.0).expand([LATENT, FEATURES]).to_event(2))
    with pyro.plate("data", x.shape[0], subsample=indices):
        z = pyro.sample("z", dist.Normal(0.0, 1.0).expand([LATENT]).to_event(1))
        mean = (z.unsqueeze(-2) @ w).squeeze(-2)
        pyro.sample("x", dist.Normal(mean, 0.5).to_event(1), obs=x[indices])


def indexed_batch_model(x, indices, num_data):
    """The minibatch ``x`` comes with its row indices among ``num_data`` rows."""
    w = pyro.sample("w", dist.Normal(0.0, 1.0).expand([LATENT, FEATURES]).to_event(2))
    with pyro.plate("data", num_data, subsample=indices):
        z = pyro.sample("z", dist.Normal(0.0, 1.0).expand([LATENT]).to_event(1))
        pyro.sample("x", dist.Normal((z.unsqueeze(-2) @ w).squeeze(-2), 0.5).to_event(1), obs=x)


ANNOTATORS, CLASSES = 4, 3
TRUSTED = torch.tensor([0.7, 0.5, 0.9, 0.6])  # each annotator's chance of not spamming
SPAM = torch.tensor([0.6, 0.3, 0.1])  # the labels of a spamming annotator


def annotation_model(labels):
    """An item's class c, and per annotator a spam switch s in a nested plate
    (MACE with known annotators): the posterior is q(c | x) q(s_j | x, c)."""
    with pyro.plate("items", labels.shape[0], dim=-2):
        c = pyro.sample("c", dist.Categorical(logits=torch.zeros(CLASSES)))
        with pyro.plate("annotators", ANNOTATORS):
            s = pyro.sample("s", dist.Bernoulli(1 - TRUSTED))
            probs = torch.where(s[..., None] == 0, one_hot(c, CLASSES), SPAM)
            pyro.sample("y", dist.Categorical(probs), obs=labels)


def annotation_data(num_items, seed=0):
    """Labels (items x annotators) simulated from :func:`annotation_model`."""
    generator = torch.Generator().manual_seed(seed)
    classes = torch.randint(0, CLASSES, (num_items,), generator=generator)
    spam = torch.rand(num_items, ANNOTATORS, generator=generator) > TRUSTED
    random = torch.multinomial(SPAM, num_items * ANNOTATORS, True, generator=generator)
    return torch.where(spam, random.reshape(num_items, ANNOTATORS), classes[:, None])


def annotation_log_evidence(labels):
    """log p(labels) of :func:`annotation_model`, each item's class summed out."""
    agree = one_hot(labels, CLASSES).float()  # (items, annotators, classes)
    per_class = ((1 - TRUSTED) * SPAM[labels])[..., None] + TRUSTED[:, None] * agree
    return float((per_class.log().sum(1) - math.log(CLASSES)).logsumexp(-1).sum())
