"""The built-in dataset ``synthetic``: procedural aerial scenes that stand in for LandCover.ai.

LandCover.ai (25-50 cm orthophotos of Poland: background, building, woodland, water, road) cannot be downloaded on the
benchmark machines, so the default grids run on this generator. It aims to be a fair stand-in rather than a pretty
one. Class shares average near the real ones (background ~58 %, woodland ~33 %, water ~6 %, road ~1.6 %, building
~0.9 %) and vary from tile to tile. Colours overlap between classes on purpose (green crops and woodland, grey roofs
and roads, shadows and water, bare soil and roofs) under per-tile illumination, tint and sensor noise, so a per-pixel
colour classifier does poorly and a model must use texture and shape: woodland has a blobby crown texture, fields are
a patchwork of parcels with furrows in their own direction, water is smooth, roads are thin connected curves, and
buildings are small rotated rectangles with a ridge and a shadow, mostly beside roads.

Shapes are laid out in fractions of the tile and textures in pixels, so 64- and 128-pixel tiles both show several
classes. Every tile comes from its own ``numpy.random.Generator`` seeded with ``(seed, stream, index)``; each split
has its own stream, so no tile repeats across splits.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from registry import register_dataset
from registry.errors import UserError

CLASS_NAMES = ("background", "building", "woodland", "water", "road")
BACKGROUND, BUILDING, WOODLAND, WATER, ROAD = range(len(CLASS_NAMES))
SPLITS = ("train", "val", "test")  # a split's position is its stream in generate_tile
MIN_TILE_SIZE = 32
# Per-channel mean and std of the images in 0..1 units, measured once over 2,000 tiles of 128 pixels;
# tests/test_synthetic.py checks them against a fresh sample, so change them together with the generator.
MEAN = (0.343, 0.387, 0.272)
STD = (0.194, 0.178, 0.139)

# Background parcels: (probability, RGB, furrow amplitude range). Dark crops overlap woodland, soils overlap roofs
# and dirt roads, which is what makes colour alone a poor guide.
_PARCEL_KINDS = (
    (0.28, (0.40, 0.47, 0.28), (0.00, 0.03)),  # meadow
    (0.22, (0.33, 0.43, 0.22), (0.04, 0.10)),  # green crop
    (0.10, (0.22, 0.31, 0.17), (0.03, 0.08)),  # dark crop (maize, rapeseed)
    (0.15, (0.63, 0.58, 0.40), (0.03, 0.08)),  # ripe cereal
    (0.14, (0.47, 0.40, 0.32), (0.08, 0.18)),  # ploughed soil
    (0.11, (0.62, 0.59, 0.53), (0.02, 0.06)),  # dry, light soil
)
_PARCEL_P = np.array([kind[0] for kind in _PARCEL_KINDS])
_PARCEL_RGB = np.array([kind[1] for kind in _PARCEL_KINDS], dtype=np.float32)
_PARCEL_FURROW = np.array([kind[2] for kind in _PARCEL_KINDS], dtype=np.float32)
_WOOD_RGB = np.array([(0.21, 0.31, 0.17), (0.13, 0.21, 0.14)], dtype=np.float32)  # deciduous, conifer
# Water: deep, turbid, brown forest lake, sky reflection; mixed per tile.
_WATER_RGB = np.array([(0.10, 0.15, 0.18), (0.20, 0.27, 0.22), (0.15, 0.19, 0.13), (0.33, 0.38, 0.41)],
                      dtype=np.float32)
_ROAD_RGB = np.array([(0.45, 0.45, 0.46), (0.57, 0.51, 0.41), (0.62, 0.61, 0.58)], dtype=np.float32)
_ROOF_RGB = np.array(
    [(0.58, 0.30, 0.23), (0.42, 0.30, 0.26), (0.50, 0.50, 0.52), (0.27, 0.27, 0.29), (0.72, 0.71, 0.68)],
    dtype=np.float32,
)


def _jitter(rng: np.random.Generator, rgb: np.ndarray, spread: float = 0.07) -> np.ndarray:
    """A colour varied in brightness and, less, in hue."""
    return (rgb * rng.uniform(1 - 2 * spread, 1 + 2 * spread) * rng.normal(1, spread / 2, 3)).astype(np.float32)


def _noise(rng: np.random.Generator, size: int, feature: float) -> np.ndarray:
    """Value noise, about N(0, 0.6): a random grid with one node every ``feature`` pixels, smoothstep-interpolated."""
    cells = max(1, round(size / feature))
    grid = rng.standard_normal((cells + 2, cells + 2), dtype=np.float32)
    axes = []
    for _ in range(2):  # a random phase per axis, so the grid nodes do not sit on the same pixels in every tile
        t = np.arange(size, dtype=np.float32) * np.float32(cells / size) + rng.random(dtype=np.float32)
        f = t - np.floor(t)
        i = t.astype(np.intp)
        axes.append((i, f * f * (3 - 2 * f)))
    (iy, fy), (ix, fx) = axes
    rows = grid[iy] * (1 - fy)[:, None] + grid[iy + 1] * fy[:, None]
    return rows[:, ix] * (1 - fx) + rows[:, ix + 1] * fx


def _fractal(rng: np.random.Generator, size: int, feature: float, octaves: int = 3) -> np.ndarray:
    """Octaves of value noise, each half the feature size and half the amplitude of the last: irregular outlines."""
    return sum(0.5**k * _noise(rng, size, feature / 2**k) for k in range(octaves))


def _above_share(field: np.ndarray, share: float) -> np.ndarray:
    """The pixels of the highest ``share`` of ``field``: a region of a chosen area whose shape is the field's."""
    if share <= 0:
        return np.zeros(field.shape, dtype=bool)
    flat = field.reshape(-1)
    k = min(flat.size - 1, int((1 - share) * flat.size))
    return field > np.partition(flat, k)[k]


@dataclass
class _Curve:
    """A meandering centre line: a straight line through ``(y0, x0)`` at ``angle``, displaced sideways by two sine
    waves. A branch starts on its origin (``u >= 0`` only); a through line crosses the whole tile."""

    y0: float
    x0: float
    angle: float
    waves: tuple[tuple[float, float, float], ...]  # (amplitude, wavelength, phase), in pixels and radians
    width: float
    branch: bool

    def _offset(self, u):
        """The sideways displacement at ``u`` pixels along the line, and its slope."""
        offset, slope = 0.0, 0.0
        for amp, wave, phase in self.waves:
            arg = u * (2 * math.pi / wave) + phase
            offset = offset + amp * np.sin(arg)
            slope = slope + amp * 2 * math.pi / wave * np.cos(arg)
        if self.branch:  # start exactly on the origin, which lies on the parent road
            offset = offset - sum(amp * math.sin(phase) for amp, _, phase in self.waves)
        return offset, slope

    def distance(self, yy: np.ndarray, xx: np.ndarray) -> np.ndarray:
        """Distance of every pixel centre from the centre line (first order in the curvature, exact enough for
        meanders much wider than the line)."""
        c, s = math.cos(self.angle), math.sin(self.angle)
        u = (xx - self.x0) * c + (yy - self.y0) * s
        v = (yy - self.y0) * c - (xx - self.x0) * s
        offset, slope = self._offset(u)
        dist = np.abs(v - offset) / np.sqrt(1 + slope * slope)
        return np.where(u >= 0, dist, np.inf) if self.branch else dist

    def point(self, u: float) -> tuple[float, float, float]:
        """The centre line's ``(y, x, direction)`` at ``u`` pixels along it."""
        offset, slope = self._offset(u)
        c, s = math.cos(self.angle), math.sin(self.angle)
        offset, slope = float(offset), float(slope)
        return self.y0 + u * s + offset * c, self.x0 + u * c - offset * s, self.angle + math.atan(slope)


def _random_curve(rng: np.random.Generator, size: int, width: float, meander: float,
                  parent: _Curve | None = None) -> _Curve:
    """A through line near the tile's centre or, given a parent, a branch leaving it at 60-120 degrees."""
    waves = ((rng.uniform(0, meander) * size, rng.uniform(1.0, 2.5) * size, rng.uniform(0, 2 * math.pi)),
             (rng.uniform(0, meander / 3) * size, rng.uniform(0.5, 0.9) * size, rng.uniform(0, 2 * math.pi)))
    if parent is None:
        y0, x0 = (rng.uniform(0.2, 0.8, 2) * size).tolist()
        return _Curve(y0, x0, rng.uniform(0, math.pi), waves, width, branch=False)
    y0, x0, direction = parent.point(rng.uniform(-0.35, 0.35) * size)
    angle = direction + float(rng.choice((-1, 1))) * rng.uniform(math.pi / 3, 2 * math.pi / 3)
    return _Curve(y0, x0, angle, waves, width, branch=True)


def _shift(mask: np.ndarray, dy: int, dx: int) -> np.ndarray:
    """``mask`` moved by ``(dy, dx)`` pixels, with False coming in at the edges."""
    h, w = mask.shape
    padded = np.pad(mask, ((abs(dy), abs(dy)), (abs(dx), abs(dx))))
    return padded[abs(dy) - dy:abs(dy) - dy + h, abs(dx) - dx:abs(dx) - dx + w]


def _fields(rng: np.random.Generator, size: int, yy: np.ndarray, xx: np.ndarray) -> np.ndarray:
    """The background: a patchwork of parcels (an anisotropic Voronoi diagram, long strips as in Polish farmland),
    each a crop, meadow or soil with furrows in its own direction, separated here and there by grass margins."""
    count = rng.integers(5, 15)
    stretch = rng.uniform(1.0, 3.0)  # parcels long across this direction, narrow along it
    c, s = math.cos(axis := rng.uniform(0, np.pi)), math.sin(axis)
    # Nearest seed in coordinates stretched along the axis: |p - q|^2 = |p|^2 - 2 p.q + |q|^2, and |p|^2 is the same
    # for every seed, so the nearest seed minimises one matrix product plus a bias.
    frame = np.array([[c * stretch, -s], [s * stretch, c]], dtype=np.float32)  # (x, y) -> (u * stretch, v)
    seeds = rng.uniform(-0.1, 1.1, (count, 2)).astype(np.float32) * size @ frame
    pixels = np.stack([xx.ravel(), yy.ravel()], axis=1) @ frame
    parcel = np.argmin((seeds * seeds).sum(1) - 2 * pixels @ seeds.T, axis=1).reshape(size, size)

    kind = rng.choice(len(_PARCEL_KINDS), count, p=_PARCEL_P)
    rgb = np.stack([_jitter(rng, _PARCEL_RGB[k]) for k in kind])
    lo, hi = _PARCEL_FURROW[kind].T
    furrow = rng.uniform(lo, hi).astype(np.float32)
    angle = np.where(rng.random(count) < 0.7, axis, rng.uniform(0, np.pi, count))  # mostly ploughed along the strip
    period = rng.uniform(2.5, 7.0, count).astype(np.float32)
    phase = (xx * np.cos(angle)[parcel] + yy * np.sin(angle)[parcel]) * (2 * np.pi / period[parcel])
    shade = (1 + furrow[parcel] * np.sin(phase) + 0.06 * _noise(rng, size, size / 2)
             + 0.04 * _noise(rng, size, 3)).astype(np.float32)
    image = rgb[parcel] * shade[..., None]

    margin = np.zeros_like(parcel, dtype=bool)
    margin[1:] |= parcel[1:] != parcel[:-1]
    margin[:, 1:] |= parcel[:, 1:] != parcel[:, :-1]
    margin &= rng.random(count)[parcel] < 0.5  # only some parcels have a grass strip
    image[margin] = _jitter(rng, _PARCEL_RGB[0])
    return image


def _woodland_texture(rng: np.random.Generator, size: int, sun: tuple[int, int]) -> np.ndarray:
    """Tree crowns: blobs a few pixels wide, lit on the sun's side, with dark gaps between them, and patches of
    species of different colour."""
    crowns = _noise(rng, size, rng.uniform(3.0, 5.0)) + 0.4 * _noise(rng, size, 1.8)
    relief = crowns - np.roll(crowns, sun, axis=(0, 1))
    shade = 0.85 + 0.25 * crowns + 0.3 * relief
    shade[crowns < -0.6] -= 0.35
    mix = 0.5 + 0.5 * np.tanh(_noise(rng, size, size / 4) + rng.normal(0, 1))
    rgb = _jitter(rng, _WOOD_RGB[0]) * (1 - mix[..., None]) + _jitter(rng, _WOOD_RGB[1]) * mix[..., None]
    return rgb * shade[..., None]


def _rectangle(yy: np.ndarray, xx: np.ndarray, cy: float, cx: float, angle: float, length: float, width: float,
               grow: float = 0.0) -> tuple[np.ndarray, np.ndarray]:
    """Pixels inside a rectangle centred on ``(cy, cx)``, long side along ``angle``, enlarged by ``grow`` a side;
    and every pixel's signed distance from the long axis."""
    c, s = math.cos(angle), math.sin(angle)
    a = (xx - cx) * c + (yy - cy) * s
    b = (yy - cy) * c - (xx - cx) * s
    return (np.abs(a) < length / 2 + grow) & (np.abs(b) < width / 2 + grow), b


def _building(rng: np.random.Generator, image: np.ndarray, mask: np.ndarray, yy: np.ndarray, xx: np.ndarray, cy: float,
              cx: float, angle: float, scale: float, sun: tuple[int, int], grass: np.ndarray) -> bool:
    """Draws one building (roof, ridge, shadow, a cleared yard) if it lands on free ground; returns whether it did."""
    length, width = rng.uniform(6, 12) * scale, rng.uniform(4, 7.5) * scale
    length, width = max(length, 4.0), max(width, 3.0)
    reach = int(length / 2 + width / 2 + abs(sun[0]) + abs(sun[1]) + 4)
    iy, ix = int(cy), int(cx)
    win = np.s_[max(iy - reach, 0):iy + reach + 1, max(ix - reach, 0):ix + reach + 1]
    wy, wx, wmask, wimage = yy[win], xx[win], mask[win], image[win]
    roof, across = _rectangle(wy, wx, cy, cx, angle, length, width)
    if not roof.any():
        return False
    near, _ = _rectangle(wy, wx, cy, cx, angle, length, width, grow=1.5)
    if np.isin(wmask[near], (BUILDING, ROAD, WATER)).any():
        return False
    yard, _ = _rectangle(wy, wx, cy, cx, angle, length, width, grow=rng.uniform(2, 5) * scale)
    cleared = yard & (wmask == WOODLAND)
    wimage[cleared] = grass
    wmask[cleared] = BACKGROUND
    shadow, _ = _rectangle(wy - sun[0], wx - sun[1], cy, cx, angle, length, width)
    shadow &= ~roof & (wmask != BUILDING)
    wimage[shadow] *= 0.5
    rgb = _jitter(rng, _ROOF_RGB[rng.integers(len(_ROOF_RGB))], 0.05)
    if rng.random() < 0.75:  # a pitched roof: the two slopes catch the light differently, meeting at a ridge
        lit = rng.uniform(0.1, 0.25)
        wimage[roof] = rgb * (1 + np.where(across[roof] > 0, lit, -lit))[:, None]
    else:  # a flat roof with a parapet
        inner, _ = _rectangle(wy, wx, cy, cx, angle, length, width, grow=-1.0)
        wimage[roof] = rgb * np.where(inner[roof], 1.0, 0.85)[:, None]
    wmask[roof] = BUILDING
    return True


def generate_tile(seed: int, index: int, tile_size: int, stream: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """One scene: ``(image uint8 [S, S, 3], mask uint8 [S, S])``, a function of its arguments only.

    Split ``k`` of :data:`SPLITS` is ``generate_tile(seed, i, size, stream=k)`` for ``i = 0, 1, ...``.
    """
    rng = np.random.default_rng([seed, stream, index])
    size = tile_size
    scale = size / 128  # shapes are drawn at 128 pixels and scaled with the tile
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    sun_angle = rng.uniform(0, 2 * np.pi)
    shadow_length = rng.uniform(1.5, 4.0)
    sun = (round(shadow_length * math.sin(sun_angle)), round(shadow_length * math.cos(sun_angle)))

    image = _fields(rng, size, yy, xx)
    mask = np.zeros((size, size), dtype=np.uint8)

    share = 0.0 if rng.random() < 0.15 else rng.beta(1.3, 1.8)
    woods = _above_share(_fractal(rng, size, size / 2.5) + 0.15 * _noise(rng, size, 3), share)
    image[woods] = _woodland_texture(rng, size, sun)[woods]
    mask[woods] = WOODLAND

    # Roads are laid out before the water so that lakes can keep clear of them; rivers may pass under bridges.
    roads: list[_Curve] = []
    for _ in range(rng.choice(4, p=(0.3, 0.4, 0.22, 0.08))):
        parent = roads[rng.integers(len(roads))] if roads and rng.random() < 0.5 else None
        roads.append(_random_curve(rng, size, max(1.5, rng.uniform(0.01, 0.022) * size), meander=0.12, parent=parent))
    road_dists = [road.distance(yy, xx) for road in roads]

    if rng.random() < 0.45:
        if rng.random() < 0.5:  # a lake
            field = _fractal(rng, size, size / 1.3)
            for road, dist in zip(roads, road_dists):  # a soft ramp, so that shores curve away from the road
                field -= 3 * np.maximum(0, 1 - dist / (road.width + 0.1 * size))
            water = _above_share(field, rng.uniform(0.05, 0.3))
        else:  # a river
            river = _random_curve(rng, size, rng.uniform(0.06, 0.15) * size, meander=0.2)
            water = river.distance(yy, xx) < river.width / 2
        rgb = _WATER_RGB.T @ rng.dirichlet((0.6, 0.4, 0.4, 0.2))
        tone = 1 + 0.05 * _noise(rng, size, size / 3) + 0.01 * _noise(rng, size, 2)
        image[water] = (_jitter(rng, rgb) * tone[..., None])[water]
        mask[water] = WATER

    for road, dist in zip(roads, road_dists):
        edge = dist < road.width / 2 + 0.5
        cover = np.clip(road.width / 2 + 0.5 - dist[edge], 0, 1)[:, None]  # anti-aliased: a pixel's share of road
        rgb = _jitter(rng, _ROAD_RGB[rng.integers(len(_ROAD_RGB))], 0.05)
        image[edge] = image[edge] * (1 - cover) + rgb * cover
        mask[dist < road.width / 2] = ROAD

    tree_shadow = _shift(woods, *sun) & (mask != WOODLAND)
    image[tree_shadow] *= rng.uniform(0.45, 0.65)

    grass = _jitter(rng, _PARCEL_RGB[0])
    if roads:  # villages: houses on both sides of a stretch of road
        road = roads[rng.integers(len(roads))]
        centre = rng.uniform(-0.3, 0.3) * size
        for _ in range(rng.poisson(rng.uniform(1, 13))):
            y, x, direction = road.point(centre + rng.normal(0, 0.25 * size))
            side = float(rng.choice((-1, 1))) * (road.width / 2 + rng.uniform(6, 12) * scale)
            y, x = y + side * math.cos(direction), x - side * math.sin(direction)
            if 0 <= y < size and 0 <= x < size:
                _building(rng, image, mask, yy, xx, y, x, direction + rng.normal(0, 0.1), scale, sun, grass)
    for _ in range(rng.poisson(0.4)):  # isolated farmsteads
        y, x = rng.uniform(0, size, 2)
        _building(rng, image, mask, yy, xx, y, x, rng.uniform(0, np.pi), scale, sun, grass)

    # The camera: per-tile exposure, colour cast, haze and vignetting, slight optical blur, then sensor noise.
    image *= rng.uniform(0.7, 1.25) * rng.normal(1, 0.08, 3).astype(np.float32)
    image *= (1 + 0.08 * _noise(rng, size, size / 1.5))[..., None]
    image += rng.uniform(0, 0.08) * np.array([0.9, 0.95, 1.0], dtype=np.float32)
    padded = np.pad(image, ((1, 1), (1, 1), (0, 0)), mode="edge")
    image = 0.6 * image + 0.1 * (padded[:-2, 1:-1] + padded[2:, 1:-1] + padded[1:-1, :-2] + padded[1:-1, 2:])
    image += rng.uniform(0.01, 0.035) * rng.standard_normal(image.shape, dtype=np.float32)
    return (np.clip(image, 0, 1) * 255 + 0.5).astype(np.uint8), mask


class SyntheticScenes:
    """The ``synthetic`` dataset: ``train_size``, ``val_size`` and ``test_size`` tiles of ``tile_size`` pixels,
    each split generated on its first request and kept."""

    num_classes = len(CLASS_NAMES)
    class_names = CLASS_NAMES
    in_chans = 3
    mean = MEAN
    std = STD
    splits = SPLITS

    def __init__(self, tile_size: int, sizes: dict[str, int], seed: int):
        self.tile_size = tile_size
        self.sizes = sizes
        self.seed = seed
        self._cache: dict[str, tuple[np.ndarray, np.ndarray]] = {}

    def split(self, name: str) -> tuple[np.ndarray, np.ndarray]:
        if name not in self.splits:
            raise UserError(f"synthetic: unknown split {name!r}; splits: {', '.join(self.splits)}")
        if name not in self._cache:
            count, size = self.sizes[name], self.tile_size
            images = np.empty((count, size, size, self.in_chans), dtype=np.uint8)
            masks = np.empty((count, size, size), dtype=np.uint8)
            for i in range(count):
                images[i], masks[i] = generate_tile(self.seed, i, size, stream=SPLITS.index(name))
            self._cache[name] = images, masks
        return self._cache[name]

    def __repr__(self) -> str:
        sizes = ", ".join(f"{name}={count}" for name, count in self.sizes.items())
        return f"SyntheticScenes(tile_size={self.tile_size}, {sizes}, seed={self.seed})"


def _require_int(name: str, value, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise UserError(f"synthetic: {name} must be an integer >= {minimum}, not {value!r}")


@register_dataset("synthetic", test_kwargs={"tile_size": 32, "train_size": 2, "val_size": 2, "test_size": 1})
def synthetic(tile_size: int = 128, train_size: int = 512, val_size: int = 128, test_size: int = 128,
              seed: int = 0) -> SyntheticScenes:
    """Procedural aerial scenes with LandCover.ai's five classes; see the module docstring."""
    _require_int("tile_size", tile_size, MIN_TILE_SIZE)
    _require_int("seed", seed, 0)
    sizes = {"train": train_size, "val": val_size, "test": test_size}
    for split, count in sizes.items():
        _require_int(f"{split}_size", count, 0)
    return SyntheticScenes(int(tile_size), {split: int(count) for split, count in sizes.items()}, int(seed))
