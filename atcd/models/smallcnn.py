"""The paper's MNIST small CNN: 4 conv (32, 32, 64, 64) + FC (200, 200, C), as in Madry/TRADES."""
import torch
from timm.models import build_model_with_cfg, generate_default_cfgs, register_model
from torch import nn

__all__ = ["SmallCNN"]


class SmallCNN(nn.Module):
    """Small CNN used for MNIST by the paper (and by TRADES / Madry et al.)."""

    def __init__(self, num_classes: int = 10, in_chans: int = 1, img_size: int = 28, drop_rate: float = 0.0, **kwargs):
        super().__init__()
        self.num_classes = num_classes
        self.drop_rate = drop_rate
        self.features = nn.Sequential(
            nn.Conv2d(in_chans, 32, 3), nn.ReLU(inplace=True),
            nn.Conv2d(32, 32, 3), nn.ReLU(inplace=True),
            nn.MaxPool2d(2),
            nn.Conv2d(32, 64, 3), nn.ReLU(inplace=True),
            nn.Conv2d(64, 64, 3), nn.ReLU(inplace=True),
            nn.MaxPool2d(2),
        )
        feat = ((img_size - 4) // 2 - 4) // 2
        self.num_features = 64 * feat * feat
        self.fc = nn.Sequential(
            nn.Linear(self.num_features, 200), nn.ReLU(inplace=True), nn.Dropout(drop_rate),
            nn.Linear(200, 200), nn.ReLU(inplace=True),
        )
        self.head = nn.Linear(200, num_classes) if num_classes > 0 else nn.Identity()

    def get_classifier(self) -> nn.Module:
        return self.head

    def reset_classifier(self, num_classes: int, global_pool=None):
        self.num_classes = num_classes
        self.head = nn.Linear(200, num_classes) if num_classes > 0 else nn.Identity()

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.features(x)

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        x = self.fc(torch.flatten(x, 1))
        return x if pre_logits else self.head(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))


default_cfgs = generate_default_cfgs({
    "smallcnn_mnist.untrained": {
        "url": "", "num_classes": 10, "input_size": (1, 28, 28), "pool_size": None,
        "crop_pct": 1.0, "interpolation": "bilinear", "mean": (0.0,), "std": (1.0,),
        "first_conv": "features.0", "classifier": "head", "license": "apache-2.0",
    },
})


@register_model
def smallcnn_mnist(pretrained: bool = False, **kwargs) -> SmallCNN:
    """Paper's MNIST small CNN (ATCD Sec. 6; Madry et al. 2018 architecture)."""
    kwargs.setdefault("in_chans", 1)
    return build_model_with_cfg(SmallCNN, "smallcnn_mnist", pretrained, **kwargs)
