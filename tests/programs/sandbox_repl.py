"""A stateful Python REPL in a sandbox, driven over stdin/stdout one statement at a time; state persists between
statements, an error does not end the session, and the sandbox is found again by name.

    shoal run sandbox_repl.py
"""

import shoal as modal

app = modal.App("program-sandbox-repl")

DRIVER = r"""
import sys, traceback
env = {}
for line in sys.stdin:
    try:
        try:
            value = eval(compile(line, "<repl>", "eval"), env)
            if value is not None:
                print(repr(value))
        except SyntaxError:
            exec(compile(line, "<repl>", "exec"), env)
    except Exception as e:
        print(f"{type(e).__name__}: {e}")
    print("\x00", flush=True)  # end of this statement's output
"""


class Repl:
    def __init__(self, sb: modal.Sandbox):
        self.sb = sb
        self.lines = iter(sb.stdout)

    def run(self, statement: str) -> list[str]:
        self.sb.stdin.write(statement + "\n")
        self.sb.stdin.drain()
        out = []
        for line in self.lines:
            if line == "\x00\n":
                return out
            out.append(line.rstrip("\n"))
        return out


@app.local_entrypoint()
def main():
    sb = modal.Sandbox.create("python3", "-u", "-c", DRIVER, app=app, name="repl-session", timeout=120)
    repl = Repl(sb)
    for statement in ["x = 20", "x + 22", "y = [i * x for i in range(3)]", "y", "1 / 0", "len(y) + x",
                      "import os; print(os.environ['MODAL_SANDBOX_ID'] == os.environ['SHOAL_SANDBOX_ID'])"]:
        print(f">>> {statement}", *repl.run(statement), sep="\n")
    same = modal.Sandbox.from_name(app.name, "repl-session")
    print("found by name:", same.object_id == sb.object_id)
    sb.stdin.write_eof()
    sb.stdin.drain()
    sb.wait()
    print("exit:", sb.returncode)
