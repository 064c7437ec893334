"""Encoder trunks and their inputs: the rows of a data plate's arguments -> features.

An encoder is any ``nn.Module`` called as ``encoder(*inputs)``, one tensor per
model argument that feeds the data plate, each of shape ``(batch, *point_shape)``
(the argument's rows, integers and booleans cast to the default float dtype).
It returns features of shape ``(batch, num_features)`` (trailing dimensions are
flattened); the per-site heads are sized from them automatically.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import nn

from .structure import DataPlate

ADAM_STEPS = (
    "Adam moves every weight by about the learning rate in a step whatever the "
    "gradient's size (clipping gradients does not shorten its steps), so an encoder "
    "over wide rows (hundreds of values each) moves its features far in one step at "
    "learning rates that suit per-site parameters (0.1): try 0.01 to 0.001."
)
"""Why a diverged network needs a smaller learning rate, for error messages."""


def all_finite(value: torch.Tensor) -> bool:
    """Whether every entry of ``value`` is finite. A finite sum proves it (NaN
    and infinities reach the sum), which is cheaper than testing each entry;
    only a sum that overflows is checked entry by entry. Under ``torch.jit``
    tracing or ``torch.compile`` the check is skipped (it would need the value
    on the host) and this returns ``True``."""
    if torch.jit.is_tracing() or torch.compiler.is_compiling():
        return True
    value = value.detach()  # no autograd graph for a check
    # math.isfinite of the sum: a third of the time of torch.isfinite on a 0-d tensor
    return math.isfinite(value.sum().item()) or bool(torch.isfinite(value).all())


class MLPEncoder(nn.Module):
    """The default encoder trunk: flattens and concatenates the per-data-point
    inputs, then applies fully connected layers with ``activation`` between them.

    The first layer is sized on the first call (``nn.LazyLinear``), so the
    encoder does not need to know the data's shape in advance. With
    ``hidden_dims=()`` the features are the flattened inputs themselves (an
    encoder whose heads are linear in the data). With ``include_inputs=True``
    the features are the flattened inputs followed by the last layer's output,
    so that the heads read the data both linearly and through the layers (as
    the conditioners of a conditional masked autoregressive flow read their
    context): a posterior whose location is close to linear in the data, such
    as a Gaussian model's, is then fitted without the layers having to learn
    an identity.

    :param hidden_dims: widths of the hidden layers.
    :param activation: the activation module class applied after each layer.
    :param include_inputs: whether the features begin with the flattened inputs
        (with ``hidden_dims=()`` they are the inputs, once).

    Usage::

        encoder = MLPEncoder(hidden_dims=(512, 256))
        guide = AutoAmortizedGuide(model, encoder=encoder)
    """

    def __init__(
        self,
        hidden_dims: Sequence[int] = (256,),
        activation: type[nn.Module] = nn.ReLU,
        *,
        include_inputs: bool = False,
    ) -> None:
        super().__init__()
        if not isinstance(include_inputs, bool):
            raise ValueError(f"include_inputs must be True or False, but got {include_inputs!r}.")
        hidden_dims = tuple(hidden_dims)
        if not all(isinstance(width, int) and width > 0 for width in hidden_dims):
            raise ValueError(f"hidden_dims must be positive integers, but got {hidden_dims}.")
        if not (isinstance(activation, type) and issubclass(activation, nn.Module)):
            raise ValueError(
                f"activation must be an nn.Module class such as torch.nn.ReLU, "
                f"but got {activation!r}."
            )
        layers: list[nn.Module] = []
        for index, width in enumerate(hidden_dims):
            layers.append(
                nn.LazyLinear(width) if index == 0 else nn.Linear(hidden_dims[index - 1], width)
            )
            layers.append(activation())
        self.hidden_dims = hidden_dims
        self.include_inputs = include_inputs and bool(hidden_dims)
        self.layers = nn.Sequential(*layers)

    def forward(self, *inputs: torch.Tensor) -> torch.Tensor:
        """Maps per-data-point inputs of shape ``(batch, ...)`` to ``(batch, features)``."""
        flat = [
            value if value.dim() == 2 else value.reshape(value.shape[0], -1) for value in inputs
        ]
        joined = flat[0] if len(flat) == 1 else torch.cat(flat, dim=-1)
        if self.include_inputs:
            return torch.cat([joined, self.layers(joined)], dim=-1)
        return self.layers(joined)


def plate_inputs(
    plate: DataPlate,
    values: Sequence[object],
    indices: torch.Tensor | None,
    plate_size: int | None,
    dtype: torch.dtype | None = None,
) -> tuple[torch.Tensor, ...]:
    """The encoder inputs of a data plate: each argument's rows, as float tensors
    (integers and booleans in ``dtype``, by default the default float dtype).

    An argument with one row per minibatch index is taken as it is (the data
    is the minibatch); one with a row per data point of the plate is indexed
    by the minibatch.

    :param plate: the data plate.
    :param values: the current values of ``plate.inputs``, in order.
    :param indices: the plate's minibatch indices, or ``None`` for every row.
    :param plate_size: the plate's full size in this call (with ``indices``).
    :raises ValueError: if an input is missing, is not a tensor, has rows that
        match neither the plate nor its minibatch, or its per-data-point shape
        differs from the one the encoder was built for.
    """
    inputs = []
    for name, point_shape, value in zip(plate.inputs, plate.point_shapes, values, strict=True):
        _check_input(plate, name, point_shape, value)
        if indices is not None and value.shape[0] != indices.shape[0]:
            if value.shape[0] != plate_size:
                raise ValueError(
                    f"Argument '{name}' has {value.shape[0]} rows, but plate '{plate.name}' "
                    f"has size {plate_size} and a minibatch of {indices.shape[0]} in this "
                    "call. Pass one row per data point (or per minibatch index)."
                )
            value = value.index_select(0, indices.to(value.device))
        if not value.is_floating_point():
            value = value.to(dtype or torch.get_default_dtype())
        inputs.append(value)
    # int(): under torch.jit tracing sizes are tensors, which a set keeps apart.
    rows = {int(value.shape[0]) for value in inputs}
    if len(rows) > 1:
        raise ValueError(
            f"The inputs of plate '{plate.name}' ({', '.join(plate.inputs)}) have different "
            f"numbers of rows {sorted(rows)}; each must have one row per data point."
        )
    return tuple(inputs)


def _check_input(plate: DataPlate, name: str, point_shape: torch.Size, value: object) -> None:
    if not isinstance(value, torch.Tensor) or value.dim() == 0:
        predictive = (
            " For a posterior predictive of the data it holds, give the guide the "
            f"observed values and the model none: Predictive(model, "
            f"guide=functools.partial(guide, {name}=...))(...) with no {name}. If it "
            "holds no data (a mask), pass it in every call (a mask of all True where "
            "nothing is masked), or leave it out of the encoder with amortize_on=."
            if value is None
            else ""
        )
        raise ValueError(
            f"The encoder of plate '{plate.name}' reads argument '{name}', which is "
            f"{type(value).__name__} in this call. Pass a tensor with one row per data "
            f"point, or choose other inputs with amortize_on=.{predictive}"
        )
    if value.shape[1:] != point_shape:
        raise ValueError(
            f"Argument '{name}' has per-data-point shape {tuple(value.shape[1:])}, but "
            f"the encoder of plate '{plate.name}' was built for {tuple(point_shape)}. "
            "Reshape the data to the training layout, or build a new guide."
        )


def plate_features(
    encoder: nn.Module,
    plate: DataPlate,
    values: Sequence[object],
    indices: torch.Tensor | None,
    plate_size: int | None,
) -> torch.Tensor:
    """The encoder's features of a data plate's rows ``indices`` (every row for
    ``None``; see :func:`plate_inputs`), or of a group plate's groups, from the
    rows of each (``values`` starts with the group index; the number of groups
    is ``plate_size``, or the first call's number of groups and any more the
    indices name).
    """
    dtype = _integer_dtype(encoder, values[1:] if plate.group_index else values)
    if plate.group_index is None:
        return encode_features(encoder, plate_inputs(plate, values, indices, plate_size, dtype))
    groups, *rows = values
    inputs = plate_inputs(plate, rows, None, None, dtype)
    num_groups = _check_groups(plate, groups, inputs[0].shape[0], plate_size)
    features = encode_features(encoder, inputs, groups=(groups, num_groups))
    return features if indices is None else features.index_select(0, indices.to(features.device))


def _integer_dtype(encoder: nn.Module, values: Sequence[object]) -> torch.dtype | None:
    """The dtype integer inputs take: the encoder's, where any input is integer."""
    if all(not isinstance(v, torch.Tensor) or v.is_floating_point() for v in values):
        return None
    return next((p.dtype for p in encoder.parameters() if p.is_floating_point()), None)


def _check_groups(plate: DataPlate, groups: object, num_rows: int, plate_size: int | None) -> int:
    """The number of groups, once ``groups`` is checked to give each row's group."""
    name = plate.group_index
    if (
        not isinstance(groups, torch.Tensor)
        or groups.dim() != 1
        or groups.is_floating_point()
        or groups.shape[0] != num_rows
    ):
        raise ValueError(
            f"Argument '{name}' must give the group (in plate '{plate.name}') of each of the "
            f"{num_rows} rows of {', '.join(plate.inputs)}: a 1-D integer tensor of "
            f"{num_rows} entries, but it is {_describe(groups)}."
        )
    largest = int(groups.max()) if num_rows else -1
    # Unknown in this call (a guide loaded without its model): the first call's
    # groups, and any new ones the indices name.
    num_groups = max(largest + 1, plate.full_size) if plate_size is None else int(plate_size)
    if int(groups.min() if num_rows else 0) < 0 or largest >= num_groups:
        raise ValueError(
            f"Argument '{name}' holds group indices from {int(groups.min())} to {largest}, but "
            f"plate '{plate.name}' has {num_groups} groups in this call: each index must be "
            f"at least 0 and below {num_groups}."
        )
    return num_groups


def _describe(value: object) -> str:
    if isinstance(value, torch.Tensor):
        return f"a {value.dtype} tensor of shape {tuple(value.shape)}"
    return type(value).__name__


def encode_features(
    encoder: nn.Module,
    inputs: tuple[torch.Tensor, ...],
    groups: tuple[torch.Tensor, int] | None = None,
) -> torch.Tensor:
    """Runs an encoder and flattens its output to ``(batch, num_features)``;
    a set encoder (:class:`~pyro_amortized.set_encoders.SetEncoder`) is given
    ``groups``, each row's group and the number of groups, first.

    The features are checked to be finite (one check a call); only when they are
    not are the inputs checked, to say which of the two went wrong. An encoder
    that imputes missing values therefore may take NaN in its inputs.

    :raises ValueError: if the encoder does not return a tensor, or returns NaN
        or infinite features: from NaN or infinite inputs, or because its
        parameters have diverged.
    """
    features = encoder(*inputs) if groups is None else encoder(*groups, *inputs)
    if not isinstance(features, torch.Tensor) or features.dim() == 0:
        raise ValueError(
            f"An encoder must return a tensor of shape (batch, num_features), but "
            f"{type(encoder).__name__} returned {type(features).__name__}."
        )
    if not all_finite(features):
        if not all(all_finite(value) for value in inputs):
            raise ValueError(
                "The encoder's inputs hold NaN or infinite values. Remove or impute them "
                "before training (entries an obs_mask= hides still feed the encoder: fill "
                "them with a neutral value such as 0), or pass an encoder= that handles "
                "missing values."
            )
        raise ValueError(
            f"The encoder {type(encoder).__name__} returned NaN or infinite features from "
            "finite inputs: its parameters have diverged (look for a NaN or infinite loss "
            "in earlier steps). Standardize large inputs (standardize_inputs=True) and "
            f"lower the learning rate: {ADAM_STEPS}"
        )
    return features if features.dim() == 2 else features.reshape(features.shape[0], -1)


class StandardizingEncoder(nn.Module):
    """Standardizes each input feature, then runs an encoder:
    ``encoder(*((x - mean) / scale for x in inputs))``.

    The mean and the standard deviation of each feature (each entry of an
    input's per-data-point shape) are taken from reference rows and kept as
    buffers, so they travel with ``state_dict``, ``.to(device)`` and pickling.
    A feature constant over the reference rows keeps the scale 1. Inputs of
    large magnitude (raw counts in the thousands, unnormalized pixels) then
    reach the encoder at unit scale, where an optimizer's first steps cannot
    throw its outputs far.

    :param encoder: the encoder the standardized inputs go to.
    :param reference: the reference rows, one tensor per input, each of
        shape ``(rows, *point_shape)``.

    Usage::

        encoder = StandardizingEncoder(MLPEncoder((256,)), (x_train,))
        guide = AutoAmortizedGuide(model, encoder=encoder)
    """

    buffers_from_data = True
    """Its buffers come from data, not from Pyro's param store (see
    :func:`~pyro_amortized.params.register`)."""

    def __init__(self, encoder: nn.Module, reference: Sequence[torch.Tensor]) -> None:
        super().__init__()
        if not reference or any(len(value) < 2 for value in reference):
            raise ValueError(
                "StandardizingEncoder needs at least two reference rows per input to estimate "
                "the feature scales (with standardize_inputs=True: the rows of the guide's "
                "first call)."
            )
        self.encoder = encoder
        self.num_inputs = len(reference)
        self.all_constant = True
        """Whether every feature was constant over the reference rows (nothing
        is standardized then)."""
        for index, value in enumerate(reference):
            value = value.detach().to(torch.get_default_dtype())
            mean, std = value.mean(0), value.std(0, unbiased=False)
            constant = std <= 1e-6 * (mean.abs() + 1)
            self.all_constant = self.all_constant and bool(constant.all())
            self.register_buffer(f"mean_{index}", mean)
            self.register_buffer(f"scale_{index}", torch.where(constant, 1.0, std))

    def forward(self, *inputs: torch.Tensor) -> torch.Tensor:
        if len(inputs) != self.num_inputs:
            raise ValueError(
                f"StandardizingEncoder was built for {self.num_inputs} inputs, but got "
                f"{len(inputs)}."
            )
        standardized = (
            (value - getattr(self, f"mean_{index}")) / getattr(self, f"scale_{index}")
            for index, value in enumerate(inputs)
        )
        return self.encoder(*standardized)
