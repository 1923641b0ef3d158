"""Seed-to-seed spread of a notebook's headline metrics, measured once and kept beside it.

``python -m helpers.nb.seeds notebooks/<assignment-id>/<stem>.ipynb --profile small --seeds 0 1 2``
executes the notebook once per seed (into a temporary folder: ``reports/`` is not touched),
collects the numeric metrics it marks as headline, and writes them as the ``[seed_spread]``
table at the end of ``<stem>.toml``, with the profile, the seeds and the date. The run summary
(:mod:`helpers.nb.run`) and the report index then show each headline number with its
seed-to-seed standard deviation, so a reader can tell a difference from noise.

Each finished seed is kept in the shared cache (:func:`seed_run_path`), so a run that is
killed part-way (a notebook can take half an hour per seed) resumes where it stopped.
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import statistics
import sys
import tempfile
import tomllib
from dataclasses import dataclass
from pathlib import Path

from helpers.nb import atomic_write_text
from helpers.nb.profiles import check_profile, config_path
from helpers.nb.runtime import draw_progress_here

SECTION = "seed_spread"


@dataclass(frozen=True)
class SeedSpread:
    """The headline metrics of one notebook over several seeds, at one profile."""

    profile: str
    seeds: tuple[int, ...]
    measured: str                              # ISO date of the measurement
    values: dict[str, tuple[float, ...]]       # metric -> one value per seed, in seed order

    def sd(self, metric: str) -> float | None:
        """Sample standard deviation of ``metric`` over the seeds (``None`` if unmeasured)."""
        values = self.values.get(metric)
        return statistics.stdev(values) if values and len(values) > 1 else None


def read_spread(notebook: str | Path) -> SeedSpread | None:
    """The ``[seed_spread]`` table of ``notebook``'s TOML file, or ``None`` when it has none."""
    path = config_path(notebook)
    if not path.exists():
        return None
    with path.open("rb") as f:
        table = tomllib.load(f).get(SECTION)
    if not table:
        return None
    return SeedSpread(table["profile"], tuple(table["seeds"]), str(table["measured"]),
                      {k: tuple(float(x) for x in v) for k, v in table["metrics"].items()})


def measured_spread(profile: str, notebook: str | Path | None = None) -> SeedSpread | None:
    """The ``[seed_spread]`` table of ``notebook`` (default: the running one) if it was measured
    at ``profile`` and this process's ``runtime.setup`` of it overrode no value, else ``None``:
    a spread measured with one profile's values says nothing of other values."""
    from helpers.nb import runtime

    path = notebook if notebook is not None else runtime.current_notebook()
    spread = read_spread(path)
    if spread is None or spread.profile != profile or runtime.overridden_keys(path):
        return None
    return spread


def difference_se(se: float, spread: SeedSpread | None, metric_a: str | None,
                  metric_b: str | None) -> float:
    """Noise of a difference between two single-seed runs' metrics: ``se`` (the SE of the
    difference over the evaluation sample) or the seed-to-seed SD of the difference, whichever
    is larger. With both metrics in ``spread`` that SD is the SD of the per-seed differences
    (runs of one seed share its data split, so their metrics move together); with one of them,
    the other is taken to vary as much and independently (``sqrt(2) * sd``); a metric never
    recorded is named ``None``."""
    values = spread.values if spread is not None else {}
    a, b = values.get(metric_a), values.get(metric_b)
    if a is not None and b is not None and len(a) > 1:
        return max(se, statistics.stdev(x - y for x, y in zip(a, b, strict=True)))
    sd = spread.sd(metric_a if a is not None else metric_b) if spread is not None else None
    return se if sd is None else max(se, math.sqrt(2) * sd)


def spread_sentence(profile: str, labels: dict[str, str], notebook: str | Path | None = None,
                    fmt: str = ".3f") -> str:
    """One sentence for a notebook's discussion: the seed-to-seed standard deviation of each
    metric in ``labels`` (metric name -> words for it) from the notebook's ``[seed_spread]``
    table, or that it was not measured at ``profile``. ``notebook`` defaults to the running one.
    """
    from helpers.nb import runtime

    path = notebook if notebook is not None else runtime.current_notebook()
    if changed := runtime.overridden_keys(path):
        return (f"This run overrides {', '.join(f'`{k}`' for k in changed)}, so no seed-to-seed "
                f"spread applies to it (any spread kept for `{profile}` was measured with the "
                "profile's own values).")
    spread = measured_spread(profile, path)
    if spread is None or not labels.keys() <= spread.values.keys():
        return (f"The seed-to-seed spread of these numbers was not measured at `{profile}` "
                "(`make seeds` measures it).")
    parts = [f"{spread.sd(name):{fmt}} for {label}" for name, label in labels.items()]
    listed = ", ".join(parts[:-1]) + " and " + parts[-1] if len(parts) > 1 else parts[0]
    seed_list = ", ".join(map(str, spread.seeds))
    return (f"Trained with seeds {seed_list} (whole notebook at `{profile}`, measured "
            f"{spread.measured}), the standard deviation from seed to seed is {listed}.")


def target_sentence(profile: str, metric: str, label: str, target: float, *,
                    higher_is_better: bool = True, notebook: str | Path | None = None,
                    fmt: str = ".3f") -> str:
    """One sentence for a discussion: ``metric``'s value on each seed of the ``[seed_spread]``
    table and how many of them meet ``target`` (at least it, or at most it with
    ``higher_is_better=False``); ``""`` when ``metric`` was not measured over seeds at
    ``profile``, so that one run's number is not presented as the notebook's."""
    spread = measured_spread(profile, notebook)
    values = spread.values.get(metric) if spread is not None else None
    if not values:
        return ""
    met = sum(v >= target if higher_is_better else v <= target for v in values)
    return (f"Over seeds {', '.join(map(str, spread.seeds))} (at `{profile}`, "
            f"{spread.measured}) {label} was {' / '.join(f'{v:{fmt}}' for v in values)}: "
            f"the target of {target:g} is met by {met} of {len(values)} seeds.")


def spread_text(spread: SeedSpread) -> str:
    """The ``[seed_spread]`` TOML table of ``spread`` (with a comment saying how to redo it)."""
    lines = [f"[{SECTION}]",
             "# headline metrics over seeds, written by `python -m helpers.nb.seeds`",
             f'profile = "{spread.profile}"',
             f"seeds = {list(spread.seeds)}",
             f'measured = "{spread.measured}"',
             "",
             f"[{SECTION}.metrics]"]
    lines += [f"{json.dumps(name)} = [{', '.join(repr(v) for v in values)}]"
              for name, values in spread.values.items()]
    return "\n".join(lines) + "\n"


def write_spread(notebook: str | Path, spread: SeedSpread) -> Path:
    """Replace (or append) the ``[seed_spread]`` table, which must be the TOML file's last."""
    path = config_path(notebook)
    text = path.read_text()
    start = text.find(f"[{SECTION}]")
    if start >= 0:
        rest = text[start:].splitlines()
        if any(line.startswith("[") and not line.startswith(f"[{SECTION}")
               for line in rest):
            raise ValueError(f"{path.name}: [{SECTION}] must be the last table of the file")
        text = text[:start]
    atomic_write_text(path, text.rstrip("\n") + "\n\n" + spread_text(spread))
    with path.open("rb") as f:
        tomllib.load(f)  # what we wrote parses
    return path


def seed_run_path(notebook: Path, profile: str, seed: int) -> Path:
    """Where one finished seed's headline metrics are kept (the shared cache, ``seed-runs``),
    named by a key of everything its numbers depend on: the notebook, its TOML's values (not
    the ``[seed_spread]`` table), every ``helpers`` source file, ``DATA_DIR``, the machine. A
    killed ``make seeds`` therefore resumes at the first seed it had not finished, and any
    change starts afresh."""
    from helpers.nb.cache import cache_dir
    from helpers.nb.run import run_key

    name = f"{notebook.parent.name}-{notebook.stem}"
    key = run_key(notebook, profile, seed)
    return cache_dir("seed-runs") / f"{name}-{profile}-seed{seed}-{key}.json"


def run_seed(notebook: Path, profile: str, seed: int,
             report_root: Path) -> tuple[str, dict[str, float]]:
    """The ISO date ``notebook`` finished with ``seed`` and its numeric headline metrics: read
    back when this machine already finished that run, else measured (report under
    ``report_root``) and kept. A failed run raises with its error."""
    from helpers.nb import run
    from helpers.nb.cache import atomic_path

    kept = seed_run_path(notebook, profile, seed)
    if kept.exists():
        entry = json.loads(kept.read_text())
        print(f"seed {seed}: finished on {entry['measured']} ({entry['seconds']:.0f} s), "
              f"read back from {kept}", flush=True)
        return entry["measured"], entry["headline"]
    result = run.run_notebook(notebook, profile, seed=seed,
                              root=notebook.resolve().parents[1], report_root=report_root)
    if result.status != "ok":
        raise RuntimeError(f"{notebook} with seed {seed}: {result.error}")
    headline = {name: float(value) for name in result.headline
                if isinstance(value := result.metrics.get(name), int | float)
                and not isinstance(value, bool)}
    measured = datetime.date.today().isoformat()
    with atomic_path(kept) as tmp:
        tmp.write_text(json.dumps({"measured": measured, "seconds": result.seconds,
                                   "headline": headline}, indent=1))
    print(f"seed {seed}: {result.seconds:.0f} s, "
          + ", ".join(f"{k} = {v:.4g}" for k, v in headline.items()), flush=True)
    return measured, headline


def measure(notebook: Path, profile: str, seeds: list[int]) -> SeedSpread:
    """Run ``notebook`` once per seed (reports in a temporary folder; seeds this machine
    already ran are read back, :func:`run_seed`) and collect its numeric headline metrics.
    The spread's date is the day its last seed finished, also when every seed is read back."""
    check_profile(profile)
    with tempfile.TemporaryDirectory(prefix="seed-spread-") as tmp:
        finished = [run_seed(notebook, profile, seed, Path(tmp)) for seed in seeds]
    runs = [headline for _, headline in finished]
    return SeedSpread(profile, tuple(seeds), max(day for day, _ in finished),
                      {k: tuple(r[k] for r in runs) for k in runs[0]
                       if all(k in r for r in runs)})


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("notebooks", nargs="+", type=Path)
    parser.add_argument("--profile", default="small")
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    args = parser.parse_args(argv)
    draw_progress_here()  # the notebooks' bars draw live on this terminal
    for notebook in args.notebooks:
        spread = measure(notebook, args.profile, args.seeds)
        path = write_spread(notebook, spread)
        print(f"{path}: " + "; ".join(f"{k} sd {spread.sd(k):.3g}" for k in spread.values))
    return 0


if __name__ == "__main__":
    sys.exit(main())
