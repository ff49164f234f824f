"""Small residual CNN for waste classification, sized for 2-core edge CPUs."""
import torch
import torch.nn as nn


def conv_bn(cin, cout, stride=1, groups=1, k=3):
    return nn.Sequential(
        nn.Conv2d(cin, cout, k, stride, k // 2, groups=groups, bias=False),
        nn.BatchNorm2d(cout),
        nn.ReLU(inplace=True),
    )


class BasicBlock(nn.Module):
    def __init__(self, cin, cout, stride):
        super().__init__()
        self.conv1 = conv_bn(cin, cout, stride)
        self.conv2 = nn.Sequential(nn.Conv2d(cout, cout, 3, 1, 1, bias=False), nn.BatchNorm2d(cout))
        self.shortcut = nn.Identity()
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(
                nn.AvgPool2d(stride, ceil_mode=True, count_include_pad=False) if stride != 1 else nn.Identity(),
                nn.Conv2d(cin, cout, 1, bias=False),
                nn.BatchNorm2d(cout),
            )
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x):
        return self.relu(self.conv2(self.conv1(x)) + self.shortcut(x))


class WasteNet(nn.Module):
    """Stem downsamples 4x cheaply, then four residual stages; global pooling makes it size-agnostic."""

    def __init__(self, num_classes, widths=(32, 64, 128, 256), blocks=(1, 2, 2, 1), dropout=0.2):
        super().__init__()
        self.stem = nn.Sequential(conv_bn(3, 24, 2), conv_bn(24, widths[0], 2))
        layers, cin = [], widths[0]
        for i, (w, n) in enumerate(zip(widths, blocks)):
            for j in range(n):
                layers.append(BasicBlock(cin, w, 2 if (j == 0 and i > 0) else 1))
                cin = w
        self.stages = nn.Sequential(*layers)
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Dropout(dropout), nn.Linear(cin, num_classes))

    def forward(self, x):
        return self.head(self.stages(self.stem(x)))


def load_checkpoint(path, classes):
    """A file train.py wrote, refused if it names other classes: its output rows would quietly mean
    other materials. last.pt records its classes; a --resume state does not (nor any class list), so
    it is taken as it is."""
    checkpoint = torch.load(path)
    if checkpoint.get("classes", classes) != classes:
        raise SystemExit(f"{path} was trained on classes {checkpoint['classes']}, these are {classes}")
    return checkpoint
