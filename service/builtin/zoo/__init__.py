"""The built-in model zoo: small timm models trained here, offline, on the built-in source datasets.

No hub is reachable, so the product trains its own candidates. The default zoo varies architecture
(three CNN families and a ViT), source task (glyphs, textures, shapes) and training budget, and
adds untrained controls, so that transferability to the built-in targets genuinely differs between
entries and the ranking has something to find.

Each model is saved in timm's local-dir layout and resolves offline as ``zoo:<name>`` through the
weights provider ``"zoo"``, which :func:`register_zoo` binds to one zoo directory (the composition root passes
``service.catalog.zoo_dir(settings)``; every function here takes the directory from its caller)::

    <zoo_dir>/<name>/config.json        timm's HF config: architecture, num_classes, pretrained_cfg, model_args
    <zoo_dir>/<name>/model.safetensors  the state dict, including the source head (LEEP and NCE need it)
    <zoo_dir>/<name>/card.json          the model card: recipe, measured source accuracy, timings, versions,
                                        the sha256 of the weights and of the source dataset
    <zoo_dir>/<name>/README.md          the same card for people

A model that does not learn its source task is a bug in its recipe: :func:`build_zoo_model` raises
:class:`~service.errors.ZooBuildFailed` unless the test accuracy on the source reaches
``max(3 x chance, chance + 0.15)`` (random-init controls are exempt: they are meant to be at chance).

Builds are deterministic on the CPU (seeded init, seeded shuffling and augmentation, fixed thread
count: the same recipe gives byte-identical ``model.safetensors``), atomic (a temp directory moved
into place with ``os.replace``), guarded by a file lock per model, and skipped when the model on disk
was built from the same recipe (``recipe_hash`` in ``card.json``). A model is served only with the
weights its card records (:mod:`.provenance`); benchmarks record those hashes, calibrations the ones
of the benchmarks they were fitted on, and a ranking says when a zoo model in use differs from them.

Default zoo (``backbone-rank zoo build``), measured on the 2-core development CPU, 2 torch threads, load
average about 2 (one other light job): 11 min 27 s wall for all ten, data decoding and evaluation included
(the two controls were already built, by an earlier run of the same recipe; they take 3 s). Source accuracy
is on the source's test split (val in brackets); seconds are the whole build of the model; images/s is the
training throughput:

==========================  ======================  ============  ======  ==============  =======  ========
name                        arch                    source        epochs  source acc      seconds  images/s
==========================  ======================  ============  ======  ==============  =======  ========
latin-resnet10t             resnet10t               glyphs-latin       6  0.685 (0.673)     169.4       276
shapes-resnet10t            resnet10t               shapes            16  0.600 (0.588)     121.2       192
textures-resnet10t          resnet10t               textures           4  0.900 (0.855)      38.0       268
textures-resnet10t-short    resnet10t               textures           1  0.588 (0.590)      11.4       226
textures-resnet10t-seed1    resnet10t               textures           4  0.873 (0.890)      45.5       214
textures-regnetx-002        regnetx_002             textures          12  0.677 (0.662)      61.8       469
textures-mobilenetv3-small  mobilenetv3_small_050   textures          20  0.422 (0.435)     167.1       288
textures-vit-tiny           vit_tiny_patch16_224    textures           6  0.627 (0.600)      65.2       234
random-resnet10t            resnet10t               glyphs-latin       0  0.015 (0.021)       2.4         -
random-convnext-atto        convnext_atto           textures           0  0.040 (0.052)       0.8         -
==========================  ======================  ============  ======  ==============  =======  ========

Chance is 1/62, 1/12 and 1/20; the bar is 0.166, 0.25 and 0.20. Ranked on ``glyphs-greek`` (20 images per
class), LEEP, NCE and LogME all put ``latin-resnet10t`` first; LEEP and NCE put ``random-resnet10t`` last.

The package is split by concern: :mod:`.entries` (the recipes: :class:`ZooEntry`, :data:`ZOO_ENTRIES`, the
learning bar), :mod:`.cards` (what a built model folder holds, and reading its card), :mod:`.build`
(training, evaluating and saving a model), :mod:`.provenance` (content hashes: the weights check, the source
dataset's hash, hashes for results recorded before they were) and :mod:`.registry` (the weights provider, the
engine's hooks and the listing). The names below are its public face; importing it imports no torch.
"""

from __future__ import annotations

from .build import ZooProgress, build_zoo, build_zoo_model
from .cards import read_card
from .entries import ZOO_ENTRIES, ZOO_VERSION, ZooEntry, learn_threshold
from .provenance import add_zoo_hashes, zoo_provenance
from .registry import PROVIDER_NAME, list_zoo, register_zoo, unregister_zoo, zoo_provider, zoo_source_info

__all__ = [
    "PROVIDER_NAME",
    "ZOO_ENTRIES",
    "ZOO_VERSION",
    "ZooEntry",
    "ZooProgress",
    "add_zoo_hashes",
    "build_zoo",
    "build_zoo_model",
    "learn_threshold",
    "list_zoo",
    "read_card",
    "register_zoo",
    "unregister_zoo",
    "zoo_provenance",
    "zoo_provider",
    "zoo_source_info",
]
