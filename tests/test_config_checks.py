"""Every numeric and choice key of every config section, and every numeric command option, is checked before any work
starts: a value out of range ends the real CLI with exit code 1 and one line that names the key and its range.

The cases are generated from config_checks.RULES and the config dataclasses, so a new field or rule is swept too; a new
numeric field without a rule fails `test_every_numeric_field_has_a_rule`.
"""

from __future__ import annotations

import json
import subprocess
import sys
import typing
from pathlib import Path
from typing import Any, Union

import pytest

from fellrec import cli
from fellrec.config_checks import RULES, Range, check_config, choices, holds_numbers, section_fields

REPO = Path(__file__).resolve().parents[1]
TINY = ["--config", "conf/tiny.yaml"]
FIELDS = section_fields(cli.SECTIONS)


def commands(node=cli.COMMANDS, path=()) -> dict[tuple[str, ...], Any]:
    """Every command of the CLI: its path (("data", "stats")) -> its function."""
    found = {}
    for name, child in node.items():
        found.update(commands(child, (*path, name)) if isinstance(child, dict) else {(*path, name): child})
    return found


COMMANDS = commands()


def command_options(func) -> dict[str, Any]:
    """A command's own options (not the config sections): key -> the argparse action."""
    parser = cli._command_parser(func, "fellrec")
    return {a.dest: a for a in parser._actions if "." not in a.dest and a.dest in parser.get_defaults()}


# ----- generating the cases -----------------------------------------------------------------------------------------
def outside(rule: Range, integer: bool) -> list[float]:
    """Values just outside the rule's interval, one on each bounded side."""
    step = 1 if integer else 0.5
    values = []
    if rule.low is not None:
        values.append(rule.low if rule.low_open else rule.low - step)
    if rule.high is not None:
        values.append(rule.high if rule.high_open else rule.high + step)
    return [int(v) if integer else float(v) for v in values]


def leaf(annotation) -> type:
    """The number type inside an annotation (Optional[int] -> int, tuple[float, ...] -> float)."""
    if annotation in (int, float):
        return annotation
    return next(leaf(a) for a in typing.get_args(annotation) if holds_numbers(a))


def filled(annotation, number) -> Any:
    """A value of the field's shape with every number set to `number` (a list, tuple or dict keeps its shape)."""
    origin, args = typing.get_origin(annotation), [a for a in typing.get_args(annotation) if a is not Ellipsis]
    if origin is Union:
        return filled(next(a for a in args if a is not type(None)), number)
    if origin in (tuple, list):
        return [filled(a, number) for a in args]
    if origin is dict:
        return {filled(args[0], number): filled(args[1], number)}
    return annotation(number)


def section_cases() -> list[tuple[str, list[str], list[str]]]:
    """(id, argv, texts stderr must hold) for each numeric field's out-of-range values and each choice field."""
    cases = []
    for key, annotation in FIELDS.items():
        if key in RULES:
            rule = RULES[key]
            for number in outside(rule, leaf(annotation) is int):
                value = str(filled(annotation, number))
                cases.append((f"{key}={value}", ["fit", *TINY, f"--{key}", value], [key, rule.describe()]))
        allowed = choices(annotation)
        if allowed:
            named = ["null" if c is None else str(c) for c in allowed]
            cases.append((f"{key}=bogus", ["fit", *TINY, f"--{key}", "no_such_choice"], [key, "one of", *named]))
    return cases


def command_cases(ckpt: str) -> list[tuple[str, list[str], list[str]]]:
    """Each command refuses a bad section value and its own options' out-of-range values."""
    required = {"test": ["--ckpt", ckpt], "recommend": ["--ckpt", ckpt, "--client", "0", "--history", "Heat (1995)"]}
    cases = []
    for path, func in COMMANDS.items():
        base = [*path, *TINY, *required.get(path[0], [])]
        name = " ".join(path)
        cases.append((f"{name}: train.lr=-1", [*base, "--train.lr", "-1"], ["train.lr", "> 0"]))
        for key, action in command_options(func).items():
            if key not in RULES:
                continue
            for number in outside(RULES[key], not isinstance(action.default, float)):
                value = [str(number)] if action.nargs == "+" else \
                    [str([number]) if isinstance(action.default, list) else str(number)]
                cases.append((f"{name}: {key}={value[0]}", [*base, action.option_strings[0], *value],
                              [key, RULES[key].describe()]))
    return cases


EXTRA_CASES = [  # rules over several keys, and what the parser refuses
    ("micro batch above batch", ["fit", *TINY, "--train.micro_batch_size", "16"],
     ["train.micro_batch_size must be <= train.batch_size"]),
    ("noise without clipping", ["fit", *TINY, "--privacy.noise_multiplier", "0.5"],
     ["privacy.noise_multiplier > 0 needs privacy.clip_norm"]),
    ("popularity grounding on the score objective",
     ["fit", *TINY, "--model.objective", "score", "--eval.popularity_aware", "true"],
     ["eval.popularity_aware applies to model.objective generate only"]),
    ("collaborative grounding on the score objective",
     ["fit", *TINY, "--model.objective", "score", "--eval.collaborative_aware", "true"],
     ["eval.collaborative_aware applies to model.objective generate only"]),
    ("two grounding priors", ["fit", *TINY, "--eval.popularity_aware", "true", "--eval.collaborative_aware", "true"],
     ["eval.popularity_aware and eval.collaborative_aware cannot both be true"]),
    ("int8 ranking of nf4 blocks", ["fit", *TINY, "--model.quantize", "nf4", "--eval.quantize", "int8"],
     ["eval.quantize int8 needs model.quantize none or int8 (got nf4)"]),
    ("ratios not summing to 1", ["fit", *TINY, "--data.split_ratios", "[0.5, 0.5, 0.5]"],
     ["data.split_ratios must sum to 1"]),
    ("wrong type", ["fit", *TINY, "--train.lr", "fast"], ["train.lr must be a number (got 'fast')"]),
    ("wrong optional type", ["fit", *TINY, "--eval.users_per_client", "all"],
     ["eval.users_per_client must be an integer or null (got 'all')"]),
    ("unknown key", ["fit", *TINY, "--train.no_such_key", "1"], ["--train.no_such_key"]),
]

# Runs many argument lists through the real entry point in one process: each CLI start costs seconds of imports.
DRIVER = """
import contextlib, io, json, sys, time, traceback
from fellrec.cli import main

results = []
for argv in json.load(sys.stdin):
    err, start = io.StringIO(), time.perf_counter()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        try:
            code = main(argv)
        except SystemExit as exit:
            code = exit.code
        except Exception:
            code = "exception"
            traceback.print_exc()
    results.append({"code": code, "stderr": err.getvalue(), "seconds": time.perf_counter() - start,
                    "torch": "torch" in sys.modules})
json.dump(results, sys.stdout)
"""


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory) -> str:
    """A checkpoint path whose run directory holds a saved config, as `test` and `recommend` read it first."""
    run = tmp_path_factory.mktemp("run")
    (run / "config.yaml").write_text((REPO / "conf" / "tiny.yaml").read_text())
    return str(run / "round_000")


@pytest.fixture(scope="module")
def swept(ckpt) -> dict[str, dict]:
    cases = section_cases() + command_cases(ckpt) + EXTRA_CASES
    result = subprocess.run([sys.executable, "-c", DRIVER], input=json.dumps([argv for _, argv, _ in cases]),
                            cwd=REPO, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    return {case_id: outcome for (case_id, _, _), outcome in zip(cases, json.loads(result.stdout))}


def _ids(cases):
    return [pytest.param(case_id, texts, id=case_id) for case_id, _, texts in cases]


@pytest.mark.parametrize("case_id, texts", _ids(section_cases() + command_cases("CKPT") + EXTRA_CASES))
def test_a_bad_value_is_refused_in_one_line_before_any_work(swept, case_id, texts):
    outcome = swept[case_id]
    lines = outcome["stderr"].splitlines()
    assert outcome["code"] == 1, outcome["stderr"][-2000:]
    assert len(lines) == 1 and lines[0].startswith("fellrec: error: "), outcome["stderr"][-2000:]
    assert all(text in lines[0] for text in texts), (texts, lines[0])
    # Refused before the work: no model, data or training code (all of which import torch) ever ran.
    assert not outcome["torch"] and outcome["seconds"] < 5


@pytest.mark.parametrize("args, message", [pytest.param(args, message, id=" ".join(args)) for args, message in [
    (["--train.lr", "-1"], "fellrec: error: train.lr must be > 0 (got -1.0)"),
    (["--eval.num_beams", "0"], "fellrec: error: eval.num_beams must be >= 1 (got 0)"),
    (["--fed.rounds", "0"], "fellrec: error: fed.rounds must be >= 1 (got 0)"),
    (["--fed.rounds", "-1"], "fellrec: error: fed.rounds must be >= 1 (got -1)"),
    (["--fed.sample_fraction", "1.5"], "fellrec: error: fed.sample_fraction must be in (0, 1] (got 1.5)"),
    (["--train.batch_size", "0"], "fellrec: error: train.batch_size must be >= 1 (got 0)"),
    (["--model.lora_r", "0"], "fellrec: error: model.lora_r must be >= 1 (got 0)"),
    (["--fed.strategy", "fedsgd"], "fellrec: error: fed.strategy must be one of fellrec, fedavg, fedprox, local, "
                                   "centralized (got 'fedsgd')"),
]])
def test_the_installed_command_refuses_with_exit_code_1(cli, tmp_path, args, message):
    result = cli("fit", *TINY, "--out_dir", str(tmp_path), *args)
    assert (result.returncode, result.stderr) == (1, message + "\n")
    assert not list(tmp_path.iterdir())  # no run directory: nothing started


def test_every_numeric_field_has_a_rule():
    missing = [key for key, annotation in FIELDS.items() if holds_numbers(annotation) and key not in RULES]
    assert not missing, f"add the allowed range of {missing} to fellrec.config_checks.RULES"


def test_every_numeric_command_option_has_a_rule():
    def numeric(value) -> bool:
        values = value if isinstance(value, list) else [value]
        return bool(values) and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values)

    missing = {(" ".join(path), key) for path, func in COMMANDS.items()
               for key, action in command_options(func).items() if numeric(action.default) and key not in RULES}
    assert not missing, f"add the allowed range of {sorted(missing)} to fellrec.config_checks.RULES"


def test_every_rule_names_a_real_key():
    options = {key for func in COMMANDS.values() for key in command_options(func)}
    assert set(RULES) - set(FIELDS) - options == set()


def test_the_shipped_configs_and_the_defaults_pass():
    check_config({name: section() for name, section in cli.SECTIONS.items()})
    for config in sorted((REPO / "conf").glob("*.yaml")):
        cli.parse_config(cli.fit, ("fit",), ["--config", str(config)])


@pytest.mark.parametrize("rule, inside, outside_, text", [
    (Range(0, low_open=True), [1e-9, 5], [0, -1, float("inf"), float("nan")], "> 0"),
    (Range(1), [1, 7], [0.999, -3], ">= 1"),
    (Range(0, 1, low_open=True), [1e-9, 1], [0, 1.0001], "in (0, 1]"),
    (Range(0, 1, high_open=True), [0, 0.99], [1, -0.01], "in [0, 1)"),
    (Range(high=2.5, high_open=True), [-100, 2.4], [2.5], "< 2.5"),
])
def test_a_range_holds_inside_only_and_says_so(rule, inside, outside_, text):
    assert all(rule.holds(v) for v in inside) and not any(rule.holds(v) for v in outside_)
    assert rule.describe() == text


def test_a_container_is_checked_number_by_number():
    sections = {name: section() for name, section in cli.SECTIONS.items()}
    sections["split"].per_client = {0: (1, 1), 2: (0, -1)}
    with pytest.raises(Exception, match=r"split.per_client must hold numbers >= 0 \(got \{0: \(1, 1\), 2: \(0, -1\)"):
        check_config(sections)
