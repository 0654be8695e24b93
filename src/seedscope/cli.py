"""The `seedscope` command line: suites, checkpoints, per-token log-probs, pipeline stages.

Every user mistake exits with status 2 and one line naming the problem and the fix
(no traceback), before any model is loaded.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from seedscope.core.errors import SeedscopeError


def _suites(args: argparse.Namespace) -> str:
    from seedscope.suites.registry import registry

    suites = registry()
    if args.format == "json":
        return json.dumps(
            {
                name: {
                    "description": s.description,
                    "architecture": s.architecture,
                    "n_checkpoints": len(s.steps),
                    "runs": [
                        {"name": r.name, "repo_id": r.repo_id, "seed": r.seed, "size": r.size}
                        for r in s.runs
                    ],
                }
                for name, s in suites.items()
            },
            indent=2,
        )
    lines = []
    for name, s in suites.items():
        runs = ", ".join(f"{r.name}({r.seed})" for r in s.runs)
        lines.append(f"{name}: {len(s.runs)} runs, {len(s.steps)} checkpoints — {runs}")
    return "\n".join(lines)


def _checkpoints(args: argparse.Namespace) -> str:
    from seedscope.suites.registry import get_suite

    suite = get_suite(args.suite)
    runs = [suite.run(args.run)] if args.run else list(suite.runs)
    table = [
        {"run": r.name, "repo_id": r.repo_id, "step": s, "revision": suite.revision(s)}
        for r in runs
        for s in suite.steps
    ]
    if args.format == "json":
        return json.dumps(table, indent=2)
    return "\n".join(f"{t['run']}\t{t['step']}\t{t['revision']}" for t in table)


def text_logprobs(model: Any, tokenizer: Any, text: str) -> dict[str, Any]:
    """Per-token log-probs of `text`: logprobs[i] = log P(token_i | tokens_<i), [0] is None.

    Texts longer than the model's context are evaluated in chunks that overlap by one
    token, so every token after the first has at least one token of context.
    """
    import numpy as np

    from seedscope.logprobs.engine import token_logprobs

    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    if len(ids) < 2:
        raise SeedscopeError("The text has fewer than 2 tokens.", "give a longer text.")
    context = int(
        model.config.n_positions
        if hasattr(model.config, "n_positions")
        else model.config.max_position_embeddings
    )
    out: list[float | None] = [None]
    start = 0
    while start < len(ids) - 1:
        chunk = ids[start : start + context]
        values = token_logprobs(model, np.asarray([chunk], dtype=np.int64), batch_size=1)[0]
        out.extend(float(v) for v in values[1:])
        start += context - 1
    return {"token_ids": ids, "tokens": tokenizer.convert_ids_to_tokens(ids), "logprobs": out}


def _logprobs(args: argparse.Namespace) -> str:
    from seedscope.models.checkpoints import load_checkpoint
    from seedscope.suites.registry import get_suite

    suite = get_suite(args.suite)
    run = suite.run(args.run)
    revision = suite.revision(args.step)
    from seedscope.core.io import read_text_file

    text = read_text_file(args.text_file)
    model, tokenizer = load_checkpoint(suite, run, args.step)
    result = {"suite": suite.name, "run": run.name, "step": args.step, "revision": revision}
    result.update(text_logprobs(model, tokenizer, text))
    if args.format == "json":
        return json.dumps(result)
    rows = [
        f"{t!r}\t{'' if lp is None else f'{lp:.4f}'}"
        for t, lp in zip(result["tokens"], result["logprobs"], strict=True)
    ]
    return "\n".join(rows)


def _stage(args: argparse.Namespace) -> str:
    import os

    from seedscope.pipeline.runner import run_stage

    # dvc runs stages from the project root: anchor every path there, once, explicitly.
    if "SEEDSCOPE_ROOT" not in os.environ and Path("dvc.yaml").exists():
        os.environ["SEEDSCOPE_ROOT"] = str(Path.cwd().resolve())

    return f"rendered {run_stage(args.name, args.params)}"


def _validate(args: argparse.Namespace) -> str:
    from seedscope.pipeline.registry import STAGES
    from seedscope.pipeline.runner import read_params, validate_stage

    params = read_params(args.params)
    for name in STAGES:
        validate_stage(name, params)
    return "params OK"


def _dvc_yaml(args: argparse.Namespace) -> str:
    from seedscope.core.io import atomic_path
    from seedscope.core.paths import project_root
    from seedscope.pipeline.dvcfile import dvc_yaml

    path = project_root() / "dvc.yaml"
    text = dvc_yaml()
    if args.check:
        if not path.is_file() or path.read_text() != text:
            raise SeedscopeError(
                f"{path.name} is not what the stage registry generates.",
                "run `seedscope dvc-yaml` after editing seedscope.pipeline.registry or an import.",
            )
        return f"{path.name} is current"
    with atomic_path(path) as tmp:
        tmp.write_text(text)
    return f"wrote {path.name} from the stage registry"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="seedscope", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("suites", help="registered suites and their runs")
    p.add_argument("--format", choices=["text", "json"], default="text")
    p.set_defaults(func=_suites)

    p = sub.add_parser("checkpoints", help="checkpoint steps and revisions of a suite")
    p.add_argument("suite")
    p.add_argument("--run")
    p.add_argument("--format", choices=["text", "json"], default="text")
    p.set_defaults(func=_checkpoints)

    p = sub.add_parser("logprobs", help="per-token log-probs of a text under one checkpoint")
    p.add_argument("--suite", required=True)
    p.add_argument("--run", required=True, help="short name (alias) or repo id")
    p.add_argument("--step", required=True, type=int)
    p.add_argument("--text-file", required=True)
    p.add_argument("--format", choices=["text", "json"], default="text")
    p.set_defaults(func=_logprobs)

    p = sub.add_parser("stage", help="run one pipeline stage (dvc.yaml calls this)")
    p.add_argument("name")
    p.add_argument("--params", default=None, help="params file (default: params.yaml)")
    p.set_defaults(func=_stage)

    p = sub.add_parser("dvc-yaml", help="write dvc.yaml from the stage registry")
    p.add_argument("--check", action="store_true", help="only check it is current")
    p.set_defaults(func=_dvc_yaml)

    p = sub.add_parser("validate", help="check params.yaml for every stage, run nothing")
    p.add_argument("--params", default=None)
    p.set_defaults(func=_validate)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        output = args.func(args)
    except SeedscopeError as exc:
        # One line, whatever a wrapped library message held (YAML marks, reprs of paths).
        print(f"seedscope: error: {' '.join(str(exc).split())}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    if output:
        print(output)
    return 0


if __name__ == "__main__":
    sys.exit(main())
