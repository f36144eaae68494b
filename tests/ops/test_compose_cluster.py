"""docker-compose.yml's `cluster` profile (issue 13): a Ray head, Ray workers and a service whose
collections may have `shards`, beside a default profile that stays today's single process without Ray.

The Ray commands are run here by the shell compose hands them to, with `ray` replaced by a script that
prints its argv, so the flags are read as the container would get them, not as text.
"""

from __future__ import annotations

import ipaddress
import json
import os
import shlex
import shutil
import stat
import subprocess
import tomllib
from pathlib import Path, PurePosixPath
from typing import Any
from urllib.parse import urlsplit

import pytest
from packaging.requirements import Requirement

from service.ray_shards import RayShards
from service.settings import load_settings
from tests.ops.deploy import REPO, SERVICE, compose, image
from tests.ops.test_compose import _after_cp_env_example

PROFILE = "cluster"
API = "logitsearch-cluster"
#: what a Ray node of ours is started with
RAY_START = ["ray", "start"]


def _services(profile: str | None) -> dict[str, dict[str, Any]]:
    """The services `docker compose [--profile P] up` starts: those without profiles, plus P's."""
    return {name: s for name, s in compose()["services"].items()
            if not s.get("profiles") or (profile is not None and profile in s["profiles"])}


def _cluster() -> dict[str, dict[str, Any]]:
    return {n: s for n, s in compose()["services"].items() if PROFILE in s.get("profiles", [])}


def _env(service: dict[str, Any]) -> dict[str, str]:
    """The service's environment once a newcomer ran `cp .env.example .env`."""
    return _after_cp_env_example(service)


def _nodes() -> dict[str, dict[str, Any]]:
    """The cluster's Ray nodes: the services whose command starts Ray."""
    return {n: s for n, s in _cluster().items() if "ray start" in " ".join(map(str, s.get("command", [])))}


def _run_command(service: dict[str, Any], tmp_path: Path, env: dict[str, str] | None = None,
                 ) -> subprocess.CompletedProcess[str]:
    """The service's command as its container runs it (compose turns `$$` into `$`), `ray` a stub."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(parents=True, exist_ok=True)
    stub = bin_dir / "ray"
    stub.write_text('#!/bin/sh\nfor a in ray "$@"; do printf "%s\\n" "$a"; done\n')
    stub.chmod(stub.stat().st_mode | stat.S_IEXEC)
    argv = [str(a).replace("$$", "$") for a in service["command"]]
    container_env = {"PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}",
                     **{k: str(v) for k, v in service.get("environment", {}).items()}}
    return subprocess.run(argv, env={**container_env, **(env or {})}, capture_output=True, text=True,
                          timeout=30, check=False)


def _ray_start(name: str, tmp_path: Path) -> dict[str, str]:
    """`ray start`'s flags for node `name`, with the token its container gets from .env."""
    proc = _run_command(_nodes()[name], tmp_path / name, env={"RAY_AUTH_TOKEN": "t" * 64})
    assert proc.returncode == 0, proc.stderr
    argv = proc.stdout.splitlines()
    assert argv[:2] == RAY_START, argv
    flags: dict[str, str] = {}
    for arg in argv[2:]:
        key, _, value = arg.partition("=")
        flags[key.lstrip("-")] = value
    return flags


def _head() -> str:
    heads = [n for n in _nodes() if "--head" in " ".join(map(str, _nodes()[n]["command"]))]
    assert len(heads) == 1, heads
    return heads[0]


def _workers() -> list[str]:
    return [n for n in _nodes() if n != _head()]


def _named_volumes(service: dict[str, Any]) -> list[tuple[str, str]]:
    declared = compose().get("volumes") or {}
    mounts = [str(v).split(":") for v in service.get("volumes", [])]
    return [(src, dst) for src, dst, *_ in mounts if src in declared]


def test_plain_compose_up_is_todays_single_process_service_with_no_ray():
    services = _services(None)
    assert list(services) == [SERVICE]
    service = services[SERVICE]
    assert service["build"] == "." and "ray" not in service["image"]
    assert not [k for k in _env(service) if "RAY" in k]
    assert load_settings(environ=_env(service)).ray_address is None
    assert "networks" not in service and "depends_on" not in service
    # the seed profile still talks to the default service only
    assert set(compose()["services"]["seed"]["depends_on"]) == {SERVICE}


def test_cluster_profile_adds_a_head_workers_and_a_service_of_one_ray_image():
    cluster = _cluster()
    assert set(_services(PROFILE)) == {SERVICE, *cluster}
    assert API in cluster and len(_workers()) >= 2
    assert set(cluster) == {API, _head(), *_workers()}
    images = {s["image"] for s in cluster.values()}
    assert len(images) == 1 and images != {compose()["services"][SERVICE]["image"]}
    for name, s in cluster.items():
        assert s["build"] == {"context": ".", "args": {"EXTRAS": "ray"}}, name
    # the extra the build installs is pyproject's, and it brings Ray
    extras = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    assert any(Requirement(r).name == "ray" for r in extras["ray"])
    assert "command" not in cluster[API]  # the image's CMD, `logitsearch serve`


def test_the_cluster_image_brings_the_ray_client_its_service_connects_with():
    # the head starts its Ray Client server, and the service's ray.init("ray://...") connects, only with it
    assert urlsplit(_cluster()[API]["environment"]["LOGITSEARCH_RAY_ADDRESS"]).scheme == "ray"
    extras = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    reqs = [Requirement(r) for r in extras[_cluster()[API]["build"]["args"]["EXTRAS"]]]
    assert any(r.name == "ray" and "client" in r.extras for r in reqs) or any(r.name == "grpcio" for r in reqs)


def test_the_head_and_the_workers_run_ray_start_against_the_head(tmp_path):
    head = _ray_start(_head(), tmp_path)
    assert "head" in head and "block" in head and head["include-dashboard"] == "false"
    for worker in _workers():
        flags = _ray_start(worker, tmp_path)
        assert "head" not in flags and "block" in flags
        assert flags["address"] == f"{_head()}:{head['port']}", worker
    for name, s in _nodes().items():
        assert int(str(s["shm_size"]).rstrip("gb")) >= 1, name  # Ray's object store lives in /dev/shm
        assert s["init"] is True, name  # `ray start --block` is PID 1 and reaps nothing itself
        assert _ray_start(name, tmp_path)["object-store-memory"].isdigit()


def test_a_node_refuses_to_start_without_ray_auth_token_and_says_where_to_set_it(tmp_path):
    for name, node in _nodes().items():
        proc = _run_command(node, tmp_path / name, env={"RAY_AUTH_TOKEN": ""})
        assert proc.returncode != 0 and proc.stdout == "", name  # `ray` never ran
        assert "RAY_AUTH_TOKEN" in proc.stderr and ".env" in proc.stderr, name
    for name, s in _cluster().items():
        assert s["environment"]["RAY_AUTH_MODE"] == "token", name
        assert s["env_file"] == [{"path": ".env", "required": False}], name


def test_no_ray_port_is_published_only_the_clusters_api_on_loopback(tmp_path):
    ray_ports = set()
    for name in _nodes():
        flags = _ray_start(name, tmp_path)
        ray_ports |= {int(flags[k]) for k in ("port", "ray-client-server-port", "node-manager-port",
                                              "object-manager-port") if k in flags}
    assert {6379, 10001} <= ray_ports
    for name, s in compose()["services"].items():
        assert "network_mode" not in s, name
        if name in _nodes():
            assert "ports" not in s and "expose" not in s, name
    (mapping,) = _cluster()[API]["ports"]
    host_ip, _host_port, container_port = str(mapping).split(":")
    assert host_ip == "127.0.0.1"
    assert int(container_port) == load_settings(environ=_env(_cluster()[API])).port
    assert container_port in image().final("EXPOSE")[-1].split()
    published = {int(str(p).split(":")[-2]) for s in compose()["services"].values() for p in s.get("ports", [])}
    assert not published & ray_ports
    # both profiles can run at once: the cluster's API does not take the default service's host port
    assert len(published) == sum(len(s.get("ports", [])) for s in compose()["services"].values())


def test_every_ray_node_keeps_its_shards_in_its_own_volume_at_the_services_data_dir():
    data_dir = load_settings(environ=_env(_cluster()[API])).data_dir
    # where an actor of this service writes shard j of collection c, on whichever node holds it
    shard_dir = PurePosixPath(str(RayShards("ray://x", data_dir, 1, 1.0).directory(7, 2)))
    seen: set[str] = set()
    for name, s in {**_nodes(), API: _cluster()[API]}.items():
        (volume, target), = _named_volumes(s)
        assert volume not in seen, name
        seen.add(volume)
        assert PurePosixPath(target) == PurePosixPath(str(data_dir)) and shard_dir.is_relative_to(target), name
    assert not seen & {v for v, _ in _named_volumes(compose()["services"][SERVICE])}
    assert json.loads(image().final("VOLUME")[-1]) == [str(data_dir)]  # each volume starts owned by the user


def test_every_ray_node_announces_the_fixed_address_compose_gives_it(tmp_path):
    # a shard's node is recorded by address (ray_shards.RayShards.nodes): a node must keep its address
    (pool,) = compose()["networks"]["ray"]["ipam"]["config"]
    subnet, dynamic = ipaddress.ip_network(pool["subnet"]), ipaddress.ip_network(pool["ip_range"])
    addresses = set()
    for name, s in _nodes().items():
        ip = ipaddress.ip_address(s["networks"]["ray"]["ipv4_address"])
        assert ip in subnet and ip not in dynamic, name
        assert _ray_start(name, tmp_path)["node-ip-address"] == str(ip), name
        addresses.add(ip)
    assert len(addresses) == len(_nodes())


def test_the_services_ray_address_is_the_heads_ray_client_server(tmp_path):
    service = _cluster()[API]
    settings = load_settings(environ=_env(service))
    url = urlsplit(settings.ray_address or "")
    # the service is no Ray node: ray.init("host:port") would look for a raylet on its own machine
    assert url.scheme == "ray" and url.hostname == _head()
    assert url.port == int(_ray_start(_head(), tmp_path)["ray-client-server-port"])
    assert "ray" in service["networks"] and all("ray" in s["networks"] for s in _nodes().values())
    want = {n: "service_healthy" for n in _nodes()}
    assert {n: d["condition"] for n, d in service["depends_on"].items()} == want
    for worker in _workers():
        assert _nodes()[worker]["depends_on"][_head()]["condition"] == "service_healthy"


def test_every_cluster_service_has_a_healthcheck_for_compose_up_wait(tmp_path):
    head_port = _ray_start(_head(), tmp_path)["port"]
    for name, s in _cluster().items():
        check = s["healthcheck"]
        assert check["test"][0] in ("CMD", "CMD-SHELL") and check.get("disable") is not True, name
    _options, argv = image().healthcheck
    assert _cluster()[API]["healthcheck"]["test"] == ["CMD", *argv]
    head_check = _nodes()[_head()]["healthcheck"]["test"]
    assert head_check[1:] == ["ray", "health-check", "--address", f"{_head()}:{head_port}",
                              "--component", "ray_client_server"]
    for worker in _workers():
        script = _nodes()[worker]["healthcheck"]["test"][1]
        flags = _ray_start(worker, tmp_path)
        assert f"ray health-check --address {_head()}:{head_port}" in script
        assert "RAY_NODE_IP" in script and flags["node-manager-port"] in script


def test_docker_compose_config_accepts_both_profiles(tmp_path):
    docker = shutil.which("docker")
    if docker is None or subprocess.run([docker, "compose", "version"], capture_output=True,
                                        timeout=30, check=False).returncode != 0:
        pytest.skip("the docker CLI has no compose plugin here (`docker compose version` fails)")
    env = {**os.environ, "LOGITSEARCH_API_KEY": "k" * 32}
    for args in ([], ["--profile", PROFILE]):
        proc = subprocess.run([docker, "compose", "-f", str(REPO / "docker-compose.yml"), *args, "config",
                               "--services"], capture_output=True, text=True, timeout=60, env=env, check=False)
        assert proc.returncode == 0, proc.stderr
        assert set(proc.stdout.split()) == set(_services(PROFILE if args else None)), shlex.join(args)


def test_docs_and_readme_name_the_clusters_service_addresses_and_volumes_as_compose_has_them():
    docs = (REPO / "docs" / "scaling.md").read_text()
    readme = (REPO / "README.md").read_text()
    service = _cluster()[API]
    host_ip, host_port, _ = str(service["ports"][0]).split(":")
    up = f"docker compose --profile {PROFILE} up -d --wait {API}"
    for text in (docs, readme):
        assert up in text and service["environment"]["LOGITSEARCH_RAY_ADDRESS"] in text
        assert f"{host_ip}:{host_port}" in text and "RAY_AUTH_TOKEN" in text
    for name, node in _nodes().items():
        (volume, _), = _named_volumes(node)
        assert name in docs and (volume in docs or name == _workers()[-1]), name
    assert "--build-arg EXTRAS=ray" in docs and "--build-arg EXTRAS=ray" in readme
