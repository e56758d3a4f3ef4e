"""How good is the transfer advice on recorded benchmarks? Leave-one-target-out, against always-full/always-linear.

Reads benchmark result files (default: the recorded ``benchmarks/results/benchmark-default-*.json``, 20 and 10
images per class), and evaluates the ranking's linear-vs-full advice as
:func:`service.pipeline.calibration.advice.loto_advice_evaluation` describes: per setting, the share of (target,
backbone) pairs whose advised strategy is the better one or within one accuracy point, and the mean regret of the
advice and of the fixed policies. No fine-tuning: the ground truth is the recorded fine-tunes and linear probes.

Usage: python benchmarks/advice_check.py [RESULT.json ...] [--out DIR]
Writes <out>/advice_check.json (default <cache dir>/benchmarks) and prints a markdown table.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from _results_dir import default_out_dir

RECORDED = sorted((Path(__file__).parent / "results").glob("benchmark-default-*.json"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("results", nargs="*", type=Path, help="benchmark result files (default: the recorded ones)")
    parser.add_argument("--out", type=Path, default=default_out_dir())
    args = parser.parse_args()

    from service.pipeline.calibration.advice import loto_advice_evaluation
    from service.pipeline.calibration.samples import samples_from_results

    paths = args.results or RECORDED
    samples, _ = samples_from_results([json.loads(path.read_text(encoding="utf-8")) for path in paths])
    evaluation = loto_advice_evaluation(samples)
    evaluation["results"] = [path.name for path in paths]
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / "advice_check.json"
    path.write_text(json.dumps(evaluation, indent=1) + "\n", encoding="utf-8")
    print(
        "| setting | pairs | advised linear | within 1 pt: advice / always full / always linear "
        "| mean regret: advice / always full / always linear |\n|---|---|---|---|---|"
    )
    for setting, summary in [*evaluation["by_setting"].items(), ("**all**", evaluation["overall"])]:
        hits, regret = summary["hit_rate"], summary["regret"]
        print(
            f"| {setting} | {summary['n']} | {summary['advised_linear_share']:.0%} | "
            f"{hits['advised']:.0%} / {hits['always_full']:.0%} / {hits['always_linear']:.0%} | "
            f"{regret['advised']:.4f} / {regret['always_full']:.4f} / {regret['always_linear']:.4f} |"
        )
    print(f"written: {path}")


if __name__ == "__main__":
    main()
