# Runs only in the model-server venv, whose kserve/sklearn/joblib the harness's mypy cannot see.
# mypy: disable-error-code="import-not-found, import-untyped"
"""Train an sklearn iris classifier and serve it with the real KServe ModelServer.

Runs INSIDE the model-server venv (see ``model_server.ensure_model_server_env``), never in
the harness's environment: it imports ``kserve``, ``sklearn`` and ``joblib``, which the
harness does not install. Started by ``model_server.IrisModelServer``.

It mirrors what KServe's own sklearn e2e does on a cluster, without the network: the
cluster pulls a pre-trained ``model.joblib`` from gs://kfserving-examples; here the same
kind of model is trained from scikit-learn's bundled iris data (``load_iris`` reads a
file shipped in the wheel, no download), written to ``model.joblib`` and loaded back from
that file by a ``kserve.Model`` that does what KServe's sklearnserver does.

Every ``--model-name`` is registered once and so answers both protocols:
``POST /v1/models/<name>:predict`` and ``POST /v2/models/<name>/infer``.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path
from typing import Any

MODEL_FILE = "model.joblib"

#: KServe's e2e input; both rows are versicolor (class 1) in the iris data.
REFERENCE_ROWS = [[6.8, 2.8, 4.8, 1.4], [6.0, 3.4, 4.5, 1.6]]
REFERENCE_PREDICTIONS = [1, 1]

log = logging.getLogger("iris_model_server")


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model-dir", type=Path, required=True)
    parser.add_argument("--http-port", type=int, required=True)
    parser.add_argument("--grpc-port", type=int, required=True)
    parser.add_argument("--model-name", action="append", required=True, dest="model_names")
    return parser.parse_args(argv)


def train_and_save(model_dir: Path) -> Path:
    """Fit the classifier, check it on the reference rows, and write ``model.joblib``."""
    import joblib
    from sklearn import svm
    from sklearn.datasets import load_iris

    iris = load_iris()
    # SVC(gamma="scale") on the full iris set is the recipe of KServe's own sklearn docs
    # (kserve/website docs/modelserving/v1beta1/sklearn/v2/README.md), so the model is of
    # the kind the kind tier pulls from gs://. Fitting an SVC without probability=True
    # uses no randomness, so every run gets the same model, and it predicts [1, 1] for
    # the reference rows (checked below, and at every start-up).
    classifier = svm.SVC(gamma="scale")
    classifier.fit(iris.data, iris.target)
    predictions = classifier.predict(REFERENCE_ROWS).tolist()
    if predictions != REFERENCE_PREDICTIONS:
        # Fail at start-up, not in a test: a wrong model would make every client check lie.
        raise SystemExit(
            f"trained iris model predicts {predictions} for {REFERENCE_ROWS}, expected {REFERENCE_PREDICTIONS}"
        )
    model_dir.mkdir(parents=True, exist_ok=True)
    model_path = model_dir / MODEL_FILE
    joblib.dump(classifier, model_path)
    log.info("trained %s on load_iris(), saved to %s", type(classifier).__name__, model_path)
    return model_path


def serve(model_path: Path, model_names: list[str], http_port: int, grpc_port: int) -> None:
    import joblib
    import kserve
    from kserve.errors import InferenceError
    from kserve.utils.utils import get_predict_input, get_predict_response

    class SKLearnIrisModel(kserve.Model):  # type: ignore[misc]
        """What KServe's sklearnserver.SKLearnModel does, minus storage download and
        predict_proba: that package is not published on PyPI, the kserve one is."""

        def __init__(self, name: str, path: Path) -> None:
            super().__init__(name)
            self.path = path
            self.ready = False
            self._model: Any = None

        def load(self) -> bool:
            self._model = joblib.load(self.path)
            self.ready = True
            return self.ready

        def predict(self, payload: Any, headers: dict[str, str] | None = None) -> Any:
            try:
                instances = get_predict_input(payload)
                result = self._model.predict(instances)
                return get_predict_response(payload, result, self.name)
            except Exception as error:
                raise InferenceError(str(error)) from error

    models = []
    for name in model_names:
        model = SKLearnIrisModel(name, model_path)
        model.load()
        models.append(model)
    log.info("serving %s on 127.0.0.1:%d (v1 and v2 REST)", ", ".join(model_names), http_port)
    # gRPC is off: the harness only calls REST, and one listener less is one port clash less.
    kserve.ModelServer(http_port=http_port, grpc_port=grpc_port, enable_grpc=False).start(models)


def main(argv: list[str]) -> None:
    args = parse_args(argv)
    # kserve.model_server parses sys.argv with its own parser at import time; give it
    # nothing, so none of our options can be mistaken for one of its own.
    sys.argv = sys.argv[:1]
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    model_path = train_and_save(args.model_dir)
    serve(model_path, args.model_names, args.http_port, args.grpc_port)


if __name__ == "__main__":
    main(sys.argv[1:])
