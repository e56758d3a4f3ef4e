"""Built-in image classification datasets, generated offline and deterministically
(service/ARCHITECTURE.md, "Built-in datasets and weights").

No hub is reachable, so the product ships its own small world: *source* tasks to pretrain the built-in
zoo on and *target* tasks to rank and fine-tune on, whose relation to the sources varies from near
(another alphabet in the same fonts) to far (patches of photographs, charts, Julia sets). Everything is
drawn from what installed packages carry: matplotlib's bundled DejaVu fonts, scikit-learn's
``load_digits``, scikit-image's sample images, and what numpy and Pillow draw (textures, shapes, charts,
signal traces, fractals, cellular automata). Each dataset has a *kind* (what its images are), by which the
benchmark groups targets for leave-one-kind-out evaluation.

======================  ======  ===========  ====================================================
name                    role    kind         what
======================  ======  ===========  ====================================================
``glyphs-latin``        source  glyphs       A-Z, a-z, 0-9 in 12 DejaVu faces, affine, colours,
                                             clutter, noise
``textures``            source  textures     20 procedural texture families, random parameters
``shapes``              source  shapes       12 filled shapes, random size/position/colour/rotation
``glyphs-greek``        target  glyphs       Greek letters (near ``glyphs-latin``)
``glyphs-cyrillic``     target  glyphs       Cyrillic capitals unlike any Latin letter (near)
``math-symbols``        target  glyphs       operators, relations and arrows (mid)
``digits``              target  handwriting  scikit-learn's 8x8 handwritten digits upscaled
                                             (different domain)
``textures-fine``       target  textures     close texture parameters as classes (near ``textures``)
``natural-patches``     target  photos       crops of scikit-image's photographs, class = photograph
                                             (far)
``photo-filters``       target  photos       11 image operations (blur, edges, sepia, ...) on crops
                                             of the colour photographs, class = operation (far)
``photo-rotations``     target  photos       discs of photographs turned by k x 45 degrees, class =
                                             angle (far)
``charts``              target  graphics     10 chart types of random data (far)
``waveforms``           target  graphics     10 signal families drawn as traces (far)
``fractals``            target  dynamics     views of 10 Julia sets, class = parameter c (far)
``cellular-automata``   target  dynamics     10 elementary CA rules' space-time diagrams (far)
======================  ======  ===========  ====================================================

Each dataset is materialised once as an ImageFolder::

    <builtin_dir>/<name>/dataset.json
    <builtin_dir>/<name>/{train,val,test}/<class>/<i>.png

Determinism: every (dataset, split, class) draws from its own ``numpy.random.Generator`` seeded from
``seed`` and a sha256 of the names (never ``hash()``, dict or set order), images are rendered with
fixed-order arithmetic and written as PNG with fixed options, so the same call gives byte-identical
files. Text is laid out with Pillow's BASIC engine so that raqm's presence does not matter. Pillow
bundles FreeType and zlib, so bytes are stable for a given Pillow (and numpy) version; ``dataset.json``
records the versions and a sha256 over all images to compare builds across machines.

Materialisation is idempotent and atomic: a build goes to a hidden temp directory next to the target,
``dataset.json`` is written last, and the directory is moved into place with ``os.replace``. A
directory whose ``dataset.json`` has the same generator version and build parameters is returned as
is. A file lock keeps two processes from building the same dataset.

:func:`register_builtin_datasets` registers all of them with :mod:`service.pipeline.data.builtin`, so
``load_dataset("builtin:glyphs-greek#test")`` works; :data:`BUILTIN_DATASETS` describes them.

The package is split by concern: :mod:`.info` (what each dataset is), :mod:`.render` (the plan types and
the drawing helpers every generator shares), one module per generator or family (:mod:`.glyphs`,
:mod:`.digits`, :mod:`.textures`, :mod:`.shapes`, :mod:`.photos`, :mod:`.photo_tasks`, :mod:`.plots`,
:mod:`.dynamics`) and :mod:`.materialize` (registration, manifests and
the atomic build). The names below are its public face.
"""

from __future__ import annotations

from .glyphs import GLYPH_FONT_FILES, covering_fonts, font_covers, glyph_fonts
from .info import (
    BUILTIN_DATASETS,
    DEFAULT_IMAGE_SIZE,
    DEFAULT_SEED,
    GENERATOR_VERSION,
    SPLITS,
    BuiltinDatasetInfo,
    default_counts,
)
from .materialize import (
    builtin_dataset_manifest,
    materialize_builtin_dataset,
    materialize_builtin_datasets,
    register_builtin_datasets,
)

__all__ = [
    "BUILTIN_DATASETS",
    "DEFAULT_IMAGE_SIZE",
    "DEFAULT_SEED",
    "GENERATOR_VERSION",
    "GLYPH_FONT_FILES",
    "SPLITS",
    "BuiltinDatasetInfo",
    "builtin_dataset_manifest",
    "covering_fonts",
    "default_counts",
    "font_covers",
    "glyph_fonts",
    "materialize_builtin_dataset",
    "materialize_builtin_datasets",
    "register_builtin_datasets",
]
