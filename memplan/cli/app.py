"""The typer application: one command per module, registered here."""

from __future__ import annotations

import typer

from memplan.cli import compare, estimate, gpus, measure, models, plan, serve, trace
from memplan.cli.options import BATCH_SEMANTICS
from memplan.cli.usage import Group, version_option

app = typer.Typer(
    name="memplan",
    help="GPU memory planner for RL fine-tuning of LLMs (PPO, GRPO, ReMax, RLOO, DPO, SFT).\n\n"
    + BATCH_SEMANTICS,
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    cls=Group,  # usage errors as one `error: --flag: …` line, like memplan's own
)
app.callback()(version_option)

app.command("estimate")(estimate.estimate)
app.command("compare")(compare.compare)
app.command("plan")(plan.plan)
app.command("trace")(trace.trace)
app.command("measure")(measure.measure)
app.command("models")(models.models)
app.command("gpus")(gpus.gpus)
app.command("serve")(serve.serve)
app.command("validate")(__import__("memplan.cli.validate", fromlist=["validate"]).validate)
app.command("time")(__import__("memplan.cli.time", fromlist=["time"]).time)
