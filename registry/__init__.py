"""Registries of architectures, losses, maskers and datasets, and the functions to use them.

Each registry's docstring (``help(registry.ARCHS)``) is the contract its entries keep; the tests check every
registered entry against it. Register your own entry with a decorator in a module passed to ``bench run --plugin``, or
from your package through the entry-point groups ``partialseg.archs``, ``partialseg.losses``, ``partialseg.maskers``,
``partialseg.regularizers`` and ``partialseg.datasets`` (an entry point names a builder, or a module that registers
with the decorators).
"""

from __future__ import annotations

import inspect
import numbers
from typing import Any

from registry.core import DuplicateNameError, Registry, UnknownNameError, import_plugin_module
from registry.errors import ContractError, UserError

ARCH_CONTRACT = """Architectures.

An entry is a builder ``(num_classes, in_chans=3, **kw) -> torch.nn.Module``. The module:
- maps a float batch ``[N, in_chans, H, W]`` to logits ``[N, num_classes, H, W]`` at the input's resolution;
- has an int attribute ``size_divisor``: H and W must be multiples of it, and forward raises ``ValueError`` naming the
  size otherwise;
- in training mode may return a list of such logits (deep supervision; the loss is averaged over them); in eval mode
  it always returns one tensor.
"""

LOSS_CONTRACT = """Losses.

An entry is a builder ``(**kw) -> loss`` where ``loss(logits[N, C, H, W], target[N, H, W]) -> scalar tensor``.
``target`` is int64 with ``-1`` for unlabelled pixels. The loss:
- averages over labelled pixels only: a pixel labelled ``-1`` has no influence on the value or the gradient;
- returns a zero that still carries the graph (never NaN) when no pixel of the batch is labelled.
A builder that takes class weights names the argument ``weight``.
"""

REGULARIZER_CONTRACT = """Regularisers: terms that use the unlabelled pixels, added to a loss with a weight.

An entry is a builder ``(**kw) -> reg`` where
``reg(logits[N, C, H, W], target[N, H, W], images[N, 3, H, W], progress) -> scalar tensor``. ``target`` is int64 with
``-1`` for unlabelled pixels; ``images`` are the normalised input batch; ``progress`` is the share of training steps
done, in [0, 1] (for ramp-ups). The regulariser:
- returns a finite scalar that carries the graph of ``logits``;
- is 0-safe: never NaN when no pixel is unlabelled (nor when every pixel is);
- is deterministic: the same inputs give the same value.
A regulariser that runs the model again (on a transformed batch, say) sets ``uses_model = True`` and is then called
with ``model=``, the training forward function (``images -> logits``, or a list of logits with deep supervision).
It computes in float32 whatever the autocast. Bad arguments raise :class:`UserError` when it is built. In a grid it is
written after a loss: ``"partial_ce + 0.1 * entropy"``.
"""

MASKER_CONTRACT = """Maskers: which pixels keep their label.

An entry is a builder ``(**kw) -> masker`` where ``masker(full_mask[H, W], fraction, generator) -> partial_mask[H, W]``.
``full_mask`` is an int64 tensor of class indices, ``-1`` where a pixel is not annotated (see the dataset contract),
``fraction`` a float in (0, 1], a share of the annotated pixels, ``generator`` a seeded ``torch.Generator``. The
partial mask is int64, of the same shape, equal to ``full_mask`` where labelled and ``-1`` elsewhere (so ``-1`` at
every not-annotated pixel: a masker draws its pixels, points, blocks or strokes among the annotated ones), and depends
only on its inputs and the generator's state (the same seed gives the same pixels). The masker has a bool attribute
``uses_fraction``; when it is false the fraction is ignored and a grid runs it once, at 1.0.
A masker whose attribute ``takes_tile_index`` is true is called with two more keyword arguments, ``seed`` (the run
seed) and ``index`` (the tile's position in the training split), for draws that must reproduce another program's
(``reference_pixels``); it depends only on its inputs then. ``bench.data.draw_partial`` is the one place that calls a
masker so. A masker may have a method ``check(height, width, fraction)`` that raises :class:`UserError` when its
parameters, or that fraction, cannot be honoured on tiles of that size (more points than a tile has pixels, a block
larger than the tile, a fraction that keeps no pixel); the harness calls it for every masker and fraction of a grid
(1.0 for a masker that ignores the fraction) before anything is trained. Parameters that are wrong whatever the tile
(zero, negative, of the wrong type) raise :class:`UserError` when the masker is built.
The masker says how a person would produce its labels with an attribute ``annotation``, a counter ``(partial[H, W])
-> {unit: count}`` of the annotator's actions on one partial mask (:mod:`registry.annotation`: ``count_points``,
``count_strokes``, ``count_regions``, ``block_counter(size)``, or one's own), from which the harness prices the cell's
annotation.
"""

DATASET_CONTRACT = """Datasets.

An entry is a builder ``(**kw) -> dataset`` with attributes ``num_classes`` (int), ``class_names`` (one str per
class), ``in_chans`` (int), ``mean`` and ``std`` (``in_chans`` values each, in the images' scale, below), ``splits``
(names, with at least ``"train"`` and ``"val"``), and a method ``split(name) -> (images, masks)``: ``images``
``[N, H, W, in_chans]`` (uint8, uint16 or float32) and ``masks`` ``[N, H, W]`` (NumPy arrays or memory maps). A
``"test"`` split, when there is one, is scored once per cell. Keyword arguments ``root`` and ``cache_dir`` say where
the data is: the harness passes them (as absolute paths) but leaves them out of a cell's identity.

A mask holds class indices ``0..num_classes-1``, or ``-1`` where a pixel is not annotated (LoveDA's no-data,
DeepGlobe's "unknown", a raster's nodata): uint8 when the dataset has no such pixel, else int8 (``num_classes <=
127``) or int16. Apart from those pixels every split is fully labelled: the harness applies the masker to the training
split (it never labels a not-annotated pixel), and the metrics and "labelled %" count annotated pixels only.

Images keep their dtype through the harness (caches and both data paths; they are normalised on the device), so
``mean`` and ``std`` are in units of its scale: uint8 values / 255, uint16 values / 65535, float32 values as they
are. An optional attribute ``rgb_bands``, three channel indices, says which channels pictures show as red, green and
blue (default ``(0, 1, 2)``, or channel 0 as grey when ``in_chans`` is below 3). Optional attributes for ``bench
predict``, which reads whole scenes as the tiles were made: ``scale``, the stored tiles' side over their source side
(LandCover.ai's 384 of 512: 0.75; default 1), ``bands``, the raster band numbers (from 1) of the channels, in
order (default: every band of a scene, as it is), and ``pixel_sizes``, the ground sides in metres of the source
pixels the training tiles were cut from (LandCover.ai's 0.25 and 0.5; default unknown), against which a scene's are
checked. An optional attribute ``test_scenes`` asks for whole scenes to be scored too, with each cell's best
weights, after the test split and as ``bench predict`` maps them: a sequence of objects with ``image`` and ``labels``
(paths of two rasters of one size) and a method ``read_classes(source, window)`` that gives the classes (``-1`` not
annotated) of a rasterio ``window`` of the label raster open in ``source``, and raises :class:`UserError` for a value
that names no class. An optional method ``scene(image, labels)`` gives such an object for any two rasters coded as
the dataset's are (``bench predict --labels`` reads label rasters with it).
"""

# The value that stands for 1.0 in images of each dtype a dataset may give: its mean and std are in these units.
IMAGE_SCALES = {"uint8": 255.0, "uint16": 65535.0, "float32": 1.0}


def _check_arch(name: str, model: Any) -> None:
    import torch

    if not isinstance(model, torch.nn.Module):
        raise ContractError(f"architecture {name!r} built {type(model).__name__}, not a torch.nn.Module")
    if not isinstance(getattr(model, "size_divisor", None), int):
        raise ContractError(f"architecture {name!r} has no int attribute size_divisor")


def _check_callable(kind: str) -> Any:
    def check(name: str, built: Any) -> None:
        if not callable(built):
            raise ContractError(f"{kind} {name!r} built {type(built).__name__}, which is not callable")

    return check


def _check_masker(name: str, masker: Any) -> None:
    _check_callable("masker")(name, masker)
    if not isinstance(getattr(masker, "uses_fraction", None), bool):
        raise ContractError(f"masker {name!r} has no bool attribute uses_fraction")
    check = getattr(masker, "check", None)
    if check is not None:
        try:
            inspect.signature(check).bind(1, 1, 1.0)
        except TypeError:
            raise ContractError(f"masker {name!r}: check must take (height, width, fraction), "
                                f"not {inspect.signature(check)}") from None
        except ValueError:  # no inspectable signature: the call will say
            pass
    if not callable(getattr(masker, "annotation", None)):
        raise ContractError(f"masker {name!r} has no annotation counter (an attribute annotation: "
                            "registry.annotation.count_points, count_strokes, count_regions, or one's own)")


def _check_dataset(name: str, dataset: Any) -> None:
    missing = [a for a in ("num_classes", "class_names", "in_chans", "mean", "std", "splits", "split")
               if not hasattr(dataset, a)]
    if missing:
        raise ContractError(f"dataset {name!r} lacks {', '.join(missing)}")
    if len(dataset.class_names) != dataset.num_classes or not {"train", "val"} <= set(dataset.splits):
        raise ContractError(f"dataset {name!r} needs one class name per class and splits 'train' and 'val'")
    channels = dataset.in_chans
    if (not isinstance(channels, numbers.Integral) or channels < 1
            or not len(dataset.mean) == len(dataset.std) == channels):
        raise ContractError(f"dataset {name!r} needs an int in_chans >= 1 and a mean and std per channel")
    bands = getattr(dataset, "rgb_bands", None)
    if bands is not None and (len(bands) != 3
                              or not all(isinstance(b, numbers.Integral) and 0 <= b < channels for b in bands)):
        raise ContractError(f"dataset {name!r}: rgb_bands must be three channel indices in 0..{channels - 1}, "
                            f"not {bands!r}")


ARCHS = Registry("architecture", "partialseg.archs", ARCH_CONTRACT, _check_arch)
LOSSES = Registry("loss", "partialseg.losses", LOSS_CONTRACT, _check_callable("loss"))
REGULARIZERS = Registry("regularizer", "partialseg.regularizers", REGULARIZER_CONTRACT,
                        _check_callable("regularizer"))
MASKERS = Registry("masker", "partialseg.maskers", MASKER_CONTRACT, _check_masker)
DATASETS = Registry("dataset", "partialseg.datasets", DATASET_CONTRACT, _check_dataset)

register_arch = ARCHS.register
register_loss = LOSSES.register
register_masker = MASKERS.register
register_regularizer = REGULARIZERS.register
register_dataset = DATASETS.register
list_archs = ARCHS.list
list_losses = LOSSES.list
list_maskers = MASKERS.list
list_regularizers = REGULARIZERS.list
list_datasets = DATASETS.list


def create_arch(name: str, num_classes: int, in_chans: int = 3, **kwargs: Any):
    return ARCHS.create(name, num_classes=num_classes, in_chans=in_chans, **kwargs)


def create_loss(name: str, **kwargs: Any):
    return LOSSES.create(name, **kwargs)


def create_masker(name: str, **kwargs: Any):
    return MASKERS.create(name, **kwargs)


def create_regularizer(name: str, **kwargs: Any):
    return REGULARIZERS.create(name, **kwargs)


def create_dataset(name: str, **kwargs: Any):
    return DATASETS.create(name, **kwargs)


# Importing the built-in entries registers them; they import the names above, so this comes last.
from registry import archs, datasets, losses, maskers, regularizers  # noqa: E402,F401,RUF100

__all__ = [
    "ARCHS", "DATASETS", "IMAGE_SCALES", "LOSSES", "MASKERS", "REGULARIZERS", "DuplicateNameError", "Registry",
    "UnknownNameError",
    "UserError",
    "create_arch", "create_dataset", "create_loss", "create_masker", "create_regularizer", "import_plugin_module",
    "list_archs", "list_datasets", "list_losses", "list_maskers", "list_regularizers",
    "register_arch", "register_dataset", "register_loss", "register_masker", "register_regularizer",
]
