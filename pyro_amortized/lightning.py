"""Training with PyTorch Lightning: an optional extra (``pip install pyro-amortized[lightning]``).

:class:`SVILightningModule` wraps a model and a guide in a
``lightning.pytorch.LightningModule`` whose loss is Pyro's ELBO-as-module,
``elbo(model, guide)``. Lightning's ``Trainer`` then runs the loop, the
checkpoints and the logging. Its distributed strategies are not tested here;
``examples/ddp_train.py`` shows data-parallel training on PyTorch's own engine.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import lightning.pytorch as pl
import pyro
import torch
from pyro.infer import ELBO, Trace_ELBO

OptimizerFactory = Callable[..., torch.optim.Optimizer]


class SVILightningModule(pl.LightningModule):
    """Trains a Pyro model and guide with PyTorch Lightning, on a minibatch ELBO.

    Each training step computes ``elbo(model, guide)(*batch, *extra_args)``: the
    tensors of the batch (as a ``DataLoader`` over a ``TensorDataset`` yields
    them) followed by ``extra_args``, such as the size of the full data set for
    a model whose plate subsamples. The optimizer is ``optimizer(parameters,
    lr=lr)``, over the parameters of the model and the guide.

    Two conditions, checked here, keep every parameter inside the module, where
    Lightning (and DDP) can see it:

    * Pyro's ``module_local_params`` setting is on
      (``pyro.settings.set(module_local_params=True)``), so parameters live in
      the modules rather than in Pyro's global param store;
    * the guide has been called once on a batch, which reads the model and
      creates its parameters.

    A model with networks or parameters of its own must be an ``nn.Module``
    (for example a ``PyroModule``) to have them trained: a plain function's
    ``pyro.module`` calls do not make its networks part of this module.

    :param model: the Pyro model.
    :param guide: the guide, already called once (for example an
        :class:`~pyro_amortized.AutoAmortizedGuide`).
    :param elbo: the ELBO estimator (default ``Trace_ELBO()``).
    :param lr: the learning rate.
    :param optimizer: a ``torch.optim`` optimizer class, or any callable taking
        the parameters and ``lr=`` (default ``torch.optim.Adam``).
    :param extra_args: model arguments passed after the batch's tensors.

    Usage::

        pyro.settings.set(module_local_params=True)
        guide = AutoAmortizedGuide(model)
        guide(x[:2], len(x))                 # creates the parameters
        module = SVILightningModule(model, guide, lr=0.01, extra_args=(len(x),))
        loader = DataLoader(TensorDataset(x), batch_size=128, shuffle=True)
        lightning.pytorch.Trainer(max_steps=1000).fit(module, loader)
        guide.median(x, len(x))              # the trained guide
    """

    def __init__(
        self,
        model: Callable[..., Any],
        guide: torch.nn.Module,
        *,
        elbo: ELBO | None = None,
        lr: float = 1e-3,
        optimizer: OptimizerFactory = torch.optim.Adam,
        extra_args: Sequence[Any] = (),
    ) -> None:
        super().__init__()
        _check_options(guide, elbo, lr, optimizer)
        self.loss_fn = (Trace_ELBO() if elbo is None else elbo)(model, guide)
        self.lr = float(lr)
        self.optimizer = optimizer
        self.extra_args = tuple(extra_args)

    def forward(self, *args: Any, **kwargs: Any) -> torch.Tensor:
        """The ELBO loss (the negative ELBO estimate) for the model's arguments."""
        return self.loss_fn(*args, **kwargs)

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        """The loss of one batch, logged as ``"loss"``."""
        tensors = tuple(batch) if isinstance(batch, list | tuple) else (batch,)
        loss = self(*tensors, *self.extra_args)
        self.log("loss", loss, prog_bar=True, batch_size=len(tensors[0]))
        return loss

    def configure_optimizers(self) -> torch.optim.Optimizer:
        """``optimizer(parameters, lr=lr)`` over the model's and the guide's parameters."""
        return self.optimizer(self.loss_fn.parameters(), lr=self.lr)


def _check_options(guide: Any, elbo: Any, lr: Any, optimizer: Any) -> None:
    if not pyro.settings.get("module_local_params"):
        raise ValueError(
            "SVILightningModule needs the parameters inside the modules: call "
            "pyro.settings.set(module_local_params=True) before building the guide."
        )
    if not isinstance(guide, torch.nn.Module):
        raise TypeError(f"guide must be an nn.Module, but got {type(guide).__name__}.")
    if next(guide.parameters(), None) is None:
        raise ValueError(
            "The guide has no parameters yet: call it once on a batch of the model's "
            "arguments (guide(*args)) before building the SVILightningModule."
        )
    if elbo is not None and not isinstance(elbo, ELBO):
        raise TypeError(f"elbo must be a pyro.infer.ELBO, but got {type(elbo).__name__}.")
    if isinstance(lr, bool) or not isinstance(lr, int | float) or not lr > 0:
        raise ValueError(f"lr must be a positive number, but got {lr!r}.")
    if not callable(optimizer):
        raise TypeError(f"optimizer must be an optimizer class, but got {optimizer!r}.")
