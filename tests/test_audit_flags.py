"""``kserve-compat audit``: the args of kube-rbac-proxy containers against the flag contract of
their own image's version (``e2e.proxy_flags``, data derived from the real binaries)."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import textwrap

from helpers.paths import REPO
from helpers.release_files import MIRRORED_KSERVE_VERSIONS, SessionReleaseFiles

from e2e.audit import (
    EXIT_CLEAN,
    EXIT_RETIRED,
    EXIT_UNAVAILABLE,
    EXIT_UNKNOWN_FLAG,
    audit,
    manifest_sources,
    render_markdown,
)
from e2e.matrix import version_key

CLI = "import sys, e2e.cli as cli; sys.exit(cli.main(sys.argv[1:]))"


def kserve_compat(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.run(
        [sys.executable, "-c", CLI, *args],
        input=stdin, capture_output=True, text=True, env=env, cwd=REPO, timeout=120, check=False,
    )


def deployment(image: str, *args: str, name: str = "kube-rbac-proxy") -> str:
    listed = "".join(f"\n                - {arg}" for arg in args)
    return textwrap.dedent(
        f"""\
        apiVersion: apps/v1
        kind: Deployment
        metadata: {{name: kserve-controller-manager, namespace: kserve}}
        spec:
          template:
            spec:
              containers:
              - name: manager
                image: kserve/kserve-controller:v0.14.0
                args: [--metrics-addr=127.0.0.1:8080, --no-such-proxy-flag]
              - name: {name}
                image: {image}
                args:{listed}
        """
    )


def test_unknown_flag_for_the_image_version_fails_with_7() -> None:
    manifest = deployment(
        "quay.io/brancz/kube-rbac-proxy:v0.16.0",
        "--secure-listen-address=0.0.0.0:8443", "--upstream=http://127.0.0.1:8080/", "--kube-api-qps=20",
    )
    result = kserve_compat("audit", "-", stdin=manifest)
    assert result.returncode == EXIT_UNKNOWN_FLAG, result.stdout + result.stderr
    findings = result.stdout.split("findings:\n")[1].split("\n\n")[0].splitlines()
    # The manager's args are not a proxy's: only the proxy container is judged.
    assert findings == [
        "  <stdin>:16 Deployment kserve/kserve-controller-manager container kube-rbac-proxy: unknown flag "
        "--kube-api-qps for kube-rbac-proxy v0.16.0: the proxy refuses it and exits (accepted from v0.18.0 on)"
    ]
    assert result.stdout.rstrip().endswith("1 unknown proxy flag")


def test_deprecated_flag_is_a_warning_and_exit_0() -> None:
    manifest = deployment("quay.io/brancz/kube-rbac-proxy:v0.18.0", "--upstream=http://x/", "--logtostderr")
    result = kserve_compat("audit", "-", stdin=manifest)
    assert result.returncode == EXIT_CLEAN, result.stdout + result.stderr
    assert (
        "  warning: <stdin>:15 Deployment kserve/kserve-controller-manager container kube-rbac-proxy: deprecated flag "
        "--logtostderr for kube-rbac-proxy v0.18.0 (hidden: accepted, not in --help or its completion)\n"
    ) in result.stdout
    assert "1 deprecated proxy flag" in result.stdout


def test_a_version_without_contract_is_not_checked_not_failed() -> None:
    result = kserve_compat("audit", "-", stdin=deployment("quay.io/brancz/kube-rbac-proxy:v0.99.0", "--nosuch"))
    assert result.returncode == EXIT_CLEAN, result.stdout + result.stderr
    assert "container kube-rbac-proxy: flags not checked (no contract for v0.99.0)\n" in result.stdout
    assert "1 proxy container's flags not checked" in result.stdout
    patched = kserve_compat("audit", "-", stdin=deployment("quay.io/brancz/kube-rbac-proxy:latest", "--nosuch"))
    assert patched.returncode == EXIT_CLEAN
    assert "flags not checked (its tag names no kube-rbac-proxy version)" in patched.stdout


def test_v0_13_1_is_retired_and_its_flags_not_checked() -> None:
    manifest = deployment("gcr.io/kubebuilder/kube-rbac-proxy:v0.13.1", "--http2-disable")
    result = kserve_compat("audit", "-", stdin=manifest)
    assert result.returncode == EXIT_RETIRED
    assert (
        "flags not checked (no contract for v0.13.1: unavailable when derived: reading "
        "https://proxy.golang.org/github.com/brancz/kube-rbac-proxy/@v/v0.13.1.info: 403 Forbidden"
    ) in result.stdout


def test_ranking_unknown_flag_beats_retired_and_loses_to_unavailable() -> None:
    both = deployment("quay.io/brancz/kube-rbac-proxy:v0.15.0", "--kube-api-burst=1") + "---\n" + deployment(
        "k8s.gcr.io/kube-rbac-proxy:v0.18.0", "--upstream=http://x/"
    )
    report = audit([("m.yaml", both)])
    assert [image.image for image in report.retired] == ["k8s.gcr.io/kube-rbac-proxy:v0.18.0"]
    assert report.exit_code == EXIT_UNKNOWN_FLAG
    invalid = both + "---\n" + deployment("Bad/Image:v1", name="other")
    assert audit([("m.yaml", invalid)]).exit_code == EXIT_UNAVAILABLE


def test_json_and_markdown_carry_the_findings() -> None:
    manifest = deployment("quay.io/brancz/kube-rbac-proxy:v0.16.0", "--logtostderr", "--v=10", "--nosuch=1")
    result = kserve_compat("audit", "-", "--format", "json", stdin=manifest)
    assert result.returncode == EXIT_UNKNOWN_FLAG
    document = json.loads(result.stdout)
    assert document["exit_code"] == EXIT_UNKNOWN_FLAG
    by_kind = {finding["kind"]: finding for finding in document["proxy_flags"]}
    assert set(by_kind) == {"deprecated", "unknown"}
    assert by_kind["unknown"]["flag"] == "--nosuch" and by_kind["unknown"]["version"] == "v0.16.0"
    assert by_kind["unknown"]["where"]["field"] == "spec.template.spec.containers[1].args[2]"
    assert by_kind["unknown"]["where"]["line"] == 16
    # v0.16.0's string-typed hidden flag: the bare --logtostderr swallows --v=10 (from the data).
    assert by_kind["deprecated"]["message"].endswith("written bare it takes the next argument --v=10 as its value")
    markdown = render_markdown(audit(manifest_sources(["-"], io.StringIO(manifest))))
    where = "<stdin>:16 Deployment kserve/kserve-controller-manager container kube-rbac-proxy"
    assert f"\n- {where}: unknown flag --nosuch for kube-rbac-proxy v0.16.0" in markdown


def test_help_documents_exit_7() -> None:
    result = kserve_compat("audit", "--help")
    codes = result.stdout.split("exit codes:")[1]
    assert f"  {EXIT_UNKNOWN_FLAG}  a kube-rbac-proxy container has a flag its version does not accept" in codes


def test_release_manifests_warn_only_on_logtostderr(release_files: SessionReleaseFiles) -> None:
    for version in MIRRORED_KSERVE_VERSIONS:
        report = audit(manifest_sources([str(release_files.kserve_path(version))], io.StringIO()))
        kinds = [(finding.kind, finding.version) for finding in report.flags]
        if version_key(version) < version_key("v0.14.0"):
            assert kinds == [("not checked", "v0.13.1")], version  # the Go module proxy refuses v0.13.1
        else:
            assert [(f.kind, f.version, f.problem.flag if f.problem else None) for f in report.flags] == [
                ("deprecated", "v0.18.0", "--logtostderr")
            ], version
            assert report.exit_code == EXIT_CLEAN, version
