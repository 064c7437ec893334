"""Where the guide's parameters live: Pyro's param store and the guide's modules.

With Pyro's global param store (the default), parameters are named after the
guide's class, as for any :class:`~pyro.nn.PyroModule`. A guide's first run
adopts the tensors the store already holds under its names (a store loaded
with ``pyro.get_param_store().load``, or another guide of the class, which it
then shares). From then on the guide keeps its own tensors: where the store
was cleared and another guide of the class has put its parameters there
since, the guide puts its own back, so a guide trained earlier still scores
with its own. With ``pyro.settings.set(module_local_params=True)`` each guide
keeps its parameters and none of this applies.

The store's public ``__setitem__`` maps a constrained value to a new
unconstrained tensor; keeping a parameter's identity (so the optimizer, the
module and the store hold one tensor) needs its two maps, ``_params`` and
``_param_to_name``, which this module alone touches.
"""

from __future__ import annotations

from typing import Any

import pyro
import torch
from pyro.nn import PyroModule
from pyro.params.param_store import param_with_module_name
from torch import nn

from .user_warnings import warn

_RESERVED = frozenset(dir(PyroModule)) | frozenset(dir(nn.ModuleDict))


def module_key(name: str) -> str:
    """The ``nn.Module`` attribute name of a site's head or parameters, or of a
    plate's encoder: injective, and never one of the containers' own attributes
    (``"items"``, ``"training"``)."""
    key = name.replace("%", "%25").replace(".", "%2E") or "%00"
    return "%" + key if key in _RESERVED else key


def register_run(
    guide: PyroModule, network: nn.Module, global_params: nn.Module, *, first: bool
) -> bool:
    """Registers a guide's parameters with Pyro for one run, where Pyro's global
    param store holds them: the network's (see :func:`register`), and, after
    the first run, the guide's own global parameters put back (see
    :func:`reclaim`).

    :param guide: the guide, a :class:`~pyro.nn.PyroModule`.
    :param network: its inference network.
    :param global_params: its module of global parameters.
    :param first: whether this is the guide's first run with the store.
    :returns: whether the network was registered here (otherwise the guide's
        module-local parameters, or a run outside Pyro's handlers, leave it to
        :class:`~pyro.nn.PyroModule`).
    """
    in_store = not pyro.settings.get("module_local_params")
    if not first and in_store:
        reclaim(global_params, guide._pyro_get_fullname("global_params"))
    if not guide._pyro_context.active or not in_store:
        return False
    register(network, guide._pyro_get_fullname("network"), adopt=first)
    return True


def register(network: nn.Module, prefix: str, *, adopt: bool) -> None:
    """Registers every parameter of ``network`` with Pyro for this run.

    :param network: the guide's inference network.
    :param prefix: the network's full name in the param store.
    :param adopt: the guide's first run: take the tensors the store holds under
        the network's names; otherwise put the network's own back over them.
    """
    store = pyro.get_param_store()
    adopted = False
    module_name = param_with_module_name(prefix, "")
    for name, value in named_parameters(network):
        full_name = module_name + name
        stored = store._params.get(full_name)
        if stored is not None and stored is not value:
            if adopt:
                value, adopted = _adopt(network, name, full_name, stored), True
            else:
                _put_in_store(store, full_name, value)
        pyro.param(full_name, value)
    if adopted:
        _warn_if_buffers_from_data(network)


def named_parameters(module: nn.Module) -> list[tuple[str, nn.Parameter]]:
    """``list(module.named_parameters())``: in its order, shared modules and
    parameters once, at half its cost (the walk runs on every call of a guide).

    Usage::

        names = [name for name, _ in named_parameters(guide.network)]
    """
    return _collect_parameters(module, "", {id(module)}, [])


def _collect_parameters(
    module: nn.Module, prefix: str, seen: set[int], found: list[tuple[str, nn.Parameter]]
) -> list[tuple[str, nn.Parameter]]:
    for name, value in module._parameters.items():
        if value is not None and id(value) not in seen:
            seen.add(id(value))
            found.append((prefix + name, value))
    for name, child in module._modules.items():
        if child is not None and id(child) not in seen:
            seen.add(id(child))
            _collect_parameters(child, f"{prefix}{name}.", seen, found)
    return found


def _warn_if_buffers_from_data(network: nn.Module) -> None:
    """Warns that modules whose buffers come from data (the statistics of
    ``standardize_inputs=True``) kept this guide's own, not the trained ones."""
    modules = [
        name
        for name, module in network.named_modules()
        if getattr(module, "buffers_from_data", False)
    ]
    if modules:
        warn(
            "This guide took its trained parameters from Pyro's param store, which holds "
            f"no buffers: its modules {modules} keep the statistics they read from this "
            "guide's first call (standardize_inputs=True, a group plate's typical size), "
            "not the trained guide's. Restore such a guide with "
            "guide.load_state_dict(trained.state_dict()) or torch.save(guide) instead, or "
            "call the fresh guide first on the training data."
        )


def reclaim(global_params: nn.Module, prefix: str) -> None:
    """Puts the guide's own global parameters back in the store where another
    guide's stand; Pyro's modules then read them as they are.

    :param global_params: the module holding one :class:`~pyro.nn.PyroModule`
        of parameters per global site.
    :param prefix: its full name in the param store.
    """
    store = pyro.get_param_store()
    for key, module in global_params._modules.items():
        for name in module._pyro_params:
            own = module._parameters[name + "_unconstrained"]
            full_name = f"{prefix}.{key}.{name}"
            if store._params.get(full_name, own) is not own:
                _put_in_store(store, full_name, own)


def _adopt(network: nn.Module, name: str, full_name: str, stored: torch.Tensor) -> nn.Parameter:
    """Puts a parameter from Pyro's param store in the network in place of its own."""
    module_name, _, attribute = name.rpartition(".")
    module = network.get_submodule(module_name)
    own = module._parameters[attribute]
    if stored.shape != own.shape:
        raise ValueError(
            f"Pyro's param store holds '{full_name}' with shape {tuple(stored.shape)}, but "
            f"this guide's parameter has shape {tuple(own.shape)}: another guide of the "
            "same class (parameters are named after the class) or a loaded param store "
            "has it. Call pyro.clear_param_store() before building this guide, or set "
            "pyro.settings.set(module_local_params=True) to keep parameters in each guide."
        )
    if not isinstance(stored, nn.Parameter):  # a loaded store holds plain tensors
        stored = nn.Parameter(stored.detach().requires_grad_())
        _put_in_store(pyro.get_param_store(), full_name, stored)
    module._parameters[attribute] = stored
    return stored


def _put_in_store(store: Any, full_name: str, value: nn.Parameter) -> None:
    """Makes ``value`` the param store's tensor under ``full_name``, as
    :class:`~pyro.nn.PyroModule` does for its own parameters."""
    previous = store._params.get(full_name)
    if previous is not None:
        store._param_to_name.pop(previous, None)
    store._params[full_name] = value
    store._param_to_name[value] = full_name
