"""Pictures of what a model does with an image (``visattn-visualize``): the maps its layers give through the
model-training contract's ``inspect`` hook (:mod:`visattn.contract`), drawn per generic kind, and Grad-CAM of any
timm classifier.

- :mod:`.api`: :func:`visualize` (open the model, prepare the image, collect the maps, write the PNGs and
  ``summary.json``);
- :mod:`.gradcam`: :func:`grad_cam` on the model's last map or on named layers;
- :mod:`.draw`: one drawing per kind, never per family.
"""

from .api import PICTURES, Visualization, input_spec, model_input, visualize
from .gradcam import GradCAM, grad_cam

__all__ = ["PICTURES", "GradCAM", "Visualization", "grad_cam", "input_spec", "model_input", "visualize"]
