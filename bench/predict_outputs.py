"""What ``bench predict`` writes for each scene, a band of rows at a time as :func:`bench.predict.blended_rows` hands
them over, and how nothing half-written is ever left under a final name.

Per scene ``STEM`` (the input's name without its suffix), in the output folder:

- ``STEM_classes.tif``: the class map, uint8, on the source's grid (its CRS and transform), internally tiled
  (256-pixel blocks) and Deflate-compressed, with a colour table in the leaderboard's colours and the class names in
  its metadata (``CLASS_NAMES``, JSON, and ``CLASS_<i>`` on the band); with ``cog``, a cloud-optimised GeoTIFF
  (512-pixel blocks, overviews by the most frequent class);
- ``STEM_confidence.tif`` (with ``confidence``): the winning class's probability, ``round(255 p)`` as uint8;
- ``STEM_quicklook.png``: the class map in the leaderboard's colours, at most ``QUICKLOOK_SIDE`` pixels a side;
- ``STEM_areas.csv``: per class, its pixels, its share of the scene and its hectares (from the transform, when the
  CRS's unit is a length), and a ``no data`` row when the source declares pixels without data;

and, when label rasters are given, ``scores.json`` and ``scores.csv`` for all the scenes (:func:`write_scores`).

Where the source holds no data (:attr:`bench.predict.Scene.masked`), the class map holds ``NO_CLASS`` and the
confidence ``NO_CONFIDENCE``, each its file's nodata value, the quicklook is transparent, and no score counts them.

Every file is written under a temporary name beside its final one (``.NAME.partial``) and renamed once the scene's
files are all whole; a failure, a Ctrl-C or a bad label value on the way removes them.
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from bench.predict import Predictor, Scene, blended_rows, intra_op_threads, layout_of
from bench.scene_scores import SceneConfusion, finite, scene_scores
from bench.show import class_colours
from bench.tables import Listing
from registry.datasets.rasters import pixel_area_m2
from registry.files import write_atomically

NAMES = {"classes": "{stem}_classes.tif", "confidence": "{stem}_confidence.tif", "quicklook": "{stem}_quicklook.png",
         "areas": "{stem}_areas.csv"}
SCORES_JSON, SCORES_CSV = "scores.json", "scores.csv"
BLOCK = 256  # the class map's internal tiles
COG_BLOCK = 512
QUICKLOOK_SIDE = 1024
NO_CLASS = 255  # the class map's nodata value: a class map has at most 255 classes
NO_CONFIDENCE = 0  # the confidence's: the winner of at most 255 classes has p >= 1/255, round(255 p) >= 1
NO_PAM = {"GDAL_PAM_ENABLED": "NO"}  # no .aux.xml sidecar: everything the map says is inside the TIFF


@dataclass(frozen=True)
class Options:
    overlap: int | None = None  # training pixels; None: a quarter of the tile
    tta: bool = False
    confidence: bool = False
    cog: bool = False


@dataclass
class SceneResult:
    scene: Scene
    class_names: tuple[str, ...]
    pixels: np.ndarray  # per class
    pixel_area_m2: float | None  # None: the CRS has no length unit (or the raster none)
    confusion: np.ndarray | None  # [C, C] over the whole scene, rows the truth; None without labels
    no_data: int | None = None  # the pixels without data; None: the source declares none
    files: list[Path] = field(default_factory=list)
    windows: int = 0
    seconds: float = 0.0

    @property
    def total_pixels(self) -> int:
        return int(self.pixels.sum()) + (self.no_data or 0)

    def area_rows(self) -> list[tuple[str, int, float, float | None]]:
        """``(class, pixels, share of the scene, hectares)`` per class, then ``no data`` when the source declares
        pixels without data."""
        counts = list(zip(self.class_names, self.pixels, strict=True))
        if self.no_data is not None:
            counts.append(("no data", self.no_data))
        total = self.total_pixels
        return [(name, int(count), count / total if total else math.nan,
                 None if self.pixel_area_m2 is None else count * self.pixel_area_m2 / 1e4) for name, count in counts]


def temporary(path: Path) -> Path:
    return path.with_name(f".{path.name}.partial")


def palette(class_names: tuple[str, ...]) -> np.ndarray:
    """RGBA ``[256, 4]`` (uint8) for every class-map value: the classes in the leaderboard's colours, opaque; the
    rest, ``NO_CLASS`` among them, transparent."""
    colours = np.zeros((256, 4), np.uint8)
    colours[:len(class_names), :3] = np.round(class_colours(class_names) * 255)
    colours[:len(class_names), 3] = 255
    return colours


def colour_table(class_names: tuple[str, ...], masked: bool) -> dict[int, tuple[int, int, int, int]]:
    colours = palette(class_names)
    return {value: tuple(map(int, colours[value]))
            for value in [*range(len(class_names)), *([NO_CLASS] if masked else [])]}


def profile(scene: Scene, nodata: int) -> dict:
    """A one-band uint8 GeoTIFF on the scene's grid, tiled and compressed; ``nodata`` its nodata value when the
    scene has pixels without data."""
    return {"driver": "GTiff", "height": scene.height, "width": scene.width, "count": 1, "dtype": "uint8",
            "crs": scene.crs, "transform": scene.transform, "tiled": True, "blockxsize": BLOCK, "blockysize": BLOCK,
            "compress": "deflate", "BIGTIFF": "IF_SAFER", "nodata": nodata if scene.masked else None}


class SceneWriter:
    """One scene's files, written under temporary names as the rows come (:meth:`write`), renamed at :meth:`commit`
    or removed at :meth:`discard`."""

    def __init__(self, scene: Scene, folder: Path, predictor: Predictor, options: Options):
        self.scene, self.options = scene, options
        self.names = predictor.class_names
        self.final = {kind: folder / name.format(stem=scene.stem) for kind, name in NAMES.items()
                      if kind != "confidence" or options.confidence}
        self.pixels = np.zeros(len(self.names), np.int64)
        self.no_data = 0
        self.confusion = SceneConfusion(scene, self.names) if scene.labels is not None else None
        self.step = max(1, math.ceil(max(scene.height, scene.width) / QUICKLOOK_SIDE))
        self.quicklook: list[np.ndarray] = []
        self.files: dict[str, object] = {}
        self.tags = {"CLASS_NAMES": json.dumps(list(self.names)), "MODEL": predictor.label,
                     "SOFTWARE": "partialseg-bench (bench predict)"}

    def open(self) -> None:
        import rasterio

        with rasterio.Env(**NO_PAM):
            for kind, nodata in (("classes", NO_CLASS), ("confidence", NO_CONFIDENCE)):
                if kind in self.final:
                    target = rasterio.open(temporary(self.final[kind]), "w", **profile(self.scene, nodata))
                    self.files[kind] = target
                    self._describe(target, kind)
        if self.confusion is not None:
            self.confusion.open()

    def _describe(self, target, kind: str) -> None:
        if kind == "classes":
            target.write_colormap(1, colour_table(self.names, self.scene.masked))
            target.update_tags(**self.tags)
            target.update_tags(1, **{f"CLASS_{index}": name for index, name in enumerate(self.names)})
            target.set_band_description(1, "class")
        else:
            target.update_tags(**self.tags, SCALE="probability of the winning class x 255")
            target.set_band_description(1, "confidence")

    def write(self, row: int, probs: torch.Tensor, valid: np.ndarray | None = None) -> None:
        """Rows ``row ..`` of the scene: their probabilities ``[C, rows, width]`` and which of their pixels hold
        data (``[rows, width]``; None: all)."""
        from rasterio.windows import Window

        confidence, classes = probs.max(dim=0)
        classes = classes.to(torch.uint8).cpu().numpy()
        if valid is not None:
            classes[~valid] = NO_CLASS
        window = Window(0, row, self.scene.width, classes.shape[0])
        self.files["classes"].write(classes, 1, window=window)
        if "confidence" in self.files:
            scaled = torch.round(confidence * 255).clamp_(0, 255).to(torch.uint8).cpu().numpy()
            if valid is not None:
                scaled[~valid] = NO_CONFIDENCE
            self.files["confidence"].write(scaled, 1, window=window)
        counts = np.bincount(classes.ravel(), minlength=NO_CLASS + 1)
        self.pixels += counts[:len(self.names)]
        self.no_data += int(counts[NO_CLASS])
        first = -row % self.step  # the first of these rows that the quicklook keeps
        self.quicklook.append(classes[first::self.step, ::self.step])
        if self.confusion is not None:
            self.confusion.add(row, classes, valid)

    def commit(self, result: SceneResult) -> list[Path]:
        """Close the rasters, write the quicklook and the area table, and give every file its final name."""
        self._close()
        if self.options.cog:
            for kind in self.files:
                self._to_cog(temporary(self.final[kind]), kind)
        self._write_quicklook(temporary(self.final["quicklook"]))
        write_atomically(temporary(self.final["areas"]), area_csv(result))
        for path in self.final.values():
            os.replace(temporary(path), path)
        return list(self.final.values())

    def discard(self) -> None:
        self._close()
        for path in self.final.values():
            for leftover in (temporary(path), temporary(temporary(path))):
                leftover.unlink(missing_ok=True)

    def _close(self) -> None:
        for target in self.files.values():
            if not target.closed:
                target.close()
        if self.confusion is not None:
            self.confusion.close()

    def _to_cog(self, path: Path, kind: str) -> None:
        """The tiled GeoTIFF at ``path`` rewritten as a cloud-optimised one, in its place."""
        import rasterio
        import rasterio.shutil

        staging = temporary(path)
        with rasterio.Env(**NO_PAM):
            rasterio.shutil.copy(path, staging, driver="COG", compress="DEFLATE", blocksize=COG_BLOCK,
                                 overview_resampling="MODE" if kind == "classes" else "AVERAGE")
        os.replace(staging, path)

    def _write_quicklook(self, path: Path) -> None:
        from PIL import Image

        classes = np.concatenate(self.quicklook) if self.quicklook else np.zeros((1, 1), np.uint8)
        colours = palette(self.names)[classes]
        if not self.scene.masked:
            colours = np.ascontiguousarray(colours[..., :3])  # no pixel is transparent: RGB
        buffer = io.BytesIO()
        Image.fromarray(colours).save(buffer, format="PNG")
        write_atomically(path, buffer.getvalue())


def area_csv(result: SceneResult) -> str:
    text = io.StringIO()
    out = csv.writer(text, lineterminator="\n")
    out.writerow(("class", "pixels", "share", "hectares"))
    for name, count, share, hectares in result.area_rows():
        out.writerow((name, count, f"{share:.6f}", "" if hectares is None else f"{hectares:.6f}"))
    return text.getvalue()


def predict_scene(predictor: Predictor, scene: Scene, folder: Path, options: Options,
                  done: Callable[[int], None] | None = None) -> SceneResult:
    """Predict ``scene`` and write its files into ``folder``; the result says what was written."""
    started = time.perf_counter()
    layout = layout_of(scene, predictor, options.overlap)
    writer = SceneWriter(scene, folder, predictor, options)
    try:
        writer.open()
        with torch.inference_mode(), intra_op_threads(1):
            for row, probs, valid in blended_rows(predictor, scene, layout, options.tta, done):
                writer.write(row, probs, valid)
        confusion = None if writer.confusion is None else writer.confusion.matrix
        result = SceneResult(scene, predictor.class_names, writer.pixels, pixel_area_m2(scene.crs, scene.transform),
                             confusion, writer.no_data if scene.masked else None, windows=len(layout))
        result.files = writer.commit(result)
    except BaseException:
        writer.discard()
        raise
    result.seconds = time.perf_counter() - started
    return result


def all_scores(results: list[SceneResult], predictor: Predictor) -> dict:
    """Each scene's scores and those of all the scenes together (one confusion matrix), beside the cell's
    tile-level figures."""
    scored = [r for r in results if r.confusion is not None]
    total = sum(r.confusion for r in scored)
    tile_level = {key: [finite(v) for v in value] if isinstance(value, list) else
                  finite(value) if isinstance(value, float) else value for key, value in predictor.figures.items()}
    return {"model": predictor.label, "tile_level": tile_level,
            "scenes": {str(r.scene.path): scene_scores(r.confusion, predictor.class_names) for r in scored},
            "all": scene_scores(total, predictor.class_names)}


def write_scores(figures: dict, folder: Path, class_names: tuple[str, ...]) -> list[Path]:
    """``scores.json`` (everything) and ``scores.csv`` (a row per scene, then ``all``) in ``folder``."""
    text = io.StringIO()
    out = csv.writer(text, lineterminator="\n")
    out.writerow(("scene", "miou", "accuracy", "pixels", *(f"iou_{name}" for name in class_names)))
    for scene, item in [*figures["scenes"].items(), ("all", figures["all"])]:
        out.writerow((scene, _number(item["miou"]), _number(item["accuracy"]), item["pixels"],
                      *(_number(item["iou"][name]) for name in class_names)))
    paths = [folder / SCORES_JSON, folder / SCORES_CSV]
    write_atomically(paths[0], json.dumps(figures, indent=2) + "\n")
    write_atomically(paths[1], text.getvalue())
    return paths


def _number(value: float | None) -> str:
    return "" if value is None else f"{value:.6f}"


def predict_scenes(predictor: Predictor, scenes: list[Scene], folder: Path, options: Options,
                   console) -> list[SceneResult]:
    """Every scene predicted into ``folder`` under one progress bar over all their windows; says what each wrote."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    total = sum(len(layout_of(scene, predictor, options.overlap)) for scene in scenes)
    bar = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TextColumn("windows"),
                   TimeRemainingColumn(), console=console, transient=True)
    task = bar.add_task("predicting", total=total)
    results = []
    with bar:
        for scene in scenes:
            bar.update(task, description=scene.stem)
            results.append(predict_scene(predictor, scene, folder, options, lambda n: bar.advance(task, n)))
            result = results[-1]
            bar.console.print(f"{scene.path}: {result.windows} windows in {result.seconds:.1f} s -> "
                              f"{', '.join(path.name for path in result.files)}", highlight=False, soft_wrap=True)
    return results


def area_listing(result: SceneResult) -> Listing:
    """A scene's area table, for the terminal, with its total."""
    listing = Listing(f"{result.scene.stem}: {result.scene.height} x {result.scene.width} pixels",
                      ("class", "pixels", "share", "hectares"), right=frozenset({"pixels", "share", "hectares"}))
    rows = result.area_rows()
    total_hectares = None if result.pixel_area_m2 is None else sum(row[3] for row in rows)
    for name, count, share, hectares in [*rows, ("total", result.total_pixels, 1.0, total_hectares)]:
        area = "" if hectares is None else f"{hectares:,.2f}"
        listing.rows.append((name, f"{count:,}", f"{100 * share:.2f} %", area))
    return listing


def scores_listing(figures: dict, predictor: Predictor) -> Listing:
    """The scene-level scores, a column per scene and one for all, beside the cell's tile-level ones."""
    scenes = list(figures["scenes"].items()) + [("all scenes", figures["all"])]
    tile_level = "best_miou" in predictor.figures
    columns = ("figure", *(Path(name).stem if name != "all scenes" else name for name, _ in scenes),
               *(("tiles (val)",) if tile_level else ()))
    listing = Listing("scene-level scores (whole scenes, edges included)", columns, right=frozenset(columns[1:]))

    def row(label: str, values: list[float | None], tiles: float | None) -> tuple[str, ...]:
        shown = ["" if v is None else f"{v:.4f}" for v in values]
        return (label, *shown, *(("" if tiles is None else f"{tiles:.4f}",) if tile_level else ()))

    listing.rows.append(row("mIoU", [item["miou"] for _, item in scenes], predictor.figures.get("best_miou")))
    listing.rows.append(row("accuracy", [item["accuracy"] for _, item in scenes], None))
    tile_ious = predictor.figures.get("best_iou") or [None] * predictor.num_classes
    for index, name in enumerate(predictor.class_names):
        tiles = tile_ious[index]
        listing.rows.append(row(f"IoU {name}", [item["iou"][name] for _, item in scenes],
                                None if tiles is None or math.isnan(tiles) else tiles))
    return listing
