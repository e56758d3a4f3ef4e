"""The built-in benchmark suites, registered with the engine (:func:`service.pipeline.plugins.register_suite`)
by :func:`register_builtin_suites` at start-up.

=============  ==============  =====================================================================
suite          ground truth    what
=============  ==============  =====================================================================
``default``    fine-tuned      the built-in zoo (random-init controls included) and the real
                               ImageNet EfficientNet-Lite0 on the six built-in targets, 20 images
                               per class; about an hour on a 2-core CPU (sizes below)
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

from .zoo import ZOO_ENTRIES

__all__ = ["register_builtin_suites"]

#: Input sizes of the default suite (recorded in every result): the zoo is pretrained at 32 px, and the
#: ImageNet EfficientNet-Lite0 runs at 64 px instead of its native 224 px so that fine-tuning it three
#: times per target fits a CPU hour (224 px would cost ~12x more per image).
_LITE_INPUT_SIZE = 64
#: Images per class of the default suite, in every split (targets have 40 train / 20 val / 40 test): with 20
#: the 66 (target, backbone) pairs x 4 fine-tuning runs (2 learning rates on seed 0, then seeds 1 and 2) take
#: about an hour on a 2-core CPU; with all 40 it was measured at ~3 h. Few-shot targets are also the regime
#: where choosing the backbone matters most.
_DEFAULT_PER_CLASS = 20

_BUILTIN_TARGETS = (
    SuiteTarget("glyphs-greek", "builtin:glyphs-greek", "near glyphs-latin"),
    SuiteTarget("glyphs-cyrillic", "builtin:glyphs-cyrillic", "near glyphs-latin"),
    SuiteTarget("math-symbols", "builtin:math-symbols", "mid glyphs-latin"),
    SuiteTarget("digits", "builtin:digits", "different domain (handwriting)"),
    SuiteTarget("textures-fine", "builtin:textures-fine", "near textures (fine-grained)"),
    SuiteTarget("natural-patches", "builtin:natural-patches", "far (photographs)"),
)


def _suite_name(base: str, per_class: int | None, default: int | None) -> str:
    """Result files are named by suite: another images-per-class setting must not overwrite the default's."""
    return base if per_class == default else f"{base}-{per_class}-per-class"


def _zoo_backbones() -> tuple[SuiteBackbone, ...]:
    return tuple(SuiteBackbone(f"zoo:{name}") for name in ZOO_ENTRIES)


def _default_suite(per_class: int | None = None) -> Suite:
    per_class = per_class or _DEFAULT_PER_CLASS
    lite = SuiteBackbone("tf_efficientnet_lite0.in1k", input_size=_LITE_INPUT_SIZE, source_accuracy=0.7483)
    return Suite(
        name=_suite_name("default", per_class, _DEFAULT_PER_CLASS),
        description=(
            "The built-in zoo (small timm CNNs and a ViT pretrained on built-in source tasks, random-init "
            f"controls) and the real ImageNet EfficientNet-Lite0 (at {_LITE_INPUT_SIZE} px) on the six built-in "
            f"targets, {per_class} images per class; ground truth = full fine-tuning (6 epochs), 3 seeds, lr "
            "chosen on the val split."
        ),
        targets=_BUILTIN_TARGETS,
        backbones=(*_zoo_backbones(), lite),
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
        "built-in zoo + EfficientNet-Lite0 on the six built-in targets, fine-tuned ground truth (~1 h CPU)",
    )
    register_suite("quick", _quick_suite, "four zoo backbones on two built-in targets, one seed (minutes)")
