"""``kserve-compat watch-images --print-manifest``: the manifest that runs the watcher in the
cluster, as the command prints it (in-process; no cluster). Applied to a real API server and
used through its ServiceAccount in ``test_watch_images.py``."""

from __future__ import annotations

import subprocess
import sys
from typing import Any

import pytest
import yaml
from helpers.paths import REPO

from e2e import __version__, cli
from e2e.imageset.watch_images import image_reference
from e2e.preflight.cluster import LISTED_WORKLOADS
from e2e.watch_images import RULES

KINDS = {"Namespace", "ServiceAccount", "ClusterRole", "ClusterRoleBinding", "Deployment", "Service",
         "ServiceMonitor", "PrometheusRule"}  # fmt: skip
OPTIONS = ("--namespace", "kserve-prod", "--interval", "120", "--timeout", "5",
           "--registry-mirror", "gcr.io/kubebuilder=registry.example:5000/kubebuilder",
           "--insecure-registry", "registry.example:5000")  # fmt: skip


def printed(capsys: pytest.CaptureFixture[str], *args: str) -> str:
    assert cli.main(["watch-images", "--print-manifest", *args]) == 0
    return capsys.readouterr().out


def by_kind(text: str) -> dict[str, dict[str, Any]]:
    documents = [d for d in yaml.safe_load_all(text) if d]
    found = {d["kind"]: d for d in documents}
    assert len(found) == len(documents), "one document of each kind"
    return found


def container_of(deployment: dict[str, Any]) -> dict[str, Any]:
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    return dict(container)


def test_every_kind_is_there_in_the_watchers_namespace_with_no_placeholder_left(
    capsys: pytest.CaptureFixture[str],
) -> None:
    text = printed(capsys, "--watcher-namespace", "monitoring", "--image", "registry.example/kc/watch:v1", *OPTIONS)
    assert "${" not in text
    documents = by_kind(text)
    assert set(documents) == KINDS
    assert documents["Namespace"]["metadata"]["name"] == "monitoring"
    cluster_scoped = {"Namespace", "ClusterRole", "ClusterRoleBinding"}
    for kind in KINDS - cluster_scoped:
        assert documents[kind]["metadata"]["namespace"] == "monitoring", kind
        assert documents[kind]["metadata"]["labels"]["app.kubernetes.io/version"] == __version__, kind
    binding = documents["ClusterRoleBinding"]
    assert binding["roleRef"]["name"] == documents["ClusterRole"]["metadata"]["name"]
    account = documents["ServiceAccount"]["metadata"]
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": account["name"], "namespace": "monitoring"}]
    assert documents["Deployment"]["spec"]["template"]["spec"]["serviceAccountName"] == account["name"]
    assert container_of(documents["Deployment"])["image"] == "registry.example/kc/watch:v1"


def test_the_default_image_is_the_one_images_build_makes(capsys: pytest.CaptureFixture[str]) -> None:
    documents = by_kind(printed(capsys))
    image = container_of(documents["Deployment"])["image"]
    assert image == image_reference() == f"kserve-compat/watch-images:{__version__}"
    assert documents["Deployment"]["metadata"]["namespace"] == "kserve-compat"


def test_the_cluster_role_reads_exactly_what_a_round_reads(capsys: pytest.CaptureFixture[str]) -> None:
    rules = by_kind(printed(capsys))["ClusterRole"]["rules"]
    granted = {(group, resource, verb) for rule in rules for group in rule["apiGroups"]
               for resource in rule["resources"] for verb in rule["verbs"]}  # fmt: skip
    assert {verb for _, _, verb in granted} <= {"get", "list", "watch"}, "read-only"
    # live_workloads lists these in KServe's namespace; the predictor pods are listed across
    # namespaces; the pull secrets the pods name are read one by one.
    listed = {(api_version.rpartition("/")[0], f"{kind.lower()}s", "list") for kind, api_version, _ in LISTED_WORKLOADS}
    assert ("", "pods", "list") in listed
    assert granted == listed | {("", "secrets", "get")}


def test_the_prometheus_rule_holds_the_rules_file_groups(capsys: pytest.CaptureFixture[str]) -> None:
    rule = by_kind(printed(capsys))["PrometheusRule"]
    assert rule["apiVersion"] == "monitoring.coreos.com/v1"
    assert rule["spec"] == {"groups": yaml.safe_load(RULES.read_text())["groups"]}


def test_the_deployments_args_are_this_commands_options_for_the_real_parser(
    capsys: pytest.CaptureFixture[str],
) -> None:
    documents = by_kind(printed(capsys, *OPTIONS))
    container = container_of(documents["Deployment"])
    args = cli.build_parser("watch-images").parse_args(container["args"])
    assert (args.command, args.listen, args.namespace, args.interval, args.timeout) == (
        "watch-images", "0.0.0.0:9400", "kserve-prod", 120.0, 5.0
    )  # fmt: skip
    assert args.registry_mirror == ["gcr.io/kubebuilder=registry.example:5000/kubebuilder"]
    assert args.insecure_registry == ["registry.example:5000"]
    assert not (args.once or args.print_manifest or args.kubeconfig or args.context)
    assert container["ports"] == [{"name": "metrics", "containerPort": 9400}]


def test_the_watcher_runs_locked_down_and_is_scraped_through_its_service(capsys: pytest.CaptureFixture[str]) -> None:
    documents = by_kind(printed(capsys))
    deployment, service, monitor = documents["Deployment"], documents["Service"], documents["ServiceMonitor"]
    pod = deployment["spec"]["template"]
    container = container_of(deployment)
    assert deployment["spec"]["replicas"] == 1
    assert pod["spec"]["securityContext"]["runAsNonRoot"] is True
    assert container["securityContext"] == {
        "allowPrivilegeEscalation": False, "readOnlyRootFilesystem": True, "capabilities": {"drop": ["ALL"]}
    }  # fmt: skip
    assert set(container["resources"]) == {"requests", "limits"}
    for probe in ("readinessProbe", "livenessProbe"):
        assert container[probe]["httpGet"] == {"path": "/metrics", "port": "metrics"}
    selector = deployment["spec"]["selector"]["matchLabels"]
    assert selector.items() <= pod["metadata"]["labels"].items()
    assert service["spec"]["selector"] == selector
    assert service["spec"]["ports"] == [{"name": "metrics", "port": 9400, "targetPort": "metrics"}]
    assert monitor["spec"]["selector"]["matchLabels"].items() <= service["metadata"]["labels"].items()
    assert [endpoint["port"] for endpoint in monitor["spec"]["endpoints"]] == ["metrics"]


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (("--print-manifest", "--once"), "--print-manifest --once: the manifest's watcher uses its ServiceAccount"),
        (("--print-manifest", "--kubeconfig", "k"), "--print-manifest --kubeconfig: the manifest's watcher"),
        (("--print-manifest", "--watcher-namespace", "Prod_NS"), "--watcher-namespace Prod_NS: expected a namespace"),
        (("--print-manifest", "--image", "Not A Ref"), "--image Not A Ref: image reference"),
        (("--print-manifest", "--registry-mirror", "nothing"), "--registry-mirror 'nothing': expected SRC=DST"),
        (("--image", "quay.io/x/y:v1"), "--image quay.io/x/y:v1: goes with --print-manifest only"),
    ],
)
def test_a_bad_manifest_option_is_one_line(args: tuple[str, ...], expected: str) -> None:
    done = subprocess.run([sys.executable, "-m", "e2e.cli", "watch-images", *args], cwd=REPO, capture_output=True,
                          text=True, timeout=60, check=False)  # fmt: skip
    assert (done.returncode, done.stdout) == (2, ""), done.stderr
    assert done.stderr.strip().count("\n") == 0 and expected in done.stderr, done.stderr
