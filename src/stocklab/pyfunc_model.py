"""The entry script of every logged stocklab model (MLflow "models from code"): MLflow runs it
when the model is loaded, with the model's own copy of this package first on sys.path. Never
imported by the package itself."""

import mlflow

from stocklab.serving import RawBarModel, read_any_columns_of_csv_as_text

read_any_columns_of_csv_as_text()
mlflow.models.set_model(RawBarModel())
