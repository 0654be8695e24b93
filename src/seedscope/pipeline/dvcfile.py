"""`dvc.yaml`, generated: each stage's record (`registry.STAGES`) plus its code's import
closure (`codedeps.stage_code_deps`). `seedscope dvc-yaml` writes it; a test checks it is
current, so the file never drifts from the registry or from the imports."""

from __future__ import annotations

from typing import Any

from seedscope.pipeline.codedeps import stage_code_deps
from seedscope.pipeline.registry import STAGES, Stage


def dvc_stage(stage: Stage) -> dict[str, Any]:
    """Stage `stage`'s entry in `dvc.yaml`."""
    outs: list[Any] = []
    if stage.metrics:
        outs.append({f"metrics/details/{stage.name}.json": {"cache": False}})
    outs += [{p: {"cache": False}} for p in stage.uncached]
    outs += [{p: {"persist": True}} if p in stage.persist else p for p in stage.writes]
    if stage.figures:
        outs.append(f"figures/{stage.name}")
    spec: dict[str, Any] = {
        "cmd": f"seedscope stage {stage.name}",
        "deps": [f"notebooks/{stage.notebook}.ipynb", *stage_code_deps(stage.name), *stage.reads],
        "params": list(stage.sections),
        "outs": outs,
    }
    if stage.metrics:
        spec["metrics"] = [{f"metrics/{stage.name}.json": {"cache": False}}]
    if stage.plots:
        spec["plots"] = [{path: dict(opts)} for path, opts in stage.plots.items()]
    return spec


DVC_HEADER = """\
# Generated from seedscope.pipeline.registry.STAGES by `seedscope dvc-yaml`: do not edit by
# hand (a test checks this file is current). One stage = one notebook run by `seedscope
# stage NAME` (papermill + nbconvert). Each stage lists its notebook, the package files its
# code can import (its import closure, seedscope.pipeline.codedeps, so an edit re-runs only
# the stages it can change), the upstream data it reads, the params sections it reads, and
# what it writes.
"""


def dvc_yaml() -> str:
    """The text of `dvc.yaml`, generated from `STAGES`."""
    import yaml

    class _Dumper(yaml.SafeDumper):
        def increase_indent(self, flow: bool = False, indentless: bool = False) -> Any:
            return super().increase_indent(flow, False)  # lists indented under their key

    blocks = [
        yaml.dump(
            {name: dvc_stage(stage)},
            Dumper=_Dumper,
            sort_keys=False,
            default_flow_style=False,
            indent=2,
            width=100,
        )
        for name, stage in STAGES.items()
    ]
    body = "\n".join("".join(f"  {line}\n" for line in b.splitlines()) for b in blocks)
    return DVC_HEADER + "stages:\n" + body
