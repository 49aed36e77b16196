"""The registered model's code ("models from code"): MLflow runs this file to build the pyfunc."""

import mlflow

from pipeline.serving.packaging import PipelineModel

mlflow.models.set_model(PipelineModel())
