"""The `shoal` command line (`shoal` or `python -m shoal.cli`).

Importing this package is cheap: the SDK, the control plane and rich are imported by the commands that need them.
"""

from __future__ import annotations

import click

from .app_cmds import app_group
from .container_cmds import container_group, function_group
from .controlplane_cmds import down, status, up
from .dashboard_cmds import dashboard
from .deploy_cmds import deploy
from .exec_cmds import container_exec, shell
from .image_cmds import image_group
from .run import run
from .sandbox_cmds import sandbox_group
from .secret_cmds import secret_group
from .serve_cmds import serve
from .server_cmds import server_group
from .storage_cmds import dict_group, queue_group
from .volume_cmds import volume_group
from .workspace_cmds import token_group, workspace_group


def _print_version(ctx: click.Context, param: click.Parameter, value: bool) -> None:
    if not value or ctx.resilient_parsing:
        return
    from .. import __version__

    click.echo(f"shoal {__version__}")
    ctx.exit()


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--version", is_flag=True, expose_value=False, is_eager=True, callback=_print_version,
              help="Print the version and exit.")
def cli() -> None:
    """shoal: self-hostable serverless compute for Python that speaks Modal's API."""


cli.add_command(run)
cli.add_command(deploy)
cli.add_command(serve)
cli.add_command(up)
cli.add_command(down)
cli.add_command(status)
cli.add_command(dashboard)
cli.add_command(app_group)
cli.add_command(container_group)
cli.add_command(function_group)
cli.add_command(server_group)
cli.add_command(dict_group)
cli.add_command(queue_group)
cli.add_command(sandbox_group)
cli.add_command(secret_group)
cli.add_command(volume_group)
cli.add_command(image_group)
cli.add_command(workspace_group)
cli.add_command(token_group)
cli.add_command(shell)
container_group.add_command(container_exec)


def main() -> None:
    cli(prog_name="shoal")


__all__ = ["cli", "main"]
