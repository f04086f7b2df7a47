"""The CPU inference engine: exported bundles scored with onnxruntime + numpy (no torch, lightning, ray, mlflow)."""
