"""stocklab: leak-free deep-learning stock-return research as an MLflow Project."""

__version__ = "0.1.0"
