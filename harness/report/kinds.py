"""Which tables apply to a run: suite kinds from the manifests and the worlds, and class runs."""

from __future__ import annotations

import functools

from harness.report.runs import RunData


@functools.cache
def suite_kind(name: str) -> str | None:
    """A suite's kind (objects, artists, nudity, captions, or a world's) without reading its file."""
    from harness.generate import manifests
    from harness.world import builtin_suite

    if name in manifests.manifest_names():
        return manifests.load_manifest(name).kind
    suite = builtin_suite(name)
    return suite.kind if suite is not None else None


def is_class_run(run: RunData) -> bool:
    """Whether the run erases a class scored by top-1 accuracy (objects, a world's classes)."""
    return run.concept_kind == "object" or any(row.n_erased or row.n_preserved for row in run.results.rows)
