"""The `fellrec` command line.

Every command reads the same configuration: a YAML file given with `--config` (one mapping per section: data,
partition, model, split) and any key overridden as `--section.key value`. Unknown keys, wrong types, unknown choices
and values out of range (config_checks.RULES) are refused before any work starts, with one line that names the key
and exit code 1. The resolved configuration is printed to stderr (stdout stays clean for `--json`). Ctrl-C stops any
command with exit code 130 (`fellrec fit` keeps its last complete round for `--resume`).
"""

from __future__ import annotations

import json
import os
import signal
import sys
import threading
from argparse import ArgumentError
from contextlib import contextmanager
from dataclasses import asdict
from pathlib import Path
from typing import Literal, Optional

import yaml
from jsonargparse import ArgumentParser, Namespace, set_parsing_settings

from fellrec import __version__
from fellrec.config import (DataArgs, EvalArgs, FedArgs, LogArgs, ModelArgs, PartitionArgs, PrivacyArgs, SplitArgs,
                            TrainArgs)
from fellrec.config_checks import check_config, parse_error_message
from fellrec.errors import FellrecError

SECTIONS = {"data": DataArgs, "partition": PartitionArgs, "model": ModelArgs, "split": SplitArgs, "fed": FedArgs,
            "train": TrainArgs, "log": LogArgs, "eval": EvalArgs, "privacy": PrivacyArgs}


def data_stats(cfg: Namespace) -> None:
    """Print users, items, interactions, the split sizes and each client's users and samples."""
    from fellrec.data.stats import format_stats

    stats, _, _ = _data_stage(cfg)
    print(json.dumps(stats, indent=2) if cfg.json else format_stats(stats, cfg.partition.method))


def data_preview(cfg: Namespace) -> None:
    """Print rendered prompts and responses, as the model will read and write them."""
    from fellrec.data.prompts import PromptStyle, render

    _, data, partition = _data_stage(cfg)
    samples = getattr(data, cfg.split_name)
    if cfg.client is not None:
        if not 0 <= cfg.client < partition.num_clients:
            raise FellrecError(f"--client must be in 0..{partition.num_clients - 1}, got {cfg.client}")
        samples = partition.split_samples(samples)[cfg.client]
    style = PromptStyle.from_args(cfg.data)
    for index, sample in enumerate(samples[: cfg.n]):
        prompt, response = render(sample, data.titles, style)
        client = partition.client_of[sample.user]
        print(f"----- {cfg.split_name} sample {index} (user {sample.user}, client {client}) -----")
        print(prompt + response)
    if not samples:
        print(f"no {cfg.split_name} samples" + (f" for client {cfg.client}" if cfg.client is not None else ""))


def fit(cfg: Namespace) -> None:
    """Train the federated recommender: rounds of local training and aggregation, checkpointed every round."""
    from fellrec.federation.checkpoint import latest_round_dir
    from fellrec.federation.fit import fit as run_fit
    from fellrec.federation.orchestrator import RunConfig

    run_dir = Path(cfg.resume) if cfg.resume else Path(cfg.out_dir) / cfg.name
    if not cfg.resume and latest_round_dir(run_dir) is not None:
        raise FellrecError("this run directory already holds round checkpoints: continue it with "
                           f"`fellrec fit --resume {run_dir}` or choose another --name", run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    config_text = resolved_config_yaml(cfg)
    if int(os.environ.get("LOCAL_RANK", "0")) == 0:
        (run_dir / "config.yaml").write_text(config_text)
    run_config = RunConfig(name=cfg.name, out_dir=cfg.out_dir, keep_checkpoints=cfg.keep_checkpoints,
                           **{key: getattr(cfg, key) for key in SECTIONS})
    last = run_fit(run_config, run_dir, resume=bool(cfg.resume), config_dict=yaml.safe_load(config_text),
                   interrupted=lambda: CTRL_C.pressed)
    if int(os.environ.get("LOCAL_RANK", "0")) == 0:
        print(f"finished after round {last}; outputs in {run_dir}/")


def bench_split(cfg: Namespace) -> None:
    """Measure the split at several head depths k: memory per side, bytes per step, step time split vs unsplit."""
    from fellrec.model.bench import format_bench_table, run_bench_split

    rows = run_bench_split(cfg.model, cfg.split, ks=tuple(cfg.ks), batch_size=cfg.batch_size, seq_len=cfg.seq_len,
                           repeats=cfg.repeats)
    print(json.dumps(rows, indent=2) if cfg.json else format_bench_table(rows))


def evaluate_checkpoint(cfg: Namespace) -> None:
    """Evaluate a checkpoint (RUN_DIR/round_NNN or RUN_DIR/best): per-client Recall/NDCG, overall, balance,
    popularity beside them; writes results.json into the checkpoint directory."""
    from fellrec.evaluation.checkpoint_eval import evaluate_run, format_results

    results = evaluate_run(cfg, Path(cfg.ckpt))
    print(format_results(results))
    print(f"\nwrote {Path(cfg.ckpt) / 'results.json'}")


def recommend_titles(cfg: Namespace) -> None:
    """Recommend items for a history typed by hand, with one client's adapter from a checkpoint."""
    from fellrec.evaluation.checkpoint_eval import recommend_for

    what = "score" if cfg.model.objective == "score" else "distance"  # higher is better / lower is closer
    for rank, (title, score) in enumerate(recommend_for(cfg, Path(cfg.ckpt), cfg.client, cfg.history, cfg.top_k), 1):
        print(f"{rank:>3}. {title}   ({what} {score:.4f})")


def privacy_audit(cfg: Namespace) -> None:
    """Audit the split's privacy: token and title recovery from the hidden states h_k the server receives, per k
    (with --boundary-noise: per noise level too, beside NDCG@10 of a short fit with that noise)."""
    import time

    from tqdm.auto import tqdm

    from fellrec.privacy.audit import run_audit
    from fellrec.privacy.report import command_line, format_table, write_report
    from fellrec.reporting.stamp import dataset_name, git_commit, machine

    start = time.perf_counter()
    levels = cfg.boundary_noise if cfg.boundary_noise is not None else [0.0]
    result = run_audit(cfg.data, cfg.partition, cfg.model, cfg.head_layers, cfg.victim_client, cfg.max_titles,
                       cfg.epochs, cfg.seed, progress=tqdm, noise_levels=levels)
    result.update(command=command_line(), git_commit=git_commit(Path(__file__).parent), machine=machine())
    out = Path(cfg.out) if cfg.out else Path("experiments/results") / dataset_name(cfg.data)
    if cfg.boundary_noise is None:
        result["wall_s"] = time.perf_counter() - start
        paths = write_report(result, out)
        print(format_table(result["rows"]))
    else:
        paths = _defence(cfg, result, levels, out, start)
    print(f"\npublic text: {result['public_text']}")
    print(f"victim: {result['victim_titles']} titles, {result['victim_tokens']} tokens; "
          f"wall time {result['wall_s']:.0f} s")
    print("wrote " + ", ".join(str(p) for p in paths))


def _defence(cfg: Namespace, result: dict, levels: list[float], out: Path, start: float) -> list[Path]:
    """A short fit of the scoring objective per noise level (each kept under OUT/defence-runs/, so a stopped audit
    reuses the fits it finished), their NDCG@10 beside the audit rows: defence.{md,json,png}."""
    import time

    from fellrec.privacy.defence import defence_rows, format_defence_table, write_defence_report

    fits_start, fits = time.perf_counter(), {}
    for noise in levels:
        fits[noise] = _defence_fit(cfg, noise, out / "defence-runs" / f"noise_{noise:g}")
    first = next(iter(fits.values()))
    result.update(rows=defence_rows(result["rows"], fits, cfg.split.head_layers), fit_k=cfg.split.head_layers,
                  fit_users=first["users"], protocol=first["protocol"], fit_wall_s=time.perf_counter() - fits_start,
                  fit_budget=f"{cfg.data.train_samples} training windows, {cfg.fed.rounds} rounds of "
                             f"{cfg.train.local_epochs} local epoch(s), fed.strategy {cfg.fed.strategy}",
                  wall_s=time.perf_counter() - start)
    print(format_defence_table(result["rows"]))
    return write_defence_report(result, out)


def _defence_fit(cfg: Namespace, noise: float, run_dir: Path) -> dict:
    """NDCG@10 (and popularity's) of `fellrec fit` with the scoring objective and `split.boundary_noise` = noise."""
    from dataclasses import replace

    from fellrec.federation.fit import fit as run_fit
    from fellrec.federation.orchestrator import RunConfig

    results_file = run_dir / "results.json"
    if not results_file.is_file():
        sections = {key: getattr(cfg, key) for key in SECTIONS}
        sections.update(model=replace(cfg.model, objective="score"), split=replace(cfg.split, boundary_noise=noise),
                        log=replace(cfg.log, wandb="disabled"))
        if run_dir.exists():  # an interrupted fit: start it again
            import shutil

            shutil.rmtree(run_dir)
        run_dir.mkdir(parents=True)
        run_fit(RunConfig(name=run_dir.name, out_dir=str(run_dir.parent), keep_checkpoints=1, **sections), run_dir,
                resume=False, config_dict={}, interrupted=lambda: CTRL_C.pressed)
    results = json.loads(results_file.read_text())
    return {"ndcg@10": results["overall"]["ndcg@10"], "popularity_ndcg@10": results["popularity"]["ndcg@10"],
            "users": sum(c["users"] for c in results["clients"]), "protocol": results["protocol"]}


def _data_stage(cfg: Namespace):
    from fellrec.data.partition import partition_users
    from fellrec.data.pipeline import load_data, resolved_split
    from fellrec.data.stats import data_stats as compute_stats

    data = load_data(cfg.data)
    partition = partition_users(data, cfg.partition)
    return compute_stats(data, partition, resolved_split(cfg.data)), data, partition


COMMANDS = {"fit": fit, "test": evaluate_checkpoint, "recommend": recommend_titles,
            "data": {"stats": data_stats, "preview": data_preview}, "bench": {"split": bench_split},
            "audit": privacy_audit}


def _summary(func) -> str:
    return func.__doc__.splitlines()[0]


def _command_parser(func, prog: str) -> ArgumentParser:
    # exit_on_error=False: main() turns a parse error into one line and exit code 1, as a bad value.
    parser = ArgumentParser(prog=prog, description=func.__doc__, allow_abbrev=False, exit_on_error=False)
    parser.add_argument("--config", action="config", help="A YAML config file (conf/ml100k.yaml, ...).")
    parser.add_argument("--name", type=str, default="ml100k", help="Run name: outputs go to OUT_DIR/NAME.")
    parser.add_argument("--out_dir", type=str, default="runs", help="Directory that holds the run directories.")
    for key, section in SECTIONS.items():
        parser.add_class_arguments(section, key)
    if func is fit:
        parser.add_argument("--resume", type=Optional[str], default=None,
                            help="Continue the run in this directory from its newest round checkpoint (its saved "
                                 "config is read first; options given here override it).")
        parser.add_argument("--keep_checkpoints", type=int, default=3,
                            help="Round checkpoints kept on disk (the newest ones); best adapters are kept apart.")
    if func in (evaluate_checkpoint, recommend_titles):
        parser.add_argument("--ckpt", type=str, required=True,
                            help="A round checkpoint (RUN_DIR/round_NNN) or RUN_DIR/best; the run's config is read "
                                 "first, options given here override it.")
    if func is recommend_titles:
        parser.add_argument("--client", type=int, required=True, help="Whose adapter recommends.")
        parser.add_argument("--history", type=str, required=True, nargs="+", help="Item titles, oldest first.")
        parser.add_argument("--top-k", dest="top_k", type=int, default=10, help="How many items to list.")
    if func in (data_stats, bench_split):
        parser.add_argument("--json", type=bool, default=False, help="Print the result as JSON.")
    if func is bench_split:
        parser.add_argument("--ks", type=list[int], default=[1, 2, 4, 8], help="Head depths k to measure.")
        parser.add_argument("--batch_size", type=int, default=4, help="Samples per benchmark step.")
        parser.add_argument("--seq_len", type=int, default=64, help="Tokens per sample.")
        parser.add_argument("--repeats", type=int, default=7, help="Timed steps per arm (medians are kept).")
    if func is privacy_audit:
        parser.add_argument("--head-layers", dest="head_layers", type=int, nargs="+", default=[0, 1, 2, 4, 8],
                            help="Head depths k to audit (each below the model's number of decoder layers).")
        parser.add_argument("--victim_client", type=int, default=0, help="Whose prompts the server tries to read.")
        parser.add_argument("--max_titles", type=int, default=300,
                            help="Most victim title occurrences, and most public titles, drawn with --seed.")
        parser.add_argument("--epochs", type=int, default=10, help="Training epochs of the learned inverters.")
        parser.add_argument("--seed", type=int, default=42, help="Seed of the text samples and the inverters.")
        parser.add_argument("--out", type=Optional[str], default=None,
                            help="Output directory (default experiments/results/DATASET, e.g. .../ml100k).")
        parser.add_argument("--boundary-noise", dest="boundary_noise", type=float, nargs="+",
                            default=None, help="Noise levels of split.boundary_noise to audit, each beside NDCG@10 "
                                               "of a short fit with that noise (defence.md/json/png).")
    if func is data_preview:
        parser.add_argument("--split_name", type=Literal["train", "valid", "test"], default="train",
                            help="Which split to show.")
        parser.add_argument("--client", type=Optional[int], default=None, help="Only this client's samples.")
        parser.add_argument("--n", type=int, default=3, help="How many samples to show.")
    return parser


def _usage(path: tuple[str, ...], node: dict) -> str:
    """The list of commands under `path`, for `fellrec --help` and for an unknown command."""
    lines = [f"usage: fellrec {' '.join(path)}{' ' if path else ''}COMMAND [--config FILE] [--section.key VALUE ...]",
             "", "commands:"]
    for name, child in node.items():
        summary = _summary(child) if callable(child) else f"{name} commands: {', '.join(child)}"
        lines.append(f"  {' '.join((*path, name)):<20} {summary}")
    lines.append("\nRun `fellrec COMMAND --help` for the options of a command.")
    return "\n".join(lines)


def _find_command(argv: list[str]):
    """Walk the command tree along argv; return (path, function, remaining args) or exit with the usage.

    Commands are dispatched by hand and each gets its own jsonargparse parser: nested jsonargparse subcommands
    hide the name of an unknown config key behind an unrelated error.
    """
    path: tuple[str, ...] = ()
    node = COMMANDS
    while isinstance(node, dict):
        if not argv or argv[0] in ("-h", "--help"):
            print(_usage(path, node))
            sys.exit(0 if argv else 2)
        if argv[0] == "--version":
            print(f"fellrec {__version__}")
            sys.exit(0)
        if argv[0] not in node:
            print(f"{_usage(path, node)}\n\nfellrec: error: unknown command {' '.join((*path, argv[0]))!r}",
                  file=sys.stderr)
            sys.exit(2)
        path, node, argv = (*path, argv[0]), node[argv[0]], argv[1:]
    return path, node, argv


def resolved_config_yaml(cfg: Namespace) -> str:
    resolved = {"name": cfg.name, "out_dir": cfg.out_dir}
    resolved.update({key: asdict(getattr(cfg, key)) for key in SECTIONS})
    # A JSON round trip turns tuples into lists, which YAML's safe dumper accepts.
    return yaml.safe_dump(json.loads(json.dumps(resolved)), sort_keys=False)


def _with_run_config(args: list[str]) -> list[str]:
    """`--resume RUN_DIR` and `--ckpt RUN_DIR/CKPT` read the run's saved config.yaml first, so the run continues (or
    is evaluated) with the settings it had; options given on the command line still override it."""
    for flag, value in zip(args, args[1:] + [""]):
        name, _, inline = flag.partition("=")
        if name in ("--resume", "--ckpt"):
            target = Path(inline or value)
            saved = (target if name == "--resume" else target.parent) / "config.yaml"
            if not saved.is_file():
                raise FellrecError("no saved run config", saved)
            return ["--config", str(saved), *args]
    return args


class CtrlC:
    """The SIGINT handler of every command: raise KeyboardInterrupt at once, as Python's own handler does, and
    remember it, so that `fellrec fit` still stops at the next round boundary if the exception was swallowed on its
    way up (raised inside a finalizer, or caught by a library's broad `except`)."""

    def __init__(self):
        self.pressed = False

    def __call__(self, signum, frame):
        self.pressed = True
        raise KeyboardInterrupt


CTRL_C = CtrlC()


@contextmanager
def _ctrl_c_stops():
    """Install CTRL_C for the command, whatever SIGINT's disposition was, and put the old handler back afterwards
    (main() is also called in-process).

    A shell without job control (`fellrec fit ... &` in a script, `make test &`, many CI runners) starts a background
    command with SIGINT ignored, and Python keeps it ignored: Ctrl-C or `kill -INT` was then lost and the run went on
    to the end with exit code 0. An interrupt here always stops the command with exit code 130."""
    if threading.current_thread() is not threading.main_thread():  # only the main thread may set handlers
        yield
        return
    CTRL_C.pressed = False
    previous = signal.signal(signal.SIGINT, CTRL_C)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


def parse_config(func, path: tuple[str, ...], args: list[str]) -> Namespace:
    """Parse and instantiate the command's configuration, and check every value's range before any work starts;
    a FellrecError names the first bad key."""
    parser = _command_parser(func, prog=f"fellrec {' '.join(path)}")
    try:
        cfg = parser.instantiate(parser.parse_args(args))
    except ArgumentError as error:
        raise FellrecError(parse_error_message(str(error), SECTIONS)) from None
    check_config(cfg)
    return cfg


def main(argv: Optional[list[str]] = None) -> int:
    set_parsing_settings(docstring_parse_attribute_docstrings=True)
    with _ctrl_c_stops():
        try:
            path, func, rest = _find_command(sys.argv[1:] if argv is None else list(argv))
            cfg = parse_config(func, path, _with_run_config(rest))
            if int(os.environ.get("LOCAL_RANK", "0")) == 0:
                print(f"# fellrec {' '.join(path)}: resolved config\n{resolved_config_yaml(cfg)}", file=sys.stderr)
            func(cfg)
            if CTRL_C.pressed:  # the KeyboardInterrupt was swallowed on its way up: the command still counts as stopped
                raise KeyboardInterrupt
        except FellrecError as error:
            print(f"fellrec: error: {error}", file=sys.stderr)
            return 1
        except KeyboardInterrupt:
            print("fellrec: interrupted", file=sys.stderr)
            return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
