"""Flag contracts of kube-rbac-proxy: which flags each version accepts, from its real binary.

Upstream changed its flags more than once: v0.13.1 parses them with plain pflag (an unknown
flag exits 2 with the usage), v0.14+ with cobra and component-base (``Error: unknown flag:
--x``, exit 1); from v0.14 klog's own flags warn that they are deprecated, and v0.16.0 made
them hidden flags typed as strings (a bare ``--logtostderr`` takes the next argument as its
value) until v0.17.1. A manifest's proxy args are checked here against data
(``e2e/data/proxy-flags.json``) that ``kserve-compat binaries --flag-contracts`` derives
from the built binaries; nothing in it is written by hand.

How one version's contract is derived (offline; every run of the binary is bounded):

1. ``--help``: the flags it lists, their shorthands, whether they take a value (pflag's
   type column) and a ``DEPRECATED`` marker in their description.
2. cobra's completion (``__complete -``, only when --help shows cobra's usage): every flag
   that is neither hidden nor deprecated. component-base registers ``--v``, ``--vmodule``
   and ``--log-flush-frequency`` outside the flag sets --help prints; completion offers
   them, so they are not mistaken for hidden flags.
3. every candidate flag is probed with ``--<flag>=0 --help``: ``unknown flag`` in the answer
   -> not accepted; pflag's ``Flag --x has been deprecated`` -> deprecated; the help
   printed or an invalid-value error -> accepted. ``0`` parses as most types, and pflag
   warns only when the value parses. The candidates: every version's listed or offered flags, klog's
   flag names (read from the klog source each binary was built with, per ``go version -m``)
   and the flags in the proxy args of the release manifests at hand and the matrix variants.
4. an accepted flag is **deprecated** when it warns, --help marks it, or it is hidden (not
   listed by --help, not offered by completion; without completion: not listed);
   otherwise **accepted**. The two lists are disjoint; a flag in neither is unknown.
5. ``--help --<flag>`` for flags --help does not describe: "flag needs an argument" means
   the flag takes a value (a bare one swallows the next argument); ``--<a_b>=0 --help`` for a
   listed ``--a-b``: whether ``_`` and ``-`` name the same flag (component-base's
   normalization).

A version the Go module proxy refuses (v0.13.1) is listed as unavailable with the proxy's
answer; its flags are never guessed.
"""

from __future__ import annotations

import concurrent.futures
import datetime
import hashlib
import json
import logging
import os
import re
import tempfile
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any, Literal

from e2e import binaries
from e2e.atomic_write import write_atomic
from e2e.command import run
from e2e.data import PROXY_FLAGS_FILE
from e2e.errors import EnvironmentMissing, HarnessError, UsageError
from e2e.matrix import Matrix, load_matrix, version_key
from e2e.text import one_line

log = logging.getLogger(__name__)

SCHEMA = 1
PROBE_TIMEOUT_SECONDS = 20.0
# Parses as a string, a number, a bool, a duration and a severity, so pflag reaches its
# deprecation warning (printed only after a successful Set).
PROBE_VALUE = "0"
# Never a valid value of a typed flag: its error names the flag with its shorthand.
INVALID_VALUE = "kserve-compat-probe"
REGENERATE = "kserve-compat binaries --flag-contracts"

Severity = Literal["unknown", "deprecated"]
Verdict = Literal["unknown", "accepted", "deprecated"]


class ProbeFailed(HarnessError):
    """A binary answered a probe in a way no rule covers (or not at all): no guess is made."""


class NoContract(HarnessError):
    """The data has no flag contract for a version (never derived, or the binary unavailable)."""

    def __init__(self, version: str, reason: str = "") -> None:
        super().__init__(f"no contract for {version}" + (f": {reason}" if reason else ""))
        self.version = version
        self.reason = reason


# ---------------------------------------------------------------------------- reading answers

# pflag's usage lines: "  -h, --help   help", "      --allow-paths strings   Comma-...",
# "      --version version[=true]   ..." (a value is optional), "      --http2-disable   ..." (bool).
_HELP_LINE = re.compile(
    r"^\s+(?:-(?P<short>[A-Za-z0-9]), )?--(?P<name>[A-Za-z0-9][\w.-]*)(?: (?P<type>\S+))?(?:\s{2,}(?P<desc>\S.*))?$"
)
_DEPRECATED_MARK = re.compile(r"\bDEPRECATED\b")
_UNKNOWN = re.compile(r"unknown (?:shorthand )?flag:? [^\n]*")
_DEPRECATED_WARNING = re.compile(r"^Flag --(?P<name>[\w.-]+) has been deprecated(?P<rest>.*)$", re.MULTILINE)
_INVALID = re.compile(r'invalid argument "[^"\n]*" for "(?:-(?P<short>[A-Za-z0-9]), )?--(?P<name>[\w.-]+)" flag')
_NEEDS_VALUE = re.compile(r"flag needs an argument")
_COBRA_USAGE = re.compile(r"^Usage:\s*$", re.MULTILINE)
_COMPLETION_DIRECTIVE = re.compile(r"^:\d+$")


@dataclass(frozen=True)
class HelpFlag:
    """One flag as ``--help`` lists it."""

    name: str
    shorthand: str | None = None
    takes_value: bool = False
    deprecated: bool = False  # its description carries a DEPRECATED marker


def parse_help(text: str) -> dict[str, HelpFlag]:
    """The flags a ``--help`` output lists, by long name."""
    flags: dict[str, HelpFlag] = {}
    for line in text.splitlines():
        match = _HELP_LINE.match(line)
        if not match:
            continue
        kind = match.group("type")
        flags[match.group("name")] = HelpFlag(
            name=match.group("name"),
            shorthand=match.group("short"),
            # No type column: a bool. "version[=true]": the value is optional (NoOptDefVal).
            takes_value=kind is not None and "[=" not in kind,
            deprecated=bool(_DEPRECATED_MARK.search(match.group("desc") or "")),
        )
    return flags


def is_cobra_help(text: str) -> bool:
    """cobra prints ``Usage:`` on a line of its own; plain pflag prints ``Usage of NAME:``."""
    return bool(_COBRA_USAGE.search(text))


def parse_completion(text: str) -> tuple[frozenset[str], frozenset[str]] | None:
    """(long flags, shorthand letters) cobra's ``__complete -`` offers, or None when the answer
    is not a completion (it ends with a ``:N`` directive line)."""
    lines = [line for line in text.splitlines() if line.strip()]
    if not lines or not _COMPLETION_DIRECTIVE.match(lines[-1].strip()):
        return None
    names = [line.split("\t", 1)[0].strip() for line in lines[:-1]]
    longs = frozenset(name[2:] for name in names if name.startswith("--") and len(name) > 2)
    shorts = frozenset(name[1:] for name in names if re.fullmatch(r"-[A-Za-z0-9]", name))
    return longs, shorts


@dataclass(frozen=True)
class Probe:
    """What one ``--<flag>=<value> --help`` run says about the flag."""

    flag: str
    verdict: Verdict
    evidence: str
    canonical: str | None = None  # the name the binary used for it in its answer
    shorthand: str | None = None


def classify_probe(flag: str, returncode: int, output: str) -> Probe:
    """The verdict of a probe from its exit code and output (stdout and stderr together).

    Raises ProbeFailed for an answer no rule covers rather than guessing.
    """
    unknown = _UNKNOWN.search(output)
    if unknown:
        return Probe(flag, "unknown", one_line(unknown.group(0)))
    warning = _DEPRECATED_WARNING.search(output)
    if warning:
        # pflag's text goes on ", see <KEP URL>": the first clause is the point.
        said = one_line(f"Flag --{warning.group('name')} has been deprecated{warning.group('rest')}")
        return Probe(flag, "deprecated", said.split(", see ", 1)[0], canonical=warning.group("name"))
    invalid = _INVALID.search(output)
    if invalid:
        return Probe(
            flag,
            "accepted",
            f"an invalid-value error names it: {one_line(invalid.group(0))}",
            canonical=invalid.group("name"),
            shorthand=invalid.group("short"),
        )
    if returncode == 0:
        return Probe(flag, "accepted", "--help printed with it set")
    raise ProbeFailed(f"--{flag}: unexpected answer (exit {returncode}): {one_line(output) or 'no output'}")


def takes_value_from(returncode: int, output: str) -> bool:
    """Whether ``--help --<flag>`` (the flag last, bare) says the flag needs a value."""
    return returncode != 0 and bool(_NEEDS_VALUE.search(output))


# ---------------------------------------------------------------------------- the contract


@dataclass(frozen=True)
class FlagContract:
    """What one kube-rbac-proxy version accepts, or why there is no such knowledge."""

    version: str
    accepted: frozenset[str] = frozenset()
    deprecated: frozenset[str] = frozenset()  # accepted only as deprecated or hidden; disjoint from accepted
    why_deprecated: Mapping[str, str] = field(default_factory=dict)
    takes_value: frozenset[str] = frozenset()  # a bare --flag takes the next argument as its value
    shorthands: Mapping[str, str] = field(default_factory=dict)  # letter -> long name
    underscores_are_dashes: bool = False
    unavailable: str | None = None
    binary: Mapping[str, Any] = field(default_factory=dict)  # provenance, never compared

    def canonical(self, name: str) -> str:
        return name.replace("_", "-") if self.underscores_are_dashes else name

    def accepts(self, name: str) -> bool:
        """Accepted at all (deprecated included)."""
        canonical = self.canonical(name)
        return canonical in self.accepted or canonical in self.deprecated

    def facts(self) -> dict[str, Any]:
        """What a derivation must reproduce (provenance left out): for comparisons."""
        document = self.as_json()
        document.pop("binary", None)
        return document

    def as_json(self) -> dict[str, Any]:
        if self.unavailable is not None:
            return {"unavailable": self.unavailable}
        return {
            "accepted": sorted(self.accepted),
            "deprecated": sorted(self.deprecated),
            "why_deprecated": dict(sorted(self.why_deprecated.items())),
            "takes_value": sorted(self.takes_value),
            "shorthands": dict(sorted(self.shorthands.items())),
            "underscores_are_dashes": self.underscores_are_dashes,
            "binary": dict(self.binary),
        }

    @classmethod
    def from_json(cls, version: str, data: Mapping[str, Any], where: str) -> FlagContract:
        if not isinstance(data, Mapping):
            raise HarnessError(f"{where}: version {version}: expected an object")
        if "unavailable" in data:
            return cls(version, unavailable=str(data["unavailable"]))
        try:
            return cls(
                version,
                accepted=frozenset(str(f) for f in data["accepted"]),
                deprecated=frozenset(str(f) for f in data["deprecated"]),
                why_deprecated={str(k): str(v) for k, v in (data.get("why_deprecated") or {}).items()},
                takes_value=frozenset(str(f) for f in data.get("takes_value") or ()),
                shorthands={str(k): str(v) for k, v in (data.get("shorthands") or {}).items()},
                underscores_are_dashes=bool(data.get("underscores_are_dashes", False)),
                binary=dict(data.get("binary") or {}),
            )
        except (KeyError, TypeError, AttributeError) as exc:
            raise HarnessError(
                f"{where}: version {version}: malformed ({one_line(exc)}); regenerate with `{REGENERATE}`"
            ) from None


@dataclass(frozen=True)
class Contracts:
    """Every version's contract, as the data file holds them."""

    versions: Mapping[str, FlagContract]
    derived: Mapping[str, Any] = field(default_factory=dict)

    def contract(self, version: str) -> FlagContract:
        """The usable contract of ``version``; NoContract when there is none."""
        found = self.versions.get(version)
        if found is None:
            raise NoContract(version)
        if found.unavailable is not None:
            raise NoContract(version, f"unavailable when derived: {found.unavailable}")
        return found

    def known(self) -> list[FlagContract]:
        """The usable contracts, oldest first."""
        usable = [c for c in self.versions.values() if c.unavailable is None]
        return sorted(usable, key=lambda c: version_key(c.version))

    def as_json(self) -> dict[str, Any]:
        ordered = sorted(self.versions.values(), key=lambda c: version_key(c.version))
        return {"schema": SCHEMA, **self.derived, "versions": {c.version: c.as_json() for c in ordered}}


def load_contracts(path: Path | str | None = None) -> Contracts:
    """The contracts of the data file (default: the one shipped in ``e2e/data``)."""
    return _load(str(Path(path) if path else PROXY_FLAGS_FILE))


@lru_cache(maxsize=4)
def _load(path: str) -> Contracts:
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise HarnessError(f"flag contracts {path}: not found; derive them with `{REGENERATE}`") from None
    except (OSError, ValueError) as exc:
        raise HarnessError(f"flag contracts {path}: not readable JSON ({one_line(exc)})") from None
    if not isinstance(data, dict) or data.get("schema") != SCHEMA or not isinstance(data.get("versions"), dict):
        raise HarnessError(
            f"flag contracts {path}: expected schema {SCHEMA} with 'versions'; regenerate with `{REGENERATE}`"
        )
    versions = {str(v): FlagContract.from_json(str(v), body, path) for v, body in data["versions"].items()}
    derived = {k: v for k, v in data.items() if k not in ("schema", "versions")}
    return Contracts(versions, derived)


# ---------------------------------------------------------------------------- checking args


@dataclass(frozen=True)
class FlagProblem:
    """One argument a version does not accept (``unknown``) or accepts only as deprecated."""

    flag: str  # as written, without its value: "--logtostderr", "-q"
    severity: Severity
    message: str  # names the flag and the version
    arg: str = ""  # the whole argument: "--logtostderr=true"
    index: int = 0  # its position in the args

    def as_json(self) -> dict[str, Any]:
        return {"flag": self.flag, "severity": self.severity, "message": self.message, "arg": self.arg}


def check_args(args: Sequence[str], version: str, contracts: Contracts | None = None) -> list[FlagProblem]:
    """The problems of a proxy container's ``args`` under kube-rbac-proxy ``version``.

    Reads the args as pflag does: ``--name[=value]``, ``-x[=value]`` (a shorthand), a bare
    flag that takes a value consumes the next argument, ``--`` ends the flags. Raises
    NoContract when the data has no contract for ``version``.
    """
    contracts = contracts or load_contracts()
    contract = contracts.contract(version)
    problems: list[FlagProblem] = []
    index = 0
    while index < len(args):
        arg, at = args[index], index
        index += 1
        if arg == "--":
            break
        if not arg.startswith("-") or arg == "-":
            continue  # a value or a positional argument: not a flag
        if arg.startswith("--"):
            name, sign, _ = arg[2:].partition("=")
            written, canonical, bare = f"--{name}", contract.canonical(name), not sign
        else:
            letter = arg[1]
            written, bare = f"-{letter}", len(arg) == 2
            long = contract.shorthands.get(letter)
            if long is None:
                known = ", ".join(f"-{s}" for s in sorted(contract.shorthands)) or "none"
                problems.append(
                    FlagProblem(
                        written,
                        "unknown",
                        f"unknown flag {written} (in {arg}) for kube-rbac-proxy {version}: it knows the shorthands "
                        f"{known}; long flags take two dashes",
                        arg,
                        at,
                    )
                )
                continue
            canonical = long
        if canonical in contract.accepted:
            pass
        elif canonical in contract.deprecated:
            message = f"deprecated flag {written} for kube-rbac-proxy {version}"
            why = contract.why_deprecated.get(canonical)
            message += f" ({why})" if why else ""
            if bare and canonical in contract.takes_value and index < len(args) and args[index].startswith("-"):
                # v0.16.0 typed klog's hidden flags as strings: `--logtostderr --v=10` loses --v=10.
                message += f"; written bare it takes the next argument {args[index]} as its value"
            problems.append(FlagProblem(written, "deprecated", message, arg, at))
        else:
            message = _unknown_message(written, canonical, version, contracts)
            problems.append(FlagProblem(written, "unknown", message, arg, at))
            continue  # whether it would take a value is unknown: read on
        if bare and canonical in contract.takes_value and index < len(args):
            index += 1  # pflag takes the next argument as the value, whatever it looks like
    return problems


def _unknown_message(written: str, name: str, version: str, contracts: Contracts) -> str:
    """Names the flag, the version, and what the other versions' contracts show."""
    message = f"unknown flag {written} for kube-rbac-proxy {version}: the proxy refuses it and exits"
    target = version_key(version)
    known = contracts.known()
    older = [c for c in known if version_key(c.version) < target and c.accepts(name)]
    newer = [c for c in known if version_key(c.version) > target and c.accepts(name)]
    if older:
        last = older[-1]
        dropped = next(c for c in known if version_key(c.version) > version_key(last.version) and not c.accepts(name))
        message += f" ({last.version} is the newest version that accepts it; {dropped.version} dropped it)"
    elif newer:
        message += f" (accepted from {newer[0].version} on)"
    else:
        others = [c.version for c in known if c.version != version]
        if others:
            message += f" (no version with a contract accepts it: {', '.join(others)})"
    return message


def flag_names(args: Iterable[str]) -> set[str]:
    """The long names of ``--name[=value]`` arguments."""
    return {arg[2:].partition("=")[0] for arg in args if arg.startswith("--") and len(arg) > 2}


# ---------------------------------------------------------------------------- running the binary


def _run(binary: Path, args: Sequence[str], timeout: float, *, stdout_only: bool = False) -> tuple[int, str]:
    """(exit code, stdout + stderr) of the binary, offline: no in-cluster config to find.
    ``stdout_only``: for answers whose stderr is commentary (cobra's completion)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("KUBERNETES_")}
    with tempfile.TemporaryDirectory(prefix="kserve-compat-flags-") as cwd:
        result = run(
            [binary, *args],
            f"`{' '.join(args)}` of {binary}",
            error=ProbeFailed,
            timeout=timeout,
            env=env,
            cwd=cwd,
            check=False,
        )
    return result.returncode, result.stdout if stdout_only else result.stdout + result.stderr


def read_help(binary: Path, timeout: float = PROBE_TIMEOUT_SECONDS) -> str:
    code, output = _run(binary, ["--help"], timeout)
    if code != 0 or not parse_help(output):
        raise ProbeFailed(f"{binary} --help: exit {code}, no flags listed: {one_line(output) or 'no output'}")
    return output


@dataclass(frozen=True)
class Listing:
    """What a binary lists of its flags: ``--help``, and cobra's completion where it has one."""

    help_text: str
    offered: frozenset[str] | None = None  # None: no completion to ask
    offered_shorthands: frozenset[str] = frozenset()

    @property
    def listed(self) -> dict[str, HelpFlag]:
        return parse_help(self.help_text)

    def names(self) -> set[str]:
        return set(self.listed) | set(self.offered or ())


def read_listing(binary: Path, timeout: float = PROBE_TIMEOUT_SECONDS) -> Listing:
    help_text = read_help(binary, timeout)
    if not is_cobra_help(help_text):
        return Listing(help_text)  # plain pflag (v0.13.1): `__complete` would be an argument
    code, output = _run(binary, ["__complete", "-"], timeout, stdout_only=True)
    completion = parse_completion(output) if code == 0 else None
    if completion is None:
        return Listing(help_text)
    return Listing(help_text, *completion)


def probe(binary: Path, flag: str, value: str = PROBE_VALUE, timeout: float = PROBE_TIMEOUT_SECONDS) -> Probe:
    """Run ``--<flag>=<value> --help`` and classify the answer."""
    code, output = _run(binary, [f"--{flag}={value}", "--help"], timeout)
    try:
        return classify_probe(flag, code, output)
    except ProbeFailed as exc:
        raise ProbeFailed(f"{binary}: {exc}") from None


def derive_contract(
    binary: Path,
    version: str,
    candidates: Iterable[str],
    *,
    listing: Listing | None = None,
    timeout: float = PROBE_TIMEOUT_SECONDS,
    jobs: int = 2,
) -> FlagContract:
    """The contract of the binary of ``version`` (see the module docstring for the rules)."""
    listing = listing or read_listing(binary, timeout)
    listed, offered, offered_shorts = listing.listed, listing.offered, listing.offered_shorthands
    dashed = sorted(name for name in listed if "-" in name)
    underscores = bool(dashed) and probe(binary, dashed[0].replace("-", "_"), timeout=timeout).verdict != "unknown"

    def canonical(name: str) -> str:
        return name.replace("_", "-") if underscores else name

    names = sorted({canonical(name) for name in (*candidates, *listing.names())})
    with concurrent.futures.ThreadPoolExecutor(max_workers=max(1, jobs)) as pool:
        probes = dict(zip(names, pool.map(lambda n: probe(binary, n, timeout=timeout), names), strict=True))
    accepted: set[str] = set()
    deprecated: dict[str, str] = {}
    shorthands = {flag.shorthand: name for name, flag in listed.items() if flag.shorthand}
    for name, found in probes.items():
        if found.verdict == "unknown":
            if name in listed:
                raise ProbeFailed(f"{binary}: --help lists --{name} but a probe answers {found.evidence}")
            continue
        if found.shorthand:
            shorthands.setdefault(found.shorthand, name)
        reasons = []
        if found.verdict == "deprecated":
            reasons.append(f"warns: {found.evidence}")
        if name in listed and listed[name].deprecated:
            reasons.append("marked DEPRECATED in --help")
        if name not in listed and (offered is None or name not in offered):
            reasons.append("hidden: accepted, not in --help" + (" or its completion" if offered is not None else ""))
        if reasons:
            deprecated[name] = "; ".join(reasons)
        else:
            accepted.add(name)
    # Shorthands completion offers that --help does not show: an invalid value names their flag.
    for letter in sorted(offered_shorts - set(shorthands)):
        code, output = _run(binary, [f"-{letter}={INVALID_VALUE}", "--help"], timeout)
        named = _INVALID.search(output)
        if named and named.group("short") == letter:
            shorthands[letter] = canonical(named.group("name"))
    takes_value = {name for name in accepted | set(deprecated) if name in listed and listed[name].takes_value}
    for name in sorted((accepted | set(deprecated)) - set(listed)):
        code, output = _run(binary, ["--help", f"--{name}"], timeout)
        if takes_value_from(code, output):
            takes_value.add(name)
    return FlagContract(
        version=version,
        accepted=frozenset(accepted),
        deprecated=frozenset(deprecated),
        why_deprecated=deprecated,
        takes_value=frozenset(takes_value),
        shorthands=shorthands,
        underscores_are_dashes=underscores,
        binary=_provenance(binary, version),
    )


def _provenance(binary: Path, version: str) -> dict[str, Any]:
    with binary.open("rb") as handle:
        digest = hashlib.file_digest(handle, "sha256")
    info = binaries.read_build_info(binaries.PROXY, version) or {}
    cached = binaries.binary_path(binaries.PROXY, version)
    if binary != cached or not info:
        source = "given (environment variable or KSERVE_COMPAT_BIN_DIR)"
    elif info.get("source") == "image":
        source = f"taken out of {info.get('image')}"
    else:
        source = f"built from {info.get('module')}@{version}"
    document: dict[str, Any] = {"sha256": digest.hexdigest(), "source": source}
    if binary == cached and info.get("go_version"):
        document["go_version"] = info["go_version"]
    return document


# ---------------------------------------------------------------------------- candidates


_KLOG_MODULE = re.compile(r"^\s*dep\s+(k8s\.io/klog(?:/v\d+)?)\s+(v\S+)", re.MULTILINE)
# klog registers its flags in init(): commandLine.StringVar(&logging.logDir, "log_dir", ...).
_KLOG_FLAG = re.compile(r'commandLine\.\w*Var\(\s*&[\w.]+,\s*"([\w-]+)"')


def klog_modules(binary: Path) -> list[tuple[str, str]]:
    """(module, version) of klog as the binary records its build (``go version -m``)."""
    result = run(
        [binaries.go_binary(), "version", "-m", binary],
        f"the build record of {binary}",
        error=ProbeFailed,
        env=binaries.go_environment(),
        timeout=60,
    )
    return sorted(set(_KLOG_MODULE.findall(result.stdout)))


def klog_flag_names(source: str) -> set[str]:
    """The flag names klog's source registers (with ``_`` as klog writes them)."""
    return set(_KLOG_FLAG.findall(source))


def _klog_flags(module: str, version: str) -> set[str]:
    """klog's flag names at ``module@version``, from its source (module cache or Go module proxy)."""
    with tempfile.TemporaryDirectory(prefix="kserve-compat-klog-") as tmp:
        download = binaries.download_module(module, version, Path(tmp))
    names: set[str] = set()
    for path in sorted(download.dir.glob("*.go")):
        if not path.name.endswith("_test.go"):
            names |= klog_flag_names(path.read_text(encoding="utf-8", errors="replace"))
    if not names:
        raise ProbeFailed(f"{module}@{version}: no flag registrations found in {download.dir}")
    return names


def variant_flags(matrix: Matrix) -> set[str]:
    return flag_names(arg for variant in matrix.variants for arg in (*variant.args_drop, *variant.args_add))


def manifest_flags(matrix: Matrix) -> tuple[set[str], list[str]]:
    """Flags in the proxy args of the release manifests at hand (the offline directory or the
    cache: a derivation downloads nothing), and which manifests those were."""
    from e2e.manifests import ReleaseFiles, kserve_file, load_release_manifest

    files = ReleaseFiles.from_environment()
    names: set[str] = set()
    read: list[str] = []
    for release in matrix.releases:
        ref = kserve_file(release.version)
        local = files.offline_dir / ref.key if files.offline_dir else files.cache_dir / ref.key
        if not local.is_file():
            continue
        try:
            manifest = load_release_manifest(release, files, remember=True)
            args = manifest.proxy_args
        except HarnessError as exc:
            log.warning("%s: proxy args not read (%s)", ref.label, exc)
            continue
        names |= flag_names(args)
        read.append(ref.label)
    return names, read


# ---------------------------------------------------------------------------- deriving the file


@dataclass
class Derivation:
    contracts: Contracts
    lines: list[str]  # one per version, for the command's output


def locate_binaries(versions: Sequence[str], build: bool = True) -> tuple[dict[str, Path], dict[str, str]]:
    """(binary per version, module proxy's answer per version that cannot be had)."""
    found: dict[str, Path] = {}
    unavailable: dict[str, str] = {}
    for version in versions:
        path = binaries.locate(binaries.PROXY, version)
        if path is None:
            refused = binaries.module_unavailable_reason(binaries.PROXY_MODULE, version)
            if refused and not binaries.from_image_allowed():
                unavailable[version] = refused  # the proxy's own words: what the data records
                continue
            if not build:
                raise EnvironmentMissing(f"kube-rbac-proxy {version}: not built; run `kserve-compat binaries`")
            try:
                path = binaries.ensure(binaries.PROXY, version)
            except binaries.BuildUnavailable as exc:
                unavailable[version] = refused or str(exc)
                continue
        found[version] = path
    return found, unavailable


def candidate_flags(
    paths: Mapping[str, Path], listings: Mapping[str, Listing], matrix: Matrix
) -> tuple[set[str], dict[str, Any]]:
    """Every flag worth probing, and where the candidates came from (for the data file)."""
    names = {name for listing in listings.values() for name in listing.names()}
    klog: dict[str, list[str]] = {}
    for path in paths.values():
        for module, version in klog_modules(path):
            key = f"{module}@{version}"
            if key not in klog:
                klog[key] = sorted(_klog_flags(module, version))
    for flags in klog.values():
        names.update(flags)
    from_variants = variant_flags(matrix)
    from_manifests, manifests = manifest_flags(matrix)
    names |= from_variants | from_manifests
    sources = {
        "klog": klog,
        "variants": sorted(from_variants),
        "manifests": {"read": manifests, "flags": sorted(from_manifests)},
    }
    return names, sources


def derive_all(
    versions: Sequence[str] | None = None, *, build: bool = True, matrix: Matrix | None = None, jobs: int = 2
) -> Derivation:
    """Every known version's contract, from the binaries (built when missing and ``build``)."""
    wanted = list(dict.fromkeys(versions or binaries.PROXY_VERSIONS))
    matrix = matrix or load_matrix()
    paths, unavailable = locate_binaries(wanted, build=build)
    listings = {version: read_listing(path) for version, path in paths.items()}
    names, sources = candidate_flags(paths, listings, matrix)
    contracts: dict[str, FlagContract] = {}
    lines = []
    for version in wanted:
        if version in unavailable:
            contracts[version] = FlagContract(version, unavailable=unavailable[version])
            lines.append(f"{binaries.PROXY} {version:<9} unavailable: {unavailable[version]}")
            continue
        log.info("probing kube-rbac-proxy %s: %d candidate flags", version, len(names))
        contract = derive_contract(paths[version], version, names, listing=listings[version], jobs=jobs)
        contracts[version] = contract
        lines.append(
            f"{binaries.PROXY} {version:<9} {len(contract.accepted)} accepted, {len(contract.deprecated)} deprecated"
            + (f": {', '.join(sorted(contract.deprecated))}" if contract.deprecated else "")
        )
    derived = {
        "about": (
            "Which long flags each kube-rbac-proxy version accepts, and which only as deprecated or hidden flags; "
            f"derived from the real binaries by `{REGENERATE}` (see e2e/proxy_flags.py), never edited by hand"
        ),
        "derived_at": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "go_version": binaries.go_version(),
        "method": (
            f"--help (listed flags, DEPRECATED markers, value types); cobra's __complete (flags neither hidden nor "
            f"deprecated); each candidate probed with --<flag>={PROBE_VALUE} --help: 'unknown flag' -> not accepted, "
            "'has been deprecated' -> deprecated, help or an invalid-value error -> accepted; accepted but hidden "
            "-> deprecated; --help --<flag>: 'flag needs an argument' -> takes a value"
        ),
        "candidates": sorted(names),
        "candidate_sources": sources,
    }
    return Derivation(Contracts(contracts, derived), lines)


def write_contracts(contracts: Contracts, path: Path | str | None = None) -> Path:
    """Write the data file atomically; the cache of loaded files forgets the old one."""
    target = Path(path) if path else PROXY_FLAGS_FILE
    if target.exists() and not target.is_file():
        raise UsageError(f"--flag-contracts {target}: not a file")
    write_atomic(target, json.dumps(contracts.as_json(), indent=2) + "\n", mode=0o644)
    _load.cache_clear()
    return target
