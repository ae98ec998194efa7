"""Static checks of the Docker packaging: docker-compose.yml, docker/Dockerfile.cpu and .gpu, and
the trainer entrypoint docker/train-entrypoint.sh. No Docker engine is needed: the files are
parsed and checked against the repository (paths, volumes, healthchecks, dependencies) and against
the `cmhash` typer app (commands, flags, CMHASH_* variables).

Each check is a function returning a list of problems; the tests assert it is empty, and the
`test_checks_catch_*` tests feed broken copies to the same functions to show they fail."""

from __future__ import annotations

import copy
import fnmatch
import importlib
import json
import os
import pkgutil
import re
import shlex
import subprocess
import tomllib
from functools import lru_cache
from pathlib import Path

import click
import pytest
import typer
from typer.testing import CliRunner

yaml = pytest.importorskip("yaml")

ROOT = Path(__file__).resolve().parents[2]
COMPOSE_FILE = ROOT / "docker-compose.yml"
DOCKERFILES = {"cpu": ROOT / "docker" / "Dockerfile.cpu", "gpu": ROOT / "docker" / "Dockerfile.gpu"}
TRAIN_SCRIPT = ROOT / "docker" / "train-entrypoint.sh"
PACKAGES = ("model", "index", "service")

# Service -> the profiles it must belong to (empty: always started).
EXPECTED_PROFILES = {
    "cmhash": [],
    "trainer": ["train"],
    "etcd": ["milvus"],
    "minio": ["milvus"],
    "milvus": ["milvus"],
    "cmhash-milvus": ["milvus"],
    "cmhash-gpu": ["gpu"],
}
API_SERVICES = ("cmhash", "cmhash-milvus", "cmhash-gpu")
MUST_HAVE_HEALTHCHECK = ("cmhash", "cmhash-milvus", "cmhash-gpu", "milvus", "etcd", "minio")
DEPENDS_CONDITIONS = {"service_started", "service_healthy", "service_completed_successfully"}
DEFAULT_VAR = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::?-([^}]*))?\}")


# ---------------------------------------------------------------------------------------------
# Loading and parsing


def load_compose() -> dict:
    with COMPOSE_FILE.open() as f:
        return yaml.safe_load(f)


def interpolate(value: str) -> str:
    """Compose-style `${VAR:-default}` with the defaults (the variables are not set in tests)."""
    return DEFAULT_VAR.sub(lambda m: m.group(2) or "", value)


def parse_dockerfile(path: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs, continuation lines joined, comments dropped."""
    out: list[tuple[str, str]] = []
    buf = ""
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not buf and (not line or line.startswith("#")):
            continue
        if buf and line.startswith("#"):
            continue
        if line.endswith("\\"):
            buf += line[:-1] + " "
            continue
        buf += line
        instr, _, args = buf.strip().partition(" ")
        out.append((instr.upper(), args.strip()))
        buf = ""
    return out


def exec_form(args: str) -> list[str] | None:
    """The JSON (exec) form of ENTRYPOINT / CMD / HEALTHCHECK CMD, or None for the shell form."""
    try:
        value = json.loads(args)
    except json.JSONDecodeError:
        return None
    return value if isinstance(value, list) and all(isinstance(v, str) for v in value) else None


def dockerfile_args(instrs: list[tuple[str, str]]) -> dict[str, str]:
    """ARG defaults (NAME=value)."""
    out = {}
    for instr, args in instrs:
        if instr == "ARG" and "=" in args:
            name, _, value = args.partition("=")
            out[name.strip()] = value.strip().strip('"')
    return out


def dockerfile_env(instrs: list[tuple[str, str]]) -> dict[str, str]:
    out = {}
    for instr, args in instrs:
        if instr == "ENV":
            for token in shlex.split(args):
                if "=" in token:
                    name, _, value = token.partition("=")
                    out[name] = value
    return out


def from_image(instrs: list[tuple[str, str]]) -> str | None:
    args = dockerfile_args(instrs)
    for instr, rest in instrs:
        if instr == "FROM":
            image = rest.split()[0]
            return re.sub(r"\$\{?([A-Za-z_][A-Za-z0-9_]*)\}?", lambda m: args.get(m.group(1), m.group(0)), image)
    return None


@lru_cache(maxsize=1)
def cli_group() -> click.Group:
    from service.cli import app

    group = typer.main.get_command(app)
    assert hasattr(group, "commands"), "service.cli.app is not a command group"
    return group  # type: ignore[return-value]


def command_envvars(name: str) -> set[str]:
    cmd = cli_group().commands[name]
    out: set[str] = set()
    for p in cmd.params:
        env = getattr(p, "envvar", None)
        if isinstance(env, str):
            out.add(env)
        elif env:
            out.update(env)
    return out


def command_options(name: str) -> set[str]:
    cmd = cli_group().commands[name]
    out: set[str] = {"--help"}
    for p in cmd.params:
        out.update(o for o in [*p.opts, *getattr(p, "secondary_opts", [])] if o.startswith("-"))
    return out


def package_sources(packages=PACKAGES) -> list[Path]:
    files = []
    for pkg in packages:
        d = ROOT / pkg
        if d.is_dir():
            files += [p for p in d.rglob("*.py") if "__pycache__" not in p.parts]
    return files


def package_env_reads() -> set[str]:
    """CMHASH_* variables the packages read directly (os.environ / os.getenv)."""
    pattern = re.compile(r"(?:environ\.get\(|environ\[|getenv\()\s*[\"'](CMHASH_[A-Z0-9_]+)")
    found: set[str] = set()
    for f in package_sources():
        found.update(pattern.findall(f.read_text(errors="replace")))
    return found


def script_env_reads(path: Path = TRAIN_SCRIPT) -> set[str]:
    return set(re.findall(r"\$\{?(CMHASH_[A-Z0-9_]+)", path.read_text()))


def service_settings_envvars() -> set[str]:
    """CMHASH_* names the service package knows besides the serve flags: pydantic-settings fields
    (env_prefix + field name) and CMHASH_* literals in its sources."""
    names: set[str] = set()
    for f in package_sources(("service",)):
        names.update(re.findall(r"\bCMHASH_[A-Z0-9_]+\b", f.read_text(errors="replace")))
    try:
        from pydantic_settings import BaseSettings

        service = importlib.import_module("service")
        for info in pkgutil.walk_packages(service.__path__, "service."):
            try:
                module = importlib.import_module(info.name)
            except Exception:  # noqa: BLE001 - an optional dependency missing in this environment
                continue
            for obj in vars(module).values():
                if isinstance(obj, type) and issubclass(obj, BaseSettings) and obj is not BaseSettings:
                    prefix = obj.model_config.get("env_prefix", "") or ""
                    for field_name, field in obj.model_fields.items():
                        names.add((prefix + field_name).upper())
                        if isinstance(field.alias, str):
                            names.add(field.alias.upper())
                        if isinstance(field.validation_alias, str):
                            names.add(field.validation_alias.upper())
    except ImportError:
        pass
    return names


def invoke_help(command: str):
    """`cmhash <command> --help` through typer's CliRunner (wide, so names are not wrapped)."""
    from service.cli import app

    return CliRunner().invoke(app, [command, "--help"], env={"COLUMNS": "200", "TERMINAL_WIDTH": "200"})


def serve_registered() -> bool:
    return "serve" in cli_group().commands


def service_env(svc: dict) -> dict[str, str | None]:
    env = svc.get("environment") or {}
    if isinstance(env, list):
        out: dict[str, str | None] = {}
        for item in env:
            name, sep, value = item.partition("=")
            out[name] = value if sep else None
        return out
    return {k: (None if v is None else str(v)) for k, v in env.items()}


def volume_mounts(svc: dict) -> list[tuple[str | None, str, bool]]:
    """(source, target, read_only) of a service's volumes, short or long syntax, interpolated."""
    out = []
    for v in svc.get("volumes") or []:
        if isinstance(v, str):
            parts = interpolate(v).split(":")
            if len(parts) == 1:
                out.append((None, parts[0], False))
            else:
                out.append((parts[0], parts[1], len(parts) > 2 and "ro" in parts[2].split(",")))
        else:
            out.append((interpolate(str(v.get("source"))) if v.get("source") else None, v["target"],
                        bool(v.get("read_only"))))
    return out


def is_path_source(source: str) -> bool:
    return source.startswith((".", "/", "~"))


# ---------------------------------------------------------------------------------------------
# Checks: each returns the problems found


def check_services_and_profiles(compose: dict) -> list[str]:
    problems = []
    services = compose.get("services") or {}
    for name, profiles in EXPECTED_PROFILES.items():
        if name not in services:
            problems.append(f"service {name!r} missing")
        elif sorted(services[name].get("profiles") or []) != sorted(profiles):
            problems.append(f"service {name!r} has profiles {services[name].get('profiles')}, expected {profiles}")
    for name, svc in services.items():
        if name not in EXPECTED_PROFILES and not svc.get("profiles"):
            problems.append(f"extra service {name!r} has no profile: plain `docker compose up` would start it")
    return problems


def check_builds(compose: dict, base: Path = ROOT) -> list[str]:
    problems = []
    for name, svc in (compose.get("services") or {}).items():
        build = svc.get("build")
        if build is None:
            if not svc.get("image"):
                problems.append(f"{name}: neither build nor image")
            continue
        if isinstance(build, str):
            build = {"context": build}
        context = base / build.get("context", ".")
        if not context.is_dir():
            problems.append(f"{name}: build context {context} does not exist")
            continue
        dockerfile = context / build.get("dockerfile", "Dockerfile")
        if not dockerfile.is_file():
            problems.append(f"{name}: dockerfile {dockerfile} does not exist")
    return problems


def check_volumes(compose: dict) -> list[str]:
    problems = []
    declared = set((compose.get("volumes") or {}).keys())
    used: set[str] = set()
    for name, svc in (compose.get("services") or {}).items():
        for source, target, _ in volume_mounts(svc):
            if source and not is_path_source(source):
                used.add(source)
                if source not in declared:
                    problems.append(f"{name}: named volume {source!r} (at {target}) is not declared")
    for unused in declared - used:
        problems.append(f"volume {unused!r} is declared but no service uses it")
    # The API services and the trainer share one named volume at /data.
    data_sources = set()
    for name in ("cmhash", "trainer", *API_SERVICES):
        svc = (compose.get("services") or {}).get(name)
        if svc is None:
            continue
        sources = [s for s, t, _ in volume_mounts(svc) if t == "/data"]
        if not sources or is_path_source(sources[0]):
            problems.append(f"{name}: no named volume mounted at /data")
        else:
            data_sources.add(sources[0])
    if len(data_sources) > 1:
        problems.append(f"the services mount different volumes at /data: {sorted(data_sources)}")
    return problems


def check_trainer_data_mount(compose: dict) -> list[str]:
    svc = (compose.get("services") or {}).get("trainer") or {}
    for v in svc.get("volumes") or []:
        if isinstance(v, str) and v.startswith("${CMHASH_DATA_DIR:-../shared/data}:/shared/data"):
            source, target, ro = volume_mounts({"volumes": [v]})[0]
            if not ro:
                return ["trainer: /shared/data is not mounted read-only"]
            if not (COMPOSE_FILE.parent / source).resolve().parent.name == "shared":
                return [f"trainer: default data dir {source} is not ../shared/data"]
            return []
    return ["trainer: no `${CMHASH_DATA_DIR:-../shared/data}:/shared/data:ro` volume"]


def check_healthchecks(compose: dict) -> list[str]:
    problems = []
    services = compose.get("services") or {}
    for name in MUST_HAVE_HEALTHCHECK:
        hc = (services.get(name) or {}).get("healthcheck")
        if not hc or hc.get("disable") or not hc.get("test") or hc["test"] == ["NONE"]:
            problems.append(f"{name}: no healthcheck")
            continue
        if name in API_SERVICES and "/healthz" not in " ".join(hc["test"] if isinstance(hc["test"], list) else [hc["test"]]):
            problems.append(f"{name}: healthcheck does not hit /healthz")
    return problems


def check_depends_on(compose: dict) -> list[str]:
    problems = []
    services = compose.get("services") or {}
    for name, svc in services.items():
        deps = svc.get("depends_on") or {}
        if isinstance(deps, list):
            deps = {d: {"condition": "service_started"} for d in deps}
        for dep, spec in deps.items():
            if dep not in services:
                problems.append(f"{name}: depends on unknown service {dep!r}")
                continue
            condition = (spec or {}).get("condition", "service_started")
            if condition not in DEPENDS_CONDITIONS:
                problems.append(f"{name}: unknown depends_on condition {condition!r}")
            if condition == "service_healthy" and not services[dep].get("healthcheck"):
                problems.append(f"{name}: waits for {dep} to be healthy but {dep} has no healthcheck")
            # A dependency must be enabled whenever the dependent is (else compose refuses).
            dep_profiles = set(services[dep].get("profiles") or [])
            own = set(svc.get("profiles") or [])
            if dep_profiles and not (own and own <= dep_profiles):
                problems.append(f"{name} (profiles {sorted(own)}) depends on {dep} (profiles {sorted(dep_profiles)})")
    return problems


def parse_port(port) -> tuple[str | None, str]:
    if isinstance(port, dict):
        return (str(port.get("published")) if port.get("published") is not None else None, str(port["target"]))
    parts = str(port).split(":")
    return (parts[-2] if len(parts) > 1 else None, parts[-1].split("/")[0])


def check_ports(compose: dict) -> list[str]:
    problems = []
    services = compose.get("services") or {}
    if [parse_port(p) for p in (services.get("cmhash") or {}).get("ports") or []] != [("8000", "8000")]:
        problems.append("cmhash: ports must be exactly 8000:8000")
    for name in API_SERVICES:
        targets = [t for _, t in (parse_port(p) for p in (services.get(name) or {}).get("ports") or [])]
        if name in services and targets != ["8000"]:
            problems.append(f"{name}: must publish container port 8000, has {targets}")
    seen: dict[str, str] = {}
    for name, svc in services.items():
        for published, _ in (parse_port(p) for p in svc.get("ports") or []):
            if published is None:
                continue
            if published in seen:
                problems.append(f"host port {published} published by both {seen[published]} and {name}")
            seen[published] = name
    return problems


def check_gpu(compose: dict) -> list[str]:
    svc = (compose.get("services") or {}).get("cmhash-gpu") or {}
    problems = []
    devices = (((svc.get("deploy") or {}).get("resources") or {}).get("reservations") or {}).get("devices") or []
    if not any(d.get("driver") == "nvidia" and d.get("count") == 1 and "gpu" in (d.get("capabilities") or [])
               for d in devices):
        problems.append("cmhash-gpu: no deploy.resources.reservations.devices entry {driver: nvidia, count: 1, capabilities: [gpu]}")
    if ((svc.get("build") or {}).get("dockerfile")) != "docker/Dockerfile.gpu":
        problems.append("cmhash-gpu: not built from docker/Dockerfile.gpu")
    return problems


def trainer_services(compose: dict) -> list[str]:
    return [n for n, s in (compose.get("services") or {}).items() if s.get("entrypoint") == ["cmhash-train"]]


def check_env_names(compose: dict, *, serve_names: set[str] | None) -> list[str]:
    """CMHASH_* names in the services' environment must be read by something: for the trainer,
    any cmhash flag, a direct os.environ read in the packages or the trainer script; for the API
    services (when `serve_names` is given), the serve command or the service's settings."""
    problems = []
    any_flag = set().union(*(command_envvars(c) for c in cli_group().commands))
    trainer_known = any_flag | package_env_reads() | script_env_reads()
    trainers = trainer_services(compose)
    for name, svc in (compose.get("services") or {}).items():
        for var in service_env(svc):
            if not var.startswith("CMHASH_"):
                continue
            if name in trainers and var not in trainer_known:
                problems.append(f"{name}: {var} is read by no cmhash command nor the trainer script")
            if name in API_SERVICES and serve_names is not None and var not in serve_names:
                problems.append(f"{name}: {var} is not a `cmhash serve` flag or service setting")
    return problems


def check_dockerfile(path: Path, flavour: str) -> list[str]:
    if not path.is_file():
        return [f"{path} does not exist"]
    problems = []
    instrs = parse_dockerfile(path)
    kinds = [i for i, _ in instrs]
    if "FROM" not in kinds:
        problems.append(f"{path.name}: no FROM")
    elif any(k not in ("ARG",) for k in kinds[: kinds.index("FROM")]):
        problems.append(f"{path.name}: only ARG may come before FROM")
    image = from_image(instrs) or ""
    if flavour == "cpu" and not image.startswith("python:3.11-slim"):
        problems.append(f"{path.name}: base {image!r}, expected python:3.11-slim")
    if flavour == "gpu" and not image.startswith("nvidia/cuda:"):
        problems.append(f"{path.name}: base {image!r}, expected an nvidia/cuda image")
    entry = [exec_form(a) for i, a in instrs if i == "ENTRYPOINT"]
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"].get("scripts", {})
    if not entry or entry[-1] != ["cmhash"]:
        problems.append(f"{path.name}: ENTRYPOINT must be [\"cmhash\"], is {entry[-1] if entry else None}")
    if "cmhash" not in scripts:
        problems.append("pyproject.toml: cmhash is not a [project.scripts] console script")
    cmd = [exec_form(a) for i, a in instrs if i == "CMD"]
    if not cmd or not cmd[-1] or cmd[-1][:1] != ["serve"]:
        problems.append(f"{path.name}: CMD must run `serve`, is {cmd[-1] if cmd else None}")
    else:
        argv = cmd[-1]
        if argv[argv.index("--host") + 1 if "--host" in argv else 0] != "0.0.0.0" or "--port" not in argv \
                or argv[argv.index("--port") + 1] != "8000":
            problems.append(f"{path.name}: CMD must serve on 0.0.0.0:8000, is {argv}")
    hc = [a for i, a in instrs if i == "HEALTHCHECK"]
    if not hc or "/healthz" not in hc[-1]:
        problems.append(f"{path.name}: no HEALTHCHECK on /healthz")
    if not any(i == "EXPOSE" and "8000" in a.split() for i, a in instrs):
        problems.append(f"{path.name}: does not EXPOSE 8000")
    users = [a for i, a in instrs if i == "USER"]
    if not users or users[-1].split(":")[0] in ("root", "0"):
        problems.append(f"{path.name}: runs as root (no USER, or USER root)")
    env = dockerfile_env(instrs)
    expected_env = {"CMHASH_MODEL": "/data/model", "CMHASH_IMAGE_GALLERY": "/data/galleries/images",
                    "CMHASH_TEXT_GALLERY": "/data/galleries/texts"}
    if flavour == "gpu":
        expected_env["CMHASH_DEVICE"] = "cuda"
    for k, v in expected_env.items():
        if env.get(k) != v:
            problems.append(f"{path.name}: ENV {k}={env.get(k)!r}, expected {v!r}")
    extras = dockerfile_args(instrs).get("EXTRAS", "")
    wanted, other = ("cpu", "gpu") if flavour == "cpu" else ("gpu", "cpu")
    extra_set = set(extras.split(","))
    if wanted not in extra_set or other in extra_set or "minilm" not in extra_set:
        problems.append(f"{path.name}: EXTRAS={extras!r}, expected {wanted} and minilm, never {other}")
    runs = [a for i, a in instrs if i == "RUN"]
    project_install = next((n for n, a in enumerate(runs) if re.search(r"pip install [^&]*\[\$\{EXTRAS\}\]", a)), None)
    torch_install = next((n for n, a in enumerate(runs) if re.search(r"pip install [\"']?torch==", a)), None)
    if project_install is None:
        problems.append(f"{path.name}: no `pip install <project>[${{EXTRAS}}]`")
    if torch_install is None or (project_install is not None and torch_install > project_install):
        problems.append(f"{path.name}: torch must be installed before the project")
    elif flavour == "cpu" and "download.pytorch.org/whl/cpu" not in runs[torch_install]:
        problems.append(f"{path.name}: torch must come from the CPU wheel index")
    if not any(TRAIN_SCRIPT.relative_to(ROOT).as_posix() in a and "/usr/local/bin/cmhash-train" in a for a in runs):
        problems.append(f"{path.name}: does not install {TRAIN_SCRIPT.relative_to(ROOT)} as /usr/local/bin/cmhash-train")
    return problems


def check_train_script(path: Path = TRAIN_SCRIPT) -> list[str]:
    if not path.is_file():
        return [f"{path} does not exist"]
    problems = []
    if not os.access(path, os.X_OK):
        problems.append(f"{path.name} is not executable (chmod +x)")
    tracked = subprocess.run(["git", "ls-files", "-s", "--", str(path)], cwd=ROOT, capture_output=True, text=True) \
        if path.resolve().is_relative_to(ROOT) else None
    if tracked is not None and tracked.returncode == 0 and tracked.stdout.strip() and not tracked.stdout.startswith("100755"):
        problems.append(f"{path.name}: git records mode {tracked.stdout.split()[0]}, expected 100755")
    lines = path.read_text().splitlines()
    if not lines or not re.match(r"#!\s*(/usr/bin/env\s+bash|/bin/bash)\b", lines[0]):
        problems.append(f"{path.name}: the first line must be a bash shebang")
    code = [ln.strip() for ln in lines[1:] if ln.strip() and not ln.strip().startswith("#")]
    if not code or code[0] != "set -euo pipefail":
        problems.append(f"{path.name}: the first command must be `set -euo pipefail`, is {code[0] if code else None!r}")
    syntax = subprocess.run(["bash", "-n", str(path)], capture_output=True, text=True)
    if syntax.returncode != 0:
        problems.append(f"{path.name}: bash -n: {syntax.stderr.strip()}")
    return problems


def cmhash_invocations(text: str, *, shell: bool) -> list[tuple[str, list[str]]]:
    """(command, flags) of each `cmhash <command> ...` in a script or a Dockerfile's RUN lines
    (comments and log messages skipped)."""
    out = []
    for line in text.splitlines():
        stripped = line.strip()
        if stripped.startswith("#") or (shell and stripped.startswith(("log ", "printf", "echo"))):
            continue
        for m in re.finditer(r"(?<![\w/.-])cmhash\s+([a-z][a-z-]*)\b(.*)", stripped):
            flags = re.findall(r"(?<![\w-])(--[a-z][a-z0-9-]*)", m.group(2))
            out.append((m.group(1), flags))
    return out


def used_cmhash_commands(compose: dict) -> list[tuple[str, str, list[str]]]:
    """(where, command, flags) of every cmhash command the packaging runs."""
    used = []
    text = TRAIN_SCRIPT.read_text()
    used += [(TRAIN_SCRIPT.name, c, f) for c, f in cmhash_invocations(text, shell=True)]
    # Flags collected in bash arrays (e.g. the Milvus flags) go to `cmhash index`.
    for arr in re.findall(r"\w+_flags=\(([^)]*)\)", text):
        used.append((TRAIN_SCRIPT.name, "index", re.findall(r"(--[a-z][a-z0-9-]*)", arr)))
    for flavour, path in DOCKERFILES.items():
        instrs = parse_dockerfile(path)
        entry = [exec_form(a) for i, a in instrs if i == "ENTRYPOINT"]
        cmd = [exec_form(a) for i, a in instrs if i == "CMD"]
        if entry and entry[-1] == ["cmhash"] and cmd and cmd[-1]:
            used.append((path.name, cmd[-1][0], [a for a in cmd[-1][1:] if a.startswith("--")]))
        for i, a in instrs:
            if i == "RUN":
                used += [(path.name, c, f) for c, f in cmhash_invocations(a, shell=False)]
    for name, svc in (compose.get("services") or {}).items():
        image = str(svc.get("image", ""))
        if not (image.startswith("cmhash") or svc.get("build")):
            continue
        entry = svc.get("entrypoint")
        command = svc.get("command")
        if isinstance(command, str):
            command = shlex.split(command)
        if entry in (None, ["cmhash"], "cmhash") and command:
            used.append((f"compose:{name}", command[0], [a for a in command[1:] if a.startswith("--")]))
        elif entry is None:
            used.append((f"compose:{name}", "serve", []))  # the images' default CMD
    return used


def check_commands(compose: dict, *, allow_missing: frozenset[str] = frozenset()) -> list[str]:
    problems = []
    commands = cli_group().commands
    for where, command, flags in used_cmhash_commands(compose):
        if command in allow_missing:
            continue
        if command not in commands:
            problems.append(f"{where}: `cmhash {command}` is not a command of service.cli.app")
            continue
        options = command_options(command)
        for flag in flags:
            if flag not in options:
                problems.append(f"{where}: `cmhash {command}` has no option {flag}")
    return problems


def check_package_data() -> list[str]:
    """The images install the project as a wheel (not editable): files other than Python modules
    in the packages reach the image only when pyproject.toml declares them as package data."""
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    declared = (pyproject.get("tool", {}).get("setuptools", {}).get("package-data") or {})
    problems = []
    for pkg in PACKAGES:
        base = ROOT / pkg
        if not base.is_dir():
            continue
        for f in base.rglob("*"):
            if not f.is_file() or "__pycache__" in f.parts or f.suffix in (".py", ".pyc"):
                continue
            rel_pkg_parts = f.relative_to(ROOT).parts
            ok = False
            for key, patterns in declared.items():
                key_parts = tuple(key.split(".")) if key != "*" else None
                for depth in range(len(rel_pkg_parts) - 1, 0, -1):
                    if key_parts is not None and rel_pkg_parts[:depth] != key_parts:
                        continue
                    inner = "/".join(rel_pkg_parts[depth:])
                    if any(fnmatch.fnmatch(inner, p) for p in patterns):
                        ok = True
            if not ok:
                problems.append(f"{f.relative_to(ROOT)} is not declared in [tool.setuptools.package-data]: "
                                "the Docker images (pip install .) would not contain it")
    return problems


# ---------------------------------------------------------------------------------------------
# Tests


@pytest.fixture(scope="module")
def compose() -> dict:
    assert COMPOSE_FILE.is_file(), "docker-compose.yml missing at the repo root"
    return load_compose()


def test_services_and_profiles(compose):
    assert check_services_and_profiles(compose) == []


def test_build_contexts_and_dockerfiles_exist(compose):
    assert check_builds(compose) == []
    for name in ("cmhash", "trainer", "cmhash-milvus"):
        assert compose["services"][name]["build"]["dockerfile"] == "docker/Dockerfile.cpu", name


def test_named_volumes_declared_and_data_shared(compose):
    assert check_volumes(compose) == []
    assert check_trainer_data_mount(compose) == []


def test_healthchecks(compose):
    assert check_healthchecks(compose) == []


def test_depends_on(compose):
    assert check_depends_on(compose) == []
    deps = compose["services"]["cmhash-milvus"]["depends_on"]
    assert deps["milvus"]["condition"] == "service_healthy"
    for name in ("etcd", "minio"):
        assert compose["services"]["milvus"]["depends_on"][name]["condition"] == "service_healthy"


def test_ports(compose):
    assert check_ports(compose) == []


def test_gpu_profile(compose):
    assert check_gpu(compose) == []


def test_cmhash_service_settings(compose):
    svc = compose["services"]["cmhash"]
    assert svc.get("restart") == "unless-stopped"
    env = service_env(svc)
    assert "CMHASH_API_KEY" in env and env["CMHASH_API_KEY"] is None, \
        "CMHASH_API_KEY must be passed through from the shell, never written in the file"
    assert svc.get("entrypoint") is None and svc.get("command") is None, "cmhash runs the image's `serve`"
    assert compose["services"]["trainer"]["entrypoint"] == ["cmhash-train"]


def test_milvus_services(compose):
    services = compose["services"]
    assert services["milvus"]["image"].startswith("milvusdb/milvus:v2.5.")
    assert services["milvus"]["command"] == ["milvus", "run", "standalone"]
    env = service_env(services["milvus"])
    assert env["ETCD_ENDPOINTS"] == "etcd:2379" and env["MINIO_ADDRESS"] == "minio:9000"
    # The galleries served by cmhash-milvus are indexed into Milvus through the compose network.
    indexers = [n for n in trainer_services(compose) if service_env(services[n]).get("CMHASH_MILVUS_URI")]
    assert indexers, "no trainer service indexes into Milvus (CMHASH_MILVUS_URI)"
    for n in indexers:
        assert service_env(services[n])["CMHASH_MILVUS_URI"] == "http://milvus:19530"
        assert services["cmhash-milvus"]["depends_on"][n]["condition"] == "service_completed_successfully"
        for var in ("CMHASH_IMAGE_GALLERY", "CMHASH_TEXT_GALLERY"):
            assert service_env(services[n])[var] == service_env(services["cmhash-milvus"])[var], var
    for n in ("cmhash-milvus", *indexers):
        assert "milvus" in services[n]["build"].get("args", {}).get("EXTRAS", "").split(","), \
            f"{n}: the image needs the milvus extra (pymilvus)"


def test_trainer_env_names_are_real(compose):
    assert check_env_names(compose, serve_names=None) == []


def test_api_env_names_are_serve_settings(compose):
    if not serve_registered():
        pytest.skip("`cmhash serve` is not registered in service.cli.app yet (the service is being written): "
                    "the API services' CMHASH_* variables cannot be checked against it")
    result = invoke_help("serve")
    assert result.exit_code == 0, result.output
    serve_names = command_envvars("serve") | service_settings_envvars() | \
        set(re.findall(r"\bCMHASH_[A-Z0-9_]+\b", result.output))
    assert check_env_names(compose, serve_names=serve_names) == []
    # The images set the very variables `cmhash serve` reads for its paths (and the GPU image its device).
    params = {p.name: p.envvar for p in cli_group().commands["serve"].params}
    wanted = {"model": "/data/model", "image_gallery": "/data/galleries/images", "text_gallery": "/data/galleries/texts"}
    for flavour, path in DOCKERFILES.items():
        env = dockerfile_env(parse_dockerfile(path))
        expected = dict(wanted, **({"device": "cuda"} if flavour == "gpu" else {}))
        for param, value in expected.items():
            assert param in params, f"`cmhash serve` has no {param} option"
            assert env.get(params[param]) == value, f"{path.name}: ENV {params[param]} (serve {param}) is {env.get(params[param])!r}"


def test_index_help_lists_milvus_options():
    result = invoke_help("index")
    assert result.exit_code == 0, result.output
    for flag in ("--milvus-uri", "--milvus-collection"):
        assert flag in result.output
    assert "CMHASH_MILVUS_TOKEN" in command_envvars("index")


def test_dockerfile_env_names_are_real():
    known = set().union(*(command_envvars(c) for c in cli_group().commands)) | package_env_reads() | \
        script_env_reads() | (service_settings_envvars() if serve_registered() else {
            "CMHASH_IMAGE_GALLERY", "CMHASH_TEXT_GALLERY"})  # serve flags, checked once serve exists
    for path in DOCKERFILES.values():
        unknown = [k for k in dockerfile_env(parse_dockerfile(path)) if k.startswith("CMHASH_") and k not in known]
        assert unknown == [], f"{path.name}: ENV {unknown} read by nothing"


@pytest.mark.parametrize("flavour", sorted(DOCKERFILES))
def test_dockerfile(flavour):
    assert check_dockerfile(DOCKERFILES[flavour], flavour) == []


def test_train_script():
    assert check_train_script() == []


def test_cmhash_commands_are_real(compose):
    allow = frozenset() if serve_registered() else frozenset({"serve"})
    assert check_commands(compose, allow_missing=allow) == []


def test_serve_command_used_by_images_is_registered(compose):
    if not serve_registered():
        pytest.skip("`cmhash serve` is not registered in service.cli.app yet (the service is being written)")
    assert check_commands(compose) == []


def test_package_data_reaches_the_image():
    assert check_package_data() == []


def test_dockerignore_keeps_local_state_out():
    ignored = [ln.strip() for ln in (ROOT / ".dockerignore").read_text().splitlines()
               if ln.strip() and not ln.startswith("#")]
    for entry in (".venv", "runs", "bench/out", ".git"):
        assert entry in ignored, entry
    for needed in ("README.md", "pyproject.toml", "model", "index", "service", "docker"):
        assert needed not in ignored, f"{needed} is needed in the build context"


# ---------------------------------------------------------------------------------------------
# The checks fail on broken inputs


def test_checks_catch_broken_compose(compose, tmp_path):
    broken = copy.deepcopy(compose)
    broken["services"]["cmhash"]["build"]["dockerfile"] = "docker/Dockerfile.missing"
    assert any("Dockerfile.missing" in p for p in check_builds(broken))

    broken = copy.deepcopy(compose)
    broken["services"]["cmhash"]["volumes"].append("undeclared-volume:/cache")
    assert any("undeclared-volume" in p for p in check_volumes(broken))

    broken = copy.deepcopy(compose)
    del broken["services"]["etcd"]["healthcheck"]
    assert any(p.startswith("etcd") for p in check_healthchecks(broken))
    assert any("etcd" in p and "healthy" in p for p in check_depends_on(broken))

    broken = copy.deepcopy(compose)
    broken["services"]["cmhash-milvus"]["depends_on"]["milvs"] = {"condition": "service_healthy"}
    assert any("milvs" in p for p in check_depends_on(broken))

    broken = copy.deepcopy(compose)
    broken["services"]["cmhash-gpu"]["ports"] = ["8000:8000"]
    assert check_ports(broken)

    broken = copy.deepcopy(compose)
    broken["services"]["trainer"]["profiles"] = ["milvus"]
    del broken["services"]["cmhash-gpu"]
    assert len(check_services_and_profiles(broken)) == 2

    broken = copy.deepcopy(compose)
    broken["services"]["cmhash-gpu"]["deploy"]["resources"]["reservations"]["devices"][0]["driver"] = "amd"
    assert check_gpu(broken)

    broken = copy.deepcopy(compose)
    broken["services"]["trainer"]["environment"]["CMHASH_NOT_A_FLAG"] = "1"
    assert any("CMHASH_NOT_A_FLAG" in p for p in check_env_names(broken, serve_names=None))
    broken["services"]["cmhash"]["environment"]["CMHASH_NOT_A_FLAG"] = "1"
    assert any(p.startswith("cmhash:") for p in check_env_names(broken, serve_names={"CMHASH_MODEL"}))

    broken = copy.deepcopy(compose)
    broken["services"]["trainer"]["entrypoint"] = None
    broken["services"]["trainer"]["command"] = ["trian", "--out", "/data/run"]
    assert any("trian" in p for p in check_commands(broken, allow_missing=frozenset({"serve"})))
    broken["services"]["trainer"]["command"] = ["train", "--no-such-flag"]
    assert any("--no-such-flag" in p for p in check_commands(broken, allow_missing=frozenset({"serve"})))


def test_checks_catch_broken_dockerfile_and_script(tmp_path):
    text = DOCKERFILES["cpu"].read_text()
    bad = tmp_path / "Dockerfile.cpu"
    bad.write_text(text.replace('ENTRYPOINT ["cmhash"]', 'ENTRYPOINT ["python", "-m", "service.cli"]')
                   .replace("HEALTHCHECK", "# HEALTHCHECK").replace("USER cmhash", "USER root")
                   .replace("ARG EXTRAS=cpu,minilm", "ARG EXTRAS=cpu,gpu,minilm"))
    problems = check_dockerfile(bad, "cpu")
    for fragment in ("ENTRYPOINT", "HEALTHCHECK", "root", "EXTRAS"):
        assert any(fragment in p for p in problems), fragment
    assert check_dockerfile(tmp_path / "Dockerfile.none", "gpu") == [f"{tmp_path / 'Dockerfile.none'} does not exist"]

    script = tmp_path / "train.sh"
    script.write_text("#!/usr/bin/env bash\necho start\nset -euo pipefail\n")
    script.chmod(0o644)
    problems = check_train_script(script)
    assert any("executable" in p for p in problems) and any("set -euo pipefail" in p for p in problems)
    assert check_train_script(tmp_path / "absent.sh")

    assert cmhash_invocations("cmhash indx --model m\n# cmhash nothing\n", shell=True) == [("indx", ["--model"])]
