"""ProdLDA, the topic model of Pyro's tutorial ``tutorial/source/prodlda.ipynb``.

Kept: the ``ProdLDA`` module whose ``model(docs)`` registers the decoder as
``"decoder"`` and, in the sized plate ``"documents"`` over the rows of the
document-term matrix ``docs``, samples ``logtheta`` (a logistic-normal stand-in
for the Dirichlet prior: ``Normal(0, 1)`` over the topics) and observes the
counts ``obs`` as a ``Multinomial`` with the largest document length as total
count and ``softmax(BatchNorm(beta(dropout(softmax(logtheta)))))`` as
probabilities; the guide that registers the encoder as ``"encoder"`` and
samples ``logtheta`` from a diagonal Normal (two softplus layers, dropout,
batch-normalized mean and log-variance); training with ``Adam(lr=1e-3)``,
``TraceMeanField_ELBO`` and batches of 32 consecutive documents, 20 topics,
``hidden=100``, dropout 0.2.

Data: the tutorial downloads the 20 newsgroups; the Reuters articles of the
``lda`` package (``lda.datasets.load_reuters()``, 395 documents) stand in,
with the tutorial's vocabulary filter (words in at least 20 documents and at
most half of them; ``min_df=12`` for the tiny set). The metric, which the
tutorial does not compute, is the ELBO of held-out documents per document,
with the networks in evaluation mode (no dropout, batch-norm running
statistics).
"""

from __future__ import annotations

import numpy as np
import pyro
import pyro.distributions as dist
import torch
import torch.nn.functional as F
from pyro.infer import SVI, TraceMeanField_ELBO
from torch import nn

from pyro_amortized import AutoAmortizedGuide

from ._shared import check_guide_kind, load_reuters_counts, minibatch_indices, result, timed_steps

DEFAULT_BATCH_SIZE = 32
DEFAULT_HIDDEN = 100


class Encoder(nn.Module):
    """``docs -> (loc, scale)`` of ``logtheta``."""

    def __init__(self, vocab_size: int, num_topics: int, hidden: int, dropout: float) -> None:
        super().__init__()
        self.drop = nn.Dropout(dropout)
        self.fc1 = nn.Linear(vocab_size, hidden)
        self.fc2 = nn.Linear(hidden, hidden)
        self.fcmu = nn.Linear(hidden, num_topics)
        self.fclv = nn.Linear(hidden, num_topics)
        self.bnmu = nn.BatchNorm1d(num_topics, affine=False)
        self.bnlv = nn.BatchNorm1d(num_topics, affine=False)

    def forward(self, inputs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        hidden = self.drop(F.softplus(self.fc2(F.softplus(self.fc1(inputs)))))
        logtheta_loc = self.bnmu(self.fcmu(hidden))
        logtheta_logvar = self.bnlv(self.fclv(hidden))
        return logtheta_loc, (0.5 * logtheta_logvar).exp()


class Decoder(nn.Module):
    """Topic proportions -> word probabilities: ``softmax(BatchNorm(beta theta))``."""

    def __init__(self, vocab_size: int, num_topics: int, dropout: float) -> None:
        super().__init__()
        self.beta = nn.Linear(num_topics, vocab_size, bias=False)
        self.bn = nn.BatchNorm1d(vocab_size, affine=False)
        self.drop = nn.Dropout(dropout)

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        return F.softmax(self.bn(self.beta(self.drop(inputs))), dim=1)


class ProdLDA(nn.Module):
    """The model and guide of the tutorial.

    :param vocab_size: words in the vocabulary.
    :param num_topics: topics.
    :param hidden: width of the encoder's hidden layers.
    :param dropout: dropout rate of the encoder and the decoder.
    """

    def __init__(self, vocab_size: int, num_topics: int, hidden: int, dropout: float) -> None:
        super().__init__()
        self.vocab_size = vocab_size
        self.num_topics = num_topics
        self.encoder = Encoder(vocab_size, num_topics, hidden, dropout)
        self.decoder = Decoder(vocab_size, num_topics, dropout)

    def model(self, docs: torch.Tensor) -> None:
        """Each document's word counts given its topic proportions."""
        pyro.module("decoder", self.decoder)
        with pyro.plate("documents", docs.shape[0]):
            logtheta_loc = docs.new_zeros((docs.shape[0], self.num_topics))
            logtheta_scale = docs.new_ones((docs.shape[0], self.num_topics))
            logtheta = pyro.sample(
                "logtheta", dist.Normal(logtheta_loc, logtheta_scale).to_event(1)
            )
            theta = F.softmax(logtheta, -1)
            count_param = self.decoder(theta)
            # Multinomial needs one total count; its log_prob does not read it.
            total_count = int(docs.sum(-1).max())
            pyro.sample("obs", dist.Multinomial(total_count, count_param), obs=docs)

    def guide(self, docs: torch.Tensor) -> None:
        """A diagonal Normal over each document's ``logtheta``, from the encoder."""
        pyro.module("encoder", self.encoder)
        with pyro.plate("documents", docs.shape[0]):
            logtheta_loc, logtheta_scale = self.encoder(docs)
            pyro.sample("logtheta", dist.Normal(logtheta_loc, logtheta_scale).to_event(1))

    def beta(self) -> torch.Tensor:
        """The topics' word weights, ``(num_topics, vocab_size)``."""
        return self.decoder.beta.weight.cpu().detach().T


def make_data(
    *, small: bool = False, seed: int = 0, test_fraction: float = 0.2
) -> tuple[torch.Tensor, torch.Tensor]:
    """Reuters word counts, ``(train, test)``, documents as rows (float).

    :param small: 150 documents and ``min_df=12`` (458 words) instead of 395
        documents and ``min_df=20`` (802 words).
    :param seed: seed of the split.
    :param test_fraction: fraction of the documents held out.
    """
    counts = load_reuters_counts()
    rng = np.random.default_rng(seed)
    counts = counts[rng.permutation(len(counts))][: 150 if small else None]
    document_frequency = (counts > 0).sum(0)
    keep = (document_frequency >= (12 if small else 20)) & (document_frequency <= 0.5 * len(counts))
    docs = torch.as_tensor(counts[:, keep], dtype=torch.get_default_dtype())
    docs = docs[docs.sum(-1) > 0]
    num_test = round(test_fraction * len(docs))
    return docs[num_test:], docs[:num_test]


def held_out_elbo_per_document(
    prodlda: ProdLDA, guide: object, docs: torch.Tensor, batch_size: int
) -> float:
    """The ELBO of ``docs`` per document, networks in evaluation mode."""
    elbo = TraceMeanField_ELBO()
    prodlda.eval()
    if isinstance(guide, nn.Module):
        guide.eval()
    with torch.no_grad():
        total = sum(elbo.loss(prodlda.model, guide, batch) for batch in docs.split(batch_size))
    return -total / len(docs)


def run(
    guide_kind: str,
    *,
    steps: int = 100,
    batch_size: int = DEFAULT_BATCH_SIZE,
    seed: int = 0,
    hidden: int = DEFAULT_HIDDEN,
    num_topics: int = 20,
    dropout: float = 0.2,
    learning_rate: float = 1e-3,
    small: bool = False,
) -> dict:
    """Trains ProdLDA with one guide and measures the held-out ELBO per document.

    :param guide_kind: ``"hand"`` (the tutorial's encoder guide) or
        ``"amortized"`` (``AutoAmortizedGuide(prodlda.model,
        hidden_dims=(hidden, hidden))``).
    :param steps: SVI steps; batches are consecutive slices of the documents,
        epoch after epoch, as in the tutorial.
    :param batch_size: documents per step.
    :param seed: seed of the parameters and the split.
    :param hidden: width of the encoder's hidden layers.
    :param num_topics: topics.
    :param dropout: dropout rate.
    :param learning_rate: Adam's learning rate.
    :param small: train on the tiny data set of :func:`make_data`.
    :returns: see :func:`examples.ports._shared.result`; the metric is the
        held-out ELBO per document (higher is better).
    """
    check_guide_kind(guide_kind)
    pyro.clear_param_store()
    pyro.set_rng_seed(seed)
    train, test = make_data(small=small, seed=seed)
    prodlda = ProdLDA(train.shape[1], num_topics, hidden, dropout)
    if guide_kind == "hand":
        guide = prodlda.guide
    else:
        guide = AutoAmortizedGuide(prodlda.model, hidden_dims=(hidden, hidden))
    optimizer = pyro.optim.Adam({"lr": learning_rate})
    svi = SVI(prodlda.model, guide, optimizer, loss=TraceMeanField_ELBO())
    batches = minibatch_indices(len(train), batch_size, seed, shuffle=False)

    def step(_: int) -> float:
        return svi.step(train[next(batches)])

    losses, step_seconds = timed_steps(step, steps)
    metric = held_out_elbo_per_document(prodlda, guide, test, batch_size)
    return result("held-out ELBO per document", metric, losses, step_seconds, step)
