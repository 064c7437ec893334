"""Amortized latent Dirichlet allocation, Pyro's ``examples/lda.py``.

Kept: ``model(data=None, args=None, batch_size=None)`` with ``data`` a
``[num_words_per_doc, num_documents]`` tensor of word ids (not a histogram),
the global sites ``topic_weights`` (``Gamma``) and ``topic_words``
(``Dirichlet``) in the plate ``"topics"``, the plate ``"documents"`` of size
``args.num_docs`` (not subsampled in the model: the guide's subsample is
replayed into it), the local ``doc_topics`` (``Dirichlet``) and, in the plate
``"words"``, the ``word_topics`` that the model enumerates in parallel and the
observed ``doc_words``; the guide ``parametrized_guide(predictor, data, args,
batch_size)`` with conjugate per-site parameters for the globals and a
``Delta`` for ``doc_topics`` from an MLP on the word histogram (sigmoid layers
initialized with ``Normal(0, 0.001)``, softmax output), subsampling
``batch_size`` documents; training with ``ClippedAdam(lr=0.01)`` and
``TraceEnum_ELBO(max_plate_nesting=2)``; the final figure, ``elbo.loss`` on
whole data, here on held-out documents.

Data: the program simulates documents from the model; here the Reuters
articles of the ``lda`` package (``lda.datasets.load_reuters()``, 395
documents) stand in. The vocabulary is the ``num_words`` most frequent words;
each document with at least ``num_words_per_doc`` of them contributes that many
tokens drawn without replacement (all documents have one length, as the model
requires).
"""

from __future__ import annotations

import argparse
import functools

import numpy as np
import pyro
import pyro.distributions as dist
import torch
from pyro.infer import SVI, TraceEnum_ELBO
from pyro.optim import ClippedAdam
from torch import nn
from torch.distributions import constraints

from pyro_amortized import AutoAmortizedGuide

from ._shared import check_guide_kind, load_reuters_counts, result, timed_steps

DEFAULT_BATCH_SIZE = 32
DEFAULT_HIDDEN = 100


def default_sizes(small: bool) -> tuple[int, int]:
    """``(num_words, num_words_per_doc)`` of :func:`make_data`'s data sets."""
    return (256, 16) if small else (1024, 64)


def model(
    data: torch.Tensor | None = None,
    args: argparse.Namespace | None = None,
    batch_size: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The generative process of a corpus: ``data`` holds word ids, one column
    per document (``batch_size`` is the guide's: the model does not read it)."""
    with pyro.plate("topics", args.num_topics):
        topic_weights = pyro.sample("topic_weights", dist.Gamma(1.0 / args.num_topics, 1.0))
        topic_words = pyro.sample(
            "topic_words", dist.Dirichlet(torch.ones(args.num_words) / args.num_words)
        )
    with pyro.plate("documents", args.num_docs) as ind:
        if data is not None:
            with pyro.util.ignore_jit_warnings():
                assert data.shape == (args.num_words_per_doc, args.num_docs)
            data = data[:, ind]
        doc_topics = pyro.sample("doc_topics", dist.Dirichlet(topic_weights))
        with pyro.plate("words", args.num_words_per_doc):
            word_topics = pyro.sample(
                "word_topics", dist.Categorical(doc_topics), infer={"enumerate": "parallel"}
            )
            data = pyro.sample("doc_words", dist.Categorical(topic_words[word_topics]), obs=data)
    return topic_weights, topic_words, data


def make_predictor(args: argparse.Namespace) -> nn.Sequential:
    """The MLP from a document's word histogram to its topic proportions."""
    sizes = [args.num_words, *(int(size) for size in args.layer_sizes.split("-")), args.num_topics]
    layers: list[nn.Module] = []
    for in_size, out_size in zip(sizes, sizes[1:], strict=False):
        layer = nn.Linear(in_size, out_size)
        layer.weight.data.normal_(0, 0.001)
        layer.bias.data.normal_(0, 0.001)
        layers += [layer, nn.Sigmoid()]
    layers.append(nn.Softmax(dim=-1))
    return nn.Sequential(*layers)


def parametrized_guide(
    predictor: nn.Module,
    data: torch.Tensor,
    args: argparse.Namespace,
    batch_size: int | None = None,
) -> None:
    """Conjugate families for the globals, an amortized point estimate of each
    document's topic proportions."""
    topic_weights_posterior = pyro.param(
        "topic_weights_posterior",
        lambda: torch.ones(args.num_topics),
        constraint=constraints.positive,
    )
    topic_words_posterior = pyro.param(
        "topic_words_posterior",
        lambda: torch.ones(args.num_topics, args.num_words),
        constraint=constraints.greater_than(0.5),
    )
    with pyro.plate("topics", args.num_topics):
        pyro.sample("topic_weights", dist.Gamma(topic_weights_posterior, 1.0))
        pyro.sample("topic_words", dist.Dirichlet(topic_words_posterior))

    pyro.module("predictor", predictor)
    with pyro.plate("documents", args.num_docs, batch_size) as ind:
        data = data[:, ind]
        counts = torch.zeros(args.num_words, ind.size(0)).scatter_add(
            0, data, torch.ones(data.shape)
        )
        doc_topics = predictor(counts.transpose(0, 1))
        pyro.sample("doc_topics", dist.Delta(doc_topics, event_dim=1))


def documents_plate(
    data: torch.Tensor | None = None,
    args: argparse.Namespace | None = None,
    batch_size: int | None = None,
) -> pyro.plate:
    """The plate of documents the program's guide subsamples, for an autoguide's
    ``create_plates``."""
    return pyro.plate("documents", args.num_docs, batch_size)


def make_data(
    *,
    small: bool = False,
    seed: int = 0,
    num_words: int | None = None,
    num_words_per_doc: int | None = None,
    test_fraction: float = 0.2,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Reuters articles as word ids: ``(train, test)``, each
    ``[num_words_per_doc, num_documents]`` (int64).

    :param small: a vocabulary of 256 words, 16 words per document and 150
        documents (instead of 1024 words, 64 per document, 354 documents).
    :param seed: seed of the tokens drawn and of the split.
    :param num_words: size of the vocabulary (the most frequent words).
    :param num_words_per_doc: tokens per document.
    :param test_fraction: fraction of the documents held out.
    """
    num_words = num_words or default_sizes(small)[0]
    num_words_per_doc = num_words_per_doc or default_sizes(small)[1]
    counts = load_reuters_counts()
    vocabulary = np.argsort(-counts.sum(0), kind="stable")[:num_words]
    counts = counts[:, vocabulary]
    counts = counts[counts.sum(1) >= num_words_per_doc]
    rng = np.random.default_rng(seed)
    rng.shuffle(counts)
    if small:
        counts = counts[:150]
    documents = [
        rng.choice(np.repeat(np.arange(num_words), row), num_words_per_doc, replace=False)
        for row in counts
    ]
    data = torch.as_tensor(np.stack(documents, axis=1), dtype=torch.int64)
    num_test = round(test_fraction * data.shape[1])
    return data[:, num_test:], data[:, :num_test]


def make_args(
    data: torch.Tensor, num_words: int, hidden: int, **options: object
) -> argparse.Namespace:
    """The program's arguments for a data set (its defaults otherwise)."""
    defaults = {"num_topics": 8, "learning_rate": 0.01, "jit": False}
    return argparse.Namespace(
        num_words=num_words,
        num_docs=data.shape[1],
        num_words_per_doc=data.shape[0],
        layer_sizes=f"{hidden}-{hidden}",
        **{**defaults, **options},
    )


def run(
    guide_kind: str,
    *,
    steps: int = 100,
    batch_size: int = DEFAULT_BATCH_SIZE,
    seed: int = 0,
    hidden: int = DEFAULT_HIDDEN,
    num_topics: int = 8,
    learning_rate: float = 0.01,
    small: bool = False,
) -> dict:
    """Trains LDA with one guide and measures the held-out ELBO per document.

    :param guide_kind: ``"hand"`` (``parametrized_guide``) or ``"amortized"``
        (``AutoAmortizedGuide(model, hidden_dims=(hidden, hidden),
        standardize_inputs=True, create_plates=documents_plate,
        site_families=...)``: a point estimate of ``doc_topics`` and the
        prior's family for the globals, as the program's guide).
    :param steps: SVI steps.
    :param batch_size: documents per step (the hand-written guide subsamples
        them; the model itself does not subsample).
    :param seed: seed of the parameters and the data.
    :param hidden: width of the two hidden layers (``--layer-sizes hidden-hidden``).
    :param num_topics: topics.
    :param learning_rate: ClippedAdam's learning rate.
    :param small: train on the tiny data set of :func:`make_data`.
    :returns: see :func:`examples.ports._shared.result`; the metric is the ELBO
        of the held-out documents, per document (higher is better).
    """
    check_guide_kind(guide_kind)
    pyro.clear_param_store()
    pyro.set_rng_seed(seed)
    train, test = make_data(small=small, seed=seed)
    num_words = default_sizes(small)[0]
    options = {"num_topics": num_topics, "learning_rate": learning_rate}
    args = make_args(train, num_words, hidden, **options)
    if guide_kind == "hand":
        guide = functools.partial(parametrized_guide, make_predictor(args))
    else:
        # The encoder reads the word ids (up to the vocabulary's size): the guide
        # warns that such inputs should be standardized, as here. The program's
        # guide, not its model, subsamples the documents: create_plates (Pyro's
        # AutoGuide option) gives the amortized guide the same plate.
        guide = AutoAmortizedGuide(
            model,
            hidden_dims=(hidden, hidden),
            standardize_inputs=True,
            create_plates=documents_plate,
            # The program's point estimate of doc_topics, and its conjugate
            # families for the globals: a Normal over the unconstrained topic-word
            # probabilities cannot fit their sparse Dirichlet posterior.
            site_families={"doc_topics": "delta", "topic_weights": "prior", "topic_words": "prior"},
        )
    elbo = TraceEnum_ELBO(max_plate_nesting=2)
    svi = SVI(model, guide, ClippedAdam({"lr": learning_rate}), elbo)

    def step(_: int) -> float:
        return svi.step(train, args=args, batch_size=batch_size)

    losses, step_seconds = timed_steps(step, steps)
    test_args = make_args(test, num_words, hidden, **options)
    metric = -elbo.loss(model, guide, test, args=test_args) / test.shape[1]
    return result("held-out ELBO per document", metric, losses, step_seconds, step)
