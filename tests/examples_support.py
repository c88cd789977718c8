"""Load a script of examples/ as a module (the examples are scripts, not a package)."""
import importlib.util
import os

EXAMPLES = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "examples")


def load_example(filename: str):
    """examples/<filename> imported under a private module name (its main() is not run)."""
    spec = importlib.util.spec_from_file_location(f"{filename.removesuffix('.py')}_under_test",
                                                  os.path.join(EXAMPLES, filename))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
