"""SandboxFusion-compatible one-shot runs: compile (when the language has a step for it), run, report.

Status semantics (theirs): ``Success`` when the program ran and exited 0; ``Failed`` when the
user's code failed (a compile error, a non-zero exit, a signal, the time limit, the memory limit)
or the request cannot be run as given (an unsupported language, a file name that leaves the work
dir) — a final answer that clients do not retry; ``SandboxError`` only when the platform itself
failed. ``run_timeout`` and ``compile_timeout`` are wall-clock seconds. A program that kills
itself reports ``Finished`` with its negative signal number as ``return_code``; only the time
limit reports ``TimeLimitExceeded`` (the wall clock, or the CPU-seconds rlimit's ``SIGXCPU`` that a
busy multi-threaded program meets first). Output beyond the cap is dropped and said so
(``truncated`` and the message).

``files`` as theirs: an entry whose content is ``null``, or whose name contains
``IGNORE_THIS_FILE``, is not written. ``fetch_files`` as theirs: relative to the work dir or
absolute; a file that is not there is left out of ``files`` (and, here, named in the message).
"""

from __future__ import annotations

import base64
import posixpath
import signal
import socket
from typing import Any

from services.common.sandbox_api import CommandRunResult, RunCodeRequest, RunCodeResponse
from services.common.settings import Settings, get_settings
from services.sandbox import languages, runner


def bad_file_name(name: str) -> str | None:
    """Why ``name`` cannot be written into the work dir, or None."""
    if not name or "\x00" in name:
        return "is empty or contains NUL"
    if name.startswith("/"):
        return "is absolute; file names are relative to the work dir"
    normal = posixpath.normpath(name)
    if normal == ".." or normal.startswith("../") or normal == ".":
        return "leaves the work dir"
    return None


def written_files(files: dict[str, str | None]) -> dict[str, str]:
    """The entries SandboxFusion writes: those with content, and not named ``...IGNORE_THIS_FILE...``."""
    return {name: content for name, content in files.items()
            if isinstance(content, str) and "IGNORE_THIS_FILE" not in name}


def _failed(message: str) -> RunCodeResponse:
    return RunCodeResponse(status="Failed", message=message, executor_pod_name=socket.gethostname())


async def run_code(req: RunCodeRequest, settings: Settings | None = None, *,
                   project: str | None = None) -> RunCodeResponse:
    settings = settings or get_settings()
    language = languages.resolve(req.language)
    if language is None:
        supported = ", ".join(languages.LANGUAGES)
        return _failed(f"language {req.language!r} is not supported here; supported: {supported}")
    tool = languages.tool_path(language, settings.sandbox_python)
    if tool is None:
        return _failed(f"language {language.name!r} has no toolchain on this sandbox ({language.tool} is missing)")
    for name in written_files(req.files):
        problem = bad_file_name(name)
        if problem:
            return _failed(f"files[{name!r}] {problem}")
    memory_mb = req.memory_limit_MB if req.memory_limit_MB != -1 else settings.sandbox_memory_mb
    run_timeout = req.run_timeout if req.run_timeout is not None else settings.sandbox_timeout_s
    job = _job(req, language, tool, settings, memory_mb=memory_mb, run_timeout=run_timeout)
    limit = run_timeout + (req.compile_timeout if language.compile_argv else 0.0)
    result = await runner.execute(job, limit_s=limit, settings=settings, project=project)
    return to_response(result, settings)


def _job(req: RunCodeRequest, language: languages.Language, tool: str, settings: Settings, *,
         memory_mb: int, run_timeout: float) -> dict[str, Any]:
    files = written_files(req.files)
    files[language.source_file] = base64.b64encode(req.code.encode()).decode()
    limits = runner.limits_for(settings, timeout_s=run_timeout, memory_mb=memory_mb,
                               address_space=language.address_space_limit)
    job: dict[str, Any] = {
        "mode": "run", "files": files, "limits": limits.as_job(), "fetch_files": req.fetch_files,
        "output_bytes": settings.sandbox_max_output_bytes,
        "run": {"argv": language.run_argv(tool), "timeout_s": run_timeout,
                "stdin": base64.b64encode((req.stdin or "").encode()).decode()},
    }
    if language.compile_argv is not None:
        compile_limits = runner.limits_for(settings, timeout_s=req.compile_timeout,
                                           memory_mb=max(memory_mb, language.compile_memory_mb))
        job["compile"] = {"argv": language.compile_argv(tool), "timeout_s": req.compile_timeout,
                          "limits": compile_limits.as_job()}
    return job


def _timed_out(step: dict[str, Any]) -> bool:
    """The wall clock, or the CPU-seconds rlimit (``SIGXCPU``: several busy threads meet it first)."""
    return bool(step["timed_out"]) or step["exit_code"] == -signal.SIGXCPU


def _command_result(step: dict[str, Any]) -> CommandRunResult:
    timed_out = _timed_out(step)
    return CommandRunResult(status="TimeLimitExceeded" if timed_out else "Finished", execution_time=step["wall_s"],
                            return_code=None if timed_out else step["exit_code"],
                            stdout=runner.decoded(step, "stdout"), stderr=runner.decoded(step, "stderr"),
                            truncated=bool(step["truncated"]))


def to_response(result: runner.SupervisorResult, settings: Settings) -> RunCodeResponse:
    pod = socket.gethostname()
    if result.fault is not None:
        return RunCodeResponse(status="SandboxError", message=result.fault, executor_pod_name=pod)
    data = result.data
    compiled = data.get("compile")
    compile_result = _command_result(compiled) if compiled else None
    if compiled and (_timed_out(compiled) or compiled["exit_code"] != 0):
        return RunCodeResponse(status="Failed", message="compilation failed" if not _timed_out(compiled)
                               else "compilation exceeded its time limit",
                               compile_result=compile_result, executor_pod_name=pod)
    ran = data["run"]
    run_result = _command_result(ran)
    files, missing = _fetched(data.get("files") or {})
    notes = []
    if ran["memory_exceeded"]:
        notes.append("memory limit exceeded")
    elif _timed_out(ran):
        notes.append("time limit exceeded")
    elif ran["exit_code"] < 0:
        notes.append(f"program was killed by signal {-ran['exit_code']} ({_signal_name(-ran['exit_code'])})")
    elif ran["exit_code"] != 0:
        notes.append(f"program exited with code {ran['exit_code']}")
    if ran["truncated"]:
        notes.append(f"output truncated to {settings.sandbox_max_output_bytes} bytes per stream")
    if missing:
        notes.append("not fetched: " + "; ".join(missing))
    ok = not _timed_out(ran) and not ran["memory_exceeded"] and ran["exit_code"] == 0
    return RunCodeResponse(status="Success" if ok else "Failed", message="; ".join(notes),
                           compile_result=compile_result, run_result=run_result, executor_pod_name=pod,
                           files=files)


def _signal_name(number: int) -> str:
    try:
        return signal.Signals(number).name
    except ValueError:
        return "unknown signal"


def _fetched(entries: dict[str, dict[str, str]]) -> tuple[dict[str, str], list[str]]:
    files: dict[str, str] = {}
    missing: list[str] = []
    for name, entry in entries.items():
        if "content" in entry:
            files[name] = entry["content"]
        else:
            missing.append(f"{name} ({entry.get('error', 'unreadable')})")
    return files, missing
