"""The MLflow ``pyfunc`` model of a sweep's adapter, logged as code (MLflow's "models
from code"): nothing is pickled. Its artifacts are the adapter (safetensors + JSON); the
base model is referenced by its config and the SHA-256 of its weights, checked on load
(:mod:`sweep.shipping.registry`). ``predict`` takes a list of questions and returns the
greedy answers, each asked as a one-turn chat with the model's chat template.

    model = mlflow.pyfunc.load_model("models:/sweep-<study>@best")
    model.predict(["What does Article 21 protect?"])

``model_config={"max_tokens": 64}`` at ``load_model`` changes the answer length.
This file is imported by MLflow on load, so it must stay importable on its own.
"""

from typing import Any, Dict, List, Optional

import mlflow
from mlflow.pyfunc import PythonModel


class AdapterModel(PythonModel):
    def load_context(self, context) -> None:
        from sweep import runtime

        runtime.setup()  # MLflow loads this outside sweep's commands: before mlx is imported
        from sweep.shipping.registry import Served

        self._served = Served.load(context.artifacts["adapter"], context.model_config)

    def predict(self, context, model_input: List[str],
                params: Optional[Dict[str, Any]] = None) -> List[str]:
        return self._served.answer(list(model_input))


mlflow.models.set_model(AdapterModel())
