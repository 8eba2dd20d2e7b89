"""Root conftest: loads the harness's pytest plugins explicitly.

``e2e.plugin`` holds the options, the parametrization of ``scenarios/`` from their
``Scenario`` definitions and the cell outcomes. pytest-kind's plugin is imported before
any conftest; importing ``e2e.cluster.kind`` here re-pins its kind/kubectl versions.
"""

import e2e.cluster.kind  # noqa: F401 - pins pytest-kind's kind/kubectl versions at import

pytest_plugins = ["e2e.plugin"]
