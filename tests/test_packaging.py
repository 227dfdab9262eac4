"""What an installation of the project gives another project: one import name, `losses`, and a light import."""

import inspect
import os
import pkgutil
import subprocess
import sys
import zipfile

import losses

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
EXPERIMENT_PACKAGES = ("flax", "optax", "matplotlib", "sklearn", "tensorboardX", "rich", "orbax", "absl",
                       "ml_collections", "chex", "models", "tasks", "data", "configs", "torch")


def test_the_wheel_installs_the_one_top_level_name_losses(tmp_path):
  subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w",
                  str(tmp_path), ROOT], check=True, capture_output=True, cwd=tmp_path)
  (wheel,) = tmp_path.glob("*.whl")
  with zipfile.ZipFile(wheel) as archive:
    names = archive.namelist()
    metadata = next(archive.read(n).decode() for n in names if n.endswith(".dist-info/METADATA"))
  top_level = {name.split("/")[0] for name in names if not name.split("/")[0].endswith(".dist-info")}
  assert top_level == {"losses"}
  assert "losses/py.typed" in names
  required = [line.split(" ", 1)[1] for line in metadata.splitlines()
              if line.startswith("Requires-Dist:") and "extra ==" not in line]
  assert sorted(r.split(">")[0].split("=")[0].strip() for r in required) == ["chex", "jax", "numpy", "optax"]


def test_import_losses_loads_none_of_the_experiment_packages():
  code = ("import sys, losses; print(','.join(sorted({m.split('.')[0] for m in sys.modules} & set(sys.argv[1:]))))")
  # Run outside the checkout, so that only the installed package can be found.
  result = subprocess.run([sys.executable, "-c", code, *EXPERIMENT_PACKAGES], check=True, capture_output=True,
                          text=True, cwd="/")
  assert result.stdout.strip() == ""


def test_the_readmes_api_reference_command_names_every_public_module():
  with open(os.path.join(ROOT, "README.md"), encoding="utf-8") as f:
    readme = f.read()
  block = readme.split("<!-- api-command -->")[1].split("<!-- /api-command -->")[0]
  named = set(block.split("-o docs/api")[1].split("```")[0].split())
  # pdoc documents the submodules that `losses.__all__` exports with `losses` itself; naming them again is a
  # warning, which the command turns into an error.
  exported = {f"losses.{name}" for name in losses.__all__ if inspect.ismodule(getattr(losses, name))}
  public = {"losses", *(f"losses.{module.name}" for module in pkgutil.iter_modules(losses.__path__)
                        if not module.name.startswith("_"))}
  assert named == public - exported
