"""Offline checks of the GPU cluster launcher config (cluster/gpu.yaml) and its scripts.

Nothing here talks to a cloud: the config goes through the installed Ray's own schema validation
(the same prepare_config -> validate_config steps `ray up` runs before contacting AWS), the security
properties are asserted on the parsed YAML, the `ray start` / `mlflow server` command lines are parsed
by the installed Ray's and MLflow's own CLI parsers, and the shell scripts run in dry-run mode.
"""

from __future__ import annotations

import copy
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
CLUSTER = REPO / "cluster"
GPU_YAML = CLUSTER / "gpu.yaml"
START_MLFLOW = CLUSTER / "start_mlflow.sh"
NODE_ENV = CLUSTER / "node_env.sh"
AWS_SETUP = CLUSTER / "aws_setup.sh"
MLFLOW_TUNNEL = CLUSTER / "mlflow_tunnel.sh"
SETTINGS_SH = CLUSTER / "settings.sh"
LOCK_SH = CLUSTER / "lock.sh"
LOCK = CLUSTER / "requirements.lock"
SHELL_SCRIPTS = [START_MLFLOW, NODE_ENV, AWS_SETUP, MLFLOW_TUNNEL, SETTINGS_SH, LOCK_SH]
PIN = re.compile(r"^([A-Za-z0-9_.\-]+)==(\S+) \\$", re.MULTILINE)

TOKEN_REMOTE_PATH = "~/.ray/auth_token"
# Known instance types -> (vCPUs, GPUs), to check the advertised Ray resources against the hardware.
GPU_INSTANCES = {"g5.xlarge": (4, 1), "g5.2xlarge": (8, 1), "g5.12xlarge": (48, 4), "g5.48xlarge": (192, 8)}
GPU_FAMILIES = ("g4dn.", "g5.", "g6.", "g6e.", "p3.", "p4d.", "p4de.", "p5.")

# "--host 0.0.0.0", "--host=0.0.0.0", "--dashboard-host=0.0.0.0", "-h 0.0.0.0", "--host ::" ...
WILDCARD_BIND = re.compile(r"(--(dashboard-)?host|\s-h)[=\s]+['\"]?(0\.0\.0\.0|::|\[::\])")


# ----------------------------------------------------------------------------- helpers


@pytest.fixture(scope="module")
def raw_text() -> str:
    return GPU_YAML.read_text()


@pytest.fixture(scope="module")
def config() -> dict:
    return yaml.safe_load(GPU_YAML.read_text())


@pytest.fixture(scope="module")
def prepared(config) -> dict:
    """The config after the installed Ray's own preprocessing (defaults merged, setup commands merged)."""
    from ray.autoscaler._private.util import (
        prepare_config,
        translate_trivial_legacy_config,
    )

    cfg = copy.deepcopy(config)
    translate_trivial_legacy_config(cfg)
    return prepare_config(cfg)


def worker_types(cfg: dict) -> dict:
    return {k: v for k, v in cfg["available_node_types"].items() if k != cfg["head_node_type"]}


def all_commands(cfg: dict) -> list[str]:
    keys = (
        "initialization_commands",
        "setup_commands",
        "head_setup_commands",
        "worker_setup_commands",
        "head_start_ray_commands",
        "worker_start_ray_commands",
    )
    cmds = [c for k in keys for c in cfg.get(k) or []]
    for node_type in cfg["available_node_types"].values():
        for k in ("initialization_commands", "worker_setup_commands"):
            cmds += node_type.get(k) or []
    return cmds


def parse_ray_start(command: str) -> tuple[dict[str, str], list[str]]:
    """Split a shell command line at ';' / '&&' and return (env assignments, args) of its `ray start`."""
    for segment in re.split(r";|&&", command):
        tokens = shlex.split(segment)
        env = {}
        while tokens and re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*=.*", tokens[0]):
            name, _, value = tokens.pop(0).partition("=")
            env[name] = value
        if tokens[:2] == ["ray", "start"]:
            return env, tokens[2:]
    raise AssertionError(f"no `ray start` in {command!r}")


def ray_start_commands(cfg: dict, key: str) -> list[str]:
    cmds = [c for c in cfg[key] if re.search(r"\bray start\b", c)]
    assert cmds, f"{key} has no `ray start`"
    return cmds


def click_params(command, args: list[str]) -> dict:
    """Parse args with the installed CLI's click command: unknown or malformed options raise."""
    ctx = command.make_context(command.name, list(args))
    return ctx.params


def run_bash(script: Path, *args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        ["bash", str(script), *args], capture_output=True, text=True, env=env, timeout=60
    )


@pytest.fixture()
def fake_node(tmp_path):
    """A HOME and a PATH whose `ip` reports a given source address, as on a VPC node."""

    def make(src_ip: str, extra_env: dict | None = None) -> dict:
        home = tmp_path / "home"
        home.mkdir(exist_ok=True)
        bindir = tmp_path / "bin"
        bindir.mkdir(exist_ok=True)
        fake_ip = bindir / "ip"
        fake_ip.write_text(
            f"#!/bin/sh\necho '1.1.1.1 via 10.0.0.1 dev ens5 src {src_ip} uid 1000'\necho '    cache'\n"
        )
        fake_ip.chmod(0o755)
        env = {
            "HOME": str(home),
            "PATH": f"{bindir}:{os.environ.get('PATH', '/usr/bin:/bin')}",
            "MLFLOW_DRY_RUN": "1",
        }
        env.update(extra_env or {})
        return env

    return make


def dry_run_mlflow(env: dict) -> tuple[list[str], str]:
    proc = run_bash(START_MLFLOW, env=env)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.strip().splitlines()
    argv = shlex.split(lines[0])
    uri = lines[1].removeprefix("MLFLOW_TRACKING_URI=")
    return argv, uri


# ----------------------------------------------------------------------------- (a) Ray's validator


def test_config_passes_rays_json_schema(config):
    """The raw file against the JSON schema the installed Ray ships (ray/autoscaler/ray-schema.json)."""
    import jsonschema
    import ray.autoscaler

    schema_path = Path(ray.autoscaler.__file__).parent / "ray-schema.json"
    assert schema_path.is_file(), schema_path
    jsonschema.validate(config, json.loads(schema_path.read_text()))


def test_config_passes_rays_validate_config(prepared):
    """What `ray up` does before talking to AWS: prepare_config (merge aws/defaults.yaml) + validate_config."""
    from ray.autoscaler._private.util import validate_config

    validate_config(prepared)  # raises jsonschema.ValidationError / ValueError on a bad config
    assert prepared["provider"]["type"] == "aws"
    assert prepared["head_node_type"] in prepared["available_node_types"]


def test_ray_start_command_lines_parse_with_installed_ray(config):
    from ray.scripts.scripts import start

    for key in ("head_start_ray_commands", "worker_start_ray_commands"):
        for cmd in ray_start_commands(config, key):
            _, args = parse_ray_start(cmd)
            click_params(start, args)


# ----------------------------------------------------------------------------- (b) security properties


@pytest.mark.parametrize("path", [GPU_YAML, *SHELL_SCRIPTS, CLUSTER / "cluster.env"], ids=lambda p: p.name)
def test_no_wildcard_binds_anywhere(path):
    text = path.read_text()
    assert not WILDCARD_BIND.search(text), f"{path.name} binds a service to all interfaces"
    assert "--dashboard-host=0.0.0.0" not in text
    assert "--host 0.0.0.0" not in text and "--host=0.0.0.0" not in text


def test_ray_defaults_do_not_leak_a_public_dashboard(prepared):
    """aws/defaults.yaml starts the head with --dashboard-host=0.0.0.0: our commands must replace it."""
    for cmd in all_commands(prepared):
        assert not WILDCARD_BIND.search(cmd), cmd
        assert "0.0.0.0" not in cmd, cmd


def test_head_dashboard_binds_to_localhost_only(config):
    from ray.scripts.scripts import start

    (head_cmd,) = ray_start_commands(config, "head_start_ray_commands")
    _, args = parse_ray_start(head_cmd)
    params = click_params(start, args)
    assert params["head"] is True
    assert params["dashboard_host"] == "127.0.0.1"
    assert params["autoscaling_config"] == "~/ray_bootstrap_config.yaml"
    for cmd in ray_start_commands(config, "worker_start_ray_commands"):
        _, args = parse_ray_start(cmd)
        params = click_params(start, args)
        assert not params["head"]
        assert params["address"] == "$RAY_HEAD_IP:6379"
        assert params["dashboard_host"] in (None, "127.0.0.1", "localhost")


def test_token_auth_enabled_in_every_ray_start(config):
    assert config["file_mounts"].get(TOKEN_REMOTE_PATH), "the auth token file is not mounted"
    for key in ("head_start_ray_commands", "worker_start_ray_commands"):
        for cmd in ray_start_commands(config, key):
            env, _ = parse_ray_start(cmd)
            assert env.get("RAY_AUTH_MODE") == "token", cmd
            token_path = env.get("RAY_AUTH_TOKEN_PATH", "")
            assert token_path.replace("$HOME", "~") == TOKEN_REMOTE_PATH, cmd
    # Interactive shells on the nodes (the sweep driver after `ray attach`) get the same settings.
    node_env = NODE_ENV.read_text()
    assert "export RAY_AUTH_MODE=token" in node_env
    assert 'export RAY_AUTH_TOKEN_PATH="$HOME/.ray/auth_token"' in node_env
    assert any("source ~/node_env.sh" in c for c in config["setup_commands"])
    assert config["file_mounts"].get("~/node_env.sh") == "cluster/node_env.sh"


def test_installed_ray_reads_token_auth_from_these_env_vars(tmp_path):
    """The mechanism the config relies on, checked against the installed Ray: RAY_AUTH_MODE=token turns
    token auth on and RAY_AUTH_TOKEN_PATH names the token file (Ray >= 2.52)."""
    token_file = tmp_path / "auth_token"
    token_file.write_text("0123456789abcdef0123456789abcdef")
    probe = textwrap.dedent(
        """
        from ray._raylet import AuthenticationMode, AuthenticationTokenLoader, Config, get_authentication_mode
        from ray._private.authentication.authentication_token_setup import AUTH_MODE_ENV_VAR
        Config.initialize("")
        assert AUTH_MODE_ENV_VAR == "RAY_AUTH_MODE", AUTH_MODE_ENV_VAR
        assert get_authentication_mode() == AuthenticationMode.TOKEN, get_authentication_mode()
        loader = AuthenticationTokenLoader.instance()
        assert loader.has_token()
        print(loader.get_raw_token())
        """
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_AUTH")}
    env.update(RAY_AUTH_MODE="token", RAY_AUTH_TOKEN_PATH=str(token_file), HOME=str(tmp_path))
    proc = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, env=env, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.strip().splitlines()[-1] == token_file.read_text()


def test_security_group_opens_nothing_but_ssh(config):
    provider = config["provider"]
    assert provider["type"] == "aws"
    assert not provider.get("use_internal_ips"), "set SSH access up explicitly before using internal IPs"
    rules = provider.get("security_group", {}).get("IpPermissions", [])
    for rule in rules:
        world = [r.get("CidrIp") for r in rule.get("IpRanges", [])] + [
            r.get("CidrIpv6") for r in rule.get("Ipv6Ranges", [])
        ]
        if any(c in ("0.0.0.0/0", "::/0") for c in world):
            assert (rule.get("FromPort"), rule.get("ToPort")) == (22, 22), rule
    for port in (5000, 6379, 8265, 10001):
        assert not any(r.get("FromPort", -2) <= port <= r.get("ToPort", -3) for r in rules), port
    # The group aws_setup.sh creates (SSH from your IP only) is the one the config names.
    assert provider["security_group"]["GroupName"] == "ray-diffusion-sweep"
    assert "SG_NAME=ray-diffusion-sweep" in AWS_SETUP.read_text()


def test_mlflow_started_on_head_from_mounted_script(config):
    assert config["file_mounts"].get("~/start_mlflow.sh") == "cluster/start_mlflow.sh"
    head = config["head_start_ray_commands"]
    i_mlflow = next(i for i, c in enumerate(head) if "start_mlflow.sh" in c)
    i_ray = next(i for i, c in enumerate(head) if re.search(r"\bray start\b", c))
    assert i_mlflow < i_ray, "MLflow must be up (and its URI written) before `ray start` exports it"
    assert not any("start_mlflow.sh" in c for c in config["worker_start_ray_commands"])


def test_mlflow_binds_to_private_ip_with_sqlite_and_proxied_artifacts(fake_node):
    from mlflow.cli import server

    env = fake_node("172.31.7.42")
    argv, uri = dry_run_mlflow(env)
    assert argv[:2] == ["mlflow", "server"]
    params = click_params(server, argv[2:])  # the installed MLflow accepts every option
    assert params["host"] == "172.31.7.42"
    assert params["port"] == 5000
    assert params["backend_store_uri"] == f"sqlite:///{env['HOME']}/mlflow/mlflow.db"
    assert params["serve_artifacts"] is True
    assert params["artifacts_destination"] == f"{env['HOME']}/mlflow/artifacts"
    assert uri == "http://172.31.7.42:5000"


def test_mlflow_artifacts_destination_overridable_for_s3(fake_node, tmp_path):
    env = fake_node("10.0.3.7", {"MLFLOW_ARTIFACTS_DESTINATION": "s3://my-bucket/mlflow-artifacts"})
    argv, _ = dry_run_mlflow(env)
    assert argv[argv.index("--artifacts-destination") + 1] == "s3://my-bucket/mlflow-artifacts"
    # ... also through ~/cluster.env, the way the cluster passes settings.
    env = fake_node("10.0.3.7")
    Path(env["HOME"], "cluster.env").write_text("export MLFLOW_ARTIFACTS_DESTINATION=s3://b2/art\n")
    argv, _ = dry_run_mlflow(env)
    assert argv[argv.index("--artifacts-destination") + 1] == "s3://b2/art"


@pytest.mark.parametrize("host", ["0.0.0.0", "::", "0", "8.8.8.8", "192.0.2.2", "172.32.0.1", "head.example.com"])
def test_mlflow_refuses_public_or_wildcard_hosts(fake_node, host):
    env = fake_node("10.0.3.7", {"MLFLOW_HOST": host})
    proc = run_bash(START_MLFLOW, env=env)
    assert proc.returncode != 0
    assert "refusing to bind" in proc.stderr


def test_mlflow_refuses_when_the_node_has_only_a_public_address(fake_node):
    proc = run_bash(START_MLFLOW, env=fake_node("54.201.10.10"))
    assert proc.returncode != 0
    assert "refusing to bind" in proc.stderr


def test_gpu_worker_types(config):
    workers = worker_types(config)
    gpus = {}
    for name, node_type in workers.items():
        instance = node_type["node_config"]["InstanceType"]
        n_gpu = node_type["resources"].get("GPU", 0)
        assert instance.startswith(GPU_FAMILIES), f"{name}: {instance} is not a GPU instance type"
        if instance in GPU_INSTANCES:
            assert (node_type["resources"].get("CPU"), n_gpu) == GPU_INSTANCES[instance], name
        gpus[name] = n_gpu
    assert any(n == 1 for n in gpus.values()), f"no 1-GPU worker type: {gpus}"
    assert any(n > 1 for n in gpus.values()), f"no multi-GPU worker type: {gpus}"
    head = config["available_node_types"][config["head_node_type"]]
    assert head["resources"].get("GPU", 0) == 0
    assert not head["node_config"]["InstanceType"].startswith(GPU_FAMILIES), "the head should be a CPU node"


def test_min_max_workers_sane(config, prepared):
    total_max = config["max_workers"]
    assert 1 <= total_max <= 32, "cap the cluster size: GPU nodes cost dollars per hour"
    workers = worker_types(config)
    for name, node_type in workers.items():
        lo, hi = node_type["min_workers"], node_type["max_workers"]
        assert 0 <= lo <= hi, name
        assert hi <= total_max, name
        assert lo == 0, f"{name}: idle GPU nodes should scale to zero"
    assert sum(t["min_workers"] for t in workers.values()) <= total_max
    assert 1 <= config["idle_timeout_minutes"] <= 30
    # Ray fills per-type limits for the head: it must not scale the head type.
    head = prepared["available_node_types"][prepared["head_node_type"]]
    assert head.get("min_workers", 0) == 0 and head.get("max_workers", 0) == 0


def lock_pins() -> dict[str, str]:
    return {name.lower().replace("_", "-"): version for name, version in PIN.findall(LOCK.read_text())}


def test_setup_installs_exactly_the_lock_then_the_project(config):
    """Every node: the lock, with hashes, then the project without dependencies (they are all in the lock)."""
    setup = config["setup_commands"]
    project_mount = config["file_mounts"]["~/diffusion-sweep"]
    assert (REPO / project_mount / "pyproject.toml").is_file()
    i_lock = next(i for i, c in enumerate(setup) if re.search(r"uv pip sync\b.*--require-hashes\b.*~/diffusion-sweep/cluster/requirements\.lock", c))
    i_project = next(i for i, c in enumerate(setup) if re.search(r"pip install\b.*--no-deps\b.*-e\s+~/diffusion-sweep\b", c))
    assert i_lock < i_project


def test_no_unpinned_install_in_cluster_files(config):
    """Every install in gpu.yaml and the cluster scripts is the lock, the project itself, or `name==version`; every
    downloaded installer names its version."""
    commands = all_commands(config) + [line for script in SHELL_SCRIPTS for line in script.read_text().splitlines()
                                       if not line.lstrip().startswith("#")]
    for cmd in commands:
        for install in re.findall(r"pip install ([^;|&]*)", cmd):
            args = [a.strip("'\"") for a in install.split() if not a.startswith("-") and not a.startswith("~/venv")]
            assert "-e" in install or all("==" in a for a in args), f"unpinned install: {cmd}"
        assert not re.search(r"https?://\S+\s*\|[^|]*\b(?:ba)?sh\b", cmd), f"a downloaded script piped to a shell: {cmd}"
        for target in re.findall(r"curl [^|;&]*-\w*o (\S+)", cmd):  # every downloaded file is checked before use
            assert f"  {target}' | sha256sum -c" in cmd, f"downloaded without a sha256 check: {cmd}"
        assert "pip sync" not in cmd or "--require-hashes" in cmd, cmd


def test_lock_pins_every_dependency_of_the_project_with_hashes():
    """The lock covers pyproject.toml's dependencies, its `cluster` extra and its build requirements, each at a
    version its specifier allows, and every pin carries a hash."""
    import tomllib
    from packaging.requirements import Requirement

    project = tomllib.loads((REPO / "pyproject.toml").read_text())
    wanted = project["project"]["dependencies"] + project["project"]["optional-dependencies"]["cluster"] + project["build-system"]["requires"]
    pins = lock_pins()
    for line in wanted:
        req = Requirement(line)
        name = req.name.lower().replace("_", "-")
        assert name in pins, f"{name} is not in cluster/requirements.lock: run cluster/lock.sh"
        assert req.specifier.contains(pins[name], prereleases=True), f"{name}=={pins[name]} does not satisfy {line}"
    blocks = re.split(r"\n(?=\S)", LOCK.read_text().split("\n", 2)[2])
    assert all("--hash=sha256:" in block for block in blocks if "==" in block)


def test_cluster_versions_match_this_machine_and_ci(config):
    """The lock holds this machine's Ray (clients and cluster must match) and CI's torch; the nodes' Python is the
    one the lock was resolved for."""
    import ray

    pins = lock_pins()
    assert pins["ray"] == ray.__version__
    ci = (REPO / ".ci" / "run").read_text()
    for name in ("torch", "torchvision"):
        assert f'"{name}=={pins[name]}"' in ci
    minor = re.search(r"PYTHON_MINOR=(\d+\.\d+)", LOCK_SH.read_text()).group(1)
    (python,) = re.findall(r"--python (\d+\.\d+\.\d+)", " ".join(config["setup_commands"]))
    assert python.startswith(minor + ".") and f"for Python {minor} on" in LOCK.read_text().splitlines()[0]


@pytest.mark.parametrize("space", ["cifar", "mnist"])
def test_trials_fill_the_node_type_they_land_on(space):
    """The shipped GPU sweeps' resources_per_trial use every GPU of the node type Ray's autoscaler picks."""
    from sweep.config import load_sweep
    from sweep.nodes import load_cluster_spec, place

    cfg = load_sweep(REPO / "search_spaces" / f"{space}.yaml")
    res, spec = cfg.sweep.resources_per_trial, load_cluster_spec(GPU_YAML)
    placement = place(spec, res.cpu, res.gpu, cfg.sweep.max_concurrent)
    assert placement.waiting == 0 and placement.nodes
    for name, per_node in placement.per_node.items():
        node = spec.types[name]
        assert per_node * res.gpu == node.gpu and per_node * res.cpu <= node.cpu, (name, per_node)


def test_file_mount_sources_exist(config):
    for remote, local in config["file_mounts"].items():
        if local.startswith("~"):
            assert remote == TOKEN_REMOTE_PATH, f"only the auth token comes from outside the repo: {local}"
            continue
        assert (REPO / local).exists(), f"{remote}: {local} missing (run `ray up` from the repo root)"


def test_workers_know_the_mlflow_uri(config):
    assert any("$RAY_HEAD_IP:5000" in c and ".mlflow_tracking_uri" in c for c in config["worker_setup_commands"])
    for cmd in ray_start_commands(config, "worker_start_ray_commands"):
        assert 'MLFLOW_TRACKING_URI="http://$RAY_HEAD_IP:5000"' in cmd


def test_node_env_exports(tmp_path):
    home = tmp_path / "home"
    home.mkdir()
    (home / ".mlflow_tracking_uri").write_text("http://10.0.0.5:5000\n")
    (home / "cluster.env").write_text("export DIFFUSION_SWEEP_STORAGE=s3://bucket/ray_results\n")
    env = {"HOME": str(home), "PATH": os.environ.get("PATH", "/usr/bin:/bin")}
    proc = subprocess.run(
        ["bash", "-c", f"set -u; . {shlex.quote(str(NODE_ENV))}; env"],
        capture_output=True, text=True, env=env, timeout=30,
    )
    assert proc.returncode == 0, proc.stderr
    out = dict(line.split("=", 1) for line in proc.stdout.splitlines() if "=" in line)
    assert out["RAY_AUTH_MODE"] == "token"
    assert out["RAY_AUTH_TOKEN_PATH"] == f"{home}/.ray/auth_token"
    assert out["MLFLOW_TRACKING_URI"] == "http://10.0.0.5:5000"
    assert out["DIFFUSION_SWEEP_STORAGE"] == "s3://bucket/ray_results"


def test_aws_setup_dry_run_opens_only_ssh_from_the_given_cidr():
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    env["DRY_RUN"] = "1"
    proc = run_bash(AWS_SETUP, "my-sweep-bucket", "198.51.100.4/32", env=env)
    assert proc.returncode == 0, proc.stderr
    calls = [line.split("\t")[1:] for line in proc.stdout.splitlines() if line.startswith("aws\t")]
    ingress = []
    for call in calls:
        if call[:2] == ["ec2", "authorize-security-group-ingress"]:
            ingress += json.loads(call[call.index("--ip-permissions") + 1])
    ranges = [(r.get("FromPort"), r.get("ToPort"), ip["CidrIp"]) for r in ingress for ip in r.get("IpRanges", [])]
    assert ranges == [(22, 22, "198.51.100.4/32")]
    assert all(r.get("UserIdGroupPairs") for r in ingress if not r.get("IpRanges")), ingress
    # Policies: valid JSON, bucket-scoped S3, the head may pass only the worker role.
    policies = {
        call[call.index("--role-name") + 1]: json.loads(call[call.index("--policy-document") + 1])
        for call in calls
        if call[:2] == ["iam", "put-role-policy"]
    }
    assert set(policies) == {"diffusion-sweep-head", "diffusion-sweep-worker"}
    for doc in policies.values():
        s3 = [s for s in doc["Statement"] if any(a.startswith("s3:") for a in _actions(s))]
        assert s3 and all("my-sweep-bucket" in str(s["Resource"]) for s in s3)
    pass_role = [s for s in policies["diffusion-sweep-head"]["Statement"] if "iam:PassRole" in _actions(s)]
    assert [s["Resource"] for s in pass_role] == ["arn:aws:iam::000000000000:role/diffusion-sweep-worker"]
    assert not any("iam:" in a for s in policies["diffusion-sweep-worker"]["Statement"] for a in _actions(s))
    # The names must be the ones gpu.yaml uses.
    cfg = yaml.safe_load(GPU_YAML.read_text())
    profiles = {t["node_config"]["IamInstanceProfile"]["Name"] for t in cfg["available_node_types"].values()}
    assert profiles == set(policies)


def test_aws_setup_writes_the_bucket_and_one_image_into_the_cluster_settings():
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    proc = run_bash(AWS_SETUP, "my-sweep-bucket", "198.51.100.4/32", env={**env, "DRY_RUN": "1"})
    assert proc.returncode == 0, proc.stderr
    settings = dict(line.split("\t", 1)[1].split("=", 1) for line in proc.stdout.splitlines() if line.startswith("settings\t"))
    assert settings["DIFFUSION_SWEEP_STORAGE"] == "s3://my-sweep-bucket/ray_results"
    assert settings["MLFLOW_ARTIFACTS_DESTINATION"].startswith("s3://my-sweep-bucket/")
    assert settings["MLFLOW_STORE_BACKUP"].startswith("s3://my-sweep-bucket/")
    assert re.fullmatch(r"ami-[0-9a-f]+", settings["IMAGE_ID"])


def test_settings_sh_writes_cluster_env_and_pins_the_image(tmp_path):
    copy = tmp_path / "cluster"
    shutil.copytree(CLUSTER, copy)
    env = {**os.environ, "CLUSTER_DIR": str(copy)}
    proc = run_bash(SETTINGS_SH, "DIFFUSION_SWEEP_STORAGE=s3://b/ray_results", "NEW_SETTING=a b", "IMAGE_ID=ami-0abcdef1234567890", env=env)
    assert proc.returncode == 0, proc.stderr
    node_env = subprocess.run(["bash", "-c", f"set -u; . {shlex.quote(str(copy / 'cluster.env'))}; env"], check=True, capture_output=True,
                              text=True, timeout=30)
    exported = dict(line.split("=", 1) for line in node_env.stdout.splitlines() if "=" in line)
    assert exported["DIFFUSION_SWEEP_STORAGE"] == "s3://b/ray_results" and exported["NEW_SETTING"] == "a b"
    assert (copy / "cluster.env").read_text().count("DIFFUSION_SWEEP_STORAGE=") == 1
    cfg = yaml.safe_load((copy / "gpu.yaml").read_text())
    assert {t["node_config"]["ImageId"] for t in cfg["available_node_types"].values()} == {"ami-0abcdef1234567890"}
    for bad in ("IMAGE_ID=resolve:ssm:/x", "X=$(reboot)", "lower=1"):
        assert run_bash(SETTINGS_SH, bad, env=env).returncode == 2


def test_node_prices_in_the_cluster_settings_cover_every_node_type(config):
    from sweep.nodes import load_cluster_spec

    env = {k: v for k, v in os.environ.items() if k != "DIFFUSION_SWEEP_NODE_PRICES"}
    probe = "from sweep.nodes import load_cluster_spec; import sys; s = load_cluster_spec(sys.argv[1]); print({n: t.price_per_hour for n, t in s.types.items()})"
    proc = subprocess.run([sys.executable, "-c", probe, str(GPU_YAML)], capture_output=True, text=True, env=env, cwd=REPO, timeout=120)
    assert proc.returncode == 0, proc.stderr
    prices = eval(proc.stdout)
    assert set(prices) == set(load_cluster_spec(GPU_YAML).types) and all(p and p > 0 for p in prices.values())


def test_mlflow_store_is_backed_up_to_the_bucket(fake_node):
    env = fake_node("10.0.3.7", {"MLFLOW_STORE_BACKUP": "s3://b/mlflow/mlflow.db"})
    proc = run_bash(START_MLFLOW, env=env)
    assert proc.returncode == 0, proc.stderr
    assert "MLFLOW_STORE_BACKUP=s3://b/mlflow/mlflow.db every 60 s" in proc.stdout


def test_aws_setup_refuses_world_ssh():
    env = dict(os.environ, DRY_RUN="1")
    proc = run_bash(AWS_SETUP, "my-sweep-bucket", "0.0.0.0/0", env=env)
    assert proc.returncode != 0


def _actions(statement: dict) -> list[str]:
    actions = statement["Action"]
    return [actions] if isinstance(actions, str) else list(actions)


# ----------------------------------------------------------------------------- (c) shell syntax


@pytest.mark.parametrize("script", SHELL_SCRIPTS, ids=lambda p: p.name)
def test_shell_script_syntax(script):
    assert shutil.which("bash"), "bash is needed"
    proc = subprocess.run(["bash", "-n", str(script)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr


def test_yaml_commands_are_valid_bash(config):
    for cmd in all_commands(config):
        proc = subprocess.run(["bash", "-n", "-c", cmd], capture_output=True, text=True)
        assert proc.returncode == 0, f"{cmd!r}: {proc.stderr}"


def test_every_node_requires_imdsv2(config):
    """IMDSv2 only: a process on a node (or a server it talks to, SSRF) cannot read the role's credentials with a GET."""
    for name, node_type in config["available_node_types"].items():
        assert node_type["node_config"]["MetadataOptions"]["HttpTokens"] == "required", name
