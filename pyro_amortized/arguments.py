"""A model call's arguments by name: binding them, finding one in a later
call, and a key of a call's shapes for caches."""

from __future__ import annotations

import inspect
import types
import weakref
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch.nn.utils.rnn import PackedSequence


def bind_arguments(model: Callable, args: tuple, kwargs: dict) -> dict[str, Any]:
    """Names each argument of a model call, as ``inspect.signature`` binds it.

    An ``nn.Module`` model is bound through its ``forward``. Extra positional
    arguments are named ``"<name>[i]"``, extra keyword arguments by their key.

    Usage::

        bind_arguments(model, (x,), {"y": y})   # {"x": x, "y": y}
    """
    target = model.forward if isinstance(model, torch.nn.Module) else model
    try:
        signature = _signature(target)
        bound = signature.bind(*args, **kwargs)
    except (TypeError, ValueError):
        named = {f"args[{i}]": value for i, value in enumerate(args)}
        named.update(kwargs)
        return named
    bound.apply_defaults()
    named: dict[str, Any] = {}
    for name, value in bound.arguments.items():
        kind = signature.parameters[name].kind
        if kind is inspect.Parameter.VAR_POSITIONAL:
            named.update({f"{name}[{i}]": item for i, item in enumerate(value)})
        elif kind is inspect.Parameter.VAR_KEYWORD:
            named.update(value)
        else:
            named[name] = value
    return named


_SIGNATURES: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
"""Signatures of the callables bound so far, but bound methods."""

_METHOD_SIGNATURES: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
"""Signatures of bound methods (without their first parameter), by their function."""


def _signature(target: Callable) -> inspect.Signature:
    """``inspect.signature``, built once per callable: each call of a guide binds
    its model's arguments, and the signature takes longer to build than to bind."""
    if isinstance(target, types.MethodType):
        cache, key = _METHOD_SIGNATURES, target.__func__
    else:
        cache, key = _SIGNATURES, target
    try:
        return cache[key]
    except KeyError:
        pass
    except TypeError:  # not weakly referable, or not hashable
        return inspect.signature(target)
    signature = cache[key] = inspect.signature(target)
    return signature


@dataclass(frozen=True)
class ArgumentLocation:
    """Where a named argument sits in a call ``model(*args, **kwargs)``.

    :param name: the argument's name (as :func:`bind_arguments` gives it).
    :param position: its index in ``args``, or ``None`` if keyword-only.
    :param keyword: its key in ``kwargs``, or ``None`` if positional-only.
    :param default: its default value, or :attr:`inspect.Parameter.empty`.
    """

    name: str
    position: int | None
    keyword: str | None
    default: Any = inspect.Parameter.empty

    def fetch(self, args: tuple, kwargs: dict) -> Any:
        """The argument's value in this call."""
        if self.keyword is not None and self.keyword in kwargs:
            return kwargs[self.keyword]
        if self.position is not None and self.position < len(args):
            return args[self.position]
        if self.default is inspect.Parameter.empty:
            raise ValueError(
                f"This call does not pass the model argument '{self.name}', which feeds "
                "an encoder. Pass it, or choose other inputs with amortize_on=."
            )
        return self.default

    def replace(self, args: tuple, kwargs: dict, value: Any) -> tuple[tuple, dict]:
        """The call's arguments with this argument set to ``value``, where
        :meth:`fetch` would read it (a keyword passed wins over a position)."""
        positional = self.position is not None and self.position < len(args)
        if positional and (self.keyword is None or self.keyword not in kwargs):
            return args[: self.position] + (value,) + args[self.position + 1 :], kwargs
        return args, {**kwargs, self.keyword: value}


def locate_argument(model: Callable, name: str) -> ArgumentLocation:
    """The :class:`ArgumentLocation` of an argument named by :func:`bind_arguments`."""
    target = model.forward if isinstance(model, torch.nn.Module) else model
    try:
        parameters = list(inspect.signature(target).parameters.values())
    except (TypeError, ValueError):
        parameters = []
    for index, parameter in enumerate(parameters):
        kind = parameter.kind
        if kind is inspect.Parameter.VAR_POSITIONAL and name.startswith(parameter.name + "["):
            return ArgumentLocation(name, index + int(name[len(parameter.name) + 1 : -1]), None)
        if parameter.name != name or kind is inspect.Parameter.VAR_KEYWORD:
            continue
        positional = kind in (
            inspect.Parameter.POSITIONAL_ONLY,
            inspect.Parameter.POSITIONAL_OR_KEYWORD,
        )
        keyword = kind is not inspect.Parameter.POSITIONAL_ONLY
        return ArgumentLocation(
            name,
            index if positional else None,
            name if keyword else None,
            parameter.default,
        )
    if not parameters and name.startswith("args["):
        return ArgumentLocation(name, int(name[5:-1]), None)
    return ArgumentLocation(name, None, name)


def call_key(args: tuple, kwargs: dict) -> tuple:
    """A hashable key of a call's argument shapes and plain values: calls with
    equal keys run the model's plates with equal sizes."""
    return tuple(_value_key(value) for value in args) + tuple(
        (name, _value_key(value)) for name, value in sorted(kwargs.items())
    )


def argument_keys(model: Callable, args: tuple, kwargs: dict) -> dict[str, Any]:
    """Each named argument of a call by its part of the call's key (see
    :func:`call_key`): a tensor by its shape, another value by itself.

    Usage::

        argument_keys(model, (x,), {"step": 3})   # {"x": ((100, 2), torch.float32, ...), "step": 3}
    """
    return {name: _value_key(value) for name, value in bind_arguments(model, args, kwargs).items()}


def _value_key(value: Any) -> Any:
    """A tensor by its shape, type and device; a ``PackedSequence`` by its number
    of sequences, its longest length and the shape of a step (the total of its
    lengths, the rows of its data, differs from batch to batch: keyed by it,
    nearly every minibatch of a sequence model would be planned anew); another
    tuple (any named tuple), list or dict by the keys of its items; another
    value by itself where it hashes, else by its identity."""
    if isinstance(value, torch.Tensor):
        return (tuple(value.shape), value.dtype, value.device)
    if isinstance(value, PackedSequence):
        data, steps = value.data, value.batch_sizes
        sequences = int(steps[0]) if len(steps) else 0
        return (
            PackedSequence,
            sequences,
            len(steps),
            tuple(data.shape[1:]),
            data.dtype,
            data.device,
        )
    if isinstance(value, (tuple, list)):
        return (type(value), tuple(_value_key(item) for item in value))
    if isinstance(value, dict):
        return (dict, tuple((key, _value_key(item)) for key, item in value.items()))
    try:
        hash(value)
    except TypeError:
        return id(value)
    return value
