"""``kserve-compat audit FILE|DIR|-``: flag retired, unpinned and unavailable images.

Reads manifests (files, directories of ``*.yaml``/``*.yml``, or Helm/Kustomize output on
stdin), finds every ``image`` of every ``containers``/``initContainers``/
``ephemeralContainers`` list at any depth (Pod templates of workloads, and custom kinds
such as ServingRuntime ``spec.containers``), and flags each image: on a retired registry
(with its replacement), unpinned (no tag or ``latest``), pinned by digest. ``--probe``
asks the registry whether each image can be pulled. The ``args`` of every kube-rbac-proxy
container are checked against the flag contract of its own image's version
(``e2e.proxy_flags``): an unknown flag is a failure (the proxy exits at start), a
deprecated or hidden one a warning, a version without a contract is noted as not checked.

Exit codes, in the spirit of pluto (the highest-ranked finding wins; see ``EXIT_CODES``):
0 clean, 2 usage error, 3 an image is on a retired registry, 4 an image is unavailable
(gone, denied) or not a valid reference, 7 a kube-rbac-proxy container has a flag its
version does not accept, 6 an image could not be checked (its registry did not answer: DNS,
connection, timeout). "Could not check" is never counted as "gone".
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, TextIO

import yaml

from e2e.errors import ImageReferenceError, UsageError
from e2e.images import ImageReference, RegistryMirrors, Retirement, retirement
from e2e.local.proxy_runner import is_proxy_image, proxy_version_of
from e2e.manifests import YAML_LOADER
from e2e.proxy_flags import Contracts, FlagProblem, NoContract, check_args, load_contracts
from e2e.registry import ImageAvailability, RegistryProbe, Status

EXIT_CLEAN = 0
EXIT_RETIRED = 3
EXIT_UNAVAILABLE = 4
EXIT_UNCHECKED = 6  # the same code in preflight
# A kube-rbac-proxy container would exit at start: like an unavailable image, a known break
# (the same code in preflight, for the planned patch).
EXIT_UNKNOWN_FLAG = 7
# For --help. Of several findings the first in this order sets the code: 4, 7, 6, then 3.
EXIT_CODES = (
    (EXIT_CLEAN, "clean (deprecated proxy flags are warnings)"),
    (2, "usage error (a path that does not exist, no manifests, bad options)"),
    (EXIT_RETIRED, "an image is on a retired registry (and nothing below)"),
    (EXIT_UNAVAILABLE, "an image is unavailable (missing, denied) or not a valid reference (wins over 7, 6 and 3)"),
    (EXIT_UNCHECKED, "an image could not be checked, its registry did not answer (--probe; wins over 3)"),
    (EXIT_UNKNOWN_FLAG, "a kube-rbac-proxy container has a flag its version does not accept (wins over 6 and 3)"),
)

CONTAINER_LISTS = ("containers", "initContainers", "ephemeralContainers")
MANIFEST_SUFFIXES = (".yaml", ".yml")
STDIN = "-"
STDIN_NAME = "<stdin>"


@dataclass(frozen=True)
class ImageUse:
    """One place an image is named."""

    source: str
    line: int
    kind: str | None
    namespace: str | None
    name: str | None
    container: str | None
    field: str  # e.g. spec.template.spec.containers[1].image
    args: tuple[str, ...] | None = None  # the container's args, None when it has none
    arg_lines: tuple[int, ...] = ()  # the line of each arg

    def describe(self) -> str:
        where = f"{self.source}:{self.line}"
        if self.kind:
            obj = "/".join(part for part in (self.namespace, self.name) if part)
            where += f" {self.kind} {obj}".rstrip()
        if self.container:
            where += f" container {self.container}"
        return where

    def as_json(self) -> dict[str, Any]:
        return {
            "source": self.source,
            "line": self.line,
            "kind": self.kind,
            "namespace": self.namespace,
            "name": self.name,
            "container": self.container,
            "field": self.field,
        }


@dataclass
class AuditedImage:
    image: str
    uses: list[ImageUse] = field(default_factory=list)
    reference: ImageReference | None = None
    invalid: str | None = None
    retirement: Retirement | None = None
    availability: ImageAvailability | None = None

    @property
    def pin(self) -> str:
        if self.reference is None:
            return "invalid"
        if self.reference.pinned_by_digest:
            return "digest"
        return "unpinned" if self.reference.unpinned else "tag"

    @property
    def unavailable(self) -> bool:
        """Known not to be pullable; an unanswered probe is ``unchecked``, not this."""
        if self.invalid is not None:
            return True
        return self.availability is not None and self.availability.status in (Status.MISSING, Status.DENIED)

    @property
    def unchecked(self) -> bool:
        return self.availability is not None and self.availability.status is Status.UNREACHABLE

    def as_json(self) -> dict[str, Any]:
        return {
            "image": self.image,
            "normalized": self.reference.normalized().format() if self.reference else None,
            "pin": self.pin,
            "invalid": self.invalid,
            "retired": None
            if self.retirement is None
            else {
                "registry": self.retirement.registry.prefix,
                "note": self.retirement.registry.retired,
                "replacements": [{"image": ref, "status": status} for ref, status in self.retirement.replacements],
            },
            "availability": None
            if self.availability is None
            else {
                "status": str(self.availability.status),
                "digest": self.availability.digest,
                "detail": self.availability.detail,
                "probed": self.availability.probed,
            },
            "uses": [use.as_json() for use in self.uses],
        }


@dataclass(frozen=True)
class FlagFinding:
    """A kube-rbac-proxy container's args judged against its image's version: one problem,
    or ``not_checked`` (the reason) when there is no contract to judge by."""

    image: str
    use: ImageUse
    version: str | None
    problem: FlagProblem | None = None
    not_checked: str | None = None

    @property
    def kind(self) -> str:
        """unknown, deprecated or not checked."""
        return self.problem.severity if self.problem else "not checked"

    def at(self) -> ImageUse:
        """The use, at the offending arg's line when there is one."""
        use = self.use
        if self.problem is not None and self.problem.index < len(use.arg_lines):
            index = self.problem.index
            field = use.field.removesuffix(".image") + f".args[{index}]"
            use = replace(use, line=use.arg_lines[index], field=field)
        return use

    def where(self) -> str:
        return self.at().describe()

    def describe(self) -> str:
        if self.problem is not None:
            prefix = "warning: " if self.problem.severity == "deprecated" else ""
            return f"{prefix}{self.where()}: {self.problem.message}"
        return f"{self.where()}: flags not checked ({self.not_checked})"

    def as_json(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "image": self.image,
            "version": self.version,
            "flag": self.problem.flag if self.problem else None,
            "arg": self.problem.arg if self.problem else None,
            "message": self.problem.message if self.problem else f"flags not checked ({self.not_checked})",
            "where": self.at().as_json(),
        }


@dataclass
class AuditReport:
    images: list[AuditedImage]
    sources: int
    probed: bool
    flags: list[FlagFinding] = field(default_factory=list)

    @property
    def unknown_flags(self) -> list[FlagFinding]:
        return [finding for finding in self.flags if finding.kind == "unknown"]

    @property
    def deprecated_flags(self) -> list[FlagFinding]:
        return [finding for finding in self.flags if finding.kind == "deprecated"]

    @property
    def flags_not_checked(self) -> list[FlagFinding]:
        return [finding for finding in self.flags if finding.kind == "not checked"]

    @property
    def retired(self) -> list[AuditedImage]:
        return [image for image in self.images if image.retirement is not None]

    @property
    def unavailable(self) -> list[AuditedImage]:
        return [image for image in self.images if image.unavailable]

    @property
    def unchecked(self) -> list[AuditedImage]:
        return [image for image in self.images if image.unchecked]

    @property
    def exit_code(self) -> int:
        if self.unavailable:
            return EXIT_UNAVAILABLE
        if self.unknown_flags:
            return EXIT_UNKNOWN_FLAG
        if self.unchecked:
            return EXIT_UNCHECKED
        if self.retired:
            return EXIT_RETIRED
        return EXIT_CLEAN

    def summary(self) -> str:
        counts = [
            f"{len(self.retired)} on a retired registry",
            f"{sum(image.pin == 'unpinned' for image in self.images)} unpinned",
            f"{sum(image.pin == 'digest' for image in self.images)} pinned by digest",
        ]
        invalid = sum(image.invalid is not None for image in self.images)
        if invalid:
            counts.append(f"{invalid} not a valid reference")
        if self.probed:
            counts.append(f"{sum(image.unavailable for image in self.images) - invalid} unavailable")
            if self.unchecked:
                counts.append(f"{len(self.unchecked)} could not be checked")
        for found, one, many in (
            (self.unknown_flags, "unknown proxy flag", "unknown proxy flags"),
            (self.deprecated_flags, "deprecated proxy flag", "deprecated proxy flags"),
            (self.flags_not_checked, "proxy container's flags not checked", "proxy containers' flags not checked"),
        ):
            if found:
                counts.append(f"{len(found)} {one if len(found) == 1 else many}")
        noun = "file" if self.sources == 1 else "files"
        return f"{len(self.images)} images in {self.sources} {noun}: " + ", ".join(counts)


# -- reading manifests -----------------------------------------------------------------------


def manifest_sources(paths: Sequence[str], stdin: TextIO) -> Iterator[tuple[str, str]]:
    """(name, text) of every manifest the arguments name; a bad argument is a UsageError."""
    for argument in paths:
        if argument == STDIN:
            yield STDIN_NAME, stdin.read()
            continue
        path = Path(argument)
        if path.is_dir():
            files = sorted(
                found
                for found in path.rglob("*")
                if found.suffix in MANIFEST_SUFFIXES
                and found.is_file()
                and not any(part.startswith(".") for part in found.relative_to(path).parts)
            )
            if not files:
                raise UsageError(f"manifest directory {argument}: no *.yaml or *.yml files in it")
            for file in files:
                yield str(file), _read(file)
        elif path.exists():
            yield argument, _read(path)
        else:
            raise UsageError(f"manifest {argument}: not found; expected a YAML file, a directory or -")


def _read(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise UsageError(f"manifest {path}: not UTF-8 text; expected YAML") from None
    except OSError as exc:
        raise UsageError(f"manifest {path}: cannot read it ({exc.strerror})") from None


def _scalar(node: yaml.Node | None) -> str | None:
    if isinstance(node, yaml.ScalarNode) and node.tag == "tag:yaml.org,2002:str":
        return str(node.value)
    return None


def _get(node: yaml.MappingNode, key: str) -> yaml.Node | None:
    for key_node, value_node in node.value:
        if isinstance(key_node, yaml.ScalarNode) and key_node.value == key:
            return value_node  # type: ignore[no-any-return]
    return None


@dataclass(frozen=True)
class _Owner:
    kind: str | None = None
    namespace: str | None = None
    name: str | None = None


def _owner(node: yaml.MappingNode, outer: _Owner) -> _Owner:
    """The Kubernetes object a mapping is, if it is one (has apiVersion and kind)."""
    kind = _scalar(_get(node, "kind"))
    if kind is None or _get(node, "apiVersion") is None:
        return outer
    metadata = _get(node, "metadata")
    if not isinstance(metadata, yaml.MappingNode):
        return _Owner(kind)
    return _Owner(kind, _scalar(_get(metadata, "namespace")), _scalar(_get(metadata, "name")))


def image_uses(source: str, text: str, objects: list[str] | None = None) -> Iterator[tuple[str, ImageUse]]:
    """(image, where) for every container image in a multi-document YAML text; ``objects``
    collects the kind of each Kubernetes object (apiVersion and kind) the text holds."""
    try:
        documents = list(yaml.compose_all(text, Loader=YAML_LOADER))
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        where = f" line {mark.line + 1}" if mark is not None else ""
        problem = exc.problem or exc.context or "syntax error"
        raise UsageError(f"manifest {source}{where}: not valid YAML ({problem})") from None
    except yaml.YAMLError as exc:
        raise UsageError(f"manifest {source}: not valid YAML ({' '.join(str(exc).split())})") from None
    for document in documents:
        if objects is not None and isinstance(document, yaml.MappingNode) and _scalar(_get(document, "apiVersion")):
            kind = _scalar(_get(document, "kind"))
            if kind:
                objects.append(kind)
        # CRDs are most of a release manifest's bytes and are schemas, never workloads.
        if document is not None and not _is_crd(document):
            yield from _walk(source, document, "", _Owner(), set())


def _is_crd(document: yaml.Node) -> bool:
    return isinstance(document, yaml.MappingNode) and _scalar(_get(document, "kind")) == "CustomResourceDefinition"


def _walk(source: str, node: yaml.Node, path: str, owner: _Owner, active: set[int]) -> Iterator[tuple[str, ImageUse]]:
    if id(node) in active:  # a YAML alias that contains itself
        return
    active.add(id(node))
    try:
        if isinstance(node, yaml.MappingNode):
            inner = _owner(node, owner)
            if inner is not owner:  # a Kubernetes object (e.g. an item of a List): paths restart
                owner, path = inner, ""
            for key_node, value_node in node.value:
                key = _scalar(key_node) or str(key_node.value)
                here = f"{path}.{key}" if path else key
                if key in CONTAINER_LISTS and isinstance(value_node, yaml.SequenceNode):
                    yield from _containers(source, value_node, here, owner)
                else:
                    yield from _walk(source, value_node, here, owner, active)
        elif isinstance(node, yaml.SequenceNode):
            for index, item in enumerate(node.value):
                yield from _walk(source, item, f"{path}[{index}]", owner, active)
    finally:
        active.discard(id(node))


def _containers(source: str, node: yaml.SequenceNode, path: str, owner: _Owner) -> Iterator[tuple[str, ImageUse]]:
    for index, container in enumerate(node.value):
        if not isinstance(container, yaml.MappingNode):
            continue
        image_node = _get(container, "image")
        image = _scalar(image_node)
        if image is None or image_node is None:
            continue
        args_node = _get(container, "args")
        args = arg_lines = None
        if isinstance(args_node, yaml.SequenceNode):
            items = [item for item in args_node.value if isinstance(item, yaml.ScalarNode)]
            args = tuple(str(item.value) for item in items)
            arg_lines = tuple(item.start_mark.line + 1 for item in items)
        yield (
            image,
            ImageUse(
                source=source,
                line=image_node.start_mark.line + 1,
                kind=owner.kind,
                namespace=owner.namespace,
                name=owner.name,
                container=_scalar(_get(container, "name")),
                field=f"{path}[{index}].image",
                args=args,
                arg_lines=arg_lines or (),
            ),
        )


# -- judging ----------------------------------------------------------------------------------


def audit(
    sources: Iterable[tuple[str, str]], probe: RegistryProbe | None = None, contracts: Contracts | None = None
) -> AuditReport:
    """Judge every image of ``sources``; ``contracts``: the proxy flag contracts (default:
    the shipped data file)."""
    images: dict[str, AuditedImage] = {}
    count = 0
    names: list[str] = []
    objects: list[str] = []
    for source, text in sources:
        count += 1
        names.append(source)
        for image, use in image_uses(source, text, objects):
            images.setdefault(image, AuditedImage(image)).uses.append(use)
    if not objects:
        shown = ", ".join(names[:3]) + (f" (+{len(names) - 3} more)" if len(names) > 3 else "")
        raise UsageError(f"{shown or 'the input'}: no Kubernetes objects (apiVersion and kind) found; "
                         "expected manifests, or Helm/Kustomize output on stdin")
    for audited in images.values():
        try:
            audited.reference = ImageReference.parse(audited.image)
        except ImageReferenceError as exc:
            audited.invalid = str(exc)
            continue
        audited.retirement = retirement(audited.reference)
        if probe is not None:
            audited.availability = probe.probe(audited.reference)
    report = AuditReport(list(images.values()), sources=count, probed=probe is not None)
    for audited in report.images:
        if audited.reference is not None and is_proxy_image(audited.image):
            contracts = contracts or load_contracts()
            report.flags += proxy_flag_findings(audited, contracts)
    return report


def proxy_flag_findings(image: AuditedImage, contracts: Contracts) -> list[FlagFinding]:
    """The args of each container running ``image`` (a kube-rbac-proxy) against its version."""
    version = proxy_version_of(image.image)
    findings: list[FlagFinding] = []
    for use in image.uses:
        if not use.args:
            continue  # no flags to judge
        if version is None:
            findings.append(FlagFinding(image.image, use, None, not_checked="its tag names no kube-rbac-proxy version"))
            continue
        try:
            problems = check_args(use.args, version, contracts)
        except NoContract as missing:
            findings.append(FlagFinding(image.image, use, version, not_checked=str(missing)))
            continue
        findings += [FlagFinding(image.image, use, version, problem) for problem in problems]
    return findings


# -- rendering --------------------------------------------------------------------------------


def _availability_cell(image: AuditedImage) -> str:
    if image.invalid is not None:
        return "invalid reference"
    found = image.availability
    if found is None:
        return "-"
    text = str(found.status)
    if found.digest:
        text += f" {found.digest[:19]}…"
    if found.probed and image.reference and found.probed != image.reference.format():
        text += f" via {found.probed}"
    return text


def _registry_cell(image: AuditedImage, probed: bool) -> str:
    if image.retirement:
        return "retired"
    if not probed:
        return "not probed"
    return "unreachable" if image.unchecked else "answered"


def _where(image: AuditedImage) -> str:
    first = image.uses[0].describe()
    return first if len(image.uses) == 1 else f"{first} (+{len(image.uses) - 1} more)"


def _rows(report: AuditReport) -> tuple[list[str], list[list[str]]]:
    header = ["IMAGE", "PIN", "REGISTRY"] + (["AVAILABILITY"] if report.probed else []) + ["WHERE"]
    rows = []
    for image in report.images:
        row = [image.image, image.pin, _registry_cell(image, report.probed)]
        if report.probed:
            row.append(_availability_cell(image))
        rows.append([*row, _where(image)])
    return header, rows


def _notes(report: AuditReport) -> list[str]:
    notes = [f"{image.image}: {image.retirement.describe()}" for image in report.retired if image.retirement]
    for image in report.unavailable:
        if image.invalid is not None:
            notes.append(image.invalid)
        elif image.availability is not None:
            notes.append(f"{image.image}: {image.availability.describe()}")
    for image in report.unchecked:
        if image.availability is not None:
            notes.append(f"{image.image}: could not be checked, {image.availability.describe()}")
    notes += [finding.describe() for finding in report.unknown_flags]
    notes += [finding.describe() for finding in report.deprecated_flags]
    notes += [finding.describe() for finding in report.flags_not_checked]
    return notes


def render_table(report: AuditReport) -> str:
    if not report.images:
        return f"no container images found\n{report.summary()}\n"
    header, rows = _rows(report)
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header))]
    lines = [
        "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip()
        for row in [header, *rows]
    ]
    notes = _notes(report)
    if notes:
        lines += ["", "findings:", *(f"  {note}" for note in notes)]
    lines += ["", report.summary()]
    return "\n".join(lines) + "\n"


def render_markdown(report: AuditReport) -> str:
    header, rows = _rows(report)
    titles = [title.capitalize() for title in header]
    lines = ["| " + " | ".join(titles) + " |", "|" + " --- |" * len(titles)]
    for row in rows:
        cells = [f"`{row[0]}`", *row[1:]]
        lines.append("| " + " | ".join(cell.replace("|", "\\|") for cell in cells) + " |")
    notes = _notes(report)
    if notes:
        lines += ["", *(f"- {note}" for note in notes)]
    lines += ["", f"**{report.summary()}**"]
    return "\n".join(lines) + "\n"


def render_json(report: AuditReport) -> str:
    document = {
        "images": [image.as_json() for image in report.images],
        "proxy_flags": [finding.as_json() for finding in report.flags],
        "summary": report.summary(),
        "probed": report.probed,
        "exit_code": report.exit_code,
    }
    return json.dumps(document, indent=2) + "\n"


RENDERERS = {"table": render_table, "json": render_json, "markdown": render_markdown}


# -- the subcommand ---------------------------------------------------------------------------


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "paths",
        nargs="+",
        metavar="FILE|DIR|-",
        help="manifest files, directories (searched for *.yaml, *.yml) or - for stdin",
    )
    parser.add_argument("--probe", action="store_true", help="ask each registry whether the image can be pulled")
    parser.add_argument("--format", choices=sorted(RENDERERS), default="table", help="output format")
    parser.add_argument(
        "--registry-mirror",
        action="append",
        default=[],
        metavar="SRC=DST|HOST=URL",
        help="probe SRC/... at DST/... instead (repeatable), e.g. gcr.io/kubebuilder=registry.example:5000/kubebuilder"
        "; HOST=URL asks your mirror at URL for HOST's images under their own paths, e.g. quay.io=http://10.0.0.5:5000",
    )
    parser.add_argument(
        "--insecure-registry",
        action="append",
        default=[],
        metavar="HOST[:PORT]",
        help="talk plain HTTP to this registry (localhost and 127.0.0.1 always are)",
    )
    parser.add_argument("--timeout", type=float, default=10.0, help="seconds per registry request (default 10)")


def run(args: argparse.Namespace) -> int:
    mirrors = RegistryMirrors.from_options(args.registry_mirror)
    if args.timeout <= 0:
        raise UsageError(f"--timeout {args.timeout}: expected a positive number of seconds")
    probe = (
        RegistryProbe(
            mirrors=mirrors,
            insecure_registries=args.insecure_registry,
            connect_timeout=args.timeout,
            read_timeout=args.timeout,
        )
        if args.probe
        else None
    )
    report = audit(manifest_sources(args.paths, sys.stdin), probe)
    sys.stdout.write(RENDERERS[args.format](report))
    return report.exit_code
