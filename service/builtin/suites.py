"""The built-in benchmark suites, registered with the engine (:func:`service.pipeline.plugins.register_suite`)
by :func:`register_builtin_suites` at start-up.

=============  ==============  =====================================================================
suite          ground truth    what
=============  ==============  =====================================================================
``default``    fine-tuned      the built-in zoo (random-init controls included) and the real
                               ImageNet EfficientNet-Lite0/1/2 (64, 64 and 72 px) on the twelve
                               built-in targets of six kinds, seven of them far from every zoo
                               source; 20 images per class; about 3 h on a 2-core CPU (sizes below)
``quick``      fine-tuned      four zoo backbones on two built-in targets, one seed: minutes, for
                               trying the machinery out
=============  ==============  =====================================================================

Both take another sample size (``get_suite(name, per_class=N)``, CLI ``--per-class N``): N images per class
in every split, for ranking and fine-tuning alike; the suite is then named ``default-N-per-class`` so that
its result files sit beside the default's. Calibrating on results of several sample sizes teaches the
accuracy model the size effect (:mod:`service.pipeline.calibration.selection`). The engine's own suite, ``standard``
(published ground truth), and suite files are in :mod:`service.pipeline.benchmark.suites`.
"""

from __future__ import annotations

from service.pipeline.benchmark.suites import FinetuneSpec, Suite, SuiteBackbone, SuiteTarget
from service.pipeline.plugins import register_suite

from .datasets import BUILTIN_DATASETS
from .zoo import ZOO_ENTRIES

__all__ = ["register_builtin_suites"]

#: The real ImageNet EfficientNet-Lites of the default suite (packaged weights, service/builtin/packaged_weights.py):
#: id -> (input size, ImageNet-1k top-1). The zoo is pretrained at 32 px; the Lites run at 64-72 px instead of
#: their native 224-260 px so that fine-tuning each three times per target fits a CPU (224 px would cost ~12x
#: more per image); two sizes, so that input size is not one constant of the ImageNet backbones. Top-1 of Lite0
#: as the suite always had it; Lite1/2 from service/builtin/model_catalogue.csv.
_LITES: dict[str, tuple[int, float]] = {
    "tf_efficientnet_lite0.in1k": (64, 0.7483),
    "tf_efficientnet_lite1.in1k": (64, 0.7667),
    "tf_efficientnet_lite2.in1k": (72, 0.7747),
}
#: Images per class of the default suite, in every split (targets have 40 train / 20 val / 40 test). With 20,
#: the six original targets x 11 backbones (66 pairs) took 72 min on a 2-core CPU (x 4 fine-tuning runs per
#: pair: 2 learning rates on seed 0, then seeds 1 and 2; with all 40 it was ~3 h); the twelve targets x 13
#: backbones (156 pairs) are estimated at ~3 h, under 2 h when the 66 recorded pairs are reused (``--reuse``).
#: Few-shot targets are also the regime where choosing the backbone matters most.
_DEFAULT_PER_CLASS = 20

#: Every built-in target with its kind (service/builtin/datasets/info.py): the six that were the suite first,
#: then six far from every zoo source (photographs whose class is an operation or an angle, data graphics,
#: iterated maps), so that a ranking is tested on data no zoo model has seen anything like.
_BUILTIN_TARGETS = tuple(
    SuiteTarget(name, f"builtin:{name}", BUILTIN_DATASETS[name].relation, BUILTIN_DATASETS[name].kind)
    for name in (
        "glyphs-greek", "glyphs-cyrillic", "math-symbols", "digits", "textures-fine", "natural-patches",
        "photo-filters", "photo-rotations", "charts", "waveforms", "fractals", "cellular-automata",
    )
)  # fmt: skip


def _suite_name(base: str, per_class: int | None, default: int | None) -> str:
    """Result files are named by suite: another images-per-class setting must not overwrite the default's."""
    return base if per_class == default else f"{base}-{per_class}-per-class"


def _zoo_backbones() -> tuple[SuiteBackbone, ...]:
    return tuple(SuiteBackbone(f"zoo:{name}") for name in ZOO_ENTRIES)


def _default_suite(per_class: int | None = None) -> Suite:
    per_class = per_class or _DEFAULT_PER_CLASS
    lites = tuple(
        SuiteBackbone(model_id, input_size=size, source_accuracy=top1) for model_id, (size, top1) in _LITES.items()
    )
    kinds = ", ".join(dict.fromkeys(t.kind for t in _BUILTIN_TARGETS))
    return Suite(
        name=_suite_name("default", per_class, _DEFAULT_PER_CLASS),
        description=(
            "The built-in zoo (small timm CNNs and a ViT pretrained on built-in source tasks, random-init "
            "controls) and the real ImageNet EfficientNet-Lite0/1/2 (at 64, 64 and 72 px) on the "
            f"{len(_BUILTIN_TARGETS)} built-in targets ({kinds}), {per_class} images per class; ground truth = "
            "full fine-tuning (6 epochs), 3 seeds, lr chosen on the val split."
        ),
        targets=_BUILTIN_TARGETS,
        backbones=(*_zoo_backbones(), *lites),
        finetune=FinetuneSpec(epochs=6, max_per_class=per_class),
        rank_max_per_class=per_class,
    )


def _quick_suite(per_class: int | None = None) -> Suite:
    names = list(ZOO_ENTRIES)[:3] + [n for n in ZOO_ENTRIES if n.startswith("random")][:1]
    return Suite(
        name=_suite_name("quick", per_class, None),
        description="Four zoo backbones on two built-in targets, one seed and few epochs: a smoke run in minutes.",
        targets=(_BUILTIN_TARGETS[0], _BUILTIN_TARGETS[4]),
        backbones=tuple(SuiteBackbone(f"zoo:{n}") for n in dict.fromkeys(names)),
        finetune=FinetuneSpec(epochs=3, lr_grid=(0.03,), seeds=(0,), linear_probe=False, max_per_class=per_class),
        rank_max_per_class=per_class,
    )


def register_builtin_suites() -> None:
    """Register ``default`` and ``quick`` (idempotent)."""
    register_suite(
        "default",
        _default_suite,
        "built-in zoo + EfficientNet-Lite0/1/2 on the twelve built-in targets of six kinds, fine-tuned ground "
        "truth (~3 h CPU; --reuse an earlier result's pairs)",
    )
    register_suite("quick", _quick_suite, "four zoo backbones on two built-in targets, one seed (minutes)")
