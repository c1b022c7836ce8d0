"""The ``bench`` command: run a grid, list the registries and grids, regenerate the leaderboard.

A mistake in the user's input, a damaged file or a path that cannot be written ends in one line on stderr and exit
code 2, before any work where it can be seen before; Ctrl-C, wherever it comes, ends in one line and exit code 130,
with nothing half-written, and the same command resumes a run.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import signal
import sys
import time
import warnings
from pathlib import Path

from rich.console import Console

import registry
from bench import distributed
from bench.checks import check_grid
from bench.entry import EXIT_INTERRUPTED, EXIT_USER_ERROR, CtrlC
from bench.evaluate import EVALUATED_SPLITS, figures_listings, heading, prepare_evaluation, stored_on
from bench.executors import (
    DevicePoolExecutor,
    DistributedExecutor,
    Executor,
    SequentialExecutor,
    parse_devices,
    train_announced_cells,
)
from bench.export import FORMATS, read_export
from bench.grid import load_grid
from bench.grid_files import GRID_DIR, list_grids
from bench.leaderboard import PLOTS_FOLDER, write_leaderboard
from bench.outputs import OutputFolder
from bench.plots import plot_names, show_names
from bench.runner import Broadcast, resolve_device, run_cells
from bench.store import ResultStore, stale_rows
from bench.tables import Listing, show
from bench.trackers import open_trackers
from registry.core import filter_names
from registry.errors import UserError, where_raised
from registry.files import require_writable_file, require_writable_folder, write_atomically

# bench perf's workload on a GPU where the options leave it open: the reference experiment's models, tile side and
# batch. On a CPU, where those take hours, the default grid's (perf_defaults).
GPU_PERF_DEFAULTS = (("reference-unet", "reference-unetplusplus"), 384, 32)
REGISTRIES = {"archs": registry.ARCHS, "losses": registry.LOSSES, "maskers": registry.MASKERS,
              "regularizers": registry.REGULARIZERS,
              "datasets": registry.DATASETS}


def positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"{value} is not positive")
    return value


class Parser(argparse.ArgumentParser):
    """argparse, with its mistakes in one line (it prints the whole usage first), as every other mistake."""

    def error(self, message: str):
        self.exit(EXIT_USER_ERROR, f"error: {self.prog}: {message} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    plugins = argparse.ArgumentParser(add_help=False)
    plugins.add_argument("--plugin", action="append", default=[], metavar="MODULE",
                         help="import a module (dotted name or .py file) that registers entries; repeatable")
    store_folder = argparse.ArgumentParser(add_help=False)
    store_folder.add_argument("--out", type=Path, default=Path("runs"),
                              help="folder of the results store (default: runs)")
    outputs = argparse.ArgumentParser(add_help=False, parents=[store_folder])
    outputs.add_argument("--leaderboard", type=Path,
                         help="where to write the leaderboard, its plots beside it in plots/ (default: "
                              "OUT/leaderboard.md)")
    grid_file = argparse.ArgumentParser(add_help=False)
    grid_file.add_argument("--grid", required=True,
                           help="a grid name (see `bench list grids`) or a path to a TOML file")
    grid_file.add_argument("--set", action="append", default=[], dest="overrides", metavar="KEY=VALUE",
                           help="override a value of the grid file: a dotted key and a TOML value, e.g. "
                                "recipe.lr=1e-4, 'axes.seeds=[0, 1]'; repeatable")
    data_root = argparse.ArgumentParser(add_help=False)
    data_root.add_argument("--data-root", type=Path, metavar="PATH",
                           help="the folder of the dataset's files (sets its root; not part of the cells' identity)")
    device = argparse.ArgumentParser(add_help=False)
    device.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))

    parser = Parser(prog="bench", description="Segmentation under partial supervision: a benchmark.")
    commands = parser.add_subparsers(dest="command", required=True)

    run = commands.add_parser("run", parents=[plugins, outputs, grid_file, data_root, device],
                              help="run every unfinished cell of a grid")
    run.add_argument("--epochs", type=positive_int,
                     help="override the grid's number of epochs (the same as --set recipe.epochs=N)")
    run.add_argument("--track", action="append", default=[], metavar="TRACKER[:URI]",
                     help="also log the run to an experiment tracker: mlflow (a store in OUT; mlflow:URI for a server "
                          "or another store) or tensorboard (OUT/tensorboard); repeatable (docs/tracking.md)")
    run.add_argument("--dry-run", action="store_true", help="check the grid and list its cells; train nothing")
    scale = run.add_argument_group("where the cells run (docs/scale-out.md)")
    scale.add_argument("--executor", choices=("local", "ray"), default="local",
                       help="local: in this machine's processes (default); ray: each cell a task on a Ray cluster")
    scale.add_argument("--devices", metavar="LIST",
                       help=("local executor: one worker per listed GPU (e.g. 0,1,2,3), "
                             "or 'cpu' entries for CPU workers"))
    scale.add_argument("--address", metavar="HOST:PORT",
                       help="ray executor: the cluster to join (default: $RAY_ADDRESS, else a local cluster)")
    scale.add_argument("--cpus-per-cell", type=positive_int, default=1, metavar="N",
                       help="ray executor on a cluster without GPUs: CPUs each cell asks for (default: 1)")
    scale.add_argument("--ddp", action="store_true",
                       help="under torchrun: train each cell with DistributedDataParallel over its processes")
    scale.add_argument("--retries", type=int, default=2, metavar="N",
                       help="times a cell whose worker or node died is started again (default: 2)")

    listing = commands.add_parser("list", parents=[plugins], help="list registered entries or grids")
    listing.add_argument("what", choices=(*REGISTRIES, "grids"))
    listing.add_argument("patterns", nargs="*", default=["*"], help="shell-style patterns to include (default: *)")
    listing.add_argument("--exclude", action="append", default=[], metavar="PATTERN")

    leaderboard = commands.add_parser("leaderboard", parents=[outputs],
                                      help="regenerate the leaderboard from the store, or from exported results")
    leaderboard.add_argument("--from", dest="sources", action="append", type=Path, metavar="PATH",
                             help="JSON files written by `bench export --format json`, or folders of them, instead "
                                  "of the store (the published leaderboard: --from results --leaderboard "
                                  "leaderboard.md); repeatable")

    export = commands.add_parser("export", parents=[store_folder], help="write the stored cells as CSV or JSON")
    export.add_argument("--grid", action="append", dest="grids", metavar="NAME",
                        help="only the cells of this grid (its name, as the leaderboard shows it); repeatable")
    export.add_argument("--all", action="store_true",
                        help="also the cells that are not finished: failed, interrupted or running")
    export.add_argument("--format", choices=FORMATS, help="csv or json (default: json for an --output ending in "
                                                          ".json, else csv)")
    export.add_argument("--output", "-o", default="-", metavar="PATH", help="file to write (default: standard output)")

    prune = commands.add_parser("prune", parents=[outputs, grid_file],
                                help="list (and with --delete, forget) stored cells that a grid no longer has")
    prune.add_argument("--delete", action="store_true",
                       help="remove them from the store, with their checkpoints, and regenerate the leaderboard")

    show = commands.add_parser("show", parents=[plugins, outputs, grid_file, data_root, device],
                               help="draw a grid's annotations, and its best cells' predictions, beside the plots")
    show.add_argument("--tiles", type=positive_int, default=3, help="tiles per figure (default: 3)")

    evaluate = commands.add_parser("evaluate", parents=[plugins, outputs, grid_file, data_root, device],
                                   help="score weights trained elsewhere on a grid's dataset, and store the figures",
                                   description="Score weights trained elsewhere on a split of a grid's dataset, with "
                                               "the grid's normalisation, evaluation batch and precision, and store "
                                               "the figures.")
    add_weights_options(evaluate, required=True)
    evaluate.add_argument("--split", choices=EVALUATED_SPLITS, default="val", help="the split scored (default: val)")

    predict = commands.add_parser("predict", parents=[plugins, store_folder, grid_file, data_root, device],
                                  help="write georeferenced class maps of whole scenes with a finished cell's weights",
                                  description="Predict whole scenes of any size (raster files, or folders of them) "
                                              "with a finished cell of a grid (the best one unless --cell says), or "
                                              "with weights trained elsewhere (--arch and --weights), and write a "
                                              "class map GeoTIFF, a quicklook and an area table per scene.")
    predict.add_argument("inputs", nargs="+", type=Path, metavar="INPUT",
                         help="raster files, or folders whose .tif, .tiff, .vrt, .jp2 and .img files are read")
    predict.add_argument("--output", "-o", required=True, type=Path, metavar="DIR", help="the folder written")
    chosen = predict.add_argument_group("which weights (default: the best finished cell of the grid)")
    chosen.add_argument("--cell", metavar="ID", help="a finished cell, by its id (or a prefix of it that one cell of "
                                                     "the grid has)")
    chosen.add_argument("--best", action="store_true",
                        help="the best finished cell by best validation mIoU, of --masker and --arch if given")
    chosen.add_argument("--masker", metavar="NAME", help="with --best: among the cells of this masker (name or label)")
    add_weights_options(chosen, required=False, arch_help="with --weights: the architecture they are for, as for "
                                                          "bench perf (e.g. unet:base_channels=64); else, with --best, "
                                                          "among the cells of this architecture (name or label)")
    windows = predict.add_argument_group("windows and outputs (docs/predict.md)")
    windows.add_argument("--overlap", type=int, metavar="PIXELS",
                         help="overlap of consecutive windows in pixels of the training resolution (default: a "
                              "quarter of the tile side)")
    windows.add_argument("--batch-size", type=positive_int, metavar="N",
                         help="windows per batch (default: the grid's evaluation batch)")
    windows.add_argument("--tta", action="store_true", help="average the predictions of the flips and quarter turns")
    windows.add_argument("--confidence", action="store_true",
                         help="also write the winning class's probability as a uint8 raster (255: certain)")
    windows.add_argument("--cog", action="store_true", help="write cloud-optimised GeoTIFFs (with overviews)")
    windows.add_argument("--labels", metavar="PATTERN",
                         help="each scene's label raster ({stem}: the scene's name without its suffix, {folder}: its "
                              "folder), e.g. 'labels/{stem}.tif': scene-level scores in scores.json and scores.csv")

    prepare = commands.add_parser("prepare", parents=[plugins],
                                  help="convert a dataset once into the cache that training reads")
    prepare.add_argument("dataset", nargs="?", help="a dataset that reads files, e.g. landcoverai")
    prepare.add_argument("--grid", help="instead of DATASET and its options: the dataset of this grid (a name or a "
                                        "path to a TOML file), with the grid's arguments")
    prepare.add_argument("--set", action="append", default=[], dest="overrides", metavar="KEY=VALUE",
                         help="with --grid: override a value of the grid file, as for bench run; repeatable")
    prepare.add_argument("--root", type=Path, help="the folder of your copy of the dataset (with --grid: sets the "
                                                   "grid's, as bench run's --data-root)")
    prepare.add_argument("--size", type=positive_int, help="tile side in the cache (default: the dataset's, 384)")
    prepare.add_argument("--layout", help="which layout of the copy to read (default: auto)")
    prepare.add_argument("--resize", help="how tiles are resized to --size: area (default) or bilinear (the reference "
                                          "experiment's)")
    prepare.add_argument("--cache-dir", type=Path,
                         help="where caches go (default: $PARTIALSEG_CACHE or ~/.cache/partialseg-bench)")

    perf = commands.add_parser("perf", parents=[plugins, device],
                               help="measure training and evaluation speed on this device")
    perf.add_argument("--arch", action="append", dest="archs", metavar="NAME[:KEY=VALUE,...]",
                      help="an architecture and its arguments, e.g. unet:base_channels=64; repeatable (default: "
                           f"{' and '.join(GPU_PERF_DEFAULTS[0])} on a GPU, the default grid's on the CPU)")
    perf.add_argument("--size", type=positive_int, help=f"tile side (default: {GPU_PERF_DEFAULTS[1]} on a GPU, the "
                                                        "default grid's on the CPU)")
    perf.add_argument("--batch-size", type=positive_int, help=f"training batch (default: {GPU_PERF_DEFAULTS[2]} on a "
                                                              "GPU, the default grid's on the CPU)")
    perf.add_argument("--steps", type=positive_int, default=20, help="timed steps per measurement (default: 20)")
    perf.add_argument("--warmup", type=positive_int, default=5, help="untimed steps first (default: 5)")
    perf.add_argument("--repeats", type=positive_int, default=3,
                      help="measurements (epochs) per data path; the median is reported (default: 3)")
    perf.add_argument("--compile", action="store_true", help="torch.compile the model (compile time reported apart)")
    perf.add_argument("--workers", type=int,
                      help="DataLoader workers of the loader path (default: one per CPU core, at most 8, on CUDA; 0 on "
                           "the CPU)")
    perf.add_argument("--json", type=Path, default=Path("perf.json"), help="where to write the figures (perf.json)")
    return parser


def add_weights_options(parser, required: bool, arch_help: str | None = None) -> None:
    """``--arch NAME[:KEY=VALUE,...]`` and ``--weights PATH``: weights the harness did not train (bench evaluate,
    bench predict), read by bench.perf.parse_arch_spec and bench.weights.read_state_dict."""
    parser.add_argument("--arch", required=required, metavar="NAME[:KEY=VALUE,...]",
                        help=arch_help or "the architecture the weights are for, as for bench perf, e.g. "
                                          "unet:base_channels=64")
    parser.add_argument("--weights", required=required, type=Path, metavar="PATH",
                        help="a torch.save file: a state_dict, or a dict with one under model_state_dict or model")


EXIT_HINTS = {  # what an interrupted command says after "interrupted"
    "run": "finished cells are stored; run the same command again to resume",
    "prepare": "the finished part is kept; run the same command again to resume",
}


def main(argv: list[str] | None = None) -> int:
    command = None
    with CtrlC() as ctrl_c:
        try:
            args = build_parser().parse_args(argv)
            command = args.command
            warnings.formatwarning = lambda message, *rest, **kw: f"warning: {message}\n"
            for module in getattr(args, "plugin", []):
                registry.import_plugin_module(module)
            return COMMANDS[command](args, Console())
        except BaseException as err:  # noqa: BLE001  (each kind is answered below; a bug keeps its traceback)
            return answer(err, command, ctrl_c.seen)


def answer(err: BaseException, command: str | None, interrupted: bool) -> int:
    """The one line and exit code for what ended a command; re-raises what is a bug (its traceback is wanted)."""
    if interrupted or isinstance(err, KeyboardInterrupt):  # whatever a Ctrl-C surfaced as
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # a second Ctrl-C must not cut the message short
        hint = EXIT_HINTS.get(command)
        print(f"interrupted{f': {hint}' if hint else ''}", file=sys.stderr)
        return EXIT_INTERRUPTED
    if isinstance(err, UserError):
        print(f"error: {err}", file=sys.stderr)
        return EXIT_USER_ERROR
    if isinstance(err, OSError):  # a path the checks before the work could not foresee: a disk that filled up, say
        print(f"error: {describe_os_error(err)}", file=sys.stderr)
        return EXIT_USER_ERROR
    if isinstance(err, SystemExit):
        if command is None:  # argparse's own: --help, or a mistake it has said in one line
            raise err
        # a plugin's sys.exit(), or a builder's: never a silent end
        print(f"error: sys.exit({err.code!r}) was called by {where_raised(err)}", file=sys.stderr)
        return EXIT_USER_ERROR
    raise err


def describe_os_error(err: OSError) -> str:
    names = " -> ".join(str(name) for name in (err.filename, err.filename2) if name is not None)
    return f"{names}: {err.strerror or err}" if names else str(err.strerror or err)


def leaderboard_path(args: argparse.Namespace) -> Path:
    """``--leaderboard``, by default the output folder's."""
    return args.leaderboard if args.leaderboard is not None else OutputFolder(args.out).leaderboard


def check_outputs(args: argparse.Namespace) -> None:
    """Before any work: the output folder and the leaderboard (and its plots folder) can be written."""
    require_writable_folder(args.out, "--out")
    board = leaderboard_path(args)
    require_writable_file(board, "--leaderboard")
    require_writable_folder(board.parent / PLOTS_FOLDER, "--leaderboard's plots folder")


def command_run(args: argparse.Namespace, console: Console) -> int:
    from bench.progress import RichEvents  # rich's live display is only needed here

    grid = load_grid(args.grid, epochs=args.epochs, overrides=args.overrides, data_root=args.data_root)
    out = OutputFolder(args.out)
    device = resolve_device(args.device)
    if not args.dry_run:
        check_outputs(args)
    if args.ddp and not args.dry_run:
        device = check_ddp_options(args, device)
        if not distributed.is_main():  # rank 0 runs the grid below; the others train along with it
            train_announced_cells(grid, out, device, plugin_paths(args))
            return 0
    trackers = [] if args.dry_run else open_trackers(args.track, out)
    executor = None if args.dry_run else build_executor(args, device)
    try:
        # before the run's live display: a dataset that reads files prepares its cache once, with its own bar
        prepare_dataset(grid.dataset.name, grid.dataset_kwargs(), console)
        if args.dry_run:
            check_grid(grid)
            show_cells(grid, out, console, args.grid)
            try:  # a dry run writes nothing, and reads a store on a read-only disk: it says what a run would meet
                check_outputs(args)
            except UserError as err:
                console.print(f"[yellow]a run would stop before training[/]: {err}", highlight=False, soft_wrap=True)
            return 0
        events = RichEvents(console)
        board = leaderboard_path(args)
        data = check_grid(grid)  # before the store is made: a grid that cannot run leaves no trace
        # The folder stays held until the leaderboard is written: it shows this run's cells, and its figures.
        with out.held() as store, contextlib.ExitStack() as tracking:
            for tracker in trackers:
                tracking.enter_context(tracker)
            with events:
                summary = run_cells(grid, data, out, store, device, Broadcast(events, *trackers), executor)
            if events.results:
                show(console, events.summary())
            try:
                draw_figures(grid, out, store, board, device, console)
            except Exception as err:  # noqa: BLE001  (the figures are extras: the leaderboard must not depend on them)
                console.print(f"[yellow]figures not drawn[/]: {type(err).__name__}: {err}", soft_wrap=True)
            write_leaderboard_of(store, board, console, f"{len(summary.done)} cells run, {len(summary.skipped)} "
                                 f"already finished, {len(summary.failed)} failed; ")
            figures = [board.parent / PLOTS_FOLDER / name for names in (plot_names, show_names)
                       for name in names(grid.dataset.name, grid.name).values()]
            for tracker in trackers:
                tracker.leaderboard_written(board, [figure for figure in figures if figure.exists()])
    finally:
        getattr(executor, "shutdown", lambda: None)()
    return 1 if summary.failed else 0


def plugin_paths(args: argparse.Namespace) -> tuple[str, ...]:
    """The --plugin modules, files as absolute paths: workers may start in another folder."""
    return tuple(str(Path(p).resolve()) if p.endswith(".py") else p for p in args.plugin)


def check_ddp_options(args: argparse.Namespace, device):
    """Join torchrun's process group; returns this rank's device."""
    if args.executor != "local" or args.devices:
        raise UserError("--ddp trains each cell over torchrun's processes; it cannot be combined with "
                        "--executor ray or --devices")
    return distributed.init_process_group(device)


def build_executor(args: argparse.Namespace, device) -> Executor:
    """The executor the options ask for; a contradiction or an unreachable cluster is a UserError before the store is
    opened."""
    plugins = plugin_paths(args)
    if args.ddp:
        return DistributedExecutor(device, plugins)
    if args.retries < 0:
        raise UserError(f"--retries must be 0 or more, not {args.retries}")
    if args.executor == "ray":
        if args.devices:
            raise UserError("--devices is for the local executor; on Ray each cell asks the cluster for a GPU")
        from bench.ray_executor import RayExecutor

        return RayExecutor(args.address, args.retries, args.cpus_per_cell, plugins=plugins)
    if args.address:
        raise UserError("--address is for --executor ray")
    if args.devices:
        return DevicePoolExecutor(parse_devices(args.devices), args.retries, plugins)
    return SequentialExecutor(device, plugins)


def show_cells(grid, out: OutputFolder, console: Console, grid_argument: str) -> None:
    """The cells of a grid and what a run would do with each, and how many stored cells of the grid's name it no
    longer has; reads the store without writing it."""
    with out.reading() as store:
        listing = Listing(f"grid {grid.name}: {len(grid.cells)} cells", ("cell id", "cell", "state"))
        for cell in grid.cells:
            row = store.find(cell) if store else None
            state = "to run" if row is None else ("finished" if row.status == "done" else f"{row.status}, to rerun")
            listing.rows.append((cell.cell_id, cell.label, state))
        show(console, listing)
        stale, elsewhere = stale_rows(grid, store) if store is not None else ([], [])
    if stale:
        console.print(f"{len(stale)} stored cells of grid {grid.name} are not in it any more: "
                      f"`bench prune --grid {grid_argument}` lists them", highlight=False, soft_wrap=True)
    say_elsewhere(console, grid, elsewhere)


def say_elsewhere(console: Console, grid, elsewhere: list) -> None:
    """Name the stored cells of a grid of the same name run from another file, which are left alone."""
    if elsewhere:
        files = sorted({row.provenance["grid_file"] for row in elsewhere})
        console.print(f"{len(elsewhere)} stored cells of a grid named {grid.name} come from another file "
                      f"({', '.join(files)}): left alone", highlight=False, soft_wrap=True)


def command_show(args: argparse.Namespace, console: Console) -> int:
    """bench.show's two figures for the grid (bench run draws them too, after the grid), then the leaderboard, which
    links them, regenerated when there is a store."""
    grid = load_grid(args.grid, overrides=args.overrides, data_root=args.data_root)
    out, board = OutputFolder(args.out), leaderboard_path(args)
    require_writable_folder(board.parent / PLOTS_FOLDER, "--leaderboard's plots folder")
    prepare_dataset(grid.dataset.name, grid.dataset_kwargs(), console)
    with out.reading() as store:
        for path in draw_figures(grid, out, store, board, resolve_device(args.device), console, args.tiles):
            console.print(f"written {path}", highlight=False)
        if store is not None:
            write_leaderboard_of(store, board, console)
    return 0


def draw_figures(grid, out: OutputFolder, store: ResultStore | None, leaderboard: Path, device, console: Console,
                 tiles: int = 3) -> list[Path]:
    """bench.show's figures of the grid from ``store`` (None: the folder has none yet) and the checkpoints of ``out``,
    into the leaderboard's plots folder; says which finished cells it could not draw. Returns the files written."""
    from bench.show import write_figures  # drawing from checkpoints is only needed here

    rows = store.rows("done") if store is not None else []
    (leaderboard.parent / PLOTS_FOLDER).mkdir(parents=True, exist_ok=True)
    with console.status(f"drawing grid {grid.name}"):
        written, missing = write_figures(grid, rows, out.checkpoints, leaderboard.parent / PLOTS_FOLDER, tiles,
                                         device)
    for label in missing:
        console.print(f"[yellow]not drawn[/]: {label} (no whole best.pt of its annotation in {out.checkpoints})",
                      highlight=False, soft_wrap=True)
    return written


def command_prune(args: argparse.Namespace, console: Console) -> int:
    """List the stale cells of a grid (see stale_rows), reading the store only; with --delete, forget them and their
    checkpoints, holding the output folder as a run does, and regenerate the leaderboard."""
    grid = load_grid(args.grid, overrides=args.overrides)
    out = OutputFolder(args.out)
    with out.require_store("nothing to prune") as store:
        stale, elsewhere = stale_rows(grid, store)
    say_elsewhere(console, grid, elsewhere)
    if not stale:
        console.print(f"nothing to prune: every stored cell of grid {grid.name} is in it", highlight=False)
        return 0
    listing = Listing(f"stored cells of grid {grid.name} that it no longer has",
                      ("cell id", "cell", "status", "finished"))
    listing.rows = [(row.cell_id, row.label, row.status, row.finished_at or "") for row in stale]
    show(console, listing)
    if not args.delete:
        console.print(f"{len(stale)} cells; `bench prune --grid {args.grid} --delete` forgets them and their "
                      "checkpoints", highlight=False, soft_wrap=True)
        return 0
    board = leaderboard_path(args)
    require_writable_file(board, "--leaderboard")
    with out.held() as store:
        stale, _ = stale_rows(grid, store)  # again, holding the folder: what a run may have finished since
        out.forget(store, [row.cell_id for row in stale])
        write_leaderboard_of(store, board, console, f"{len(stale)} cells forgotten; ")
    return 0


def command_evaluate(args: argparse.Namespace, console: Console) -> int:
    """bench.evaluate's figures for a weights file on a grid's dataset, stored once in the store of --out (holding
    the folder as a run does; the same evaluation again shows the stored figures), then the leaderboard
    regenerated."""
    from bench.perf import parse_arch_spec

    grid = load_grid(args.grid, overrides=args.overrides, data_root=args.data_root)
    arch = parse_arch_spec(args.arch)
    device = resolve_device(args.device)
    check_outputs(args)
    prepare_dataset(grid.dataset.name, grid.dataset_kwargs(), console)
    evaluation = prepare_evaluation(grid, arch, args.weights, args.split, device)
    board = leaderboard_path(args)
    with OutputFolder(args.out).held() as store:
        row = store.get(evaluation.cell_id)
        if row is None:
            with console.status(f"evaluating {evaluation.label} on {device}"):
                row = evaluation.store_in(store, evaluation.score())
        else:
            console.print(f"already evaluated: the figures stored on {stored_on(row)}", highlight=False)
        console.print(heading(row), highlight=False, soft_wrap=True)
        for listing in figures_listings(row):
            show(console, listing)
        write_leaderboard_of(store, board, console)
    return 0


def command_predict(args: argparse.Namespace, console: Console) -> int:
    """bench.predict's maps of the INPUT scenes in --output, a progress bar over their windows, then each scene's
    area table (and, with --labels, the scene-level scores) on screen."""
    from bench.predict import check_overlap, find_scenes, inspect_scene, keep_freed_memory, pixel_size_warning
    from bench.predict_outputs import (
        Options,
        all_scores,
        area_listing,
        predict_scenes,
        scores_listing,
        write_scores,
    )
    from bench.scene_scores import stored_scene_scores

    grid = load_grid(args.grid, overrides=args.overrides, data_root=args.data_root)
    device = resolve_device(args.device)
    require_writable_folder(args.output, "--output")
    paths = find_scenes(args.inputs, args.output)
    prepare_dataset(grid.dataset.name, grid.dataset_kwargs(), console)
    keep_freed_memory()
    predictor = chosen_predictor(args, grid, device)
    check_overlap(args.overlap, predictor)
    scenes = [inspect_scene(path, predictor, args.labels) for path in paths]
    for scene in scenes:
        if (warning := pixel_size_warning(scene, predictor)) is not None:
            warnings.warn(warning)
    args.output.mkdir(parents=True, exist_ok=True)
    console.print(f"predicting {len(scenes)} scenes with {predictor.label} on {device}", highlight=False,
                  soft_wrap=True)
    options = Options(args.overlap, args.tta, args.confidence, args.cog)
    results = predict_scenes(predictor, scenes, args.output, options, console)
    for result in results:
        show(console, area_listing(result))
    if args.labels is not None:
        figures = all_scores(results, predictor)
        show(console, scores_listing(figures, predictor))
        for path in write_scores(figures, args.output, predictor.class_names):
            console.print(f"written {path}", highlight=False)
        if "cell_id" in predictor.figures:  # a cell of the store: its scene scores go beside its figures
            out = OutputFolder(args.out)
            with out.held() as store:
                store.record_scene_scores(predictor.figures["cell_id"],
                                          stored_scene_scores(figures, args.labels, options.overlap,
                                                              options.tta))
                write_leaderboard_of(store, out.leaderboard, console)
    return 0


def chosen_predictor(args: argparse.Namespace, grid, device):
    """The weights the options name, on the device: --arch and --weights, or a finished cell of the grid's store."""
    from bench.perf import parse_arch_spec
    from bench.predict_model import cell_predictor, choose_cell, weights_predictor

    if args.weights is not None:
        if args.arch is None:
            raise UserError("predict --weights needs --arch NAME[:KEY=VALUE,...], the architecture they are for")
        if args.cell is not None or args.best or args.masker is not None:
            raise UserError("predict --weights: --cell, --best and --masker choose among the grid's cells; drop them")
        return weights_predictor(grid, parse_arch_spec(args.arch), args.weights, device, args.batch_size)
    if args.cell is not None and (args.best or args.masker is not None or args.arch is not None):
        raise UserError(f"predict --cell {args.cell} names one cell: drop --best, --masker and --arch")
    out = OutputFolder(args.out)
    with out.require_store() as store:
        cell, row, checkpoint = choose_cell(grid, store, out.checkpoints, args.cell, args.masker, args.arch)
    return cell_predictor(grid, cell, row, checkpoint, device, args.batch_size)


def command_list(args: argparse.Namespace, console: Console) -> int:
    if args.what == "grids":
        names = filter_names(list_grids(), args.patterns, args.exclude)
    else:
        names = REGISTRIES[args.what].list(args.patterns, args.exclude)
    for name in names:
        console.print(name, highlight=False)
    return 0


def prepare_dataset(name: str, kwargs: dict, console: Console):
    """Run a dataset's one-time preparation; None when the dataset needs none. The progress bar appears only once
    there are tiles to write: opening a complete cache, or refusing a broken copy, prints nothing."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    prepare = getattr(registry.DATASETS.entry(name).builder, "prepare", None)
    if prepare is None:
        return None
    bar = Progress(TextColumn(f"preparing {name}"), BarColumn(), MofNCompleteColumn(), TextColumn("tiles"),
                   TimeRemainingColumn(), console=console, transient=True)
    task = bar.add_task(name, total=None)

    def report(done: int, total: int) -> None:
        bar.start()  # a no-op once started
        bar.update(task, completed=done, total=total)

    try:
        return prepare(**kwargs, progress=report)
    finally:
        if bar.live.is_started:  # stopping a bar that never started would print an empty line
            bar.stop()


def command_prepare(args: argparse.Namespace, console: Console) -> int:
    """A dataset's cache: of DATASET with the options given, or (--grid) of the grid's dataset with its arguments."""
    options = {"size": args.size, "layout": args.layout, "resize": args.resize, "cache_dir": args.cache_dir}
    if args.grid is not None:
        given = [f"--{name.replace('_', '-')}" for name, value in options.items() if value is not None]
        if args.dataset is not None or given:
            raise UserError(f"prepare --grid takes the dataset and its arguments from the grid: drop "
                            f"{' and '.join(([args.dataset] if args.dataset else []) + given)} (or use --set)")
        grid = load_grid(args.grid, overrides=args.overrides, data_root=args.root)
        name, kwargs = grid.dataset.name, grid.dataset_kwargs()
    elif args.dataset is None or args.root is None:
        raise UserError("prepare needs a DATASET and --root, or --grid")
    elif args.overrides:
        raise UserError("prepare: --set is for --grid")
    else:
        name, kwargs = args.dataset, {"root": args.root, **{k: v for k, v in options.items() if v is not None}}
    started = time.perf_counter()
    # the command that says "ready" reads every byte first
    cache = prepare_dataset(name, {**kwargs, "verify": True}, console)
    if cache is None:
        raise UserError(f"dataset {name!r} needs no preparation")
    counts = cache.manifest["counts"]
    tiles, size = sum(counts.values()), cache.manifest["tile_size"]
    console.print(f"{name} ready in {time.perf_counter() - started:.1f} s: "
                  f"{', '.join(f'{n} {split}' for split, n in counts.items())} tiles of {size}x{size} px, "
                  f"{cache.nbytes() / 1e6:.1f} MB ({cache.nbytes() / tiles / 1e3:.0f} kB per tile) in {cache.folder}",
                  highlight=False, soft_wrap=True)
    return 0


def perf_defaults(device_type: str) -> tuple[list[str], int, int]:
    """bench perf's architectures (as ``--arch`` specs), tile side and batch where the options leave them open: on a
    GPU the reference experiment's; on a CPU the built-in default grid's, read from its file (not a ./tasks/default.toml
    of the user's, which may name a dataset without tiles)."""
    if device_type == "cuda":
        specs, size, batch_size = GPU_PERF_DEFAULTS
        return list(specs), size, batch_size
    grid = load_grid(str(GRID_DIR / "default.toml"))
    specs = []
    for arch in (cell.arch for cell in grid.cells):
        arguments = ",".join(f"{key}={json.dumps(value)}" for key, value in arch.kwargs.items())  # TOML values too
        spec = f"{arch.name}:{arguments}" if arguments else arch.name
        if spec not in specs:
            specs.append(spec)
    first = grid.cells[0]
    return specs, first.dataset.kwargs["tile_size"], first.recipe["batch_size"]


def command_perf(args: argparse.Namespace, console: Console) -> int:
    from bench.models import build_without_weights
    from bench.perf import PerfConfig, parse_arch_spec, perf_listing, run_perf

    require_writable_file(args.json, "--json")
    device = resolve_device(args.device)
    default_archs, default_size, default_batch = perf_defaults(device.type)
    archs = [parse_arch_spec(spec) for spec in (args.archs or default_archs)]
    size, batch_size = args.size or default_size, args.batch_size or default_batch
    for arch in archs:
        divisor = build_without_weights(arch, 5, 3).size_divisor
        if size % divisor:
            raise UserError(f"--arch {arch.label}: needs a tile side divisible by {divisor}, not {size}")
    config = PerfConfig(archs, size, batch_size, args.steps, args.warmup, args.compile, args.workers, args.repeats)
    with console.status(f"measuring {', '.join(arch.label for arch in archs)} at {size} x {size}, batch {batch_size}, "
                        f"on {device}"):
        report = run_perf(config, device)
    show(console, perf_listing(report))
    write_output(args.json, json.dumps(report, indent=2) + "\n", "figures", console)
    return 0


def command_export(args: argparse.Namespace, console: Console) -> int:
    """bench.export's CSV or JSON of the store's cells (finished ones unless --all, of the --grid names if given), to
    standard output or a file; reads the store without writing it."""
    if args.output != "-":
        require_writable_file(Path(args.output), "--output")
    with OutputFolder(args.out).require_store() as store:
        rows = store.select(args.grids, finished_only=not args.all)
    text = FORMATS[args.format or ("json" if args.output.endswith(".json") else "csv")](rows)
    if args.output == "-":
        sys.stdout.write(text)
    else:
        write_output(Path(args.output), text, f"{len(rows)} cells", console)
    return 0


def write_output(path: Path, text: str, what: str, console: Console) -> None:
    """``text`` at ``path`` (checked writable before the work), atomically; says ``what`` was written."""
    path.parent.mkdir(parents=True, exist_ok=True)
    write_atomically(path, text)
    console.print(f"{what} written to {path}", highlight=False)


def command_leaderboard(args: argparse.Namespace, console: Console) -> int:
    """From the store in --out, or (--from) from exported results: the published leaderboard is made so, from the
    results committed in the repository, and written where --leaderboard says (by default leaderboard.md)."""
    if not args.sources:
        board = leaderboard_path(args)
        require_writable_file(board, "--leaderboard")
        with OutputFolder(args.out).require_store() as store:
            write_leaderboard_of(store, board, console)
        return 0
    board = args.leaderboard or Path("leaderboard.md")
    require_writable_file(board, "--leaderboard")
    rows = [row for source in args.sources for row in read_export(source)]
    write_leaderboard([r for r in rows if r.status == "done"], [r for r in rows if r.status == "failed"], board,
                      ", ".join(str(source) for source in args.sources))
    console.print(f"leaderboard written to {board}", highlight=False)
    return 0


def write_leaderboard_of(store: ResultStore, leaderboard: Path, console: Console, done: str = "") -> None:
    """The leaderboard of everything ``store`` holds, at ``leaderboard``; says so, after ``done`` (what the command
    did)."""
    write_leaderboard(store.rows("done"), store.rows("failed"), leaderboard, str(store.path))
    console.print(f"{done}leaderboard written to {leaderboard}", highlight=False, soft_wrap=True)


COMMANDS = {"run": command_run, "list": command_list, "prepare": command_prepare, "perf": command_perf,
            "prune": command_prune, "show": command_show, "export": command_export,
            "leaderboard": command_leaderboard, "evaluate": command_evaluate, "predict": command_predict}
