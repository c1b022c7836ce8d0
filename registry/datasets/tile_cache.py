"""A resumable on-disk cache of square tiles: for each split, ``{split}-images.npy`` (``[N, S, S, C]``) and
``{split}-masks.npy`` (``[N, S, S]``), opened as memory maps, so training reads only the pages it touches. The plan
says the arrays' dtypes: uint8 for both by default (LandCover.ai's); images may be uint8, uint16 or float32 and masks
uint8, int8 or int16 (where ``-1`` marks a pixel that is not annotated), any number of channels.

A dataset fills the cache in **units** (an orthophoto, a batch of tile files), each named by a key and fingerprinted by
its source files. Tiles are written in place with ``pwrite`` (not through a memory map, so the writer's memory stays
one unit's worth however large the cache), by direct I/O where the file system and the tile size allow it
(:class:`_TileFile`). After each unit the data are synced and the unit is recorded in
``progress.json``; ``manifest.json``, written last and atomically, is what marks the cache complete. So an interrupted
or failed preparation leaves no cache that claims to be complete, and the next run redoes only the units that are
missing or whose source files changed since.

The manifest records each array file's size, modification time and SHA-256. Opening a cache checks the sizes (a file
cut short), and the SHA-256 of any file modified since it was written (or of every file, with ``verify``): a damaged
cache is reported, its damaged files are removed, and it is prepared again.
"""

from __future__ import annotations

import errno
import hashlib
import json
import mmap
import os
import time
import warnings
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Self

import cv2
import numpy as np

from registry.errors import UserError
from registry.files import start_writeback, write_atomically
from registry.locks import folder_lock

FORMAT = 2  # bump when the files' layout changes: an older cache is then rebuilt, never misread
MANIFEST, PROGRESS = "manifest.json", "progress.json"
SPLITS = ("train", "val", "test")  # the contract's splits, in the order caches list them
IMAGE_DTYPES = ("uint8", "uint16", "float32")
MASK_DTYPES = ("uint8", "int8", "int16")
IOV_MAX = os.sysconf("SC_IOV_MAX")  # the most buffers one pwritev takes
# Direct I/O (O_DIRECT) needs offsets, lengths and buffers aligned to the device's logical block (512 or 4096 bytes).
DIRECT_ALIGN = 4096
O_DIRECT = getattr(os, "O_DIRECT", 0)  # 0: the system has none (not Linux)


@dataclass(frozen=True)
class CachePlan:
    """What a cache holds: the tile ids of each split in order, the tile side and channels, the arrays' dtypes, and a
    description of the source (layout, size, split files...). Two plans with the same key describe the same cache."""

    ids: dict[str, list[str]]
    tile_size: int
    in_chans: int
    source: dict[str, Any]
    image_dtype: str = "uint8"
    mask_dtype: str = "uint8"

    def __post_init__(self) -> None:
        if self.image_dtype not in IMAGE_DTYPES or self.mask_dtype not in MASK_DTYPES:
            raise ValueError(f"cache dtypes: images {self.image_dtype!r} (one of {', '.join(IMAGE_DTYPES)}), "
                             f"masks {self.mask_dtype!r} (one of {', '.join(MASK_DTYPES)})")

    @property
    def key(self) -> str:
        described = {"format": FORMAT, "ids": self.ids, "tile_size": self.tile_size, "in_chans": self.in_chans,
                     "source": self.source}
        if (self.image_dtype, self.mask_dtype) != ("uint8", "uint8"):  # so that uint8 caches keep their keys
            described["dtypes"] = [self.image_dtype, self.mask_dtype]
        return hashlib.sha256(json.dumps(described, sort_keys=True).encode()).hexdigest()

    def shape(self, split: str, kind: str) -> tuple[int, ...]:
        side = (len(self.ids[split]), self.tile_size, self.tile_size)
        return (*side, self.in_chans) if kind == "images" else side

    def dtype(self, kind: str) -> np.dtype:
        return np.dtype(self.image_dtype if kind == "images" else self.mask_dtype)


def default_cache_root() -> Path:
    """``$PARTIALSEG_CACHE``, else ``$XDG_CACHE_HOME/partialseg-bench``, else ``~/.cache/partialseg-bench``."""
    if os.environ.get("PARTIALSEG_CACHE"):
        return Path(os.environ["PARTIALSEG_CACHE"]).expanduser()
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "partialseg-bench"


def cache_parent(cache_dir: str | Path | None) -> Path:
    """Where caches go: ``cache_dir`` when given, else :func:`default_cache_root`."""
    return Path(cache_dir).expanduser() if cache_dir is not None else default_cache_root()


def cache_folder_for(cache_dir: str | Path | None, stem: str, root: Path, identity: dict[str, Any]) -> Path:
    """The folder of the cache of the data at ``root`` read with options ``identity``: ``{stem}-{digest}``."""
    described = json.dumps([str(root.resolve()), identity], sort_keys=True)
    return cache_parent(cache_dir) / f"{stem}-{hashlib.sha256(described.encode()).hexdigest()[:12]}"


def file_fingerprint(*paths: Path) -> str:
    """Size and modification time of each file: cheap, and changes whenever a file is replaced or edited."""
    parts = []
    for path in paths:
        stat = path.stat()
        parts.append(f"{path.name}:{stat.st_size}:{stat.st_mtime_ns}")
    return hashlib.sha256("|".join(parts).encode()).hexdigest()[:16]


def _write_json(path: Path, data: Any) -> None:
    write_atomically(path, json.dumps(data))


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def _array_path(folder: Path, split: str, kind: str) -> Path:
    return folder / f"{split}-{kind}.npy"


def _sha256(path: Path) -> str:
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def _record(path: Path, sha256: str | None = None) -> dict[str, Any]:
    """What the manifest keeps of an array file to know it again: size, modification time, SHA-256 (``sha256``, when
    known already, else read from the file)."""
    stat = path.stat()
    return {"bytes": stat.st_size, "mtime_ns": stat.st_mtime_ns, "sha256": sha256 or _sha256(path)}


def _create_array(path: Path, dtype: np.dtype, shape: tuple[int, ...]) -> None:
    """An .npy file (format 1.0) for an array of ``shape`` and ``dtype``, sized without writing its data (sparse),
    with its header padded so that the data start at ``DIRECT_ALIGN`` bytes (``np.load`` reads any header length):
    what lets its tiles be written by direct I/O."""
    header = repr({"descr": np.lib.format.dtype_to_descr(np.dtype(dtype)), "fortran_order": False,
                   "shape": tuple(shape)}).encode("latin1")
    prefix = np.lib.format.magic(1, 0)
    length = DIRECT_ALIGN - len(prefix) - 2  # the header's length is a little-endian uint16
    with open(path, "wb") as f:
        f.write(prefix + length.to_bytes(2, "little") + header.ljust(length - 1) + b"\n")
        f.truncate(DIRECT_ALIGN + int(np.prod(shape)) * np.dtype(dtype).itemsize)


class _TileFile:
    """An array file of the cache open for writing its tiles at ``offset + index * tile bytes``.

    By direct I/O when the file system takes it and the data offset and the tile's bytes are multiples of
    ``DIRECT_ALIGN`` (a tile is copied into a page-aligned buffer, then written from there to the disk): the bytes go
    past the page cache, which on a machine that hands its free memory back to its host costs more than the disk
    (docs/datasets.md, "How it reads"). Otherwise, or when the first direct write is refused, through the page cache:
    the tile's rows written with ``pwritev`` (no copy) and their writeback started at once, so that the unit's fsync
    finds them written."""

    def __init__(self, path: Path, offset: int, tile_bytes: int):
        self.path, self.offset, self.tile_bytes = path, offset, tile_bytes
        self.fd = os.open(path, os.O_RDWR)
        self.direct_fd: int | None = None
        if O_DIRECT and offset % DIRECT_ALIGN == 0 and tile_bytes % DIRECT_ALIGN == 0:
            try:
                self.direct_fd = os.open(path, os.O_WRONLY | O_DIRECT)
            except OSError:  # a file system without direct I/O (tmpfs, some network ones)
                pass
            else:
                self._staging = mmap.mmap(-1, tile_bytes)  # anonymous, so page-aligned

    @property
    def direct(self) -> bool:
        return self.direct_fd is not None

    def write(self, index: int, tile: np.ndarray) -> None:
        start = self.offset + index * self.tile_bytes
        if self.direct_fd is not None:
            np.copyto(np.frombuffer(self._staging, tile.dtype).reshape(tile.shape), tile)
            try:
                written = os.pwrite(self.direct_fd, self._staging, start)
            except OSError as err:
                if err.errno != errno.EINVAL:
                    raise
                self._stop_direct()  # alignment the device does not take after all: the page cache it is
            else:
                if written != self.tile_bytes:
                    raise OSError(f"{self.path}: short write ({written} bytes)")
                return
        parts = _contiguous_parts(tile)
        for group in range(0, len(parts), IOV_MAX):
            chunk = parts[group:group + IOV_MAX]
            written = os.pwritev(self.fd, chunk, start)
            if written != sum(part.nbytes for part in chunk):
                raise OSError(f"{self.path}: short write ({written} bytes)")
            start += written
        start_writeback(self.fd, self.offset + index * self.tile_bytes, self.tile_bytes)

    def sync(self) -> None:
        os.fsync(self.fd)  # the file's, whichever descriptor wrote it

    def size(self) -> int:
        return os.fstat(self.fd).st_size

    def close(self) -> None:
        self._stop_direct()
        os.close(self.fd)

    def _stop_direct(self) -> None:
        if self.direct_fd is not None:
            os.close(self.direct_fd)
            self.direct_fd = None
            self._staging.close()


def _contiguous_parts(tile: np.ndarray) -> list[np.ndarray]:
    """``tile``'s bytes in order, as contiguous arrays without copying them: the tile itself, or, for a tile cut out
    of a wider window, its rows (written with one ``pwritev``, which is faster than copying the tile first)."""
    if tile.flags.c_contiguous:
        return [tile]
    if tile.ndim > 1 and tile[0].flags.c_contiguous:
        return list(tile)
    return [np.ascontiguousarray(tile)]


class _RunningDigest:
    """The SHA-256 of an array file taken from the bytes written to it, on a thread of its own (hashlib releases the
    GIL), so that the manifest need not read the file again: valid only while the file is written from its start in
    order, as a preparation from nothing writes it; any other write (a resumed preparation, a tile rewritten) gives
    it up, and the file is read instead."""

    PENDING = 16  # writes handed to the thread and not yet hashed, at most (each keeps its tile alive)

    def __init__(self, path: Path, offset: int, hashing: ThreadPoolExecutor):
        with open(path, "rb") as f:
            header = f.read(offset)
        self._hash, self._hashing = hashlib.sha256(header), hashing
        self._pending: deque[Future] = deque()
        self.position: int | None = offset  # where the next write must start; None once given up

    def wrote(self, offset: int, tile: np.ndarray) -> None:
        """``tile``'s bytes were written at ``offset``."""
        if self.position != offset:
            self.position = None
            return
        if len(self._pending) >= self.PENDING:
            self._pending.popleft().result()
        # One update of the whole tile (copied into one buffer first when it is a view of a window): hashlib lets go
        # of the GIL only for an update of 2 kB or more, and each update of a row would take it back.
        self._pending.append(self._hashing.submit(lambda: self._hash.update(np.ascontiguousarray(tile))))
        self.position += tile.nbytes

    def hexdigest(self, size: int) -> str | None:
        """The digest of a file of ``size`` bytes, or None when the writes did not cover it in order."""
        while self._pending:
            self._pending.popleft().result()
        return self._hash.hexdigest() if self.position == size else None


def _array_problem(path: Path, recorded: dict[str, Any], verify: bool) -> str | None:
    """How the array file at ``path`` differs from its manifest record, or None when it does not."""
    try:
        stat = path.stat()
    except FileNotFoundError:
        return f"{path.name} is missing"
    if stat.st_size != recorded["bytes"]:
        return f"{path.name} has {stat.st_size} bytes, {recorded['bytes']} were written"
    if (verify or stat.st_mtime_ns != recorded["mtime_ns"]) and _sha256(path) != recorded["sha256"]:
        return f"{path.name} has changed since it was written (its SHA-256 differs)"
    return None


class TileCacheWriter:
    """Fills the cache in ``folder`` for ``plan``; use as a context manager. See the module docstring."""

    def __init__(self, folder: Path, plan: CachePlan):
        self.folder = Path(folder)
        self.plan = plan
        self._files: dict[tuple[str, str], _TileFile] = {}  # by (split, kind)
        self._digests: dict[tuple[str, str], _RunningDigest] = {}  # of the files started afresh
        self._hashing = ThreadPoolExecutor(max_workers=1, thread_name_prefix="tile-cache-sha256")
        # Another process preparing the same cache (two cells starting on one machine) is waited for: it may
        # complete the cache, which the caller then only opens (see TileCacheWriter.__enter__'s users).
        self._lock = folder_lock(self.folder, f"{self.folder}: another process is preparing this cache; waiting for it",
                                 wait=True)

    def __enter__(self) -> Self:
        self._lock.__enter__()
        progress = _read_json(self.folder / PROGRESS)
        fresh = not (isinstance(progress, dict) and progress.get("plan") == self.plan.key and self._arrays_exist())
        if fresh:
            self._start_over()
            progress = {"plan": self.plan.key, "units": {}}
        self.units: dict[str, dict[str, Any]] = progress["units"]
        for split in self.plan.ids:
            for kind in ("images", "masks"):
                self._files[split, kind] = self._open(split, kind)
                if fresh:
                    self._digests[split, kind] = _RunningDigest(_array_path(self.folder, split, kind),
                                                                self._files[split, kind].offset, self._hashing)
        return self

    def __exit__(self, *exc: object) -> None:
        self._hashing.shutdown(cancel_futures=True)
        for file in self._files.values():
            file.close()
        self._files.clear()
        self._lock.__exit__(*exc)

    def _array_paths(self) -> list[Path]:
        return [_array_path(self.folder, s, k) for s in self.plan.ids for k in ("images", "masks")]

    def _arrays_exist(self) -> bool:
        return all(path.exists() for path in self._array_paths())

    def _start_over(self) -> None:
        for path in (self.folder / MANIFEST, self.folder / PROGRESS, *self.folder.glob("*.npy")):
            path.unlink(missing_ok=True)
        for split in self.plan.ids:
            for kind in ("images", "masks"):
                _create_array(_array_path(self.folder, split, kind), self.plan.dtype(kind),
                              self.plan.shape(split, kind))

    def _open(self, split: str, kind: str) -> _TileFile:
        path = _array_path(self.folder, split, kind)
        with open(path, "rb") as f:
            version = np.lib.format.read_magic(f)
            read_header = (np.lib.format.read_array_header_1_0 if version == (1, 0)
                           else np.lib.format.read_array_header_2_0)
            shape, _, dtype = read_header(f)
            offset = f.tell()
        if shape != self.plan.shape(split, kind) or dtype != self.plan.dtype(kind):
            raise UserError(f"{path}: unexpected array {shape} {dtype} in the cache; delete {self.folder} and retry")
        return _TileFile(path, offset, int(np.prod(shape[1:])) * dtype.itemsize)

    def needs(self, key: str, fingerprint: str) -> bool:
        """Whether unit ``key`` must be (re)written: never finished, or its source files changed since."""
        return self.units.get(key, {}).get("fingerprint") != fingerprint

    def invalidate(self) -> None:
        """Withdraw the completeness mark before any tile is rewritten."""
        (self.folder / MANIFEST).unlink(missing_ok=True)

    def write(self, split: str, index: int, image: np.ndarray, mask: np.ndarray) -> None:
        for kind, tile in (("images", image), ("masks", mask)):
            file = self._files[split, kind]
            expected, dtype = self.plan.shape(split, kind)[1:], self.plan.dtype(kind)
            if tile.shape != expected or tile.dtype != dtype:
                raise ValueError(f"tile {split}[{index}] {kind}: got {tile.shape} {tile.dtype}, "
                                 f"expected {expected} {dtype}")
            file.write(index, tile)
            if (split, kind) in self._digests:
                self._digests[split, kind].wrote(file.offset + index * tile.nbytes, tile)

    def unit_done(self, key: str, fingerprint: str, tiles: int, payload: dict[str, Any]) -> None:
        """Record unit ``key`` as written (after syncing its tiles to disk), with a payload kept for :meth:`finish`."""
        for file in self._files.values():
            file.sync()
        self.units[key] = {"fingerprint": fingerprint, "tiles": tiles, "payload": payload}
        _write_json(self.folder / PROGRESS, {"plan": self.plan.key, "units": self.units})

    def finish(self, unit_keys: list[str], extra: dict[str, Any]) -> TileCache:
        """Mark the cache complete, once every unit in ``unit_keys`` is recorded and they cover every tile."""
        missing = [key for key in unit_keys if key not in self.units]
        written = sum(self.units[key]["tiles"] for key in unit_keys if key in self.units)
        expected = sum(len(ids) for ids in self.plan.ids.values())
        if missing or written != expected:
            raise RuntimeError(f"cache {self.folder} incomplete: {len(missing)} units missing, "
                               f"{written} of {expected} tiles written")
        stale = set(self.units) - set(unit_keys)
        for key in stale:  # units of an earlier source layout that no longer exist
            del self.units[key]
        if stale:
            _write_json(self.folder / PROGRESS, {"plan": self.plan.key, "units": self.units})
        for file in self._files.values():
            file.sync()
        arrays = {}
        for (split, kind), file in self._files.items():
            digest = self._digests.get((split, kind))
            arrays[file.path.name] = _record(file.path, digest and digest.hexdigest(file.size()))
        manifest = {"format": FORMAT, "plan": self.plan.key, "ids": self.plan.ids, "tile_size": self.plan.tile_size,
                    "in_chans": self.plan.in_chans, "image_dtype": self.plan.image_dtype,
                    "mask_dtype": self.plan.mask_dtype, "source": self.plan.source,
                    "fingerprints": {key: self.units[key]["fingerprint"] for key in unit_keys}, "arrays": arrays,
                    "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"), **extra}
        _write_json(self.folder / MANIFEST, manifest)
        return TileCache(self.folder, manifest)


class TileCache:
    """A complete cache: its manifest, and its splits as read-only memory maps."""

    def __init__(self, folder: Path, manifest: dict[str, Any]):
        self.folder = folder
        self.manifest = manifest

    @classmethod
    def open_complete(cls, folder: Path, plan: CachePlan, fingerprints: dict[str, str],
                      verify: bool = False) -> TileCache | None:
        """The cache in ``folder`` if it is complete, for ``plan``, built from sources with these fingerprints, and
        whole (see the module docstring; ``verify`` checks every file's SHA-256); otherwise None (it must be
        prepared). A damaged cache is said in a warning and its damaged files removed, so that preparing it again
        starts from what is left."""
        folder = Path(folder)
        manifest = _read_json(folder / MANIFEST)
        if not (isinstance(manifest, dict) and manifest.get("plan") == plan.key
                and manifest.get("fingerprints") == fingerprints and isinstance(manifest.get("arrays"), dict)):
            return None
        damaged = {name: problem for name, recorded in manifest["arrays"].items()
                   if (problem := _array_problem(folder / name, recorded, verify)) is not None}
        if damaged:
            warnings.warn(f"the cache in {folder} is damaged ({'; '.join(damaged.values())}): preparing it again",
                          stacklevel=2)
            (folder / MANIFEST).unlink(missing_ok=True)
            for name in damaged:
                (folder / name).unlink(missing_ok=True)
            return None
        return cls(folder, manifest)

    @property
    def ids(self) -> dict[str, list[str]]:
        return self.manifest["ids"]

    def split(self, name: str) -> tuple[np.ndarray, np.ndarray]:
        return (np.load(_array_path(self.folder, name, "images"), mmap_mode="r"),
                np.load(_array_path(self.folder, name, "masks"), mmap_mode="r"))

    def nbytes(self) -> int:
        return sum(_array_path(self.folder, s, k).stat().st_size for s in self.ids for k in ("images", "masks"))


class CachedTiles:
    """A dataset served from a complete cache whose manifest names its classes (``class_names``), normalisation
    (``mean``, ``std``) and count of unannotated pixels (``unannotated``): the DATASET_CONTRACT's attributes (with
    ``scale`` and ``bands`` from the plan's source: its ``tile_size`` in source pixels and the raster bands read),
    and its splits as read-only memory maps."""

    def __init__(self, name: str, cache: TileCache):
        manifest = cache.manifest
        self.name = name
        self.cache = cache
        self.class_names = tuple(manifest["class_names"])
        self.num_classes = len(self.class_names)
        self.in_chans = manifest["in_chans"]
        self.mean, self.std = tuple(manifest["mean"]), tuple(manifest["std"])
        self.splits = tuple(s for s in SPLITS if s in manifest["ids"])
        # what `bench predict` reads scenes with: tiles stored at this share of their source side, from these bands
        self.scale = manifest["tile_size"] / (manifest["source"].get("tile_size") or manifest["tile_size"])
        self.bands = manifest["source"].get("bands")
        # int8 masks in which no pixel is unannotated are served as uint8: the same bytes, the same values.
        self._as_uint8 = manifest["mask_dtype"] == "int8" and manifest["unannotated"] == 0

    def split(self, name: str) -> tuple[np.ndarray, np.ndarray]:
        if name not in self.splits:
            raise UserError(f"{self.name}: unknown split {name!r}; splits: {', '.join(self.splits)}")
        images, masks = self.cache.split(name)
        return images, masks.view(np.uint8) if self._as_uint8 else masks

    def __repr__(self) -> str:
        counts = ", ".join(f"{split}={count}" for split, count in self.cache.manifest["counts"].items())
        return f"{type(self).__name__}({self.name}, {self.cache.folder}, size={self.cache.manifest['tile_size']}, " \
               f"{counts})"


# -- resizing tiles ------------------------------------------------------------------------------------------------


def centre_indices(source: int, size: int) -> np.ndarray:
    """For each of ``size`` output pixels along a side of ``source`` pixels, the source pixel under its centre: what
    a mask resized to ``size`` takes (no class is blended, no half-pixel shift)."""
    return np.floor((np.arange(size) + 0.5) * (source / size)).astype(np.intp)


def resize_area(image: np.ndarray, size: int) -> np.ndarray:
    """An ``[H, W, C]`` tile (uint8, uint16 or float32, any number of channels) at ``size`` x ``size``, filtered by
    area (OpenCV's INTER_AREA, four channels at a time: OpenCV takes at most four)."""
    if image.shape[:2] == (size, size):
        return image
    parts = [cv2.resize(image[..., start:start + 4], (size, size), interpolation=cv2.INTER_AREA)
             for start in range(0, image.shape[-1], 4)]
    parts = [part[..., None] if part.ndim == 2 else part for part in parts]  # OpenCV drops a single channel's axis
    return parts[0] if len(parts) == 1 else np.concatenate(parts, axis=-1)


def resize_mask(mask: np.ndarray, size: int) -> np.ndarray:
    """An ``[H, W]`` mask at ``size`` x ``size``: each pixel takes the class under its centre (see
    :func:`centre_indices`); ``-1`` stays ``-1``."""
    if mask.shape == (size, size):
        return mask
    return mask[np.ix_(centre_indices(mask.shape[0], size), centre_indices(mask.shape[1], size))]


def whole_tile(image: np.ndarray, mask: np.ndarray, tile: int, size: int) -> tuple[np.ndarray, np.ndarray]:
    """A tile cut at an edge of its source (``image`` ``[h, w, C]`` and ``mask`` ``[h, w]``, ``h`` and ``w`` up to
    ``tile``) made whole: padded to ``tile`` pixels square (image 0, mask ``-1``: not annotated), then resized to
    ``size`` (:func:`resize_area`, :func:`resize_mask`). A whole tile at its stored size comes back as it is."""
    height, width = mask.shape
    if (height, width) != (tile, tile):
        padded_image = np.zeros((tile, tile, image.shape[-1]), image.dtype)
        padded_image[:height, :width] = image
        padded_mask = np.full((tile, tile), -1, mask.dtype)
        padded_mask[:height, :width] = mask
        image, mask = padded_image, padded_mask
    if size != tile:
        image, mask = resize_area(np.ascontiguousarray(image), size), resize_mask(mask, size)
    return image, mask


def open_or_prepare(folder: Path, plan: CachePlan, fingerprints: dict[str, str], verify: bool,
                    write: Callable[[TileCacheWriter, set[str]], TileCache]) -> TileCache:
    """The complete cache in ``folder`` (:meth:`TileCache.open_complete`); else, holding its writer's lock,
    ``write(writer, keys)``, which writes the units of ``keys`` (those not yet whole, or whose sources changed) and
    returns ``writer.finish(...)``. A process that waited for another to prepare the cache opens what it finished."""
    cache = TileCache.open_complete(folder, plan, fingerprints, verify)
    if cache is not None:
        return cache
    with TileCacheWriter(folder, plan) as writer:  # waits while another process prepares this cache...
        cache = TileCache.open_complete(folder, plan, fingerprints)  # ...which it may have completed
        if cache is not None:
            return cache
        todo = {key for key, fingerprint in fingerprints.items() if writer.needs(key, fingerprint)}
        writer.invalidate()
        return write(writer, todo)
