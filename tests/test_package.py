"""The wheel a user installs (``pip install visattn``, no checkout): it holds every module and every data file the
package reads, and the command lines the README names."""

import os
import re
import shutil
import subprocess
import sys
import zipfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_the_wheel_holds_every_module_data_file_and_command(tmp_path):
    source = tmp_path / "source"
    source.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(os.path.join(ROOT, name), source / name)
    shutil.copytree(os.path.join(ROOT, "visattn"), source / "visattn",
                    ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", str(source),
                    "-w", str(tmp_path / "dist")], check=True, capture_output=True, cwd=tmp_path)
    (wheel,) = (tmp_path / "dist").iterdir()
    with zipfile.ZipFile(wheel) as archive:
        held = set(archive.namelist())
        entry_points = next(archive.read(n).decode() for n in held if n.endswith(".dist-info/entry_points.txt"))
    files = {os.path.relpath(os.path.join(folder, name), source).replace(os.sep, "/")
             for folder, _, names in os.walk(source / "visattn") for name in names}
    assert "visattn/published.csv" in files  # read by visattn-benchmark for the published top-1
    assert sorted(files - held) == []  # modules and data files alike
    with open(os.path.join(ROOT, "pyproject.toml"), encoding="utf-8") as f:
        section = f.read().split("[project.scripts]")[1].split("\n[")[0]
    scripts = re.findall(r'^(\S+) = "(\S+)"$', section, re.M)
    assert len(scripts) >= 8 and all(f"{name} = {target}" in entry_points for name, target in scripts)
