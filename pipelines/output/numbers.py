"""The Series Numbers of a pipeline's outputs, and which numbers a pipeline's outputs may come to take.

A pipeline declares one number for its SR and one for its SEG (`Writes` in `pipelines.registry`). Each SEG
encoding is a series of its own, the SEG number plus `SEG_ENCODING_OFFSET`; each new version of a study's
results moves every number on by `SERIES_NUMBER_STEP` past those the study holds (`versions.SeriesNumbers`).
A declared number therefore stands for every number with the same remainder modulo the step, after each
offset: two declared numbers may never share one (the registry checks it), or one pipeline's next version
would take the numbers another pipeline's outputs are known by. Kept free of imaging libraries: the registry
reads it in the node's own process.
"""

from __future__ import annotations

from common.states import SegEncoding

SERIES_NUMBER_STEP = 10  # a pipeline's outputs keep their last digit (PET 990/991, CT 992/993, ...) per version
# Each encoding in its own series: the pipeline's SEG series number plus this (never another output's number).
SEG_ENCODING_OFFSET = {SegEncoding.FRACTIONAL: 0, SegEncoding.LABELMAP: 1000, SegEncoding.BINARY: 2000}


def number_classes(number: int, segmentation: bool) -> frozenset[int]:
    """The remainders modulo `SERIES_NUMBER_STEP` of every Series Number an output declared as `number` may take:
    over its versions, and for a SEG over its encodings."""
    offsets = SEG_ENCODING_OFFSET.values() if segmentation else (0,)
    return frozenset((number + offset) % SERIES_NUMBER_STEP for offset in offsets)
