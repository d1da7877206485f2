"""``mlflow server --app-name sweep``: MLflow's own server, opening on runs.

MLflow 3's UI keeps a browser-wide "GenAI | Model training" switch (localStorage
``mlflow.workflowType_v1``) that starts on GenAI, and while it does an experiment opens
on its traces overview ("Traces 0") whatever its ``mlflow.experimentKind`` tag says. A
sweep's experiment is model training, so this app serves MLflow's UI with one line added
to its page: a browser that has never chosen starts on "Model training" (the experiment
opens on its runs). A choice the user made is left alone. Everything else is MLflow's
server unchanged (MLflow's ``mlflow.app`` plugin hook; ``basic-auth`` is one too).
"""

from __future__ import annotations

from flask import request
from mlflow.server import app as flask_app
from mlflow.server.fastapi_app import create_fastapi_app

__all__ = ["app", "LANDING_SCRIPT"]

LANDING_SCRIPT = (b"<script>try{if(!localStorage.getItem('mlflow.workflowType_v1'))"
                  b"localStorage.setItem('mlflow.workflowType_v1','\"machine_learning\"')}"
                  b"catch(e){}</script>")


@flask_app.after_request
def _start_on_model_training(response):
    if request.path not in ("/", "/index.html") or response.mimetype != "text/html":
        return response
    response.direct_passthrough = False
    page = response.get_data()
    if b"<head>" in page and LANDING_SCRIPT not in page:
        response.set_data(page.replace(b"<head>", b"<head>" + LANDING_SCRIPT, 1))
    return response


app = create_fastapi_app(flask_app)
