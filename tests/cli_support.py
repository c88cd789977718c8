"""Helpers for driving the CLI as a user does: a subprocess, files on disk, one-line errors."""
import os
import subprocess
import sys
import textwrap

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# a tiny package of model factories, written to a temp dir and put on PYTHONPATH
FACTORIES = textwrap.dedent('''
    import torch
    import torch.nn as nn


    class Concat(nn.Module):
        """Two convs concatenated: one group of 16 channels, a writes 0-7, b writes 8-15, c reads 0-15."""

        def __init__(self):
            super().__init__()
            self.a = nn.Conv2d(3, 8, 3, padding=1)
            self.b = nn.Conv2d(3, 8, 3, padding=1)
            self.bn = nn.BatchNorm2d(16)
            self.c = nn.Conv2d(16, 4, 1)

        def forward(self, x):
            return self.c(torch.relu(self.bn(torch.cat([self.a(x), self.b(x)], 1))))


    def concat():
        return Concat()


    def scripted():
        return torch.jit.script(Concat().eval())


    def traced():
        return torch.jit.trace(Concat().eval(), torch.randn(1, 3, 8, 8))


    def whisper():
        """Concat whose outputs are all below 1e-6: any file within ONNX Runtime's tolerance of zero passes parity."""
        model = Concat()
        with torch.no_grad():
            model.c.weight.mul_(1e-9)
            model.c.bias.zero_()
        return model
''')


def write_factories(directory) -> str:
    package = os.path.join(directory, "gp_cli_models")
    os.makedirs(package, exist_ok=True)
    with open(os.path.join(package, "__init__.py"), "w") as f:
        f.write("")
    with open(os.path.join(package, "zoo.py"), "w") as f:
        f.write(FACTORIES)
    return str(directory)


def cli_env(*extra_path):
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([REPO, *map(str, extra_path), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    return env


def run_cli(*args, cwd=None, path=(), timeout=600):
    """`python -m graphprune ARGS` with umask 022 (so file modes are predictable) and stderr not a terminal."""
    return subprocess.run([sys.executable, "-m", "graphprune", *map(str, args)], capture_output=True, text=True,
                          cwd=cwd, env=cli_env(*path), timeout=timeout, preexec_fn=lambda: os.umask(0o022))


def assert_one_line_error(proc, fragment):
    assert proc.returncode == 2, (proc.returncode, proc.stderr)
    assert "Traceback" not in proc.stderr, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr  # stderr is not a terminal: no progress lines either
    assert lines[0].startswith("graphprune: error:") and fragment in lines[0], lines[0]
