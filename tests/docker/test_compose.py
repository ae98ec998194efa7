"""Static checks of the Docker packaging: docker-compose.yml, docker/Dockerfile.cpu and .gpu, and
the trainer entrypoint docker/train-entrypoint.sh. No Docker engine is needed: the files are
parsed and checked against the repository (paths, volumes, healthchecks, dependencies, build
stages, hardening) and against the `cmhash` typer app (commands, flags, CMHASH_* variables).

Each check is a function returning a list of problems; the tests assert it is empty, and the
`test_checks_catch_*` tests feed broken copies to the same functions to show they fail. No test
here skips: what the packaging relies on (pyyaml, `cmhash serve`) must be there."""

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
import sys
import tomllib
from functools import lru_cache
from pathlib import Path

import click
import pytest
import typer
import yaml
from typer.testing import CliRunner

ROOT = Path(__file__).resolve().parents[2]
COMPOSE_FILE = ROOT / "docker-compose.yml"
DOCKERFILES = {"cpu": ROOT / "docker" / "Dockerfile.cpu", "gpu": ROOT / "docker" / "Dockerfile.gpu"}
TRAIN_SCRIPT = ROOT / "docker" / "train-entrypoint.sh"
DOCKER_README = ROOT / "docker" / "README.md"
PACKAGES = ("model", "index", "service")

# Service -> the profiles it must belong to (empty: started by a plain `docker compose up`).
EXPECTED_PROFILES = {
    "trainer": [],
    "cmhash": [],
    "etcd": ["milvus"],
    "minio": ["milvus"],
    "milvus": ["milvus"],
    "milvus-indexer": ["milvus"],
    "cmhash-milvus": ["milvus"],
    "cmhash-gpu": ["gpu"],
}
API_SERVICES = ("cmhash", "cmhash-milvus", "cmhash-gpu")
INTERNAL_SERVICES = ("etcd", "minio", "milvus")  # reachable only on the compose network
MUST_HAVE_HEALTHCHECK = ("cmhash", "cmhash-milvus", "cmhash-gpu", "milvus", "etcd", "minio")
DEPENDS_CONDITIONS = {"service_started", "service_healthy", "service_completed_successfully"}
DEFAULT_VAR = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::?-([^}]*))?\}")
ANY_VAR = re.compile(r"(?<!\$)\$\{([A-Za-z_][A-Za-z0-9_]*)(:?[-?+])?([^}]*)\}")
# Compose-level variables (interpolated by compose, never seen by cmhash): documented in
# docker-compose.yml and docker/README.md, and distinct from every cmhash setting.
COMPOSE_VARIABLES = {"CMHASH_DATA_DIR", "CMHASH_PUBLISH_ADDR"}
SECRET_NAME = re.compile(r"(PASSWORD|SECRET|TOKEN|API_KEY|ACCESS_KEY|ROOT_USER)", re.I)
KNOWN_DEFAULT_CREDENTIALS = ("minioadmin", "root:Milvus", "changeme")
SERVE_EXTRAS = {"cpu": {"cpu", "milvus"}, "gpu": {"gpu", "milvus"}}  # what a serving image may install


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


def dockerfile_stages(path: Path) -> list[dict]:
    """The build stages in order: {name, base (ARGs substituted), parent (index of the stage it
    derives from, or None), instrs (its own instructions, FROM excluded)}."""
    instrs = parse_dockerfile(path)
    first = next((n for n, (i, _) in enumerate(instrs) if i == "FROM"), len(instrs))
    meta = dockerfile_args(instrs[:first])
    stages: list[dict] = []
    for instr, rest in instrs[first:]:
        if instr == "FROM":
            tokens = rest.split()
            tokens = [t for t in tokens if not t.startswith("--platform")]
            base = re.sub(r"\$\{?([A-Za-z_][A-Za-z0-9_]*)\}?", lambda m: meta.get(m.group(1), m.group(0)), tokens[0])
            name = tokens[2] if len(tokens) > 2 and tokens[1].lower() == "as" else str(len(stages))
            parent = next((n for n, st in enumerate(stages) if st["name"] == base), None)
            stages.append({"name": name, "base": base, "parent": parent, "instrs": []})
        else:
            stages[-1]["instrs"].append((instr, rest))
    return stages


def stage_chain(stages: list[dict], index: int) -> list[dict]:
    """A stage and the stages it derives from (FROM <stage>), root first: its image's layers."""
    chain = []
    i: int | None = index
    while i is not None:
        chain.insert(0, stages[i])
        i = stages[i]["parent"]
    return chain


def chain_instrs(chain: list[dict]) -> list[tuple[str, str]]:
    return [x for st in chain for x in st["instrs"]]


def stage_index(stages: list[dict], name: str) -> int | None:
    return next((n for n, st in enumerate(stages) if st["name"] == name), None)


def root_image(stages: list[dict], index: int) -> str:
    return stage_chain(stages, index)[0]["base"]


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
    """CMHASH_* names of the service's pydantic-settings fields (env_prefix + field name, aliases)."""
    from pydantic_settings import BaseSettings

    names: set[str] = set()
    service = importlib.import_module("service")
    for info in pkgutil.walk_packages(service.__path__, "service."):
        if info.name.rsplit(".", 1)[-1] == "__main__":  # runs the CLI when imported
            continue
        module = importlib.import_module(info.name)
        for obj in vars(module).values():
            if isinstance(obj, type) and issubclass(obj, BaseSettings) and obj is not BaseSettings:
                prefix = obj.model_config.get("env_prefix", "") or ""
                for field_name, field in obj.model_fields.items():
                    names.add((prefix + field_name).upper())
                    for alias in (field.alias, field.validation_alias):
                        if isinstance(alias, str):
                            names.add(alias.upper())
    return names


@lru_cache(maxsize=1)
def real_cmhash_names() -> frozenset[str]:
    """Every CMHASH_* name cmhash reads: a command option's variable, a service setting, or a
    direct os.environ read in the packages."""
    options = set().union(*(command_envvars(c) for c in cli_group().commands))
    return frozenset(options | service_settings_envvars() | package_env_reads())


def invoke_help(command: str):
    """`cmhash <command> --help` through typer's CliRunner (wide, so names are not wrapped)."""
    from service.cli import app

    return CliRunner().invoke(app, [command, "--help"], env={"COLUMNS": "200", "TERMINAL_WIDTH": "200"})


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
            out.append(
                (interpolate(str(v.get("source"))) if v.get("source") else None, v["target"], bool(v.get("read_only")))
            )
    return out


def is_path_source(source: str) -> bool:
    return source.startswith((".", "/", "~"))


def builds_cmhash(svc: dict) -> bool:
    return bool(svc.get("build")) or str(svc.get("image", "")).startswith("cmhash")


def trainer_services(compose: dict) -> list[str]:
    return [n for n, s in (compose.get("services") or {}).items() if s.get("entrypoint") == ["cmhash-train"]]


def pyproject() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())


def requirement_name(req: str) -> str:
    return re.split(r"[\s\[<>=!~;@(]", req.strip(), maxsplit=1)[0].lower().replace("_", "-")


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
            continue
        target = build.get("target")
        stages = dockerfile_stages(dockerfile)
        if target is not None and stage_index(stages, target) is None:
            problems.append(f"{name}: {dockerfile.name} has no stage {target!r}")
        # The trainer image and the serving image are different targets: never one for both.
        index = stage_index(stages, target) if target else None
        built = stages[index] if index is not None else stages[-1]
        wants_trainer = svc.get("entrypoint") == ["cmhash-train"]
        if wants_trainer != (built["name"] == "trainer"):
            problems.append(
                f"{name}: built from stage {built['name']!r} of {dockerfile.name}, "
                f"expected {'trainer' if wants_trainer else 'the serving stage'}"
            )
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
    # The API services and the trainers share one named volume at /data.
    data_sources = set()
    services = compose.get("services") or {}
    for name in (*trainer_services(compose), *API_SERVICES):
        svc = services.get(name)
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


def check_data_mounts(compose: dict) -> list[str]:
    """The dataset reaches the trainers (and the APIs: image results carry its paths) read-only at
    /shared/data, from ${CMHASH_DATA_DIR:-../shared/data}, as a bind that Docker must not create:
    a missing folder is then an error naming it, not an empty directory."""
    problems = []
    services = compose.get("services") or {}
    for name in (*trainer_services(compose), *API_SERVICES):
        svc = services.get(name)
        if svc is None:
            continue
        mounts = [
            v
            for v, (_, target, _) in zip(svc.get("volumes") or [], volume_mounts(svc), strict=True)
            if target == "/shared/data"
        ]
        if not mounts:
            problems.append(f"{name}: no dataset mount at /shared/data")
            continue
        v = mounts[0]
        if not isinstance(v, dict):
            problems.append(f"{name}: /shared/data uses the short syntax (Docker creates a missing folder)")
            continue
        if v.get("type") != "bind" or (v.get("bind") or {}).get("create_host_path") is not False:
            problems.append(f"{name}: /shared/data must be a bind with bind.create_host_path: false")
        if not v.get("read_only"):
            problems.append(f"{name}: /shared/data is not mounted read-only")
        source = str(v.get("source", ""))
        if not source.startswith("${CMHASH_DATA_DIR:-"):
            problems.append(f"{name}: the dataset source {source!r} is not ${{CMHASH_DATA_DIR:-...}}")
        elif (COMPOSE_FILE.parent / interpolate(source)).resolve().parent.name != "shared":
            problems.append(f"{name}: default data dir {interpolate(source)} is not ../shared/data")
    return problems


def healthcheck_text(hc: dict) -> str:
    return " ".join(hc["test"]) if isinstance(hc.get("test"), list) else str(hc.get("test"))


def check_healthchecks(compose: dict) -> list[str]:
    problems = []
    services = compose.get("services") or {}
    for name in MUST_HAVE_HEALTHCHECK:
        hc = (services.get(name) or {}).get("healthcheck")
        if not hc or hc.get("disable") or not hc.get("test") or hc["test"] == ["NONE"]:
            problems.append(f"{name}: no healthcheck")
            continue
        # Readiness, not liveness: /healthz answers even when the model or a gallery failed to load.
        if name in API_SERVICES and "/readyz" not in healthcheck_text(hc):
            problems.append(f"{name}: healthcheck does not probe /readyz")
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


def completed_dependencies(svc: dict) -> set[str]:
    deps = svc.get("depends_on") or {}
    if isinstance(deps, list):
        return set()
    return {d for d, spec in deps.items() if (spec or {}).get("condition") == "service_completed_successfully"}


def check_startup_order(compose: dict) -> list[str]:
    """`docker compose up` alone trains (or skips what exists) and then serves: the trainer is in
    no profile, runs once, and every API waits for a trainer to complete successfully."""
    problems = []
    services = compose.get("services") or {}
    trainer = services.get("trainer") or {}
    if trainer.get("profiles"):
        problems.append("trainer: in a profile, so a plain `docker compose up` does not run it")
    if str(trainer.get("restart", "no")) != "no":
        problems.append('trainer: a one-shot service must have restart: "no"')
    trainers = set(trainer_services(compose))
    for name in API_SERVICES:
        svc = services.get(name)
        if svc is None:
            continue
        if not completed_dependencies(svc) & trainers:
            problems.append(f"{name}: does not wait for a trainer (depends_on ... service_completed_successfully)")
    for name in trainers - {"trainer"}:
        if "trainer" not in completed_dependencies(services[name]):
            problems.append(f"{name}: would train into /data/run at the same time as `trainer` (depends_on it)")
    return problems


def parse_port(port) -> tuple[str | None, str | None, str]:
    """(host address, published port, container port) of a ports entry, interpolated."""
    if isinstance(port, dict):
        published = port.get("published")
        return (
            interpolate(str(port["host_ip"])) if port.get("host_ip") else None,
            interpolate(str(published)) if published is not None else None,
            str(port["target"]),
        )
    parts = interpolate(str(port)).rsplit(":", 2)
    target = parts[-1].split("/")[0]
    if len(parts) == 3:
        return parts[0], parts[1], target
    return None, (parts[0] if len(parts) == 2 else None), target


def check_ports(compose: dict) -> list[str]:
    problems = []
    services = compose.get("services") or {}
    for name in API_SERVICES:
        targets = [t for _, _, t in (parse_port(p) for p in (services.get(name) or {}).get("ports") or [])]
        if name in services and targets != ["8000"]:
            problems.append(f"{name}: must publish container port 8000, has {targets}")
    if [parse_port(p)[1:] for p in (services.get("cmhash") or {}).get("ports") or []] != [("8000", "8000")]:
        problems.append("cmhash: must publish 8000:8000")
    seen: dict[str, str] = {}
    for name, svc in services.items():
        ports = svc.get("ports") or []
        if ports and name not in API_SERVICES:
            problems.append(f"{name}: publishes {ports}; only the APIs are published (the rest stays internal)")
        for port in ports:
            host, published, _ = parse_port(port)
            if host != "127.0.0.1":
                problems.append(
                    f"{name}: {port!r} is published on {host or 'every interface'} by default, "
                    "expected ${CMHASH_PUBLISH_ADDR:-127.0.0.1}"
                )
            raw = port if isinstance(port, str) else str(port.get("host_ip", ""))
            if "${CMHASH_PUBLISH_ADDR:-" not in raw:
                problems.append(f"{name}: {port!r}: the address is not configurable through CMHASH_PUBLISH_ADDR")
            if published is None:
                continue
            if published in seen:
                problems.append(f"host port {published} published by both {seen[published]} and {name}")
            seen[published] = name
    return problems


def check_networks(compose: dict) -> list[str]:
    """Milvus, etcd and MinIO live on an internal network only; the cmhash services that talk to
    Milvus join it."""
    problems = []
    services = compose.get("services") or {}
    networks = compose.get("networks") or {}
    internal = {n for n, spec in networks.items() if (spec or {}).get("internal") is True}
    if not internal:
        problems.append("no internal network (networks: <name>: {internal: true})")
    for name in INTERNAL_SERVICES:
        svc = services.get(name) or {}
        nets = svc.get("networks") or ["default"]
        nets = list(nets) if not isinstance(nets, dict) else list(nets.keys())
        if not nets or not set(nets) <= internal:
            problems.append(f"{name}: on networks {nets}, expected internal ones only {sorted(internal)}")
    for name, svc in services.items():
        env = service_env(svc)
        if "milvus:19530" in str(env.get("CMHASH_MILVUS_URI") or "") or "milvus" in (svc.get("depends_on") or {}):
            nets = svc.get("networks") or ["default"]
            nets = list(nets) if not isinstance(nets, dict) else list(nets.keys())
            if not set(nets) & internal:
                problems.append(f"{name}: talks to Milvus but is not on an internal network")
    return problems


def check_hardening(compose: dict) -> list[str]:
    """Every service: no-new-privileges, all capabilities dropped, seccomp/AppArmor left on, not
    privileged. The cmhash services also run on a read-only root filesystem with a tmpfs /tmp."""
    problems = []
    for name, svc in (compose.get("services") or {}).items():
        opts = [str(o).replace("=", ":") for o in svc.get("security_opt") or []]
        if "no-new-privileges:true" not in opts:
            problems.append(f"{name}: no security_opt no-new-privileges:true")
        for o in opts:
            if o.endswith(":unconfined"):
                problems.append(f"{name}: security_opt {o} disables a kernel protection")
        if "ALL" not in [str(c).upper() for c in svc.get("cap_drop") or []]:
            problems.append(f"{name}: cap_drop does not drop ALL")
        if svc.get("cap_add"):
            problems.append(f"{name}: cap_add {svc['cap_add']}")
        if svc.get("privileged"):
            problems.append(f"{name}: privileged")
        if builds_cmhash(svc):
            if svc.get("read_only") is not True:
                problems.append(f"{name}: root filesystem not read_only")
            tmpfs = svc.get("tmpfs") or []
            tmpfs = [tmpfs] if isinstance(tmpfs, str) else tmpfs
            if not any(str(t).split(":")[0] == "/tmp" for t in tmpfs):
                problems.append(f"{name}: read-only root without a tmpfs at /tmp")
    return problems


def check_credentials(compose: dict) -> list[str]:
    """No credential is written in the file or defaulted: secret-looking variables are passed
    through (no value) or interpolated with an empty default, no well-known default credential
    appears, and MinIO refuses to start without credentials (it would fall back to minioadmin).
    No `${VAR:?...}` in a profile's service: compose interpolates every service, so it would
    break a plain `docker compose up`."""
    problems = []
    text = yaml.safe_dump(compose)
    services = compose.get("services") or {}
    for name, svc in services.items():
        for var, value in service_env(svc).items():
            if not SECRET_NAME.search(var) or value is None or value == "":
                continue
            m = ANY_VAR.fullmatch(value)
            if not m or ((m.group(2) or "").endswith("-") and m.group(3)):
                problems.append(f"{name}: {var} has the value {value!r}: pass it through from the shell or .env")
        if svc.get("profiles"):
            for m in ANY_VAR.finditer(json.dumps(svc)):
                if (m.group(2) or "").endswith("?"):
                    problems.append(
                        f"{name}: ${{{m.group(1)}:?...}} in a profile's service fails every "
                        "`docker compose up` (compose interpolates all services)"
                    )
    for known in KNOWN_DEFAULT_CREDENTIALS:
        if re.search(rf"(?<![\w-]){re.escape(known)}(?![\w-])", text):
            problems.append(f"the compose file contains the well-known default credential {known!r}")
    minio = services.get("minio")
    if minio is not None:
        env = service_env(minio)
        for var in ("MINIO_ROOT_USER", "MINIO_ROOT_PASSWORD"):
            if var not in env:
                problems.append(f"minio: {var} is not set from the environment")
        command = minio.get("command")
        command = " ".join(command) if isinstance(command, list) else str(command)
        if not re.search(r"MINIO_ROOT_PASSWORD", command) or "exit 1" not in command:
            problems.append("minio: does not refuse to start without MINIO_ROOT_USER / MINIO_ROOT_PASSWORD")
    return problems


def check_gpu(compose: dict) -> list[str]:
    svc = (compose.get("services") or {}).get("cmhash-gpu") or {}
    problems = []
    devices = (((svc.get("deploy") or {}).get("resources") or {}).get("reservations") or {}).get("devices") or []
    if not any(
        d.get("driver") == "nvidia" and d.get("count") == 1 and "gpu" in (d.get("capabilities") or []) for d in devices
    ):
        problems.append(
            "cmhash-gpu: no deploy.resources.reservations.devices entry {driver: nvidia, count: 1, capabilities: [gpu]}"
        )
    if ((svc.get("build") or {}).get("dockerfile")) != "docker/Dockerfile.gpu":
        problems.append("cmhash-gpu: not built from docker/Dockerfile.gpu")
    return problems


def compose_variables(compose_text: str) -> set[str]:
    return {m.group(1) for m in ANY_VAR.finditer(compose_text)}


def check_env_names(compose: dict, compose_text: str | None = None) -> list[str]:
    """Each CMHASH_* name means one thing. Names the containers see (a service's environment,
    a Dockerfile's ENV, what the trainer script reads) must be read by cmhash: a command option,
    a service setting or a direct read in the packages; an API service's names must be serve
    settings. CMHASH_* names compose interpolates must be the documented compose variables,
    which are never cmhash settings."""
    problems = []
    real = real_cmhash_names()
    serve_names = command_envvars("serve") | service_settings_envvars()
    for name, svc in (compose.get("services") or {}).items():
        for var in service_env(svc):
            if not var.startswith("CMHASH_"):
                continue
            if var not in real:
                problems.append(f"{name}: {var} is read by no cmhash command, setting or package")
            elif name in API_SERVICES and var not in serve_names:
                problems.append(f"{name}: {var} is not a `cmhash serve` option or service setting")
    text = COMPOSE_FILE.read_text() if compose_text is None else compose_text
    for var in sorted(v for v in compose_variables(text) if v.startswith("CMHASH_")):
        if var not in COMPOSE_VARIABLES:
            problems.append(f"compose variable {var} is not one of the documented {sorted(COMPOSE_VARIABLES)}")
    for var in sorted(COMPOSE_VARIABLES & real):
        problems.append(f"compose variable {var} is also a cmhash setting: one name, two meanings")
    for path in DOCKERFILES.values():
        for st in dockerfile_stages(path):
            unknown = [k for k in dockerfile_env(st["instrs"]) if k.startswith("CMHASH_") and k not in real]
            if unknown:
                problems.append(f"{path.name} ({st['name']}): ENV {unknown} read by nothing")
    unknown = sorted(script_env_reads() - real)
    if unknown:
        problems.append(f"{TRAIN_SCRIPT.name}: reads {unknown}, which are not cmhash options or settings")
    for var in sorted(set(re.findall(r"\bCMHASH_[A-Z0-9_]+\b", DOCKER_README.read_text()))):
        if var not in real and var not in COMPOSE_VARIABLES:
            problems.append(f"{DOCKER_README.name}: mentions {var}, which nothing reads")
    return problems


def check_dockerfile(path: Path, flavour: str) -> list[str]:
    """Multi-stage: a builder stage builds the wheel; the serving image (the last stage, the
    default target) installs it with the cpu or gpu extra through a bind mount from the builder,
    holds no sources in any of its layers and no torch; the CPU file also has a `trainer` stage
    with cmhash[cpu,train] and torch from the CPU wheel index."""
    if not path.is_file():
        return [f"{path} does not exist"]
    problems = []
    instrs = parse_dockerfile(path)
    kinds = [i for i, _ in instrs]
    if "FROM" not in kinds:
        return [f"{path.name}: no FROM"]
    if any(k != "ARG" for k in kinds[: kinds.index("FROM")]):
        problems.append(f"{path.name}: only ARG may come before FROM")
    stages = dockerfile_stages(path)
    builder = stage_index(stages, "builder")
    if builder is None:
        problems.append(f"{path.name}: no `builder` stage")
    elif not any(i == "RUN" and re.search(r"pip wheel|python3? -m build", a) for i, a in stages[builder]["instrs"]):
        problems.append(f"{path.name}: the builder stage builds no wheel (pip wheel / python -m build)")
    serve = len(stages) - 1
    if stages[serve]["name"] in ("builder", "trainer"):
        problems.append(f"{path.name}: the last stage (the default target) is {stages[serve]['name']!r}, not the API")
    targets = {"serve": serve}
    if flavour == "cpu":
        trainer = stage_index(stages, "trainer")
        if trainer is None:
            problems.append(f"{path.name}: no `trainer` stage")
        else:
            targets["trainer"] = trainer

    image = root_image(stages, serve)
    if flavour == "cpu" and not image.startswith("python:3.11-slim"):
        problems.append(f"{path.name}: base {image!r}, expected python:3.11-slim")
    if flavour == "gpu" and not (image.startswith("nvidia/cuda:") and "cudnn" in image and "runtime" in image):
        problems.append(
            f"{path.name}: base {image!r}, expected an nvidia/cuda cudnn-runtime image "
            "(onnxruntime-gpu loads CUDA and cuDNN from the system)"
        )

    for role, index in targets.items():
        chain = stage_chain(stages, index)
        own = chain_instrs(chain)
        label = f"{path.name} ({stages[index]['name']})"
        # No sources in any layer: only files under docker/ come from the context; nothing is
        # COPY'd from another stage (the wheel arrives through RUN --mount, which leaves no layer).
        for i, a in own:
            if i not in ("COPY", "ADD"):
                continue
            words = [w for w in shlex.split(a) if not w.startswith("--")]
            if any(w.startswith("--from") for w in shlex.split(a)):
                problems.append(f"{label}: `{i} {a}` copies from another stage into a layer (use RUN --mount)")
            elif any(not s.startswith("docker/") for s in words[:-1]):
                problems.append(f"{label}: `{i} {a}` puts build-context files (sources) in a layer")
        runs = [a for i, a in own if i == "RUN"]
        extras_arg = "EXTRAS" if role == "serve" else "TRAIN_EXTRAS"
        project = next(
            (n for n, a in enumerate(runs) if re.search(rf"pip install [^&]*\.whl[^&]*\[\$\{{{extras_arg}\}}\]", a)),
            None,
        )
        if project is None:
            problems.append(f"{label}: no `pip install <the wheel>[${{{extras_arg}}}]`")
        elif "--mount=type=bind" not in runs[project] or (
            builder is not None and f"from={stages[builder]['name']}" not in runs[project]
        ):
            problems.append(
                f"{label}: the wheel is not bind-mounted from the builder stage (RUN --mount=type=bind,from=builder)"
            )
        extras = set(filter(None, dockerfile_args(own).get(extras_arg, "").split(",")))
        wanted, other = ("cpu", "gpu") if flavour == "cpu" else ("gpu", "cpu")
        if wanted not in extras or other in extras:
            problems.append(f"{label}: {extras_arg}={sorted(extras)}, expected {wanted}, never {other}")
        users = [a for i, a in own if i == "USER"]
        if not users or users[-1].split(":")[0] in ("root", "0"):
            problems.append(f"{label}: runs as root (no USER, or USER root)")
        env = dockerfile_env(own)
        expected_env = {
            "CMHASH_MODEL_DIR": "/data/model",
            "CMHASH_IMAGE_GALLERY": "/data/galleries/images",
            "CMHASH_TEXT_GALLERY": "/data/galleries/texts",
        }
        if flavour == "gpu":
            expected_env["CMHASH_DEVICE"] = "cuda"
        for k, v in expected_env.items():
            if env.get(k) != v:
                problems.append(f"{label}: ENV {k}={env.get(k)!r}, expected {v!r}")
        entry = [exec_form(a) for i, a in own if i == "ENTRYPOINT"]
        torch_install = next((n for n, a in enumerate(runs) if re.search(r"pip install [\"']?torch==", a)), None)
        if role == "serve":
            if not extras <= SERVE_EXTRAS[flavour]:
                problems.append(
                    f"{label}: EXTRAS={sorted(extras)}: a serving image installs only {sorted(SERVE_EXTRAS[flavour])}"
                )
            if any(re.search(r"\btorch\b", a) for a in runs):
                problems.append(f"{label}: installs torch; the serving image is torch-free")
            if not entry or entry[-1] != ["cmhash"]:
                problems.append(f'{label}: ENTRYPOINT must be ["cmhash"], is {entry[-1] if entry else None}')
            cmd = [exec_form(a) for i, a in own if i == "CMD"]
            if not cmd or not cmd[-1] or cmd[-1][:1] != ["serve"]:
                problems.append(f"{label}: CMD must run `serve`, is {cmd[-1] if cmd else None}")
            else:
                argv = cmd[-1]
                if (
                    argv[argv.index("--host") + 1 if "--host" in argv else 0] != "0.0.0.0"
                    or "--port" not in argv
                    or argv[argv.index("--port") + 1] != "8000"
                ):
                    problems.append(f"{label}: CMD must serve on 0.0.0.0:8000, is {argv}")
            hc = [a for i, a in own if i == "HEALTHCHECK"]
            if not hc or "/readyz" not in hc[-1]:
                problems.append(f"{label}: no HEALTHCHECK on /readyz")
            if not any(i == "EXPOSE" and "8000" in a.split() for i, a in own):
                problems.append(f"{label}: does not EXPOSE 8000")
        else:
            if "train" not in extras:
                problems.append(f"{label}: TRAIN_EXTRAS={sorted(extras)} lacks train")
            if torch_install is None or (project is not None and torch_install > project):
                problems.append(f"{label}: torch must be installed before the project")
            elif "download.pytorch.org/whl/cpu" not in runs[torch_install]:
                problems.append(f"{label}: torch must come from the CPU wheel index")
            if not entry or entry[-1] != ["cmhash-train"]:
                problems.append(f'{label}: ENTRYPOINT must be ["cmhash-train"], is {entry[-1] if entry else None}')
            script = TRAIN_SCRIPT.relative_to(ROOT).as_posix()
            if not any(i in ("COPY", "RUN") and script in a and "/usr/local/bin/cmhash-train" in a for i, a in own):
                problems.append(f"{label}: does not install {script} as /usr/local/bin/cmhash-train")
    if "cmhash" not in pyproject()["project"].get("scripts", {}):
        problems.append("pyproject.toml: cmhash is not a [project.scripts] console script")
    return problems


def check_serving_dependencies() -> list[str]:
    """What a serving image installs (the core dependencies and its extras) resolves without torch."""
    project = pyproject()["project"]
    optional = project.get("optional-dependencies", {})
    problems = []
    for flavour, path in DOCKERFILES.items():
        stages = dockerfile_stages(path)
        own = chain_instrs(stage_chain(stages, len(stages) - 1))
        extras = [e for e in dockerfile_args(own).get("EXTRAS", "").split(",") if e]
        seen, todo, names = set(), list(extras), {requirement_name(r) for r in project.get("dependencies", [])}
        while todo:  # extras may name other extras (cmhash[cpu])
            extra = todo.pop()
            if extra in seen:
                continue
            seen.add(extra)
            if extra not in optional:
                problems.append(f"{path.name}: extra {extra!r} is not in pyproject.toml")
                continue
            for req in optional[extra]:
                m = re.match(r"cmhash\[([^\]]+)\]", req.strip())
                if m:
                    todo += m.group(1).split(",")
                else:
                    names.add(requirement_name(req))
        heavy = sorted(n for n in names if n == "torch" or n.startswith(("torch", "nvidia-")))
        if heavy:
            problems.append(
                f"{path.name}: the serving image's dependencies ({flavour}: core + {extras}) include {heavy}"
            )
    return problems


def check_train_script(path: Path = TRAIN_SCRIPT) -> list[str]:
    if not path.is_file():
        return [f"{path} does not exist"]
    problems = []
    if not os.access(path, os.X_OK):
        problems.append(f"{path.name} is not executable (chmod +x)")
    tracked = (
        subprocess.run(["git", "ls-files", "-s", "--", str(path)], cwd=ROOT, capture_output=True, text=True)
        if path.resolve().is_relative_to(ROOT)
        else None
    )
    if (
        tracked is not None
        and tracked.returncode == 0
        and tracked.stdout.strip()
        and not tracked.stdout.startswith("100755")
    ):
        problems.append(f"{path.name}: git records mode {tracked.stdout.split()[0]}, expected 100755")
    lines = path.read_text().splitlines()
    if not lines or not re.match(r"#!\s*(/usr/bin/env\s+bash|/bin/bash)\b", lines[0]):
        problems.append(f"{path.name}: the first line must be a bash shebang")
    code = [ln.strip() for ln in lines[1:] if ln.strip() and not ln.strip().startswith("#")]
    if not code or code[0] != "set -euo pipefail":
        problems.append(f"{path.name}: the first command must be `set -euo pipefail`, is {code[0] if code else None!r}")
    if any(re.match(r"unset\s+CMHASH_", ln) for ln in code):
        problems.append(f"{path.name}: unsets CMHASH_* variables; per-invocation inputs are flags only now")
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
        if stripped.startswith("#") or (shell and stripped.startswith(("log ", "die ", "printf", "echo"))):
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
    for path in DOCKERFILES.values():
        for st in dockerfile_stages(path):
            entry = [exec_form(a) for i, a in st["instrs"] if i == "ENTRYPOINT"]
            cmd = [exec_form(a) for i, a in st["instrs"] if i == "CMD"]
            if entry and entry[-1] == ["cmhash"] and cmd and cmd[-1]:
                used.append((path.name, cmd[-1][0], [a for a in cmd[-1][1:] if a.startswith("--")]))
            for i, a in st["instrs"]:
                if i == "RUN":
                    used += [(path.name, c, f) for c, f in cmhash_invocations(a, shell=False)]
    for name, svc in (compose.get("services") or {}).items():
        if not builds_cmhash(svc):
            continue
        entry = svc.get("entrypoint")
        command = svc.get("command")
        if isinstance(command, str):
            command = shlex.split(command)
        if entry in (None, ["cmhash"], "cmhash") and command:
            used.append((f"compose:{name}", command[0], [a for a in command[1:] if a.startswith("--")]))
        elif entry is None:
            used.append((f"compose:{name}", "serve", []))  # the serving images' default CMD
    return used


def check_commands(compose: dict) -> list[str]:
    problems = []
    commands = cli_group().commands
    for where, command, flags in used_cmhash_commands(compose):
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
    declared = pyproject().get("tool", {}).get("setuptools", {}).get("package-data") or {}
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
                problems.append(
                    f"{f.relative_to(ROOT)} is not declared in [tool.setuptools.package-data]: "
                    "the Docker images (pip install .) would not contain it"
                )
    return problems


# ---------------------------------------------------------------------------------------------
# Tests


@pytest.fixture(scope="module")
def compose() -> dict:
    assert COMPOSE_FILE.is_file(), "docker-compose.yml missing at the repo root"
    return load_compose()


def test_services_and_profiles(compose):
    assert check_services_and_profiles(compose) == []


def test_build_contexts_dockerfiles_and_targets(compose):
    assert check_builds(compose) == []
    services = compose["services"]
    for name in ("cmhash", "trainer", "cmhash-milvus", "milvus-indexer"):
        assert services[name]["build"]["dockerfile"] == "docker/Dockerfile.cpu", name
    assert services["trainer"]["build"]["target"] == "trainer"
    assert services["cmhash"]["build"]["target"] == "serve"
    assert services["trainer"]["image"] != services["cmhash"]["image"], "one image name for two targets"


def test_named_volumes_declared_and_data_shared(compose):
    assert check_volumes(compose) == []
    assert check_data_mounts(compose) == []


def test_healthchecks_probe_readiness(compose):
    assert check_healthchecks(compose) == []


def test_depends_on(compose):
    assert check_depends_on(compose) == []
    deps = compose["services"]["cmhash-milvus"]["depends_on"]
    assert deps["milvus"]["condition"] == "service_healthy"
    for name in ("etcd", "minio"):
        assert compose["services"]["milvus"]["depends_on"][name]["condition"] == "service_healthy"


def test_plain_up_trains_then_serves(compose):
    assert check_startup_order(compose) == []
    assert compose["services"]["cmhash"]["depends_on"]["trainer"]["condition"] == "service_completed_successfully"


def test_ports_bound_to_localhost_and_backends_internal(compose):
    assert check_ports(compose) == []
    assert check_networks(compose) == []
    for name in INTERNAL_SERVICES:
        assert not compose["services"][name].get("ports"), name


def test_hardening(compose):
    assert check_hardening(compose) == []


def test_no_default_credentials(compose):
    assert check_credentials(compose) == []


def test_gpu_profile(compose):
    assert check_gpu(compose) == []


def test_cmhash_service_settings(compose):
    svc = compose["services"]["cmhash"]
    assert svc.get("restart") == "unless-stopped"
    env = service_env(svc)
    assert "CMHASH_API_KEY" in env and env["CMHASH_API_KEY"] is None, (
        "CMHASH_API_KEY must be passed through from the shell, never written in the file"
    )
    assert svc.get("entrypoint") is None and svc.get("command") is None, "cmhash runs the image's `serve`"
    assert compose["services"]["trainer"]["entrypoint"] == ["cmhash-train"]


def test_milvus_services(compose):
    services = compose["services"]
    assert services["milvus"]["image"].startswith("milvusdb/milvus:v2.5.")
    assert services["milvus"]["command"] == ["milvus", "run", "standalone"]
    env = service_env(services["milvus"])
    assert env["ETCD_ENDPOINTS"] == "etcd:2379" and env["MINIO_ADDRESS"] == "minio:9000"
    # Milvus authenticates to MinIO with the same credentials MinIO was started with.
    assert env["MINIO_ACCESS_KEY_ID"] == service_env(services["minio"])["MINIO_ROOT_USER"]
    assert env["MINIO_SECRET_ACCESS_KEY"] == service_env(services["minio"])["MINIO_ROOT_PASSWORD"]
    # The galleries served by cmhash-milvus are indexed into Milvus through the compose network.
    indexers = [n for n in trainer_services(compose) if service_env(services[n]).get("CMHASH_MILVUS_URI")]
    assert indexers, "no trainer service indexes into Milvus (CMHASH_MILVUS_URI)"
    for n in indexers:
        assert service_env(services[n])["CMHASH_MILVUS_URI"] == "http://milvus:19530"
        assert services["cmhash-milvus"]["depends_on"][n]["condition"] == "service_completed_successfully"
        for var in ("CMHASH_IMAGE_GALLERY", "CMHASH_TEXT_GALLERY"):
            assert service_env(services[n])[var] == service_env(services["cmhash-milvus"])[var], var
    for n in ("cmhash-milvus", *indexers):
        args = services[n]["build"].get("args", {})
        assert "milvus" in (args.get("EXTRAS") or args.get("TRAIN_EXTRAS") or "").split(","), (
            f"{n}: the image needs the milvus extra (pymilvus)"
        )


def test_env_names_are_real(compose):
    assert check_env_names(compose) == []
    # The images set the very variables `cmhash serve` reads for its paths (and the GPU image its device).
    params = {p.name: p.envvar for p in cli_group().commands["serve"].params}
    wanted = {
        "model": "/data/model",
        "image_gallery": "/data/galleries/images",
        "text_gallery": "/data/galleries/texts",
    }
    for flavour, path in DOCKERFILES.items():
        stages = dockerfile_stages(path)
        env = dockerfile_env(chain_instrs(stage_chain(stages, len(stages) - 1)))
        expected = dict(wanted, **({"device": "cuda"} if flavour == "gpu" else {}))
        for param, value in expected.items():
            assert param in params, f"`cmhash serve` has no {param} option"
            assert env.get(params[param]) == value, (
                f"{path.name}: ENV {params[param]} (serve {param}) is {env.get(params[param])!r}"
            )
    result = invoke_help("serve")
    assert result.exit_code == 0, result.output
    for var in COMPOSE_VARIABLES:
        assert var in COMPOSE_FILE.read_text() and var in DOCKER_README.read_text(), f"{var} is not documented"


def test_index_help_lists_milvus_options():
    result = invoke_help("index")
    assert result.exit_code == 0, result.output
    for flag in ("--milvus-uri", "--milvus-collection"):
        assert flag in result.output
    assert "CMHASH_MILVUS_TOKEN" in command_envvars("index")


@pytest.mark.parametrize("flavour", sorted(DOCKERFILES))
def test_dockerfile(flavour):
    assert check_dockerfile(DOCKERFILES[flavour], flavour) == []


def test_serving_images_resolve_without_torch():
    assert check_serving_dependencies() == []


def test_train_script():
    assert check_train_script() == []


def test_cmhash_commands_are_real(compose):
    assert check_commands(compose) == []


def test_package_data_reaches_the_image():
    assert check_package_data() == []


def test_dockerignore_keeps_local_state_out():
    ignored = [
        ln.strip() for ln in (ROOT / ".dockerignore").read_text().splitlines() if ln.strip() and not ln.startswith("#")
    ]
    for entry in (".venv", "runs", "bench/out", ".git"):
        assert entry in ignored, entry
    for needed in ("README.md", "pyproject.toml", "model", "index", "service", "docker"):
        assert needed not in ignored, f"{needed} is needed in the build context"


# ---------------------------------------------------------------------------------------------
# What a missing input looks like: one line naming it


def run_train_script(tmp_path: Path, **env: str) -> subprocess.CompletedProcess[str]:
    """The trainer script with a `cmhash` stub that fails loudly: the data checks must stop it
    before any step runs."""
    stub = tmp_path / "bin"
    stub.mkdir(exist_ok=True)
    (stub / "cmhash").write_text('#!/bin/sh\necho "cmhash stub called: $*" >&2\nexit 99\n')
    (stub / "cmhash").chmod(0o755)
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("CMHASH_")}
    full_env.update(PATH=f"{stub}{os.pathsep}{os.environ.get('PATH', '')}", **env)
    return subprocess.run(["bash", str(TRAIN_SCRIPT)], env=full_env, capture_output=True, text=True, timeout=60)


def test_train_script_names_missing_data(tmp_path):
    assert not Path("/data/run/checkpoint.pt").exists(), "this check assumes no trained /data on the test machine"
    root = tmp_path / "data"
    root.mkdir()
    cases = [
        ({"CMHASH_DATA_ROOT": str(root)}, str(root / "mirflickr25k")),
        ({"CMHASH_DATA_ROOT": str(root), "CMHASH_DATASET": "manifest"}, "CMHASH_DATA"),
        ({"CMHASH_DATA_ROOT": str(root), "CMHASH_DATASET": "wikipedia"}, "mirflickr or manifest"),
    ]
    (root / "empty").mkdir()  # what Docker creates for a missing bind mount: an empty folder
    cases.append(({"CMHASH_DATA_ROOT": str(root), "CMHASH_DATA": str(root / "empty")}, "rows.tsv"))
    for env, named in cases:
        result = run_train_script(tmp_path, **env)
        assert result.returncode == 2, (env, result.returncode, result.stderr)
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and named in lines[0] and "stub" not in lines[0], (env, result.stderr)


def test_serve_without_model_says_what_to_run(tmp_path):
    missing = tmp_path / "model"
    result = subprocess.run(
        [sys.executable, "-m", "service.cli", "serve", "--model", str(missing), "--port", "0"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        env={k: v for k, v in os.environ.items() if not k.startswith("CMHASH_")},
    )
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and str(missing) in lines[0] and "cmhash export" in lines[0], result.stderr


# ---------------------------------------------------------------------------------------------
# The checks fail on broken inputs


def test_checks_catch_broken_compose(compose):
    broken = copy.deepcopy(compose)
    broken["services"]["cmhash"]["build"]["dockerfile"] = "docker/Dockerfile.missing"
    assert any("Dockerfile.missing" in p for p in check_builds(broken))

    broken = copy.deepcopy(compose)
    broken["services"]["cmhash"]["build"]["target"] = "trainer"
    assert any(p.startswith("cmhash:") for p in check_builds(broken))

    broken = copy.deepcopy(compose)
    broken["services"]["cmhash"]["volumes"].append("undeclared-volume:/cache")
    assert any("undeclared-volume" in p for p in check_volumes(broken))

    broken = copy.deepcopy(compose)
    broken["services"]["trainer"]["volumes"][1] = "${CMHASH_DATA_DIR:-../shared/data}:/shared/data:ro"
    assert any(p.startswith("trainer:") and "short syntax" in p for p in check_data_mounts(broken))

    broken = copy.deepcopy(compose)
    del broken["services"]["etcd"]["healthcheck"]
    assert any(p.startswith("etcd") for p in check_healthchecks(broken))
    assert any("etcd" in p and "healthy" in p for p in check_depends_on(broken))

    broken = copy.deepcopy(compose)
    broken["services"]["cmhash"]["healthcheck"] = dict(
        broken["services"]["cmhash"]["healthcheck"], test=["CMD", "curl", "-f", "http://127.0.0.1:8000/healthz"]
    )
    assert any("readyz" in p for p in check_healthchecks(broken))

    broken = copy.deepcopy(compose)
    broken["services"]["cmhash-milvus"]["depends_on"]["milvs"] = {"condition": "service_healthy"}
    assert any("milvs" in p for p in check_depends_on(broken))

    broken = copy.deepcopy(compose)
    del broken["services"]["cmhash"]["depends_on"]
    broken["services"]["trainer"]["profiles"] = ["train"]
    problems = check_startup_order(broken)
    assert any(p.startswith("cmhash:") for p in problems) and any(p.startswith("trainer:") for p in problems)

    broken = copy.deepcopy(compose)
    broken["services"]["cmhash-gpu"]["ports"] = ["127.0.0.1:8000:8000"]
    assert check_ports(broken)
    broken = copy.deepcopy(compose)
    broken["services"]["cmhash"]["ports"] = ["8000:8000"]
    assert any("every interface" in p for p in check_ports(broken))
    broken = copy.deepcopy(compose)
    broken["services"]["milvus"]["ports"] = ["${CMHASH_PUBLISH_ADDR:-127.0.0.1}:19530:19530"]
    assert any(p.startswith("milvus:") for p in check_ports(broken))
    broken = copy.deepcopy(compose)
    broken["services"]["minio"]["networks"] = ["default"]
    assert any(p.startswith("minio:") for p in check_networks(broken))

    broken = copy.deepcopy(compose)
    broken["services"]["milvus"]["security_opt"] = ["seccomp:unconfined"]
    del broken["services"]["trainer"]["cap_drop"]
    broken["services"]["cmhash"]["read_only"] = False
    problems = check_hardening(broken)
    assert any("unconfined" in p for p in problems) and any("no-new-privileges" in p for p in problems)
    assert any(p.startswith("trainer:") and "cap_drop" in p for p in problems)
    assert any(p.startswith("cmhash:") and "read_only" in p for p in problems)

    broken = copy.deepcopy(compose)
    broken["services"]["minio"]["environment"] = {
        "MINIO_ROOT_USER": "minioadmin",
        "MINIO_ROOT_PASSWORD": "${MINIO_ROOT_PASSWORD:-minioadmin}",
    }
    broken["services"]["minio"]["command"] = "minio server /minio_data"
    broken["services"]["milvus"]["environment"]["MINIO_SECRET_ACCESS_KEY"] = "${MINIO_ROOT_PASSWORD:?set it}"
    problems = check_credentials(broken)
    for fragment in ("MINIO_ROOT_USER has", "MINIO_ROOT_PASSWORD has", "minioadmin", "refuse", ":?"):
        assert any(fragment in p for p in problems), (fragment, problems)

    broken = copy.deepcopy(compose)
    broken["services"]["trainer"]["profiles"] = ["milvus"]
    del broken["services"]["cmhash-gpu"]
    assert len(check_services_and_profiles(broken)) == 2

    broken = copy.deepcopy(compose)
    broken["services"]["cmhash-gpu"]["deploy"]["resources"]["reservations"]["devices"][0]["driver"] = "amd"
    assert check_gpu(broken)

    broken = copy.deepcopy(compose)
    broken["services"]["trainer"]["environment"]["CMHASH_NOT_A_FLAG"] = "1"
    broken["services"]["trainer"]["environment"]["CMHASH_MODEL"] = "/data/model"  # the old name
    broken["services"]["cmhash"]["environment"]["CMHASH_DATASET"] = "mirflickr"  # real, but not for serve
    text = COMPOSE_FILE.read_text() + "\n# ${CMHASH_UNDOCUMENTED:-x}\n"
    problems = check_env_names(broken, text)
    for fragment in (
        "trainer: CMHASH_NOT_A_FLAG",
        "trainer: CMHASH_MODEL ",
        "cmhash: CMHASH_DATASET",
        "CMHASH_UNDOCUMENTED",
    ):
        assert any(p.startswith(fragment) or fragment in p for p in problems), (fragment, problems)

    broken = copy.deepcopy(compose)
    broken["services"]["cmhash"]["command"] = ["trian", "--out", "/data/run"]
    assert any("trian" in p for p in check_commands(broken))
    broken["services"]["cmhash"]["command"] = ["serve", "--no-such-flag"]
    assert any("--no-such-flag" in p for p in check_commands(broken))


def test_checks_catch_broken_dockerfile_and_script(tmp_path):
    text = DOCKERFILES["cpu"].read_text()
    bad = tmp_path / "Dockerfile.cpu"
    bad.write_text(
        text.replace('ENTRYPOINT ["cmhash"]', 'ENTRYPOINT ["python", "-m", "service.cli"]')
        .replace("/readyz", "/healthz")
        .replace("USER cmhash\nEXPOSE", "USER root\nEXPOSE")
        .replace("ARG EXTRAS=cpu", "ARG EXTRAS=cpu,gpu,train")
        .replace(
            "FROM base AS serve\n",
            "FROM base AS serve\nCOPY . /tmp/src\n"
            "RUN pip install torch --index-url https://download.pytorch.org/whl/cpu\n",
        )
    )
    problems = check_dockerfile(bad, "cpu")
    for fragment in ("ENTRYPOINT", "/readyz", "root", "EXTRAS", "sources", "torch-free"):
        assert any(fragment in p for p in problems), (fragment, problems)
    assert check_dockerfile(tmp_path / "Dockerfile.none", "gpu") == [f"{tmp_path / 'Dockerfile.none'} does not exist"]

    # A single-stage build (the sources in a layer, a later rm does not remove them).
    single = tmp_path / "Dockerfile.single"
    single.write_text(
        "FROM python:3.11-slim\nARG EXTRAS=cpu\nCOPY . /tmp/src\n"
        'RUN pip install "/tmp/src[${EXTRAS}]" && rm -rf /tmp/src\nUSER cmhash\nEXPOSE 8000\n'
        'HEALTHCHECK CMD ["true", "/readyz"]\nENTRYPOINT ["cmhash"]\n'
        'CMD ["serve", "--host", "0.0.0.0", "--port", "8000"]\n'
    )
    problems = check_dockerfile(single, "cpu")
    for fragment in ("builder", "trainer", "sources"):
        assert any(fragment in p for p in problems), (fragment, problems)

    gpu = tmp_path / "Dockerfile.gpu"
    gpu.write_text(DOCKERFILES["gpu"].read_text().replace("cudnn-runtime", "runtime"))
    assert any("cudnn" in p for p in check_dockerfile(gpu, "gpu"))

    script = tmp_path / "train.sh"
    script.write_text("#!/usr/bin/env bash\necho start\nset -euo pipefail\nunset CMHASH_OUT\n")
    script.chmod(0o644)
    problems = check_train_script(script)
    assert any("executable" in p for p in problems) and any("set -euo pipefail" in p for p in problems)
    assert any("unset" in p for p in problems)
    assert check_train_script(tmp_path / "absent.sh")

    assert cmhash_invocations("cmhash indx --model m\n# cmhash nothing\n", shell=True) == [("indx", ["--model"])]


def test_checks_catch_torch_in_a_serving_image(tmp_path, monkeypatch):
    bad = tmp_path / "Dockerfile.cpu"
    bad.write_text(DOCKERFILES["cpu"].read_text().replace("ARG EXTRAS=cpu\n", "ARG EXTRAS=cpu,train\n"))
    monkeypatch.setitem(DOCKERFILES, "cpu", bad)
    assert any("torch" in p for p in check_serving_dependencies())
