"""The paper's spatial attention gate (its "SE block", Figure 3, Eq. 6-7).

``F_o = F * M + F`` with ``M = sigmoid(Conv1x1(ReLU(Conv1x1(F))))`` at every
position: no pooling, so the mask keeps the frequency x time layout. As in
the original code: 16 hidden channels, weights drawn from N(0, 0.001),
zero biases (the code uses PReLU where the paper's text says ReLU).

Speed (measured at ResNet-50's conv2 map, batch 16 x [256, 41, 75], one
CPU thread): on CPU the gate runs a few items at a time so that its
full-size intermediates stay in cache (training step 0.23 s against 0.42 s
for the whole batch at once), and at inference, without autograd, it
overwrites the trunk's map in place (0.05 s against 0.20 s for a copy).
Tracing, compiling and export see plain operations.

Authors
 * dampit contributors 2025
"""

import torch
import torch.nn as nn

__all__ = ["SpatialGate", "is_eager"]

#: Largest chunk (elements) the gate processes at once on CPU (4 MB).
CPU_CHUNK_ELEMENTS = 2**20


def is_eager(x):
    """True outside tracing, compiling and export (Python may branch on data).

    Example
    -------
    >>> is_eager(torch.zeros(2))
    True
    """
    if not isinstance(x.shape[0], int):  # symbolic shapes (export)
        return False
    return not (torch.jit.is_tracing() or torch.compiler.is_compiling())


class SpatialGate(nn.Module):
    """Per-position gate ``x * M + x``, ``M = sigmoid(conv2(relu(conv1(x))))``.

    Arguments
    ---------
    channels : int
        Channels ``C`` of the feature map.
    hidden : int
        Channels of the squeeze convolution (16 in the original code).

    Example
    -------
    >>> gate = SpatialGate(8, hidden=4)
    >>> gate(torch.rand(2, 8, 5, 7)).shape
    torch.Size([2, 8, 5, 7])
    """

    def __init__(self, channels, hidden=16):
        super().__init__()
        if channels < 1 or hidden < 1:
            raise ValueError(
                f"SpatialGate: channels ({channels}) and hidden ({hidden}) "
                "must be positive"
            )
        self.channels, self.hidden = channels, hidden
        self.conv1 = nn.Conv2d(channels, hidden, kernel_size=1)
        self.act = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(hidden, channels, kernel_size=1)
        for conv in (self.conv1, self.conv2):
            nn.init.normal_(conv.weight, mean=0.0, std=1e-3)
            nn.init.zeros_(conv.bias)

    def attention(self, x):
        """The mask ``M`` in (0, 1), same shape as ``x`` ``[B, C, F, T]``."""
        return torch.sigmoid(self.conv2(self.act(self.conv1(x))))

    def forward(self, x, inplace=False):
        """Return ``x * M + x``; written over ``x`` when ``inplace`` is
        allowed (the caller owns ``x``) and no gradient is recorded."""
        step = x.shape[0]
        if x.device.type == "cpu" and is_eager(x):
            per_item = max(1, x.numel() // max(1, x.shape[0]))
            step = max(1, CPU_CHUNK_ELEMENTS // per_item)
        if inplace and not torch.is_grad_enabled() and is_eager(x):
            for xi in torch.split(x, step):
                xi.addcmul_(xi, self.attention(xi))
            return x
        if step >= x.shape[0]:
            return torch.addcmul(x, x, self.attention(x))
        parts = [torch.addcmul(c, c, self.attention(c)) for c in x.split(step)]
        return torch.cat(parts)
