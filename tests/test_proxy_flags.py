"""Flag contracts of kube-rbac-proxy (``e2e.proxy_flags``): the parsers and rules on outputs
recorded from the real binaries, ``check_args`` on the checked-in data, the data re-derived
from the real binaries (the CI check), and preflight's ``proxy-flags`` check as a unit."""

from __future__ import annotations

import copy
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from helpers.paths import REPO, TEST_DATA
from helpers.release_files import SessionReleaseFiles

from e2e import binaries
from e2e.audit import EXIT_RETIRED, EXIT_UNAVAILABLE, EXIT_UNCHECKED, EXIT_UNKNOWN_FLAG, AuditReport
from e2e.availability import unavailable
from e2e.data import PROXY_FLAGS_FILE
from e2e.errors import EnvironmentMissing, HarnessError
from e2e.manifests import ReleaseManifest, cell_proxy_args
from e2e.matrix import MatrixCell, load_matrix
from e2e.preflight.model import Check, InstalledVersion, PreflightReport, ProxySidecar, Status
from e2e.preflight.swap import PROXY_FLAGS, check_proxy_flags, planned_patch
from e2e.proxy_flags import (
    Contracts,
    FlagContract,
    NoContract,
    ProbeFailed,
    check_args,
    classify_probe,
    derive_contract,
    flag_names,
    is_cobra_help,
    klog_flag_names,
    load_contracts,
    parse_completion,
    parse_help,
    read_listing,
    takes_value_from,
    variant_flags,
)

RECORDED = TEST_DATA / "kube-rbac-proxy-flags"
CLI = "import sys, e2e.cli as cli; sys.exit(cli.main(sys.argv[1:]))"
# What every KServe release ships (checked against the release manifests below).
KSERVE_ARGS = [
    "--secure-listen-address=0.0.0.0:8443", "--upstream=http://127.0.0.1:8080/", "--logtostderr=true", "--v=10"
]
KLOG_DEPRECATION = (
    "Flag --logtostderr has been deprecated, will be removed in a future release, see "
    "https://github.com/kubernetes/enhancements/tree/master/keps/sig-instrumentation/"
    "2845-deprecate-klog-specific-flags-in-k8s-components\n"
)


def recorded(name: str) -> str:
    return (RECORDED / name).read_text()


@pytest.fixture(scope="module")
def contracts() -> Contracts:
    return load_contracts()


# -- parsing what the binaries print (recorded from the real binaries) ----------------------------


def test_help_of_v0_15_lists_klog_flags_marked_deprecated() -> None:
    flags = parse_help(recorded("help-v0.15.0.txt"))
    assert flags["logtostderr"].deprecated and not flags["logtostderr"].takes_value  # a bool
    assert flags["log-dir"].deprecated and flags["log-dir"].takes_value
    assert not flags["upstream"].deprecated and flags["upstream"].takes_value
    assert flags["help"].shorthand == "h"
    assert not flags["version"].takes_value  # "version[=true]": the value is optional
    assert "v" not in flags and "vmodule" not in flags  # component-base adds them outside --help's flag sets
    assert "http2-disable" in flags and "kube-api-qps" not in flags


def test_help_of_v0_16_hides_klog_flags_and_v0_18_2_marks_two_deprecated() -> None:
    assert "logtostderr" not in parse_help(recorded("help-v0.16.0.txt"))
    flags = parse_help(recorded("help-v0.18.2.txt"))
    marked = {name for name, flag in flags.items() if flag.deprecated}
    assert marked == {"insecure-listen-address", "tls-reload-interval"}
    assert {"kube-api-qps", "kube-api-burst", "oidc-username-prefix"} <= set(flags)


def test_cobra_usage_is_told_from_plain_pflag() -> None:
    assert is_cobra_help(recorded("help-v0.18.2.txt"))
    # Plain pflag (v0.13.1) prints "Usage of NAME:" (spf13/pflag's defaultUsage), where
    # `__complete` would be a positional argument: never asked there.
    assert not is_cobra_help("Usage of kube-rbac-proxy:\n      --upstream string   The upstream URL\n")


def test_completion_offers_v_and_vmodule_but_no_hidden_flag() -> None:
    completion = parse_completion(recorded("complete-v0.18.2.txt"))
    assert completion is not None
    longs, shorts = completion
    assert {"v", "vmodule", "log-flush-frequency", "upstream"} <= longs
    assert "logtostderr" not in longs and "log-dir" not in longs  # hidden
    assert shorts == {"h", "v"}
    assert parse_completion("Error: unknown command\n") is None


@pytest.mark.parametrize(
    ("returncode", "output", "verdict"),
    [
        (1, "Error: unknown flag: --nosuch\n", "unknown"),  # v0.15.0+ (cobra)
        (2, "unknown flag: --http2-disable\nUsage of kube-rbac-proxy:\n", "unknown"),  # plain pflag's format
        (1, "Error: unknown shorthand flag: 'q' in -q=1\n", "unknown"),
        (0, KLOG_DEPRECATION, "deprecated"),  # v0.15.0 --logtostderr=0 --help
        (0, "", "accepted"),  # v0.16.0 --logtostderr=0 --help: silently accepted (hidden)
        (
            1,
            'Error: invalid argument "kserve-compat-probe" for "-v, --v" flag: strconv.ParseInt: parsing '
            '"kserve-compat-probe": invalid syntax\n',
            "accepted",
        ),
    ],
)
def test_probe_answers_are_classified(returncode: int, output: str, verdict: str) -> None:
    assert classify_probe("x", returncode, output).verdict == verdict


def test_probe_details_come_from_the_answer() -> None:
    warned = classify_probe("log_dir", 0, KLOG_DEPRECATION.replace("logtostderr", "log-dir"))
    assert (warned.canonical, warned.evidence) == (
        "log-dir", "Flag --log-dir has been deprecated, will be removed in a future release"
    )
    invalid = classify_probe("v", 1, 'Error: invalid argument "x" for "-v, --v" flag: parse error\n')
    assert (invalid.canonical, invalid.shorthand) == ("v", "v")


def test_an_answer_no_rule_covers_is_an_error_not_a_guess() -> None:
    with pytest.raises(ProbeFailed, match=r"^--x: unexpected answer \(exit 1\): Error: something else$"):
        classify_probe("x", 1, "Error: something else\n")


def test_a_bare_flag_that_needs_a_value() -> None:
    assert takes_value_from(1, "Error: flag needs an argument: --logtostderr\n")  # v0.16.0
    assert not takes_value_from(0, "")  # v0.18.2: a bool again


def test_klog_flag_names_from_its_source() -> None:
    # Lines of k8s.io/klog/v2@v2.120.1 klog.go init().
    source = '''
	commandLine.StringVar(&logging.logDir, "log_dir", "", "If non-empty, write log files in this directory")
	commandLine.Uint64Var(&logging.logFileMaxSizeMB, "log_file_max_size", 1800,
		"Defines the maximum size a log file can grow to.")
	commandLine.Var(&logging.verbosity, "v", "number for the log level verbosity")
'''
    assert klog_flag_names(source) == {"log_dir", "log_file_max_size", "v"}


# -- the checked-in data ------------------------------------------------------------------------


def test_every_known_version_has_an_entry_and_v0_13_1_the_module_proxy_answer(contracts: Contracts) -> None:
    assert list(contracts.versions) == list(binaries.PROXY_VERSIONS)
    old = contracts.versions["v0.13.1"]
    assert old.unavailable is not None and "403 Forbidden" in old.unavailable
    assert old.unavailable.startswith("reading https://proxy.golang.org/github.com/brancz/kube-rbac-proxy/@v/v0.13.1.info")
    for contract in contracts.known():
        assert contract.accepted and not contract.accepted & contract.deprecated, contract.version
        assert set(contract.why_deprecated) == contract.deprecated, contract.version
    data = json.loads(PROXY_FLAGS_FILE.read_text())
    assert data["derived_at"] and "--flag-contracts" in data["about"]


def test_what_the_data_says_of_the_upstream_history(contracts: Contracts) -> None:
    by = contracts.versions
    assert all("logtostderr" in c.deprecated for c in contracts.known())  # warns on v0.15, hidden from v0.16
    assert "warns: Flag --logtostderr has been deprecated" in by["v0.15.0"].why_deprecated["logtostderr"]
    assert by["v0.16.0"].why_deprecated["logtostderr"].startswith("hidden")
    # v0.16.0 typed them as strings: a bare --logtostderr takes the next argument; fixed later.
    assert "logtostderr" in by["v0.16.0"].takes_value
    assert "logtostderr" not in by["v0.18.0"].takes_value
    assert {"v", "vmodule"} <= by["v0.18.0"].accepted  # unlisted in --help, but not hidden
    assert not by["v0.16.0"].accepts("kube-api-qps") and by["v0.18.0"].accepts("kube-api-qps")
    assert "tls-reload-interval" in by["v0.18.0"].accepted and "tls-reload-interval" in by["v0.18.2"].deprecated
    assert all(c.underscores_are_dashes for c in contracts.known())


# -- checking args ------------------------------------------------------------------------------


def test_kserve_args_warn_only_for_logtostderr(contracts: Contracts) -> None:
    for contract in contracts.known():
        problems = check_args(KSERVE_ARGS, contract.version, contracts)
        assert [(p.flag, p.severity, p.arg) for p in problems] == [
            ("--logtostderr", "deprecated", "--logtostderr=true")
        ], contract.version
        assert f"kube-rbac-proxy {contract.version}" in problems[0].message


def test_an_unknown_flag_names_the_flag_the_version_and_the_first_accepting_one(contracts: Contracts) -> None:
    [problem] = check_args(["--kube-api-qps=5"], "v0.16.0", contracts)
    assert problem.severity == "unknown"
    assert problem.message == (
        "unknown flag --kube-api-qps for kube-rbac-proxy v0.16.0: the proxy refuses it and exits "
        "(accepted from v0.18.0 on)"
    )
    [never] = check_args(["--no-such-flag"], "v0.18.0", contracts)
    assert never.message.startswith("unknown flag --no-such-flag for kube-rbac-proxy v0.18.0")
    assert "no version with a contract accepts it" in never.message


def test_a_dropped_flag_names_the_newest_version_that_accepts_it() -> None:
    fake = Contracts(
        {
            "v1.0.0": FlagContract("v1.0.0", accepted=frozenset({"old", "kept"})),
            "v1.1.0": FlagContract("v1.1.0", accepted=frozenset({"old", "kept"})),
            "v1.2.0": FlagContract("v1.2.0", accepted=frozenset({"kept"})),
            "v1.3.0": FlagContract("v1.3.0", accepted=frozenset({"kept"})),
        }
    )
    [problem] = check_args(["--old=1", "--kept"], "v1.3.0", fake)
    assert problem.message == (
        "unknown flag --old for kube-rbac-proxy v1.3.0: the proxy refuses it and exits "
        "(v1.1.0 is the newest version that accepts it; v1.2.0 dropped it)"
    )


def test_args_are_read_as_pflag_reads_them(contracts: Contracts) -> None:
    # v0.16.0: a bare --logtostderr takes --v=10 as its value (the upstream bug, from the data).
    swallow, nosuch = check_args(["--logtostderr", "--v=10", "--nosuch"], "v0.16.0", contracts)
    assert swallow.severity == "deprecated"
    assert "written bare it takes the next argument --v=10 as its value" in swallow.message
    assert (nosuch.flag, nosuch.severity, nosuch.index) == ("--nosuch", "unknown", 2)
    # v0.18.0: --logtostderr is a bool again; --v=10 is read as a flag of its own.
    [plain] = check_args(["--logtostderr", "--v=10"], "v0.18.0", contracts)
    assert "written bare" not in plain.message
    # "--upstream URL" in two arguments; shorthands; underscores; what follows "--" is no flag.
    assert check_args(["--upstream", "http://127.0.0.1:8080/", "-v=10", "-v", "3", "--", "--nosuch"], "v0.18.2",
                      contracts) == []
    assert [p.severity for p in check_args(["--log_dir=/tmp"], "v0.18.2", contracts)] == ["deprecated"]
    [short] = check_args(["-logtostderr=true"], "v0.18.2", contracts)
    assert short.severity == "unknown" and short.flag == "-l"
    assert "long flags take two dashes" in short.message


def test_a_version_without_contract_is_no_contract(contracts: Contracts) -> None:
    with pytest.raises(NoContract, match=r"^no contract for v0\.13\.1: unavailable when derived: reading https://"):
        check_args(KSERVE_ARGS, "v0.13.1", contracts)
    with pytest.raises(NoContract, match=r"^no contract for v0\.99\.0$"):
        check_args(KSERVE_ARGS, "v0.99.0", contracts)


def test_release_manifests_ship_the_args_checked_here(release_files: SessionReleaseFiles) -> None:
    matrix = load_matrix()
    for version in ("v0.12.1", "v0.14.0", "v0.20.0"):
        release = matrix.release(version)
        manifest = ReleaseManifest.parse(
            release_files.kserve_path(version).read_text(), source=version, profile=release.profile, remember=True
        )
        assert manifest.proxy_args == KSERVE_ARGS, version


def test_matrix_variants_against_every_proxy_image(contracts: Contracts, release_files: SessionReleaseFiles) -> None:
    """Every variant on every proxy image of the matrix: no variant carries a flag a version
    with a contract refuses; v0.13.1 (where --http2-disable would break) is not checked."""
    matrix = load_matrix()
    release = matrix.release("v0.14.0")
    manifest = ReleaseManifest.parse(
        release_files.kserve_path("v0.14.0").read_text(), source="v0.14.0", profile=release.profile, remember=True
    )
    assert variant_flags(matrix) == flag_names(a for v in matrix.variants for a in (*v.args_drop, *v.args_add))
    outcomes: dict[tuple[str, str], list[str] | str] = {}
    for proxy in matrix.proxies:
        version = binaries.proxy_version_for_tag(proxy.image)
        for variant in matrix.variants:
            cell = MatrixCell(release=release, proxy=proxy, kubernetes=matrix.kubernetes[0], variant=variant)
            try:
                problems = check_args(cell_proxy_args(cell, manifest), version, contracts)
            except NoContract as missing:
                outcomes[(proxy.alias, variant.name)] = str(missing)
                continue
            assert not [p for p in problems if p.severity == "unknown"], (proxy.alias, variant.name, problems)
            outcomes[(proxy.alias, variant.name)] = [p.flag for p in problems]
    assert outcomes[("quay-v0.18.0", "drop-logtostderr")] == []
    assert outcomes[("quay-v0.15.0", "http2-disable")] == ["--logtostderr"]  # accepted from v0.15.0
    assert outcomes[("quay-v0.22.1", "quiet")] == ["--logtostderr"]
    for alias in ("gcr-v0.13.1", "k8s-v0.13.1", "quay-v0.13.1"):
        assert str(outcomes[(alias, "http2-disable")]).startswith("no contract for v0.13.1"), alias


# -- the data re-derived from the real binaries (the CI check) ----------------------------------


def _binary(version: str) -> Path:
    found = binaries.locate(binaries.PROXY, version)
    if found is None:
        unavailable(f"kube-rbac-proxy {version}: not built (run `kserve-compat binaries`)")
    return found


@pytest.mark.needs_binaries
@pytest.mark.parametrize("version", binaries.PROXY_VERSIONS)
def test_the_checked_in_contract_is_what_the_binary_says(contracts: Contracts, version: str) -> None:
    recorded_contract = contracts.versions[version]
    if recorded_contract.unavailable is not None:
        if binaries.locate(binaries.PROXY, version) is not None:
            pytest.skip(f"kube-rbac-proxy {version} exists here (from its image?); the data lists it unavailable")
        try:
            answer = binaries.module_unavailable_reason(binaries.PROXY_MODULE, version)
        except EnvironmentMissing as exc:
            unavailable(str(exc))
        assert answer == recorded_contract.unavailable, "regenerate with `kserve-compat binaries --flag-contracts`"
        return
    binary = _binary(version)
    listing = read_listing(binary)
    # The recorded candidates (klog's names, the manifests' flags), plus what this binary and
    # the matrix's variants name now: a new variant flag shows up as a difference.
    candidates = {*contracts.derived["candidates"], *listing.names(), *variant_flags(load_matrix())}
    derived = derive_contract(binary, version, candidates, listing=listing)
    assert derived.facts() == recorded_contract.facts(), "regenerate with `kserve-compat binaries --flag-contracts`"


@pytest.mark.needs_binaries
def test_the_command_rederives_the_file(contracts: Contracts, tmp_path: Path) -> None:
    for version in binaries.PROXY_VERSIONS:
        if contracts.versions[version].unavailable is None:
            _binary(version)
    target = tmp_path / "proxy-flags.json"
    env = {**os.environ, "PYTHONPATH": str(REPO), "GOTOOLCHAIN": "local"}
    result = subprocess.run(
        [sys.executable, "-c", CLI, "binaries", "--flag-contracts", str(target)],
        capture_output=True, text=True, env=env, cwd=REPO, timeout=600, check=False,
    )
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert [line.split()[1] for line in lines] == list(binaries.PROXY_VERSIONS)
    assert lines[0].startswith("kube-rbac-proxy v0.13.1   unavailable: reading https://proxy.golang.org/")
    assert lines[-1].startswith("kube-rbac-proxy v0.22.1   39 accepted, 13 deprecated: add-dir-header")
    fresh = load_contracts(target)
    assert {v: c.facts() for v, c in fresh.versions.items()} == {v: c.facts() for v, c in contracts.versions.items()}


@pytest.mark.needs_binaries
def test_verdicts_on_variant_args_are_what_the_binaries_do(
    contracts: Contracts, release_files: SessionReleaseFiles
) -> None:
    """Each matrix variant's proxy args, and one flag added later upstream, given to each real
    binary (with --help, so nothing starts): it exits 1 with `unknown flag` exactly when
    check_args reports an unknown flag."""
    matrix = load_matrix()
    release = matrix.release("v0.14.0")
    manifest = ReleaseManifest.parse(
        release_files.kserve_path("v0.14.0").read_text(), source="v0.14.0", profile=release.profile, remember=True
    )
    arg_sets = [
        cell_proxy_args(MatrixCell(release, matrix.proxy("quay-v0.18.0"), matrix.kubernetes[0], variant), manifest)
        for variant in matrix.variants
    ]
    arg_sets.append([*KSERVE_ARGS, "--kube-api-qps=20"])
    for contract in contracts.known():
        binary = _binary(contract.version)
        for args in arg_sets:
            unknown = [p.flag for p in check_args(args, contract.version, contracts) if p.severity == "unknown"]
            result = subprocess.run([str(binary), *args, "--help"], capture_output=True, text=True, timeout=60)
            said = (result.returncode, "unknown flag" in result.stderr)
            assert said == ((1, True) if unknown else (0, False)), (contract.version, args, result.stderr)
            if unknown:
                assert f"Error: unknown flag: {unknown[0]}" in result.stderr


def test_flag_contracts_with_list_is_a_usage_error() -> None:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    result = subprocess.run(
        [sys.executable, "-c", CLI, "binaries", "--flag-contracts", "--list"],
        capture_output=True, text=True, env=env, cwd=REPO, timeout=120, check=False,
    )
    assert result.returncode == 2
    assert result.stderr.strip() == "kserve-compat binaries: --flag-contracts and --list: expected one of them"
    # The action as the other commands spell it names itself the same way.
    result = subprocess.run(
        [sys.executable, "-c", CLI, "binaries", "list", "--flag-contracts"],
        capture_output=True, text=True, env=env, cwd=REPO, timeout=120, check=False,
    )
    assert result.returncode == 2
    assert result.stderr.strip() == "kserve-compat binaries: --flag-contracts and list: expected one of them"


def test_a_broken_data_file_is_one_line(tmp_path: Path) -> None:
    broken = tmp_path / "flags.json"
    broken.write_text('{"schema": 1}')
    with pytest.raises(HarnessError, match=r"^flag contracts .*flags\.json: expected schema 1 with 'versions'"):
        load_contracts(broken)


# -- preflight's proxy-flags check ----------------------------------------------------------------


@pytest.fixture(scope="module")
def v0_14_patch(release_files: SessionReleaseFiles) -> dict[str, Any]:
    """The patch preflight plans for KServe v0.14.0's live Deployment -> quay-v0.18.2."""
    matrix = load_matrix()
    release = matrix.release("v0.14.0")
    manifest = ReleaseManifest.parse(
        release_files.kserve_path("v0.14.0").read_text(), source="v0.14.0", profile=release.profile, remember=True
    )
    target = matrix.proxy("quay-v0.18.2").image
    return planned_patch(manifest.deployment(), release.profile, target, matrix, release)


def _with_args(patch: dict[str, Any], args: list[str]) -> dict[str, Any]:
    changed = copy.deepcopy(patch)
    changed["spec"]["template"]["spec"]["containers"][0]["args"] = args
    return changed


def test_preflight_deprecated_flag_warns(v0_14_patch: dict[str, Any], contracts: Contracts) -> None:
    check = check_proxy_flags(v0_14_patch, "kube-rbac-proxy", "v0.18.2", contracts)
    assert (check.name, check.status) == (PROXY_FLAGS, Status.WARN)
    assert check.detail == (
        "deprecated flag --logtostderr for kube-rbac-proxy v0.18.2 (hidden: accepted, not in --help or its completion)"
    )
    assert check.evidence[-1] == f"args: {' '.join(KSERVE_ARGS)}"


def test_preflight_unknown_flag_fails_with_7(v0_14_patch: dict[str, Any], contracts: Contracts) -> None:
    patch = _with_args(v0_14_patch, [*KSERVE_ARGS, "--kube-api-qps=20"])
    check = check_proxy_flags(patch, "kube-rbac-proxy", "v0.16.0", contracts)
    assert (check.status, check.exit_code) == (Status.FAIL, EXIT_UNKNOWN_FLAG)
    assert check.detail.startswith("unknown flag --kube-api-qps for kube-rbac-proxy v0.16.0")
    assert any(line.startswith("deprecated flag --logtostderr") for line in check.evidence)
    clean = check_proxy_flags(_with_args(v0_14_patch, KSERVE_ARGS[:2]), "kube-rbac-proxy", "v0.16.0", contracts)
    assert (clean.status, clean.detail) == (
        Status.OK, "kube-rbac-proxy v0.16.0 accepts every flag of the planned kube-rbac-proxy args"
    )


def test_preflight_without_a_contract_warns_not_checked(v0_14_patch: dict[str, Any], contracts: Contracts) -> None:
    check = check_proxy_flags(v0_14_patch, "kube-rbac-proxy", "v0.13.1", contracts)
    assert check.status is Status.WARN
    assert check.detail.startswith("flags not checked (no contract for v0.13.1: unavailable when derived: reading")
    assert check_proxy_flags(v0_14_patch, "kube-rbac-proxy", None, contracts).status is Status.WARN
    assert check_proxy_flags(v0_14_patch, "proxy", "v0.18.2", contracts).status is Status.SKIPPED


def test_preflight_ranks_7_below_4_and_above_6_and_3() -> None:
    def report(*codes: int) -> PreflightReport:
        made = PreflightReport(
            context="c", server="s", namespace="kserve", all_namespaces=False,
            version=InstalledVersion(None, "", None),
            proxy=ProxySidecar("kserve/d", "kube-rbac-proxy", None, "kserve/sa"),
            target=None, target_source="", images=AuditReport([], 0, False),
        )
        made.checks = [Check(f"c{code}", Status.FAIL, "", code) for code in codes]
        return made

    assert report(EXIT_UNKNOWN_FLAG, EXIT_RETIRED, EXIT_UNCHECKED).exit_code == EXIT_UNKNOWN_FLAG
    assert report(EXIT_UNKNOWN_FLAG, EXIT_UNAVAILABLE).exit_code == EXIT_UNAVAILABLE
