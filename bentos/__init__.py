"""BentoML serving for the compressed classifier: `bentoml serve bentos.service:TextClassifier`."""
