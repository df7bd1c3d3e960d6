"""The paper's gated ResNet speaker-embedding network.

:class:`SEResNet` is a ResNet-18/34/50/101 (the paper: 50) over a
spectrogram image ``[B, C, F, T]``: spatial gates
(:mod:`dampit.lobes.gates`) on the outputs of conv2, conv3 and conv4,
PReLU in the last residual block, length-aware pooling
(:mod:`dampit.lobes.pooling`) and an embedding head
``Linear -> BatchNorm1d -> PReLU -> Dropout -> Linear``. Its
``forward(x, lengths=None)`` returns ``[B, 1, emb_dim]`` like SpeechBrain's
``ECAPA_TDNN``. The trunk has torchvision's parameter names, so an ImageNet
state dict loads with :func:`load_torchvision_weights` (the paper's
initialisation; torchvision itself is not needed).

Lengths are SpeechBrain's relative lengths: item ``b`` has
``round(lengths[b] * T)`` real frames. The count follows every strided
layer, the map is zeroed on padded frames before every convolution that
spans time (the 1x1 convolutions, eval-mode batch normalisation and the
gates work position by position) and the pooling sees only real frames:
a padded batch in eval mode gives the files' embeddings one by one.

Authors
 * dampit contributors 2025
"""

import collections
import logging

import torch
import torch.nn as nn

from dampit.lobes.gates import SpatialGate, is_eager
from dampit.lobes.pooling import (
    GlobalAvgPool,
    TemporalStatsPool,
    real_frames,
    time_mask,
)

logger = logging.getLogger(__name__)

__all__ = ["SEResNet", "LinearClassifier", "load_torchvision_weights"]

#: depth -> (bottleneck blocks?, blocks in conv2..conv5), as torchvision.
DEPTHS = {
    18: (False, (2, 2, 2, 2)),
    34: (False, (3, 4, 6, 3)),
    50: (True, (3, 4, 6, 3)),
    101: (True, (3, 4, 23, 3)),
}
#: The gates and poolings :class:`SEResNet` takes.
GATES = ("spatial", "none")
POOLINGS = ("avg", "stats")


def _conv(c_in, c_out, kernel, stride=1):
    """torchvision's convolution: padding ``kernel // 2``, no bias."""
    return nn.Conv2d(c_in, c_out, kernel, stride, kernel // 2, bias=False)


def _frames(n, kernel, stride):
    """Frames after a convolution or pooling with padding ``kernel // 2``."""
    return (n + 2 * (kernel // 2) - kernel) // stride + 1


def _masked(x, mask):
    return x if mask is None else x * mask


class Block(nn.Module):
    """torchvision's BasicBlock, or its Bottleneck (stride on the 3x3).

    Arguments
    ---------
    c_in : int
        Input channels.
    planes : int
        Inner channels; the output has ``planes`` (basic) or ``4 planes``.
    stride : int
        Stride of the block.
    bottleneck : bool
        Bottleneck (ResNet-50/101) or basic block (ResNet-18/34).
    prelu : bool
        One PReLU slope for the block's activations instead of ReLU.

    Example
    -------
    >>> Block(16, 4, 2, bottleneck=True)(torch.rand(2, 16, 6, 8)).shape
    torch.Size([2, 16, 3, 4])
    """

    def __init__(self, c_in, planes, stride, bottleneck, prelu=False):
        super().__init__()
        c_out = planes * (4 if bottleneck else 1)
        self.stride, self.bottleneck = stride, bottleneck
        if bottleneck:
            self.conv1 = _conv(c_in, planes, 1)
            self.conv2 = _conv(planes, planes, 3, stride)
            self.conv3 = _conv(planes, c_out, 1)
            self.bn3 = nn.BatchNorm2d(c_out)
        else:
            self.conv1 = _conv(c_in, planes, 3, stride)
            self.conv2 = _conv(planes, planes, 3)
        self.bn1, self.bn2 = nn.BatchNorm2d(planes), nn.BatchNorm2d(planes)
        self.relu = nn.PReLU() if prelu else nn.ReLU(inplace=True)
        self.downsample = None
        if stride != 1 or c_in != c_out:
            self.downsample = nn.Sequential(
                _conv(c_in, c_out, 1, stride), nn.BatchNorm2d(c_out)
            )

    def forward(self, x, mask_in=None, mask_out=None):
        """Apply the block; the time masks ``[B, 1, 1, T]`` are at the
        input and output resolutions (None: no padding)."""
        identity = x if self.downsample is None else self.downsample(x)
        if self.bottleneck:
            out = self.relu(self.bn1(self.conv1(x)))
            out = self.relu(self.bn2(self.conv2(_masked(out, mask_in))))
            out = self.bn3(self.conv3(out))
        else:
            out = self.relu(self.bn1(self.conv1(_masked(x, mask_in))))
            out = self.bn2(self.conv2(_masked(out, mask_out)))
        return self.relu(out + identity)


class SEResNet(nn.Module):
    """Gated ResNet speaker-embedding network (the paper's model).

    The defaults are the paper's: ResNet-50 on the spectrogram copied to 3
    channels, spatial gates with 16 hidden channels after conv2..conv4,
    ImageNet stem, global average pooling and a 2048-d embedding.

    Arguments
    ---------
    depth : int
        18, 34 (basic blocks), 50 or 101 (bottlenecks).
    base_width : int
        Channels of the stem; stage ``i`` has ``base_width * 2**i`` (times
        4 at a bottleneck's output). 64: the standard ResNet.
    in_channels : int
        Channels the stem expects (3 lets ImageNet weights load).
    gate : str
        ``"spatial"`` (paper) or ``"none"`` (the no-gates ablation).
    gate_hidden : int
        Hidden channels of the gates.
    pooling : str
        ``"avg"`` (paper) or ``"stats"`` (mean and std over time of every
        channel and frequency row; needs ``n_freq``).
    stem_kernel, stem_stride : int
        The stem convolution (ImageNet: 7 and 2; thin ResNets: 3).
    stem_pool : bool
        Whether the stem ends with a 3 x 3, stride 2 max pooling.
    n_freq : int, optional
        Frequency bins of the input features (for ``pooling="stats"``).
    emb_dim : int
        Embedding size.
    dropout : float
        Dropout of the embedding head (the code: 0.1).

    Example
    -------
    >>> model = SEResNet(depth=18, base_width=4, emb_dim=8).eval()
    >>> model(torch.rand(2, 40, 20)).shape  # SpeechBrain features [B, T, F]
    torch.Size([2, 1, 8])
    >>> model(torch.rand(2, 3, 20, 40), torch.tensor([1.0, 0.5])).shape
    torch.Size([2, 1, 8])
    """

    def __init__(
        self,
        depth=50,
        base_width=64,
        in_channels=3,
        gate="spatial",
        gate_hidden=16,
        pooling="avg",
        stem_kernel=7,
        stem_stride=2,
        stem_pool=True,
        n_freq=None,
        emb_dim=2048,
        dropout=0.1,
    ):
        super().__init__()
        checks = {  # name: (value, whether it is valid)
            "depth": (depth, depth in DEPTHS),
            "gate": (gate, gate in GATES),
            "pooling": (pooling, pooling in POOLINGS),
            "stem_kernel": (stem_kernel, stem_kernel > 0 and stem_kernel % 2),
            "stem_stride": (stem_stride, stem_stride > 0),
            "n_freq": (n_freq, pooling != "stats" or (n_freq or 0) > 0),
        }
        for name, (value, ok) in checks.items():
            if not ok:
                raise ValueError(
                    f"SEResNet: bad {name}={value!r} (depth 18, 34, "
                    "50 or 101; gate 'spatial' or 'none'; pooling 'avg' or "
                    "'stats', which needs n_freq; stem_kernel odd)"
                )
        bottleneck, blocks = DEPTHS[depth]
        self.depth, self.in_channels, self.emb_dim = depth, in_channels, emb_dim
        self.stem = (stem_kernel, stem_stride, bool(stem_pool))
        self.conv1 = _conv(in_channels, base_width, stem_kernel, stem_stride)
        self.bn1 = nn.BatchNorm2d(base_width)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, 2, 1) if stem_pool else nn.Identity()
        self.stage_channels, width = [], base_width
        for i, n_blocks in enumerate(blocks):
            layer = []
            for j in range(n_blocks):
                stride = 2 if i > 0 and j == 0 else 1
                last = i == 3 and j == n_blocks - 1
                planes = base_width * 2**i
                layer.append(Block(width, planes, stride, bottleneck, last))
                width = planes * (4 if bottleneck else 1)
            setattr(self, f"layer{i + 1}", nn.Sequential(*layer))
            self.stage_channels.append(width)
        for m in self.modules():  # torchvision's initialisation
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out")
        self.gates = nn.ModuleDict()
        if gate == "spatial":
            for stage in (2, 3, 4):
                channels = self.stage_channels[stage - 2]
                self.gates[f"conv{stage}"] = SpatialGate(channels, gate_hidden)
        self.out_channels = width
        if pooling == "avg":
            self.pool, pooled = GlobalAvgPool(), width
        else:
            f_out = self.out_freq(n_freq)
            self.pool, pooled = TemporalStatsPool(f_out), 2 * width * f_out
        self.head = nn.Sequential(
            collections.OrderedDict(
                fc1=nn.Linear(pooled, width, bias=False),
                bn=nn.BatchNorm1d(width),
                act=nn.PReLU(),
                drop=nn.Dropout(dropout),
                fc2=nn.Linear(width, emb_dim),
            )
        )

    def out_freq(self, n_freq):
        """Frequency rows of the conv5 map for ``n_freq`` input bins.

        Example
        -------
        >>> SEResNet(depth=18, base_width=4, emb_dim=8).out_freq(80)
        3
        """
        kernel, stride, pool = self.stem
        f = _frames(int(n_freq), kernel, stride)
        f = _frames(f, 3, 2) if pool else f
        for _ in range(3):  # conv3..conv5 halve it
            f = _frames(f, 3, 2)
        return f

    def arrange(self, x):
        """SpeechBrain features ``[B, T, F]`` or an image ``[B, C, F, T]``
        with ``C`` 1 or ``in_channels`` -> ``[B, in_channels, F, T]``."""
        if x.dim() == 3:
            x = x.transpose(1, 2).unsqueeze(1)
        if x.dim() != 4 or x.shape[1] not in (1, self.in_channels):
            raise ValueError(
                "SEResNet: x must be features [B, T, F] or an image "
                f"[B, 1 or {self.in_channels} channels, F, T], got shape "
                f"{tuple(x.shape)}"
            )
        return x.expand(-1, self.in_channels, -1, -1)

    def frames_from_lengths(self, lengths, x):
        """Real frames ``round(lengths * T)`` of each item of ``x``
        ``[B, C, F, T]`` (None when every frame is real).

        Example
        -------
        >>> model = SEResNet(depth=18, base_width=4, emb_dim=8)
        >>> x = torch.zeros(3, 3, 20, 10)
        >>> model.frames_from_lengths(torch.tensor([1.0, 0.5, 0.01]), x)
        tensor([10,  5,  1])
        """
        if lengths is None:
            return None
        lengths = torch.as_tensor(lengths, device=x.device)
        if lengths.shape != x.shape[:1]:
            raise ValueError(
                f"SEResNet: lengths must have shape [{x.shape[0]}], got "
                f"{tuple(lengths.shape)}"
            )
        t = x.shape[-1]
        if is_eager(x) and bool(((lengths <= 0) | (lengths > 1.0001)).any()):
            raise ValueError(
                "SEResNet: lengths are relative lengths in (0, 1] "
                f"(SpeechBrain convention), got {lengths.tolist()}"
            )
        n = real_frames(lengths, t)
        return None if is_eager(x) and bool((n == t).all()) else n

    def trunk(self, x, lengths=None):
        """The stem, the stages and the gates.

        Returns the conv5 map ``[B, out_channels, F', T']`` and the real
        frames of each item at ``T'`` (None when all are real).

        Example
        -------
        >>> model = SEResNet(depth=18, base_width=4, emb_dim=8).eval()
        >>> feats, n = model.trunk(torch.rand(2, 3, 32, 64), torch.ones(2))
        >>> feats.shape, n
        (torch.Size([2, 32, 1, 2]), None)
        """
        x = self.arrange(x)
        n = self.frames_from_lengths(lengths, x)

        def mask(frames, size):
            return None if frames is None else time_mask(frames, size, x.dtype)

        x = _masked(x, mask(n, x.shape[-1]))
        x = self.relu(self.bn1(self.conv1(x)))
        if n is not None:
            n = _frames(n, self.stem[0], self.stem[1])
            x = x * mask(n, x.shape[-1])
            n = _frames(n, 3, 2) if self.stem[2] else n
        x = self.maxpool(x)
        m = mask(n, x.shape[-1])
        for stage in range(2, 6):
            for block in getattr(self, f"layer{stage - 1}"):
                if block.stride != 1 and n is not None:
                    n = _frames(n, 3, block.stride)
                    m_out = mask(n, _frames(x.shape[-1], 3, block.stride))
                else:
                    m_out = m
                x, m = block(x, m, m_out), m_out
            if f"conv{stage}" in self.gates:
                # the trunk owns x: at inference the gate may overwrite it
                x = self.gates[f"conv{stage}"](x, inplace=True)
        return x, n

    def forward(self, x, lengths=None):
        """Embeddings ``[B, 1, emb_dim]`` of features ``[B, T, F]`` (or an
        image ``[B, C, F, T]``) with relative ``lengths`` ``[B]``."""
        feats, n = self.trunk(x, lengths)
        return self.head(self.pool(feats, n)).unsqueeze(1)


class LinearClassifier(nn.Module):
    """Linear speaker classifier of the softmax term (raw logits).

    ``[B, 1, D] -> [B, 1, n_classes]`` (like ``ECAPA_TDNN.Classifier``) or
    ``[B, D] -> [B, n_classes]``.

    Example
    -------
    >>> LinearClassifier(8, 5)(torch.rand(3, 1, 8)).shape
    torch.Size([3, 1, 5])
    """

    def __init__(self, input_size, n_classes):
        super().__init__()
        self.out = nn.Linear(input_size, n_classes)

    def forward(self, x):
        """Logits of embeddings ``x``."""
        return self.out(x)


def load_torchvision_weights(model, path):
    """Fill a :class:`SEResNet` trunk from a torchvision ResNet state dict.

    The file (e.g. torchvision's ImageNet ``resnet50-*.pth``) is read with
    ``torch.load(weights_only=True)``; nothing is downloaded. ``fc.*`` is
    ignored; the gates, the PReLU slope and the head keep their
    initialisation. A 1-channel model gets ``conv1``'s kernel summed over
    RGB: the response of the 3-channel network to the spectrogram copied
    three times (the paper's input).

    Arguments
    ---------
    model : SEResNet
        The model, filled in place.
    path : str or os.PathLike
        The state dict file.

    Returns
    -------
    list of str
        The model keys that were loaded.

    Raises
    ------
    ValueError
        When the file is not a state dict or a trunk tensor is missing,
        unexpected or of another shape (wrong depth or width): nothing is
        loaded then.

    Example
    -------
    >>> import os, tempfile
    >>> src = SEResNet(depth=18, base_width=4, emb_dim=8, gate="none")
    >>> path = os.path.join(tempfile.mkdtemp(), "resnet18.pth")
    >>> torch.save({k: v for k, v in src.state_dict().items()
    ...             if k.startswith(("conv1", "bn1", "layer"))
    ...             and "relu" not in k}, path)
    >>> model = SEResNet(depth=18, base_width=4, emb_dim=8, in_channels=1)
    >>> len(load_torchvision_weights(model, path))
    120
    """
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise
    except Exception as e:  # torch raises many types on bad files
        raise ValueError(f"{path}: not a PyTorch state dict ({e})") from e
    if not isinstance(state, dict):
        raise ValueError(f"{path}: not a state dict ({type(state).__name__})")
    state = {k: v for k, v in state.items() if not k.startswith("fc.")}
    w = state.get("conv1.weight")
    if model.in_channels == 1 and w is not None and w.dim() == 4:
        state["conv1.weight"] = w.sum(dim=1, keepdim=True)
    own = model.state_dict()
    trunk = {k for k in own if k.startswith(("conv1.", "bn1.", "layer"))}
    trunk -= {k for k in trunk if k.endswith(".relu.weight")}  # PReLU
    problems = []
    for key, value in state.items():
        if key not in trunk:
            problems.append(f"unexpected {key}")
        elif getattr(value, "shape", None) != own[key].shape:
            shape = tuple(getattr(value, "shape", ()))
            problems.append(f"{key}: file {shape}, model {own[key].shape}")
    problems += [f"missing {k}" for k in sorted(trunk - set(state))]
    if problems:
        raise ValueError(
            f"{path} does not fit this SEResNet ({len(problems)} problems, "
            f"nothing loaded): " + "; ".join(problems[:5])
        )
    model.load_state_dict(state, strict=False)
    logger.info("%s: %d trunk tensors loaded", path, len(state))
    return sorted(state)
