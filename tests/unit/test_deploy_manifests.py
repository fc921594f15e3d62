"""The deployment files, checked offline: there is no Docker engine or cluster here, so the
manifests are validated against the Kubernetes schemas, the Dockerfile is checked statically, and
the manifests, config file, image and the server's own `serve --help` are cross-checked so that a
renamed flag, a moved port or a too-short grace period fails here and not in production."""

from __future__ import annotations

import copy
import fnmatch
import functools
import json
import os
import re
import shlex
import subprocess
import sys
import tomllib
from pathlib import Path, PurePosixPath
from typing import Any

import kubernetes_validate
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
K8S = DEPLOY / "k8s"
DOCKERFILE = DEPLOY / "Dockerfile"
CONFIG_EXAMPLE = DEPLOY / "config.example.toml"
SECRET_TEMPLATES = K8S / "secrets.template.yaml"
ENV_PREFIX = "DRIVER_SERVICE_"
#: Native gRPC probes are GA since 1.27; check the oldest version we claim and the newest bundled.
KUBERNETES_VERSIONS = ("1.29", kubernetes_validate.latest_version())
ADMIN_PORT = 9090
GRPC_PORT = 50051
HEALTH_SERVICE = "driver.v1.DriverService"

Doc = dict[str, Any]


# --- loading -------------------------------------------------------------------------------


def manifest_files() -> list[Path]:
    return sorted(p for p in K8S.glob("*.yaml") if p.name != "kustomization.yaml")


def load_docs(path: Path) -> list[Doc]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc is not None]


def all_docs() -> list[tuple[Path, Doc]]:
    return [(path, doc) for path in manifest_files() for doc in load_docs(path)]


def applied_docs() -> list[Doc]:
    """What `kubectl apply -k deploy/k8s` creates."""
    kustomization = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    return [doc for name in kustomization["resources"] for doc in load_docs(K8S / name)]


def the(kind: str, name: str | None = None) -> Doc:
    found = [
        doc
        for doc in applied_docs()
        if doc["kind"] == kind and (name is None or doc["metadata"]["name"] == name)
    ]
    assert len(found) == 1, f"expected one {kind} {name or ''} in kustomization, got {len(found)}"
    return found[0]


def deployment() -> Doc:
    return the("Deployment", "driver-service")


def pod_spec() -> Doc:
    spec: Doc = deployment()["spec"]["template"]["spec"]
    return spec


def container() -> Doc:
    containers = pod_spec()["containers"]
    assert len(containers) == 1
    result: Doc = containers[0]
    return result


def configmap_config() -> Doc:
    text = the("ConfigMap", "driver-service-config")["data"]["config.toml"]
    return tomllib.loads(text)


def secret_templates() -> dict[str, Doc]:
    return {doc["metadata"]["name"]: doc for doc in load_docs(SECRET_TEMPLATES)}


def container_port(name: str) -> int:
    ports = {p["name"]: p["containerPort"] for p in container()["ports"]}
    port: int = ports[name]
    return port


def listen_port(address: str) -> int:
    return int(address.rpartition(":")[2])


def is_subset(labels: dict[str, str], of: dict[str, str]) -> bool:
    return labels.items() <= of.items()


@functools.cache
def serve_help() -> str:
    """The real `serve --help`, with no DRIVER_SERVICE_* variables leaking in from this shell."""
    done = subprocess.run(
        [sys.executable, "-m", "driver_service", "serve", "--help"],
        capture_output=True,
        text=True,
        timeout=60,
        env=clean_env(),
        cwd=ROOT,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


def serve_flags() -> set[str]:
    return set(re.findall(r"(?<![\w-])--[a-z][a-z0-9-]*", serve_help()))


def flag_for_env(name: str) -> str:
    """DRIVER_SERVICE_ADMIN_LISTEN -> --admin-listen (the inverse of cli._env.env_name)."""
    return "--" + name.removeprefix(ENV_PREFIX).lower().replace("_", "-")


def flag_for_key(key: str) -> str:
    return "--" + key.replace("_", "-")


def flags_in(args: list[str]) -> list[str]:
    return [arg.split("=", 1)[0] for arg in args if arg.startswith("--")]


def flag_value(args: list[str], flag: str) -> str | None:
    for i, arg in enumerate(args):
        if arg == flag:
            return args[i + 1]
        if arg.startswith(flag + "="):
            return arg.split("=", 1)[1]
    return None


def clean_env() -> dict[str, str]:
    """This shell's environment without DRIVER_SERVICE_* variables, which would leak in."""
    return {k: v for k, v in os.environ.items() if not k.startswith(ENV_PREFIX)}


def config_show(args: list[str], cwd: Path, env: dict[str, str] | None = None) -> Doc:
    """The settings the real server would run with: `driver-service config show` loads and
    validates them exactly as `serve` does, then prints them."""
    done = subprocess.run(
        [sys.executable, "-m", "driver_service", "config", "show", *args],
        capture_output=True,
        text=True,
        timeout=60,
        env={**clean_env(), **(env or {})},
        cwd=cwd,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    shown: Doc = json.loads(done.stdout)
    return shown


FILE_KEYS = ("tls_cert", "tls_key", "tls_client_ca", "token_secret_file", "token_public_key")


def pod_settings(tmp_path: Path) -> Doc:
    """What the server makes of the pod's args, literal env values and ConfigMap. Absolute paths
    are re-rooted under tmp_path, where each key file the config names is created (as the
    Secret mounts would)."""
    root = str(tmp_path)
    text = the("ConfigMap", "driver-service-config")["data"]["config.toml"]
    text = text.replace('"/', f'"{root}/')
    for key, value in tomllib.loads(text).items():
        if key in FILE_KEYS:
            Path(value).parent.mkdir(parents=True, exist_ok=True)
            Path(value).write_text("mounted from a Secret\n")
    args = list(container()["args"])
    config_at = args.index("--config") + 1
    args[config_at] = root + args[config_at]
    Path(args[config_at]).parent.mkdir(parents=True, exist_ok=True)
    Path(args[config_at]).write_text(text)
    env = {e["name"]: e["value"] for e in container().get("env", []) if "value" in e}
    assert args[0] == "serve"
    return config_show(args[1:], tmp_path, env)


# --- Dockerfile parsing ------------------------------------------------------------------------


def dockerfile_instructions(text: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with comments dropped and `\\` continuations joined."""
    instructions: list[tuple[str, str]] = []
    pending = ""
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        line = pending + line
        pending = ""
        keyword, _, rest = line.partition(" ")
        instructions.append((keyword.upper(), rest.strip()))
    assert not pending, "Dockerfile ends inside a continued line"
    return instructions


def dockerfile_stages() -> list[list[tuple[str, str]]]:
    stages: list[list[tuple[str, str]]] = []
    for keyword, rest in dockerfile_instructions(DOCKERFILE.read_text()):
        if keyword == "FROM":
            stages.append([])
        assert stages, f"{keyword} before the first FROM"
        stages[-1].append((keyword, rest))
    return stages


def copy_parts(rest: str) -> tuple[list[str], list[str]]:
    """(--options, [sources..., destination]) of a COPY, in shell or JSON form."""
    words = json.loads(rest) if rest.startswith("[") else shlex.split(rest)
    options = [w for w in words if w.startswith("--")]
    paths = [w for w in words if not w.startswith("--")]
    return options, paths


def exec_form(stage: list[tuple[str, str]], keyword: str) -> list[str]:
    values = [rest for kw, rest in stage if kw == keyword]
    assert values, f"final stage has no {keyword}"
    last = values[-1]
    assert last.startswith("["), f"{keyword} must be exec form (a JSON array), got {last!r}"
    parsed = json.loads(last)
    assert isinstance(parsed, list)
    assert all(isinstance(item, str) for item in parsed)
    return parsed


def dockerignored(relative: str) -> bool:
    """Whether .dockerignore keeps `relative` out of the build context: the last matching pattern
    wins, `!` re-includes, and a pattern matching a parent directory covers what is inside."""
    ignore_file = ROOT / ".dockerignore"
    if not ignore_file.exists():
        return False
    patterns = [
        line.strip()
        for line in ignore_file.read_text().splitlines()
        if line.strip() and not line.strip().startswith("#")
    ]
    path = PurePosixPath(relative)
    candidates = [str(path), *(str(parent) for parent in path.parents if str(parent) != ".")]
    ignored = False
    for pattern in patterns:
        negated = pattern.startswith("!")
        bare = pattern.removeprefix("!").strip("/")
        if any(fnmatch.fnmatchcase(candidate, bare) for candidate in candidates):
            ignored = not negated
    return ignored


def pyproject() -> Doc:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())


# --- Kubernetes schemas ----------------------------------------------------------------------


@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
def test_every_manifest_validates_against_the_kubernetes_schema(version: str) -> None:
    docs = all_docs()
    assert {doc["kind"] for _, doc in docs} >= {
        "Deployment",
        "Service",
        "PodDisruptionBudget",
        "ServiceAccount",
        "ConfigMap",
        "Secret",
    }
    errors = []
    for path, doc in docs:
        try:
            kubernetes_validate.validate(doc, version, strict=True)
        except kubernetes_validate.ValidationError as exc:
            where = "/".join(str(part) for part in exc.absolute_path)
            errors.append(f"{path.name} {doc['kind']} at {where}: {exc.message}")
    assert not errors, "\n".join(errors)


def test_schema_check_rejects_a_misspelt_field() -> None:
    """Proves the validation above is strict: a typo (silently ignored by a lenient apply)
    fails it."""
    broken = copy.deepcopy(deployment())
    spec = broken["spec"]["template"]["spec"]["containers"][0]
    spec["readinesProbe"] = spec.pop("readinessProbe")
    with pytest.raises(kubernetes_validate.ValidationError, match="readinesProbe"):
        kubernetes_validate.validate(broken, KUBERNETES_VERSIONS[-1], strict=True)


def test_kustomization_applies_every_manifest_except_the_secret_templates() -> None:
    kustomization = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    listed = set(kustomization["resources"])
    on_disk = {p.name for p in manifest_files()}
    assert listed <= on_disk, f"listed but missing: {listed - on_disk}"
    assert on_disk - listed == {SECRET_TEMPLATES.name}
    assert not [doc for doc in applied_docs() if doc["kind"] == "Secret"]


def test_secret_templates_hold_placeholders_not_key_material() -> None:
    text = SECRET_TEMPLATES.read_text()
    assert "TEMPLATE" in text.splitlines()[0]
    assert "-----BEGIN" not in text
    for name, secret in secret_templates().items():
        assert "data" not in secret, f"{name}: use stringData placeholders, not base64 data"
        for key, value in secret["stringData"].items():
            assert "REPLACE" in value, f"{name}.{key} looks like a real value"


# --- Dockerfile --------------------------------------------------------------------------------


def test_dockerfile_is_multi_stage_from_slim_python() -> None:
    stages = dockerfile_stages()
    assert len(stages) >= 2
    for stage in stages:
        base = stage[0][1].split()[0]
        assert base.startswith("python:3.11-slim"), base


def test_every_dockerfile_copy_source_is_in_the_build_context() -> None:
    """Build context = repository root (`docker build -f deploy/Dockerfile .`)."""
    copies = 0
    for stage in dockerfile_stages():
        for keyword, rest in stage:
            if keyword not in {"COPY", "ADD"}:
                continue
            assert keyword == "COPY", "ADD fetches and unpacks implicitly: use COPY"
            options, paths = copy_parts(rest)
            if any(option.startswith("--from=") for option in options):
                continue
            for source in paths[:-1]:
                copies += 1
                assert (ROOT / source).exists(), f"COPY {source}: not in the repository"
                assert not dockerignored(source), f"COPY {source}: excluded by .dockerignore"
    assert copies
    readme = pyproject()["project"]["readme"]
    copied = {
        s for st in dockerfile_stages() for k, r in st if k == "COPY" for s in copy_parts(r)[1]
    }
    assert readme in copied, f"the wheel build needs {readme} (pyproject readme)"


def test_final_stage_copies_only_the_venv_and_runs_as_non_root() -> None:
    final = dockerfile_stages()[-1]
    copies = [copy_parts(rest) for keyword, rest in final if keyword == "COPY"]
    assert copies, "final stage copies nothing"
    for options, _ in copies:
        assert any(o.startswith("--from=") for o in options), "final stage copies from context"
    users = [rest for keyword, rest in final if keyword == "USER"]
    assert users, "final stage has no USER: it would run as root"
    user = users[-1].split(":")[0]
    assert user.isdigit(), "numeric USER so runAsNonRoot can verify it"
    assert int(user) != 0
    assert int(user) == pod_spec()["securityContext"]["runAsUser"] == 10001
    env = " ".join(rest for keyword, rest in final if keyword == "ENV")
    assert "PYTHONDONTWRITEBYTECODE=1" in env
    assert "PYTHONUNBUFFERED=1" in env
    exposed = {int(p.split("/")[0]) for k, r in final if k == "EXPOSE" for p in r.split()}
    assert exposed == {GRPC_PORT, ADMIN_PORT} == {p["containerPort"] for p in container()["ports"]}


def test_entrypoint_is_the_installed_console_script_in_exec_form() -> None:
    final = dockerfile_stages()[-1]
    entrypoint = exec_form(final, "ENTRYPOINT")
    assert entrypoint == ["driver-service"]
    assert entrypoint[0] in pyproject()["project"]["scripts"]
    assert "command" not in container(), "a k8s command would replace the ENTRYPOINT"
    cmd = exec_form(final, "CMD")
    assert cmd[0] == "serve"
    unknown = set(flags_in(cmd)) - serve_flags()
    assert not unknown, f"CMD passes flags `serve --help` does not know: {sorted(unknown)}"
    admin = flag_value(cmd, "--admin-listen")
    assert admin is not None
    assert listen_port(admin) == ADMIN_PORT
    assert not admin.startswith("127."), "kubelet probes reach the pod IP, not loopback"


# --- manifests against the server's own settings --------------------------------------------


def test_container_args_and_env_are_settings_serve_knows() -> None:
    args = container()["args"]
    assert args[0] == "serve"
    env_names = [e["name"] for e in container().get("env", [])]
    foreign = [name for name in env_names if not name.startswith(ENV_PREFIX)]
    assert not foreign, f"env vars the server does not read: {foreign}"
    passed = flags_in(args) + [flag_for_env(name) for name in env_names]
    unknown = sorted(set(passed) - serve_flags())
    assert not unknown, f"the manifests pass settings `serve --help` does not know: {unknown}"


@pytest.mark.parametrize("source", ["configmap", "config.example.toml"])
def test_config_file_keys_are_serve_flags(source: str) -> None:
    config = (
        configmap_config() if source == "configmap" else tomllib.loads(CONFIG_EXAMPLE.read_text())
    )
    flags = serve_flags()
    unknown = sorted(key for key in config if flag_for_key(key) not in flags)
    assert not unknown, f"{source}: keys with no `serve` flag: {unknown}"


def test_config_file_is_mounted_where_the_args_point() -> None:
    config_path = flag_value(container()["args"], "--config")
    assert config_path is not None
    mount = next(m for m in container()["volumeMounts"] if m["mountPath"] == config_path)
    volume = next(v for v in pod_spec()["volumes"] if v["name"] == mount["name"])
    assert volume["configMap"]["name"] == "driver-service-config"
    assert mount["subPath"] in the("ConfigMap", "driver-service-config")["data"]


def test_the_server_accepts_the_pod_configuration(tmp_path: Path) -> None:
    """The server's own loader (as `serve` runs it) takes the pod's args and ConfigMap: no
    unknown key, no invalid value, TLS and a token key present, and the values we rely on."""
    settings = pod_settings(tmp_path)
    assert settings["insecure"] is False
    assert settings["tls_cert"]
    assert settings["tls_client_ca"]
    assert settings["log_format"] == "json"
    assert settings["data_dir"] == str(tmp_path / "var/lib/driver-service")


def test_config_example_documents_the_real_defaults(tmp_path: Path) -> None:
    """config.example.toml says its values are the defaults: hold it to that, and prove the
    server loads it."""
    example = tomllib.loads(CONFIG_EXAMPLE.read_text())
    for key in FILE_KEYS:
        if key in example:
            (tmp_path / example[key]).parent.mkdir(parents=True, exist_ok=True)
            (tmp_path / example[key]).write_text("key material\n")
    loaded = config_show(["--config", str(CONFIG_EXAMPLE)], tmp_path)
    defaults = config_show(["--insecure"], tmp_path)
    differ = {
        key: (loaded[key], defaults[key])
        for key in example
        if key not in {*FILE_KEYS, "insecure"} and loaded[key] != defaults[key]
    }
    assert not differ, f"example value vs real default: {differ}"


# --- cross-checks: ports, probes, shutdown, secrets ----------------------------------------------


def test_probes_hit_the_admin_port_the_container_declares_and_the_server_listens_on(
    tmp_path: Path,
) -> None:
    settings = pod_settings(tmp_path)
    assert listen_port(settings["admin_listen"]) == ADMIN_PORT == container_port("admin")
    assert listen_port(settings["listen"]) == GRPC_PORT == container_port("grpc")
    assert not settings["admin_listen"].startswith("127."), "kubelet probes reach the pod IP"
    probes = {
        kind: container()[kind] for kind in ("startupProbe", "livenessProbe", "readinessProbe")
    }
    for kind, probe in probes.items():
        assert probe["grpc"]["port"] == ADMIN_PORT, f"{kind} must use the plaintext admin port"
    assert probes["readinessProbe"]["grpc"]["service"] == HEALTH_SERVICE
    assert probes["livenessProbe"]["grpc"]["service"] == ""
    proto = (ROOT / "proto" / "driver" / "v1" / "driver.proto").read_text()
    package = re.search(r"^package\s+([\w.]+);", proto, re.MULTILINE)
    assert package is not None
    assert f"{package.group(1)}.DriverService" == HEALTH_SERVICE
    assert re.search(r"^service\s+DriverService\b", proto, re.MULTILINE)


def test_termination_grace_outlasts_prestop_sleep_plus_shutdown_grace(tmp_path: Path) -> None:
    """SIGKILL comes terminationGracePeriodSeconds after the pod starts terminating, and that
    clock includes the preStop hook: the drain must finish inside what is left."""
    assert "shutdown_grace" in configmap_config(), "set it explicitly, not by default"
    shutdown_grace = float(pod_settings(tmp_path)["shutdown_grace"])
    command = container()["lifecycle"]["preStop"]["exec"]["command"]
    assert command[0] == "sleep"
    pre_stop = float(command[1])
    assert pre_stop >= 1
    termination = pod_spec()["terminationGracePeriodSeconds"]
    assert termination > pre_stop + shutdown_grace, (termination, pre_stop, shutdown_grace)


def test_key_material_paths_are_mounted_from_the_right_secrets() -> None:
    config = configmap_config()
    mounts = {m["mountPath"]: m for m in container()["volumeMounts"]}
    volumes = {v["name"]: v for v in pod_spec()["volumes"]}
    templates = secret_templates()
    keys = ("tls_cert", "tls_key", "tls_client_ca")
    token_keys = [k for k in ("token_secret_file", "token_public_key", "token_jwks") if k in config]
    assert len(token_keys) == 1, f"exactly one token verification key, got {token_keys}"
    assert not config.get("insecure", False)
    for key in (*keys, *token_keys):
        path = PurePosixPath(config[key])
        mount = mounts[str(path.parent)]
        assert mount.get("readOnly") is True
        secret = volumes[mount["name"]]["secret"]
        template = templates[secret["secretName"]]
        assert path.name in template["stringData"], f"{key}: no {path.name} in the Secret"
        assert secret["defaultMode"] & 0o007 == 0, f"{key}: world-readable secret files"
    for env in container().get("env", []):
        ref = env.get("valueFrom", {}).get("secretKeyRef")
        if ref is not None:
            assert ref["key"] in templates[ref["name"]]["stringData"], env["name"]
            assert not ref.get("optional", False), "a missing backend Secret must stop the pod"


def test_services_pdb_and_spread_select_the_deployment_pods() -> None:
    labels = deployment()["spec"]["template"]["metadata"]["labels"]
    assert is_subset(deployment()["spec"]["selector"]["matchLabels"], labels)
    headless = the("Service", "driver-service")["spec"]
    assert headless["clusterIP"] == "None"
    assert is_subset(headless["selector"], labels)
    (port,) = headless["ports"]
    assert (port["port"], port["appProtocol"], port["name"]) == (GRPC_PORT, "grpc", "grpc")
    assert container_port(port["targetPort"]) == GRPC_PORT
    admin = the("Service", "driver-service-admin")["spec"]
    assert admin.get("type", "ClusterIP") == "ClusterIP"
    assert admin.get("clusterIP") != "None"
    assert is_subset(admin["selector"], labels)
    assert [container_port(p["targetPort"]) for p in admin["ports"]] == [ADMIN_PORT]
    pdb = the("PodDisruptionBudget")["spec"]
    assert is_subset(pdb["selector"]["matchLabels"], labels)
    assert pdb.get("maxUnavailable") == 1 or pdb.get("minAvailable") == 2
    spread = pod_spec()["topologySpreadConstraints"]
    assert "kubernetes.io/hostname" in {c["topologyKey"] for c in spread}
    for constraint in spread:
        assert is_subset(constraint["labelSelector"]["matchLabels"], labels)


def test_pods_are_locked_down_and_sized_as_specified() -> None:
    assert deployment()["spec"]["replicas"] == 3
    assert the("ServiceAccount", "driver-service")["automountServiceAccountToken"] is False
    assert pod_spec()["serviceAccountName"] == "driver-service"
    assert pod_spec()["automountServiceAccountToken"] is False
    pod_security = pod_spec()["securityContext"]
    assert pod_security["runAsNonRoot"] is True
    assert pod_security["seccompProfile"]["type"] == "RuntimeDefault"
    security = container()["securityContext"]
    assert security["readOnlyRootFilesystem"] is True
    assert security["allowPrivilegeEscalation"] is False
    assert security["capabilities"]["drop"] == ["ALL"]
    assert "add" not in security["capabilities"]
    assert container()["resources"] == {
        "requests": {"cpu": "100m", "memory": "128Mi"},
        "limits": {"cpu": "500m", "memory": "512Mi"},
    }
    tmp = next(m for m in container()["volumeMounts"] if m["mountPath"] == "/tmp")
    volume = next(v for v in pod_spec()["volumes"] if v["name"] == tmp["name"])
    assert "emptyDir" in volume
