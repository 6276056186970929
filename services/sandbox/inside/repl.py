"""A tool session's interpreter: a small REPL loop over a persistent globals dict.

``python3 -I repl.py REQUEST_FD ANSWER_FD``, started by ``session.py`` (the session's PID 1) as its
only direct child, under the same rlimits and seccomp programs as a one-shot run's program. It reads
length-prefixed JSON requests (4-byte big-endian length, then UTF-8 JSON) on ``REQUEST_FD`` and
answers each on ``ANSWER_FD``; what the code prints goes to this process's own stdout and stderr,
pipes the supervisor reads and caps.

- ``{"code": str}`` runs the code in the one namespace every request of the session shares, as a
  Python REPL does: when the last statement is an expression, its ``repr`` is printed (unless it
  is ``None``). The answer is ``{"ok": true}``, or ``{"ok": false}`` after an uncaught exception
  (``SyntaxError``, ``SystemExit`` and ``KeyboardInterrupt`` included), whose traceback is written
  to stderr without this file's frames.
- The first answer, ``{"ready": true}``, says the interpreter is up.

Nothing here is trusted: the code shares this process and may rewrite any of it, write its own
answers or close the pipes. The supervisor therefore decides time, memory and the end of the
session, and a forged answer only misreports the forger's own session.
"""

import ast
import builtins
import contextlib
import json
import os
import struct
import sys
import traceback
from types import CodeType
from typing import Any

_HEADER = struct.Struct(">I")
MAX_REQUEST_BYTES = 64 * 1024 * 1024


def _read_exactly(fd: int, size: int) -> bytes | None:
    chunks = []
    while size:
        chunk = os.read(fd, min(size, 1 << 20))
        if not chunk:
            return None
        chunks.append(chunk)
        size -= len(chunk)
    return b"".join(chunks)


def _send(fd: int, message: dict[str, Any]) -> None:
    data = json.dumps(message).encode("utf-8")
    view = memoryview(_HEADER.pack(len(data)) + data)
    while view:
        view = view[os.write(fd, view):]


def _compiled(code: str, name: str) -> tuple[CodeType, CodeType | None]:
    """The code as one or two code objects: the statements, and the last one when it is an
    expression (evaluated, so that its value can be shown)."""
    tree = ast.parse(code, filename=name, mode="exec")
    last: CodeType | None = None
    tail = tree.body[-1] if tree.body else None
    if isinstance(tail, ast.Expr):
        tree.body.pop()
        last = compile(ast.Expression(tail.value), name, "eval")
    return compile(tree, name, "exec"), last


def _flush() -> None:
    for stream in (sys.stdout, sys.stderr, sys.__stdout__, sys.__stderr__):
        with contextlib.suppress(Exception):  # the code replaced or closed it: nothing left to flush
            stream.flush()  # type: ignore[union-attr]


def _print_traceback(exc: BaseException) -> None:
    """The exception's traceback from the code's own frames on (this loop's frames left out)."""
    tb = exc.__traceback__
    while tb is not None and tb.tb_frame.f_code.co_filename == __file__:
        tb = tb.tb_next
    try:
        text = "".join(traceback.format_exception(type(exc), exc, tb))
    except Exception:  # an exception whose __str__ raises
        text = f"{type(exc).__name__}: <unprintable exception>\n"
    try:
        sys.stderr.write(text)
    except Exception:
        os.write(2, text.encode("utf-8", "replace"))


def main() -> None:
    request_fd, answer_fd = int(sys.argv[1]), int(sys.argv[2])
    work_dir = os.environ.get("HOME", "/work")
    sys.argv = [""]
    sys.path.insert(0, work_dir)  # like an interactive interpreter: modules written to /work import
    namespace = {"__name__": "__main__", "__builtins__": builtins, "__doc__": None}
    read_exactly, send, header = _read_exactly, _send, _HEADER  # bound: the code may shadow the globals
    send(answer_fd, {"ready": True})
    count = 0
    while True:
        head = read_exactly(request_fd, header.size)
        if head is None:
            return
        (size,) = header.unpack(head)
        if size > MAX_REQUEST_BYTES:
            return
        body = read_exactly(request_fd, size)
        if body is None:
            return
        count += 1
        ok = True
        try:
            statements, last = _compiled(json.loads(body)["code"], f"<cell {count}>")
            exec(statements, namespace)
            if last is not None:
                value = eval(last, namespace)
                if value is not None:
                    print(repr(value))
        except BaseException as exc:  # the code's uncaught exception, whatever it is
            ok = False
            _print_traceback(exc)
        _flush()
        send(answer_fd, {"ok": ok})


main()
