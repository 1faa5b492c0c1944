"""Paper architectures registered with timm, and the [0,1] -> normalised input wrapper."""
from .smallcnn import SmallCNN  # noqa: F401  (import registers `smallcnn_mnist`)
from .wrapper import NormalizedModel, build_model, unwrap_timm  # noqa: F401
