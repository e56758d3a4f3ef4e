"""Leave-one-target-out (LOTO) evaluation of a calibration, and its tables as Markdown (offline).

Every number reported for a target comes from a fit that never saw that target, model selection included:
for each held-out target the selection of :mod:`service.pipeline.calibration.selection` is rerun on the other
targets. The tables travel in the calibration file (``"evaluation"``), a ranking carries their headline
(:meth:`service.pipeline.calibration.model.Calibration.headline`), and ``backbone-rank calibrate --markdown``
prints them for ``benchmarks/README.md``. The evaluation states plainly whether the fusion reaches the best
single estimator. A module of its own because the fit (:mod:`service.pipeline.calibration.fit`) runs it and
attaches its tables, while a ranking only reads them and never runs it.
"""

from __future__ import annotations

import math
from collections.abc import Collection, Mapping, Sequence
from typing import Any

import numpy as np

from service.errors import InvalidCalibration
from service.pipeline.benchmark.metrics import as_higher_is_better
from service.pipeline.calibration.model import GROUND_TRUTHS, NOMINAL_COVERAGE, _predict, from_logit, to_logit
from service.pipeline.calibration.samples import Sample, _inputs_of, _mean, _per_target, _rankings, _targets
from service.pipeline.calibration.selection import (
    _NOT_FUSABLE,
    _PRIOR,
    _PRIORS,
    _fused_metric,
    _fusion_candidates,
    _regret,
    _select_accuracy_models,
    _select_fusion,
    _tau,
)

__all__ = ["evaluation_markdown", "loto_evaluation"]


def loto_evaluation(
    samples: Sequence[Sample],
    directions: Mapping[str, bool],
    *,
    max_member_seconds: float = math.inf,
    fusable: Collection[str] | None = None,
) -> dict[str, Any]:
    """Leave-one-target-out tables: accuracy MAE/coverage per target, fused vs single-estimator τw.

    For each held-out target everything is refitted on the other targets only: the accuracy model's
    input set (by inner LOTO), its coefficients and its interval quantiles; the fusion's committee rule
    (itself chosen by an inner leave-one-target-out and leave-one-kind-out) and members. The fusion is also
    held out a whole kind of targets at a time (leave-one-kind-out). Baselines: the raw class-mean accuracy
    (no calibration) and a constant (the mean t-value of the training rows).
    """
    targets = _targets(samples)
    if len(targets) < 3:
        raise InvalidCalibration(
            f"leave-one-target-out needs at least 3 targets (inner selection needs 2 to train on); got {len(targets)}"
        )
    out: dict[str, Any] = {
        "protocol": "leave-one-target-out: each target's numbers come from a fit on the other targets only",
        "nominal_coverage": NOMINAL_COVERAGE,
        "max_member_seconds": None if math.isinf(max_member_seconds) else max_member_seconds,
        "fusable": None if fusable is None else sorted(fusable),
        "accuracy": {},
    }
    for ground_truth in GROUND_TRUTHS:
        if not any(s.truth(ground_truth) is not None for s in samples):
            out["accuracy"][ground_truth] = None
            continue
        rows: list[dict[str, Any]] = []
        errors, raw_errors, const_errors, hits = [], [], [], []
        by_setting: dict[str, dict[str, list[float]]] = {}
        for held in targets:
            train = [s for s in samples if s.target != held]
            test = [s for s in samples if s.target == held and s.truth(ground_truth) is not None]
            models = _select_accuracy_models(train, ground_truth)
            if not test or not models:
                continue
            usable_train = [s for s in train if s.truth(ground_truth) is not None]
            constant = float(
                np.mean([to_logit(s.truth(ground_truth), s.n_classes) for s in usable_train])  # type: ignore[arg-type]  # truth present: usable_train
            )
            err, raw, const, hit = [], [], [], []
            for s in test:
                truth = float(s.truth(ground_truth))  # type: ignore[arg-type]  # test holds samples with a truth only
                prediction = _predict(models, s.n_classes, _inputs_of(s))
                if prediction is None:
                    continue
                err.append(abs(prediction["value"] - truth))
                hit.append(prediction["low"] <= truth <= prediction["high"])
                const.append(abs(float(from_logit(constant, s.n_classes)) - truth))
                setting = by_setting.setdefault(s.setting, {"err": [], "hit": [], "raw": [], "per_class": []})
                setting["err"].append(err[-1])
                setting["hit"].append(float(hit[-1]))
                if s.images_per_class is not None:
                    setting["per_class"].append(s.images_per_class)
                if (class_means := s.scores.get("class_means")) is not None:
                    raw.append(abs(float(class_means) - truth))
                    setting["raw"].append(raw[-1])
            if not err:
                continue
            rows.append(
                {
                    "target": held,
                    "n": len(err),
                    "mae": float(np.mean(err)),
                    "coverage": float(np.mean(hit)),
                    "mae_raw_class_means": float(np.mean(raw)) if raw else None,
                    "mae_constant": float(np.mean(const)),
                    "inputs": list(models[0].inputs),
                }
            )
            errors += err
            raw_errors += raw
            const_errors += const
            hits += hit
        out["accuracy"][ground_truth] = {
            "per_target": rows,
            "overall": {
                "n": len(errors),
                "mae": float(np.mean(errors)) if errors else None,
                "mean_target_mae": _mean([r["mae"] for r in rows]),
                "coverage": float(np.mean(hits)) if hits else None,
                "nominal_coverage": NOMINAL_COVERAGE,
                "mae_raw_class_means": float(np.mean(raw_errors)) if raw_errors else None,
                "mae_constant": float(np.mean(const_errors)) if const_errors else None,
            },
            "per_setting": [
                {
                    "setting": name,
                    "images_per_class": _mean(list(v["per_class"])),
                    "n": len(v["err"]),
                    "mae": float(np.mean(v["err"])),
                    "coverage": float(np.mean(v["hit"])),
                    "mae_raw_class_means": _mean(list(v["raw"])),
                }
                for name, v in by_setting.items()
            ],
        }
    out["fusion"] = _loto_fusion(samples, directions, targets, max_member_seconds, fusable)
    if fusable is None and math.isinf(max_member_seconds):
        return out
    # the same protocol with every estimator allowed as a member (no cost limit): what the cost rule gives up
    unrestricted = _loto_fusion(samples, directions, targets, math.inf, None)
    out["fusion_unrestricted"] = {
        "fused_mean_weighted_tau": unrestricted["fused_mean_weighted_tau"],
        "fused_at_least_best_single": unrestricted["fused_at_least_best_single"],
        "per_target": [
            {"target": r["target"], "members": r["fusion"]["members"], "weighted_tau": r["weighted_tau"]}
            for r in unrestricted["per_target"]
        ],
    }
    return out


def _loto_fusion(
    samples: Sequence[Sample],
    directions: Mapping[str, bool],
    targets: Sequence[str],
    max_member_seconds: float,
    fusable: Collection[str] | None,
) -> dict[str, Any]:
    groups = _rankings(samples)

    def score_values(name: str, higher_is_better: bool) -> tuple[dict[str, float | None], dict[str, float | None]]:
        taus, regrets = {}, {}
        for key, rows in groups.items():
            raw = np.array([np.nan if s.scores.get(name) is None else s.scores[name] for s in rows], dtype=float)
            oriented = as_higher_is_better(raw, higher_is_better)
            accuracy = np.array([s.finetune for s in rows], dtype=float)
            taus[key] = _tau(oriented, accuracy)
            regrets[key] = _regret(oriented, accuracy)
        return _per_target(taus), _per_target(regrets)

    singles = sorted({n for s in samples for n in s.scores} - _NOT_FUSABLE - {_PRIOR})
    single_values = {name: score_values(name, directions[name]) for name in singles if name in directions}
    single_tau = {name: values[0] for name, values in single_values.items()}
    single_regret = {name: values[1] for name, values in single_values.items()}
    prior_tau = score_values(_PRIOR, True)[0] if _PRIOR in directions else {}
    per_target = []
    fused_values: list[float | None] = []
    fused_regrets: list[float | None] = []
    selected_single_values: list[float | None] = []
    for held in targets:
        train = [s for s in samples if s.target != held]
        candidates = _fusion_candidates(train, directions, max_member_seconds, fusable)
        fusion, train_tau, selection = _select_fusion(train, directions, candidates)
        held_groups = {key: rows for key, rows in groups.items() if key[0] == held}
        tau = _fused_metric(held_groups, fusion)[held]
        regret = _fused_metric(held_groups, fusion, _regret)[held]
        # the honest single-estimator analogue: the one best on the training targets
        train_targets = [t for t in targets if t != held]
        ranked_singles = sorted(
            (n for n in single_tau if all(single_tau[n][t] is not None for t in train_targets)),
            key=lambda n: (-float(np.mean([single_tau[n][t] for t in train_targets])), n),
        )
        picked = ranked_singles[0] if ranked_singles else None
        fused_values.append(tau)
        fused_regrets.append(regret)
        selected_single_values.append(single_tau[picked][held] if picked else None)
        per_target.append(
            {
                "target": held,
                "kind": next((s.kind for s in samples if s.target == held), ""),
                "fusion": fusion.to_dict(),
                "rule": selection["chosen"],
                "train_weighted_tau": train_tau,
                "weighted_tau": tau,
                "top1_regret": regret,
                "selected_single": picked,
                "selected_single_weighted_tau": single_tau[picked][held] if picked else None,
                "single_weighted_tau": {n: single_tau[n][held] for n in single_tau},
                "single_top1_regret": {n: single_regret[n][held] for n in single_regret},
                "prior_weighted_tau": prior_tau.get(held),
            }
        )
    single_means = {n: _mean(list(v.values())) for n, v in single_tau.items()}
    present_means = {n: v for n, v in single_means.items() if v is not None}
    ranked = sorted(present_means, key=lambda n: -present_means[n])
    fused_mean = _mean(fused_values)
    best = ranked[0] if ranked else None
    best_mean = single_means[best] if best else None
    # the bar within the fusion's cost class: cheap enough to be recomputed for p_best
    cheap = set(_fusion_candidates(samples, directions, max_member_seconds, fusable)) - _PRIORS
    best_cheap = next((n for n in ranked if n in cheap), None)
    return {
        "metric": "weighted Kendall tau (scipy.stats.weightedtau) of the score vs the fine-tuned accuracy, "
        "mean over targets",
        "per_target": per_target,
        "per_kind": _loko_fusion(samples, directions, max_member_seconds, fusable, single_tau),
        "fused_mean_weighted_tau": fused_mean,
        "fused_mean_top1_regret": _mean(fused_regrets),
        "fused_top1_within_one_point": _share([r is not None and r <= 0.01 for r in fused_regrets if r is not None]),
        "single_mean_weighted_tau": single_means,
        "single_mean_top1_regret": {n: _mean(list(v.values())) for n, v in single_regret.items()},
        "prior_mean_weighted_tau": _mean(list(prior_tau.values())) if prior_tau else None,
        "best_single": best,
        "best_single_mean_weighted_tau": best_mean,
        "best_fusable_single": best_cheap,
        "best_fusable_single_mean_weighted_tau": single_means[best_cheap] if best_cheap else None,
        "loto_selected_single_mean_weighted_tau": _mean(selected_single_values),
        "fused_at_least_best_single": (
            None if fused_mean is None or best_mean is None else bool(fused_mean >= best_mean - 1e-12)
        ),
    }


def _share(flags: Sequence[bool]) -> float | None:
    return float(np.mean(flags)) if flags else None


def _loko_fusion(
    samples: Sequence[Sample],
    directions: Mapping[str, bool],
    max_member_seconds: float,
    fusable: Collection[str] | None,
    single_tau: Mapping[str, Mapping[str, float | None]],
) -> list[dict[str, Any]] | None:
    """Leave-one-kind-out: the fusion fitted on the other kinds of target, scored on each held-out kind's targets
    (None when the results name no kinds, or only one)."""
    kinds: dict[str, list[str]] = {}
    for s in samples:
        if s.kind and s.target not in kinds.setdefault(s.kind, []):
            kinds[s.kind].append(s.target)
    if len(kinds) < 2 or any(not s.kind for s in samples):
        return None
    groups = _rankings(samples)
    out = []
    for kind, members in kinds.items():
        train = [s for s in samples if s.kind != kind]
        if len(_targets(train)) < 2:
            continue
        candidates = _fusion_candidates(train, directions, max_member_seconds, fusable)
        fusion, _, selection = _select_fusion(train, directions, candidates)
        held_groups = {key: rows for key, rows in groups.items() if key[0] in members}
        taus = _fused_metric(held_groups, fusion)
        out.append(
            {
                "kind": kind,
                "targets": members,
                "fusion": fusion.to_dict(),
                "rule": selection["chosen"],
                "weighted_tau": _mean([taus.get(t) for t in members]),
                "single_weighted_tau": {n: _mean([v.get(t) for t in members]) for n, v in single_tau.items()},
            }
        )
    return out


# ------------------------------------------------------------------------------------------- markdown


def _cell(value: float | None, spec: str) -> str:
    return "n/a" if value is None else format(value, spec)


def evaluation_markdown(data: Mapping[str, Any]) -> str:
    """The LOTO tables of a calibration (``Calibration.to_dict()``) as Markdown, for benchmarks/README.md."""
    evaluation = data["evaluation"]
    lines: list[str] = []
    for ground_truth, table in evaluation["accuracy"].items():
        if not table:
            continue
        overall = table["overall"]
        label = ground_truth.replace("_", "-")
        lines += [
            f"Predicted {label} accuracy, leave-one-target-out (mean absolute error, accuracy as a fraction; interval "
            f"coverage nominal {overall['nominal_coverage']:.0%}, measured {_cell(overall['coverage'], '.0%')}):",
            "",
            "| target | backbones | MAE | coverage | MAE, raw class-mean accuracy | MAE, constant | inputs |",
            "|---|---|---|---|---|---|---|",
        ]
        for row in table["per_target"]:
            lines.append(
                f"| {row['target']} | {row['n']} | {_cell(row['mae'], '.3f')} | {_cell(row['coverage'], '.0%')} | "
                f"{_cell(row['mae_raw_class_means'], '.3f')} | {_cell(row['mae_constant'], '.3f')} | "
                f"{', '.join(row['inputs'])} |"
            )
        lines += [
            f"| **all** | {overall['n']} | **{_cell(overall['mae'], '.3f')}** | {_cell(overall['coverage'], '.0%')} | "
            f"{_cell(overall['mae_raw_class_means'], '.3f')} | {_cell(overall['mae_constant'], '.3f')} | |",
            "",
        ]
        settings = table.get("per_setting") or []
        if len(settings) > 1:
            lines += [
                f"The same held-out {label} predictions by benchmark setting:",
                "",
                "| setting | images per class | rows | MAE | coverage | MAE, raw class-mean accuracy |",
                "|---|---|---|---|---|---|",
            ]
            lines += [
                f"| {row['setting']} | {_cell(row['images_per_class'], '.0f')} | {row['n']} | "
                f"{_cell(row['mae'], '.3f')} | {_cell(row['coverage'], '.0%')} | "
                f"{_cell(row['mae_raw_class_means'], '.3f')} |"
                for row in settings
            ]
            lines.append("")
    fusion = evaluation["fusion"]
    best = fusion["best_single"]
    lines += [
        "Fused ranking vs single estimators, leave-one-target-out (weighted Kendall τ against the fine-tuned "
        "accuracy; the fusion's committee rule and members, and the selected single estimator, are chosen on the "
        "other targets only):",
        "",
        f"| target | kind | fused | top-1 regret | members | selected single | best single ({best}) "
        "| source-accuracy prior |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for row in fusion["per_target"]:
        lines.append(
            f"| {row['target']} | {row.get('kind') or ''} | {_cell(row['weighted_tau'], '+.3f')} | "
            f"{_cell(row.get('top1_regret'), '.3f')} | {', '.join(row['fusion']['members'])} "
            f"({row['fusion']['normalisation']}) | "
            f"{row['selected_single']} {_cell(row['selected_single_weighted_tau'], '+.3f')} | "
            f"{_cell(row['single_weighted_tau'].get(best) if best else None, '+.3f')} | "
            f"{_cell(row['prior_weighted_tau'], '+.3f')} |"
        )
    verdict = fusion["fused_at_least_best_single"]
    lines += [
        f"| **mean** | | **{_cell(fusion['fused_mean_weighted_tau'], '+.3f')}** | "
        f"{_cell(fusion.get('fused_mean_top1_regret'), '.3f')} | | "
        f"{_cell(fusion['loto_selected_single_mean_weighted_tau'], '+.3f')} | "
        f"{_cell(fusion['best_single_mean_weighted_tau'], '+.3f')} | "
        f"{_cell(fusion['prior_mean_weighted_tau'], '+.3f')} |",
        "",
        "Verdict: the fused ranking "
        + ("reaches" if verdict else "does **not** reach" if verdict is False else "cannot be compared with")
        + f" the best single estimator in hindsight ({best}); its pick is within one accuracy point of the best "
        f"backbone on {_cell(fusion.get('fused_top1_within_one_point'), '.0%')} of the held-out targets.",
    ]
    per_kind = fusion.get("per_kind")
    if per_kind:
        lines += [
            "",
            f"Leave-one-kind-out (the fusion fitted on the other kinds of target only; τw, and {best} for comparison):",
            "",
            f"| held-out kind | targets | fused | members | {best} |",
            "|---|---|---|---|---|",
        ]
        lines += [
            f"| {row['kind']} | {', '.join(row['targets'])} | {_cell(row['weighted_tau'], '+.3f')} | "
            f"{', '.join(row['fusion']['members'])} ({row['fusion']['normalisation']}) | "
            f"{_cell(row['single_weighted_tau'].get(best) if best else None, '+.3f')} |"
            for row in per_kind
        ]
    selection = fusion.get("final_selection")
    if selection:
        lines += [
            "",
            "The packaged fusion's committee rule, chosen on every target (nested leave-one-target-out and "
            "leave-one-kind-out τw of each rule):",
            "",
            "| members | per family | standardisation | LOTO | LOKO | criterion |",
            "|---|---|---|---|---|---|",
        ]
        lines += [
            f"| {row['rule']['size']} | {row['rule']['per_family']} | {row['rule']['normalisation']} | "
            f"{_cell(row['loto_weighted_tau'], '+.3f')} | {_cell(row['loko_weighted_tau'], '+.3f')} | "
            f"{_cell(row['criterion'], '+.3f')} |"
            for row in selection["rules"]
        ]
        lines += ["", f"Chosen: {selection['chosen_description']}: {', '.join(data['fusion']['members'])}."]
    unrestricted = evaluation.get("fusion_unrestricted")
    if unrestricted:
        lines += [
            "",
            "Without the cost rule (every estimator may be a member, p_best then recomputes expensive ones), the "
            f"same protocol gives a mean of {_cell(unrestricted['fused_mean_weighted_tau'], '+.3f')} ("
            + "; ".join(f"{r['target']}: {', '.join(r['members'])}" for r in unrestricted["per_target"])
            + ").",
        ]
    return "\n".join(lines) + "\n"
