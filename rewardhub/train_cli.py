"""`rewardhub train` and `rewardhub demo`: GRPO-family training from the command line."""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

console = Console(stderr=True, soft_wrap=True)
CONFIG_ERROR_EXIT = 2  # what click answers a bad parameter with


def config_error(command: str, message: str) -> typer.Exit:
    """One line on stderr, ``rewardhub <command>: <message>``, and the exit to raise.

    A configuration problem is the user's to fix: it gets no traceback and no usage box, and (because
    callers check before they start) nothing has been created yet.
    """
    typer.echo(f"rewardhub {command}: {' '.join(message.split())}", err=True)
    return typer.Exit(CONFIG_ERROR_EXIT)


def _progress() -> Progress:
    return Progress(TextColumn("[bold]step"), MofNCompleteColumn(), BarColumn(), TimeElapsedColumn(),
                    TextColumn("{task.fields[status]}"), console=console)


def _status(metrics: dict[str, Any]) -> str:
    return (f"reward {metrics.get('reward_mean', float('nan')):.3f}  non-ok {metrics.get('non_ok_share', 0.0):.0%}  "
            f"loss {metrics.get('loss', 0.0):+.4f}  {metrics.get('step_time_s', 0.0):.1f}s/step")


def run_training(config: Any, *, title: str) -> Any:
    """Train ``config`` with a progress bar; write the reward curve PNG next to the metrics."""
    from trainer.grpo import GRPOTrainer
    from trainer.plot import plot_reward_curve

    trainer = GRPOTrainer(config)
    resumed = trainer.resume()
    if not trainer.collective.is_main:  # the main rank shows progress and writes the plot
        return trainer.train()
    with _progress() as progress:
        task = progress.add_task("train", total=config.max_steps, completed=trainer.step,
                                 status="resumed" if resumed else "")

        def on_step(step: int, metrics: dict[str, Any]) -> None:
            progress.update(task, completed=step, status=_status(metrics))

        outcome = trainer.train(on_step=on_step)
    if outcome.history:
        png = plot_reward_curve(outcome.history, trainer.output_dir / "reward_curve.png", title=title)
        console.print(f"reward curve: {png}")
    console.print(f"{outcome.status} after {outcome.steps} steps; checkpoint {outcome.checkpoint}")
    return outcome


def deepspeed_command(config_path: Path, num_gpus: int, master_port: int) -> list[str]:
    """The ``deepspeed`` launcher running ``rewardhub train CONFIG`` once per GPU (rank)."""
    return [sys.executable, "-m", "deepspeed.launcher.runner", "--num_gpus", str(num_gpus),
            "--master_port", str(master_port), "--no_local_rank", "--module", "rewardhub.cli",
            "train", str(config_path)]


def _gpu_count() -> int:
    import torch

    return torch.cuda.device_count() if torch.cuda.is_available() else 1


def train(
    config_path: Annotated[Path, typer.Argument(help="A run config (YAML).", exists=False)],
    num_gpus: Annotated[int | None, typer.Option(
        "--num-gpus", min=1, help="Ranks for a config with a deepspeed section (default: every visible GPU, "
                                  "or 1 on CPU); runs the deepspeed launcher.")] = None,
    master_port: Annotated[int, typer.Option(help="Rendezvous port of the ranks (deepspeed runs).")] = 29500,
) -> None:
    """Train a model with GRPO-family RL against the reward API (config: see README)."""
    from trainer.config import ConfigError, load_config
    from trainer.rewards import RewardServiceError

    try:
        config = load_config(config_path)
        check_run_inputs(config)
    except ConfigError as exc:
        raise config_error("train", f"config error: {exc}") from None
    if num_gpus is not None and config.deepspeed is None:
        raise config_error("train", "--num-gpus needs a deepspeed section in the config")
    if config.deepspeed is not None and "LOCAL_RANK" not in os.environ:
        # Not yet inside a rank: start one per GPU and wait for them.
        from trainer.distributed import check_world_size

        ranks = num_gpus or _gpu_count()
        try:
            check_world_size(config, ranks)
        except ValueError as exc:
            raise config_error("train", f"config error: {exc} (--num-gpus {ranks})") from None
        command = deepspeed_command(config_path.resolve(), ranks, master_port)
        console.print(f"launching: {' '.join(command)}")
        raise typer.Exit(subprocess.call(command))
    try:
        run_training(config, title=config_path.stem)
    except RewardServiceError as exc:
        console.print(f"[red]training stopped:[/] {exc}")
        raise typer.Exit(1) from None


def check_run_inputs(config: Any) -> None:
    """What a run reads, checked before it creates its ``output_dir``: the dataset (every row) and the
    model directory. Raises :class:`trainer.config.ConfigError` naming the field."""
    from trainer.config import ConfigError
    from trainer.data import DatasetError, load_config_rows, load_rows

    try:
        load_config_rows(config)
    except DatasetError as exc:
        raise ConfigError(f"dataset: {exc}") from None
    evaluation = getattr(config, "eval", None)  # local configs only (trainer.config.LocalRunConfig)
    if evaluation is not None:
        try:
            load_rows(evaluation.data)
        except DatasetError as exc:
            raise ConfigError(f"eval.data: {exc}") from None
    if config.model.path is not None and not Path(config.model.path).is_dir():
        raise ConfigError(f"model.path: {config.model.path} is not a local model directory")


def demo(
    steps: Annotated[int, typer.Option(help="Training steps.")] = 60,
    seed: Annotated[int, typer.Option(help="Seed of the model and the run.")] = 0,
    work_dir: Annotated[Path | None, typer.Option(help="Where to put the run (default: a temp dir).")] = None,
) -> None:
    """A tiny model learns a verifiable task through the real reward API (embedded default, CPU: about 40 s on 2 cores)."""
    from rewardhub.demo import demo_config, embedded_server

    work = work_dir or Path(tempfile.mkdtemp(prefix="rewardhub-demo-"))
    os.environ.setdefault("REWARDHUB_DATA_DIR", str(work / "data"))
    console.print(f"demo run in {work}")
    with embedded_server() as server:
        os.environ["REWARDHUB_DEMO_KEY"] = server.trainer_key
        config = demo_config(work, url=server.url, project_id=server.project_id, steps=steps, seed=seed)
        outcome = run_training(config, title="rewardhub demo: reply with a number containing 7")
    curve = [round(float(m["reward_mean"]), 2) for m in outcome.history]
    console.print(f"reward per step: {curve}")
