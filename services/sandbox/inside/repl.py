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
import os
import sys
import traceback
from types import CodeType

MAX_REQUEST_BYTES = 64 * 1024 * 1024
# The frames module sits beside this file, in a folder -I leaves off sys.path: on it only for the
# import, and out of sys.modules after, so that the code's own `import frames` finds its own module.
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from frames import read_frame, write_frame  # noqa: E402

del sys.path[0], sys.modules["frames"]


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
    read, send = read_frame, write_frame  # bound: the code may shadow the globals
    send(answer_fd, {"ready": True})
    count = 0
    while True:
        request = read(request_fd, MAX_REQUEST_BYTES)
        if request is None:
            return
        count += 1
        ok = True
        try:
            statements, last = _compiled(request["code"], f"<cell {count}>")
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
