"""What the tests share: paths, sample results, real servers and runners.

The one place for test helpers (``tests/`` mirrors ``e2e/``; pytest puts ``tests/`` on the
import path, see ``pythonpath`` in pyproject.toml):

- ``paths``: the repository and the tests' recorded data.
- ``cells``: a cell result as a run builds one.
- ``release_files``: release manifests through the harness's own resolver.
- ``real_cluster``, ``live_kserve``: a real control plane, KServe releases installed on it.
- ``registry_server``: a real container registry (Debian's docker-registry) and pushes to it.
- ``imageset_world``: the image set's stand-in world (binaries, engine, node image builder).
- ``scenario_runs``, ``kind_runs``: the harness run as a user runs it, in a subprocess.
"""
