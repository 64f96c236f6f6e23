"""A multi-language code runner: snippets in four languages run in one long-lived sandbox, each exec with its own
timeout, a program written into the sandbox's files and run, a runaway snippet killed by its timeout; and a
function that starts a sandbox of its own app (no `app=` inside a container).

    shoal run sandbox_code_runner.py
"""

import shoal as modal

app = modal.App("program-sandbox-runner")

RUNNERS = {
    "python": ["python3", "-c"],
    "bash": ["bash", "-c"],
    "perl": ["perl", "-e"],
    "awk": ["awk", "BEGIN { %s }"],
}
SNIPPETS = {
    "python": "print(sum(i * i for i in range(10)))",
    "bash": "for i in 1 2 3; do printf '%s-' $i; done; echo",
    "perl": 'print join(",", reverse(1..4)), "\\n";',
    "awk": 'printf "%d\\n", 2 ^ 10',
}


def run(sb: modal.Sandbox, lang: str, code: str, timeout: int = 30) -> tuple[int, str, str]:
    argv = RUNNERS[lang]
    args = [argv[0], argv[1] % code] if "%s" in argv[1] else [*argv, code]
    p = sb.exec(*args, timeout=timeout)
    out, err = p.stdout.read(), p.stderr.read()
    return p.wait(), out.strip(), err.strip()


@app.function()
def run_in_own_sandbox(code: str) -> tuple[int, str]:
    sb = modal.Sandbox.create("python3", "-c", code, timeout=60)
    sb.wait(raise_on_termination=False)
    return sb.returncode, sb.stdout.read().strip()


@app.local_entrypoint()
def main():
    sb = modal.Sandbox.create(app=app, timeout=300, workdir="/tmp")
    for lang, code in SNIPPETS.items():
        code_, out, _ = run(sb, lang, code)
        print(f"{lang}: {out} (exit {code_})")
    code_, _, err = run(sb, "python", "raise SystemExit('bad input')")
    print(f"error: exit {code_} {err}")
    sb.filesystem.write_text("import sys\nprint(len(sys.argv[1:]), 'args')\n", "/tmp/prog/main.py")
    p = sb.exec("python3", "main.py", "a", "b", workdir="/tmp/prog")
    print("file:", p.stdout.read().strip())
    code_, _, _ = run(sb, "bash", "while true; do :; done", timeout=1)
    print("runaway killed:", code_ != 0, "sandbox alive:", sb.poll() is None)
    sb.terminate()
    print("from a function:", run_in_own_sandbox.remote("print(6 * 7)"))
