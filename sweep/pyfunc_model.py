"""The code of a registered model, for MLflow's "models from code": MLflow runs this file (copied into the logged
model) to build its pyfunc model at load time, so the model holds no pickled object, and loading it needs this
project and MLflow only. Never imported by the project itself (``sweep.registry`` names its path)."""
from sweep.generate import load_sampler
from sweep.tracking import serve_images

serve_images(load_sampler)
