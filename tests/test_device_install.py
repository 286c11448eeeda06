"""The device side installs without fighting JetPack.

- The base install (``pip install biformer-edge``) is torch-free and ships no OpenCV wheel; exporting is the
  ``export`` extra, which ``all`` and ``test`` (the README's two commands) include.
- A fresh venv with only the base package says in one line what to install for OpenCV, and with the ``device`` extra
  runs ``biformer-parity`` on a Jetson artifact exported here, with ``import torch`` failing in that venv.
- The Jetson container recipe (docker/jetson/Dockerfile) parses with Docker's own parser (BuildKit's, through the
  ``dockerfile`` package), starts from NVIDIA's L4T JetPack r36 image, copies only files this checkout has, and its
  ``pip install`` resolves for a JetPack 6 machine (Python 3.10, aarch64, Ubuntu 22.04's glibc 2.35) without torch,
  without an OpenCV wheel and with numpy < 2; JetPack 7's constraints resolve likewise (Python 3.12, glibc 2.39).

``docker build`` cannot run here (no aarch64 machine, no NVIDIA registry): what the image does when built is checked
by the Dockerfile's own last RUN step on the device. The pip steps need the package index: without it they skip.
"""
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import zipfile
from configparser import ConfigParser
from fnmatch import fnmatch
from pathlib import Path

import pytest

from biformer_edge.cli import export_main
from tests.helpers import SIZE, run_cli

ROOT = Path(__file__).resolve().parent.parent
DOCKERFILE = ROOT / "docker" / "jetson" / "Dockerfile"
PIP_TIMEOUT = 300

# Docker's instruction set (the Dockerfile reference); BuildKit's parser accepts any word, its dispatcher does not.
DOCKER_INSTRUCTIONS = {"ADD", "ARG", "CMD", "COPY", "ENTRYPOINT", "ENV", "EXPOSE", "FROM", "HEALTHCHECK", "LABEL",
                       "MAINTAINER", "ONBUILD", "RUN", "SHELL", "STOPSIGNAL", "USER", "VOLUME", "WORKDIR"}

# The machines the JetPack constraints are for: Python and glibc of the Ubuntu release each JetPack is built on
# (JetPack 6: Ubuntu 22.04, Python 3.10, glibc 2.35; JetPack 7: Ubuntu 24.04, Python 3.12, glibc 2.39), and the
# CUDA major of each (12.6 and 13.0), which cuda-python must match.
JETPACKS = {
    "constraints-jetpack6.txt": {"python": "3.10", "glibc": 35, "cuda_python": "12.6."},
    "constraints-jetpack7.txt": {"python": "3.12", "glibc": 39, "cuda_python": "13."},
}


def pip(*args, python: str = sys.executable, cwd=None, timeout: int = PIP_TIMEOUT) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PIP_REQUIRE_VIRTUALENV")}
    env["PIP_DISABLE_PIP_VERSION_CHECK"] = "1"
    return subprocess.run([python, "-m", "pip", *args], capture_output=True, text=True, cwd=cwd, timeout=timeout,
                          env=env)


def aarch64_platforms(glibc_minor: int) -> list[str]:
    """pip's --platform flags for an aarch64 Linux with glibc 2.<glibc_minor>: pip matches them literally, so every
    manylinux tag that glibc runs is named (a wheel tagged manylinux_2_28 installs on glibc 2.35)."""
    tags = ["manylinux2014_aarch64"] + [f"manylinux_2_{m}_aarch64" for m in range(17, glibc_minor + 1)]
    return [flag for tag in tags for flag in ("--platform", tag)]


@pytest.fixture(scope="module")
def index():
    """Skip the pip tests when the package index cannot be reached (a dry run of one small pinned package)."""
    proc = pip("install", "--dry-run", "--no-deps", "--ignore-installed", "-q", "tqdm==4.70.1", timeout=120)
    if proc.returncode != 0:
        pytest.skip(f"package index unreachable: {proc.stderr.strip().splitlines()[-1:]}")


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    """This checkout's wheel, built from a copy of the package's files (no build output in the work tree)."""
    src = tmp_path_factory.mktemp("checkout")
    for name in ("setup.py", "setup.cfg", "pyproject.toml", "MANIFEST.in", "README.md"):
        shutil.copy2(ROOT / name, src / name)
    for name in ("biformer_edge", "export", "calibration"):
        shutil.copytree(ROOT / name, src / name, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    out = tmp_path_factory.mktemp("wheel")
    proc = pip("wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(out), str(src))
    assert proc.returncode == 0, proc.stderr[-2000:]
    return next(out.glob("*.whl"))


# --- the package's metadata -------------------------------------------------------------------------------------


def extras() -> dict[str, set[str]]:
    """setup.cfg's install_requires ('') and extras, as sets of project names (interpolation resolved)."""
    cfg = ConfigParser()
    cfg.read(ROOT / "setup.cfg")
    names = {"": cfg["options"]["install_requires"]}
    names.update(cfg["options.extras_require"])
    project = re.compile(r"^\s*([A-Za-z0-9][A-Za-z0-9._-]*)")
    return {extra: {project.match(line).group(1).lower() for line in text.splitlines() if project.match(line)}
            for extra, text in names.items()}


def test_base_install_is_torch_free_and_the_readme_extras_still_bring_torch():
    x = extras()
    assert "torch" not in x[""] and not any(name.startswith("opencv") for name in x[""]), x[""]
    assert {"torch", "opencv-python-headless", "onnx", "onnxscript", "onnxruntime"} <= x["export"]
    assert {"opencv-python-headless", "onnxruntime"} == x["device"]
    assert "torch" not in x["jetson"] and not any(name.startswith(("opencv", "tensorrt")) for name in x["jetson"])
    assert "cuda-python" in x["jetson"]
    for readme_extra in ("all", "test"):   # the README's two commands install these
        assert x["export"] <= x[readme_extra], readme_extra


# --- the Dockerfile ----------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def instructions():
    dockerfile = pytest.importorskip("dockerfile", reason="the Dockerfile parser is in the test extra")
    try:
        return dockerfile.parse_file(str(DOCKERFILE))
    except dockerfile.GoParseError as exc:
        pytest.fail(f"{DOCKERFILE} does not parse: {exc}")


def shell_commands(instructions) -> list[list[str]]:
    """Each RUN's shell form split into its '&&'-joined commands, each as argv."""
    commands = []
    for ins in instructions:
        if ins.cmd.upper() == "RUN":
            assert not ins.json, f"line {ins.start_line}: use the shell form, its steps are checked here"
            commands += [shlex.split(part) for part in " ".join(ins.value).split("&&")]
    return commands


def pip_install_args(instructions) -> list[str]:
    """The arguments of the Dockerfile's one ``pip install`` (what the image installs from PyPI)."""
    installs = [argv[argv.index("install") + 1:] for argv in shell_commands(instructions)
                if argv and argv[0] in ("pip", "pip3") and "install" in argv]
    assert len(installs) == 1, installs
    return installs[0]


def copies(instructions) -> list[tuple[list[str], str, str]]:
    """(sources, destination, WORKDIR at that point) of every COPY."""
    workdir, found = "/", []
    for ins in instructions:
        if ins.cmd.upper() == "WORKDIR":
            workdir = os.path.join(workdir, ins.value[0])
        elif ins.cmd.upper() == "COPY":
            assert not ins.flags, f"line {ins.start_line}: COPY {ins.flags} (from another stage or with options)"
            *sources, dest = ins.value
            found.append((sources, dest, workdir))
        elif ins.cmd.upper() == "RUN" and "pip install" in " ".join(ins.value):
            found.append(([], "", workdir))   # marks where pip runs
    return found


def test_dockerfile_is_jetpack6_l4t_with_jetpacks_own_tensorrt_and_opencv(instructions):
    unknown = [(i.start_line, i.cmd) for i in instructions if i.cmd.upper() not in DOCKER_INSTRUCTIONS]
    assert not unknown
    bases = [i.value[0] for i in instructions if i.cmd.upper() == "FROM"]
    assert len(bases) == 1 and re.fullmatch(r"nvcr\.io/nvidia/l4t-jetpack:r36\.(\d+)\.\d+", bases[0]), bases
    assert int(bases[0].split(".")[-2]) >= 4   # r36.4 = JetPack 6.1/6.2: CUDA 12.6, which the cuda-python pin matches
    commands = shell_commands(instructions)
    apt = {word for argv in commands if argv[:2] == ["apt-get", "install"] for word in argv[2:]}
    assert {"python3-libnvinfer", "libnvinfer-bin", "libopencv-python", "python3-venv"} <= apt, apt
    assert "python3-opencv" not in apt   # Ubuntu's OpenCV conflicts with NVIDIA's libopencv
    venvs = [argv for argv in commands if argv[:3] == ["python3", "-m", "venv"]]
    assert venvs and all("--system-site-packages" in argv for argv in venvs)
    env_path = " ".join(" ".join(i.value) for i in instructions if i.cmd.upper() == "ENV")
    assert "/usr/src/tensorrt/bin" in env_path   # trtexec, where build_engine.sh also looks
    args = pip_install_args(instructions)
    assert args[args.index("-c") + 1] == "constraints-jetpack6.txt" and ".[jetson]" in args, args
    pip_words = " ".join(" ".join(argv) for argv in commands if argv and argv[0] in ("pip", "pip3"))
    assert not re.search(r"\b(torch|opencv|tensorrt)", pip_words), pip_words


def test_readme_jetson_steps_match_the_image(instructions):
    """The README's "On the Jetson" installs what the image installs, with constraints files that exist."""
    section = (ROOT / "README.md").read_text().split("\n## On the Jetson\n", 1)[1].split("\n## ", 1)[0]
    args = [a for a in pip_install_args(instructions) if a != "--no-cache-dir"]
    assert f"pip install {shlex.join(args)}\n" in section, shlex.join(args)
    named = set(re.findall(r"constraints-jetpack\d+\.txt", section))
    assert named == set(JETPACKS) and all((ROOT / name).is_file() for name in named)
    assert "python3 -m venv --system-site-packages" in section and "docker build -f docker/jetson/Dockerfile" in section


def dockerignore_patterns() -> list[str]:
    lines = (ROOT / ".dockerignore").read_text().splitlines()
    return [line.strip() for line in lines if line.strip() and not line.startswith("#")]


def test_every_copy_source_is_tracked_and_in_the_build_context(instructions):
    patterns = dockerignore_patterns()
    git = subprocess.run(["git", "ls-files"], capture_output=True, text=True, cwd=ROOT)
    tracked = git.stdout.splitlines() if git.returncode == 0 else None   # None: not a git checkout (an sdist)
    for sources, _, _ in copies(instructions):
        for source in sources:
            assert not Path(source).is_absolute() and ".." not in Path(source).parts, source
            assert (ROOT / source).exists(), f"COPY {source}: not in the repository"
            assert tracked is None or any(f == source or f.startswith(source.rstrip("/") + "/") for f in tracked), \
                f"COPY {source}: not tracked by git, so a clone has no such file"
            assert not any(fnmatch(source, p) or fnmatch(Path(source).parts[0], p) for p in patterns), source
    copied = {Path(s).name for sources, _, _ in copies(instructions) for s in sources}
    assert "constraints-jetpack6.txt" in copied and "setup.cfg" in copied


@pytest.fixture(scope="module")
def image_source(instructions, tmp_path_factory) -> Path:
    """The directory the image's pip installs from, rebuilt from this checkout with the Dockerfile's COPY lines."""
    image = tmp_path_factory.mktemp("image")
    pip_dir = None
    for sources, dest, workdir in copies(instructions):
        if not sources:
            pip_dir = workdir
            continue
        target = image / os.path.join(workdir, dest).lstrip("/")
        for source in sources:
            to = target / Path(source).name if dest.endswith("/") else target
            if (ROOT / source).is_dir():
                shutil.copytree(ROOT / source, to, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
            else:
                to.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(ROOT / source, to)
    assert pip_dir is not None
    return image / pip_dir.lstrip("/")


def test_the_copied_files_build_the_package(image_source, tmp_path):
    """What the image copies is enough for the wheel pip builds there, templates and recipes included."""
    proc = pip("wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(tmp_path), str(image_source))
    assert proc.returncode == 0, proc.stderr[-2000:]
    names = set(zipfile.ZipFile(next(tmp_path.glob("*.whl"))).namelist())
    assert {"biformer_edge/profiles/templates/build_engine.sh", "biformer_edge/profiles/templates/build_engine.py",
            "biformer_edge/profiles/jetson.toml", "biformer_edge/calibration_recipes/default.toml"} <= names


def resolve(args: list[str], constraints: str, cwd: Path, tmp_path: Path) -> subprocess.CompletedProcess:
    """``pip install ARGS`` resolved for the JetPack that ``constraints`` is for, downloading metadata only."""
    machine = JETPACKS[constraints]
    return pip("install", *args, "--dry-run", "--ignore-installed", "--no-build-isolation", "--target",
               str(tmp_path / "target"), "--report", str(tmp_path / "report.json"), "--only-binary=:all:",
               "--python-version", machine["python"], *aarch64_platforms(machine["glibc"]), cwd=cwd)


def assert_jetson_resolution(report: Path, constraints: str) -> None:
    installed = {i["metadata"]["name"].lower(): i["metadata"]["version"]
                 for i in json.loads(report.read_text())["install"]}
    assert "biformer-edge" in installed
    assert "torch" not in installed and not [name for name in installed if name.startswith("opencv")], installed
    assert int(installed["numpy"].split(".")[0]) < 2, installed["numpy"]
    assert installed["cuda-python"].startswith(JETPACKS[constraints]["cuda_python"]), installed


def test_the_images_pip_install_resolves_for_jetpack6(index, instructions, image_source, tmp_path):
    args = [a for a in pip_install_args(instructions) if a != "--no-cache-dir"]  # the image's own arguments
    proc = resolve(args, "constraints-jetpack6.txt", image_source, tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert_jetson_resolution(tmp_path / "report.json", "constraints-jetpack6.txt")


def test_jetpack7_install_resolves(index, wheel, tmp_path):
    constraints = str(ROOT / "constraints-jetpack7.txt")
    proc = resolve(["-c", constraints, f"{wheel}[jetson]"], "constraints-jetpack7.txt", tmp_path, tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert_jetson_resolution(tmp_path / "report.json", "constraints-jetpack7.txt")


@pytest.mark.parametrize("extra", ["device", "export"])
def test_jetpack_constraints_refuse_an_opencv_wheel(index, wheel, extra, tmp_path):
    """On a Jetson, an install that would bring pip's OpenCV (shadowing JetPack's) fails to resolve instead."""
    constraints = str(ROOT / "constraints-jetpack6.txt")
    proc = resolve(["-c", constraints, f"{wheel}[{extra}]"], "constraints-jetpack6.txt", tmp_path, tmp_path)
    assert proc.returncode != 0, proc.stdout[-2000:]
    assert "(constraint) opencv-python-headless<0" in proc.stdout + proc.stderr, proc.stdout[-2000:]  # pip's why


# --- a fresh venv, this checkout's wheel, no torch ---------------------------------------------------------------


@pytest.fixture(scope="module")
def jetson_artifact(tmp_path_factory) -> Path:
    """The artifact a user copies to a Jetson (FP16 ONNX, build scripts, the FP32 reference), exported here."""
    out = tmp_path_factory.mktemp("device-install") / "jetson"
    assert run_cli(export_main, ["--target", "jetson", *SIZE, "--output", out]) == 0
    return out


def imported_modules(importtime_stderr: str) -> set[str]:
    """Top-level module names from ``python -X importtime`` ('import time: self | cumulative | name' lines). CPython
    logs every import it attempts, failed ones too, so a name missing here was never even tried."""
    names = set()
    for line in importtime_stderr.splitlines():
        if line.startswith("import time:") and line.count("|") == 2:
            names.add(line.rsplit("|", 1)[1].strip().split(".")[0])
    return names


def run_in(venv: Path, *argv, cwd: Path) -> subprocess.CompletedProcess:
    """A device-side command in ``venv`` (a console script or a script path), under ``python -X importtime``."""
    script = argv[0] if "/" in str(argv[0]) else venv / "bin" / argv[0]
    return subprocess.run([str(venv / "bin" / "python"), "-X", "importtime", str(script), *map(str, argv[1:])],
                          capture_output=True, text=True, timeout=180, cwd=cwd)


def stderr_lines(proc: subprocess.CompletedProcess) -> list[str]:
    return [line for line in proc.stderr.splitlines() if not line.startswith("import time:")]


def test_fresh_venv_runs_the_device_side_without_torch(index, wheel, jetson_artifact, tmp_path):
    """pip install of this checkout's wheel in an empty venv: the base install says what to install for OpenCV, then
    with the device extra biformer-parity, biformer-bench and the video demo run the Jetson artifact on onnxruntime,
    with torch absent and never imported."""
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    python = str(venv / "bin" / "python")
    constraints = ["-c", str(ROOT / "constraints.txt")]
    demo = ROOT / "apps" / "video_segmentation.py"
    video = ["--artifact", jetson_artifact, "--input", "synthetic", "--seconds", "0.5", "--output", tmp_path / "v.mp4"]

    proc = pip("install", "-q", *constraints, str(wheel), python=python)   # the base install
    assert proc.returncode == 0, proc.stderr[-2000:]
    proc = subprocess.run([python, "-c", "import torch"], capture_output=True, text=True)
    assert proc.returncode != 0 and "No module named 'torch'" in proc.stderr
    for argv in (["biformer-parity", jetson_artifact], [demo, *video]):   # no OpenCV yet: one line, what to do
        proc = run_in(venv, *argv, cwd=tmp_path)
        assert proc.returncode == 2 and len(stderr_lines(proc)) == 1, proc.stderr[-2000:]
        assert stderr_lines(proc)[0].startswith("error: cv2 is not installed") and "[device]" in proc.stderr
    assert not (tmp_path / "v.mp4").exists()

    proc = pip("install", "-q", *constraints, f"{wheel}[device]", python=python)
    assert proc.returncode == 0, proc.stderr[-2000:]
    runs = {"parity": run_in(venv, "biformer-parity", jetson_artifact, cwd=tmp_path),
            "bench": run_in(venv, "biformer-bench", "--artifact", jetson_artifact, "--runs", "2", cwd=tmp_path),
            "video": run_in(venv, demo, *video, cwd=tmp_path)}
    for name, proc in runs.items():
        assert proc.returncode == 0, (name, proc.stdout[-2000:], stderr_lines(proc)[-20:])
        modules = imported_modules(proc.stderr)
        assert {"biformer_edge", "onnxruntime", "numpy"} <= modules, (name, sorted(modules))  # importtime was read
        assert "torch" not in modules, (name, sorted(modules))
    assert "Verdict: **pass**" in runs["parity"].stdout and "| onnxruntime |" in runs["parity"].stdout
    assert (tmp_path / "bench_results" / "bench.csv").is_file() and (tmp_path / "v.mp4").stat().st_size > 0

    # The cuda-python that constraints-jetpack6.txt pins (this machine's wheel of it) has the runtime bindings the
    # TensorRT Session loads first, and without a CUDA driver the Session says so instead of failing.
    proc = pip("install", "-q", "-c", str(ROOT / "constraints-jetpack6.txt"), "cuda-python", python=python)
    assert proc.returncode == 0, proc.stderr[-2000:]
    proc = subprocess.run([python, "-c", "from biformer_edge.backends.tensorrt import session as s; "
                           "print(s.load_cudart().__name__); print(s.cuda_unavailable())"],
                          capture_output=True, text=True, timeout=60, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    module, reason = proc.stdout.splitlines()
    assert module == "cuda.bindings.runtime" and (reason == "None" or reason.startswith("no CUDA GPU")), proc.stdout
