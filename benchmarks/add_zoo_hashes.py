"""Add the zoo's content hashes to benchmark results recorded before benchmarks recorded them, and to the
packaged calibration fitted on those results, without rerunning or refitting anything:

    .venv/bin/python benchmarks/add_zoo_hashes.py [RESULT.json ...] [--zoo-dir DIR] [--calibration FILE]

A benchmark run today records, per zoo row, the ``weights_sha256`` it loaded and a top-level ``zoo`` block
(service/pipeline/benchmark/benchmark.py); a calibration records them in ``source["zoo"]``
(``service.pipeline.calibration.samples.zoo_hashes_of``), and a ranking says when a zoo model in use differs.
The recorded results (default: ``benchmarks/results/benchmark-*.json``) predate that. The hashes are taken from
the zoo built on this machine (default: the settings' zoo dir) only if it reproduces the results: every zoo
row's recorded source accuracy must equal its card's (``service.builtin.zoo.provenance.add_zoo_hashes``);
otherwise nothing is written. Then the calibration's ``source["zoo"]`` is recomputed from the results it names
(``source["results"][*]["file"]``, relative to the repository root); nothing else in it changes.
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")

ROOT = Path(__file__).resolve().parent.parent


def _read(path: Path) -> dict[str, Any]:
    data = json.loads(path.read_text(encoding="utf-8"))
    if not isinstance(data, dict):
        raise SystemExit(f"{path}: not a JSON object")
    return data


def _write(path: Path, data: dict[str, Any]) -> None:
    from service.atomic import write_text_atomic

    write_text_atomic(path, json.dumps(data, indent=1, allow_nan=False) + "\n")  # as the benchmark writes them


def main() -> None:
    from service.builtin.zoo.provenance import add_zoo_hashes
    from service.catalog import zoo_dir
    from service.config import get_settings
    from service.errors import BackboneRankError
    from service.pipeline.calibration.samples import zoo_hashes_of

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("results", type=Path, nargs="*", help="benchmark JSON files (default: the recorded ones)")
    parser.add_argument("--zoo-dir", type=Path, default=None, help="the built zoo (default: the settings' zoo dir)")
    parser.add_argument(
        "--calibration",
        type=Path,
        default=ROOT / "service" / "builtin" / "calibration.json",
        help="calibration whose source gets the hashes (default: the packaged one); 'none' skips it",
    )
    args = parser.parse_args()
    zoo = args.zoo_dir or zoo_dir(get_settings())
    paths = args.results or sorted((ROOT / "benchmarks" / "results").glob("benchmark-*.json"))
    for path in paths:
        try:
            updated = add_zoo_hashes(_read(path), zoo)
        except (ValueError, BackboneRankError) as err:
            raise SystemExit(f"{path}: {err}") from None
        _write(path, updated)
        print(f"{path.name}: {len((updated.get('zoo') or {}).get('models') or {})} zoo models' hashes recorded")
    if str(args.calibration) == "none":
        return
    calibration = _read(args.calibration)
    files = [entry.get("file") for entry in (calibration.get("source") or {}).get("results") or []]
    if not files or None in files:
        raise SystemExit(f"{args.calibration}: its source does not name the result files it was fitted on")
    calibration["source"]["zoo"] = zoo_hashes_of([_read(ROOT / str(name)) for name in files])
    _write(args.calibration, calibration)
    note = calibration["source"]["zoo"] and calibration["source"]["zoo"].get("note")
    print(f"{args.calibration.name}: source.zoo from {len(files)} results" + (f" ({note})" if note else ""))


if __name__ == "__main__":
    main()
