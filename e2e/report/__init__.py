"""Rendering cell results: JSON files, the Markdown grid, an HTML page, JUnit XML, exit codes.

One module per concern: ``store`` (the JSON files), ``grid`` (what every rendering shares),
``markdown``, ``page`` (HTML), ``recommend``, ``junit`` and ``outputs`` (every file of a run
and its exit code). This face names what the rest of the harness uses.

One JSON file per cell is what an e2e run leaves behind (``save_result``); CI shards are
merged back with ``load_results``. Every renderer reads only ``CellResult`` records and the
matrix (for column order, controller profiles and registry status), never a cluster.

Secrets: the result model redacts on the way in, and every string is redacted again on
the way out here, because evidence lists can be appended to after construction.

Decisions worth knowing (also in README.md, "Reports"):

* Duplicates: the same cell id on the same provider is one cell; when shards disagree, the
  result with the newer ``started_at`` wins. Kind and local results of one cell id stay
  side by side, one grid per provider.
* ``image-unavailable`` is a failure, except for a proxy image the matrix marks
  ``retired`` (e.g. the deleted gcr.io/kubebuilder): that outcome is the expected one, so
  it is reported (🚫, JUnit ``skipped``) but does not fail the run.
* A security finding never changes the compatibility verdict; it fails the run only with
  ``strict=True``.
* Recommendations consider cells without a variant only: the commands they print change
  the image and nothing else.
"""

from e2e.report.junit import junit_properties, junit_xml, write_junit
from e2e.report.markdown import markdown_grid, markdown_report
from e2e.report.outputs import exit_code, failing_cells, step_summary, write_reports
from e2e.report.page import html_report, traffic_chart
from e2e.report.recommend import Recommendation, recommendations
from e2e.report.store import load_results, save_result, write_report_file

__all__ = [
    "Recommendation",
    "exit_code",
    "failing_cells",
    "html_report",
    "junit_properties",
    "junit_xml",
    "load_results",
    "markdown_grid",
    "markdown_report",
    "recommendations",
    "save_result",
    "step_summary",
    "traffic_chart",
    "write_junit",
    "write_report_file",
    "write_reports",
]
