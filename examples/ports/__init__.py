"""Published Pyro programs, each with its hand-written guide and the amortized guide.

Every module here writes again one program of Pyro's repository
(``pyro-ppl/pyro``): the model as published (its sample sites, plates, handlers
and argument names) and its hand-written guide, with data that ship with the
installed packages instead of downloads. Each offers ``make_data(...)`` (with a
tiny ``small=True`` version for tests) and ``run(guide_kind, ...)``, which
trains either the hand-written guide (``"hand"``) or
``AutoAmortizedGuide(model)`` (``"amortized"``) with the program's own optimizer
and ELBO and returns the program's metric and the mean time of a step.

=================  =============================================================
module             program
=================  =============================================================
:mod:`.vae`        ``examples/vae/vae.py``: the variational autoencoder
:mod:`.ss_vae`     ``examples/vae/ss_vae_M2.py``: the semi-supervised VAE (M2),
                   without (``"ss_vae"``) or with (``"ss_vae_aux"``) its
                   auxiliary classification loss
:mod:`.cvae`       ``examples/cvae/``: the conditional VAE over a baseline net
:mod:`.lda`        ``examples/lda.py``: amortized latent Dirichlet allocation
:mod:`.hmm`        ``examples/hmm.py``, ``model_1``: a batched HMM, MAP Baum-Welch
:mod:`.gmm`        ``tutorial/source/gmm.ipynb``: a mixture, assignments summed
                   out (``"gmm"``) or sampled by the guide (``"gmm_sampled"``)
:mod:`.prodlda`    ``tutorial/source/prodlda.ipynb``: ProdLDA
:mod:`.dmm`        ``examples/dmm.py``: the deep Markov model, with its RNN and
                   combiner guide
=================  =============================================================

``benchmarks/bench_programs.py`` compares the two guides on every program.
"""

PROGRAMS = (
    "vae",
    "ss_vae",
    "ss_vae_aux",
    "cvae",
    "lda",
    "hmm",
    "gmm",
    "gmm_sampled",
    "prodlda",
    "dmm",
)
"""The programs, by the name ``benchmarks/bench_programs.py`` gives them."""
