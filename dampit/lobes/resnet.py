"""The paper's gated ResNet speaker-embedding network.

:class:`SEResNet` is a ResNet (depth 18, 34, 50, 101 or 152; the paper uses
ResNet-50) over a spectrogram "image" ``[B, C, F, T]`` with:

- attention gates (:mod:`dampit.lobes.gates`) on the outputs of the stages
  named in ``gate_stages`` (the paper's conv2, conv3 and conv4, i.e.
  torchvision's ``layer1``..``layer3``);
- PReLU in the last residual block (``last_activation="prelu"``);
- length-aware global pooling (:mod:`dampit.lobes.pooling`);
- an embedding head ``Linear -> BatchNorm1d -> PReLU -> Dropout -> Linear``.

Its ``forward(x, lengths=None)`` returns ``[B, 1, emb_dim]`` like
SpeechBrain's ``ECAPA_TDNN``, so SpeechBrain's recipes and inference
classes (``EncoderClassifier``'s ``embedding_model``) use it unchanged.

The trunk uses torchvision's parameter names (``conv1``, ``bn1``,
``layer1.0.conv1``, ``layer1.0.downsample.0`` ...), so an ImageNet ResNet
state dict saved by torchvision loads by key with
:func:`load_torchvision_weights`; torchvision itself is not needed.

Lengths and padding
-------------------
``lengths`` are SpeechBrain's relative lengths (1.0 = the longest item of
the batch). Item ``b`` has ``round(lengths[b] * T)`` real frames; that
count is carried through every strided layer with the layer's own output
size formula, the feature map is zeroed on the padded frames before every
convolution that spans time (3x3 and 7x7; 1x1 convolutions, batch
normalisation in eval mode, activations and the spatial gate work position
by position) and the pooling only sees the real frames. A padded batch in
eval mode therefore gives the embeddings of the files one by one (up to
float rounding). In training mode batch normalisation statistics include
the padded frames, as in every SpeechBrain model.

Authors
 * dampit contributors 2025
"""

import dataclasses
import logging
import os

import torch
import torch.nn as nn

from dampit.lobes.gates import make_activation, make_gate
from dampit.lobes.pooling import (
    FreqMeanAttentiveStatsPool,
    GlobalAvgPool,
    GlobalMaxPool,
    TemporalStatsPool,
    time_mask,
)

logger = logging.getLogger(__name__)

__all__ = [
    "BasicBlock",
    "Bottleneck",
    "EmbeddingHead",
    "SEResNet",
    "LinearClassifier",
    "LoadReport",
    "load_torchvision_weights",
    "DEPTHS",
]

#: depth -> (block type, blocks per stage conv2..conv5), as in torchvision.
DEPTHS = {
    18: ("basic", (2, 2, 2, 2)),
    34: ("basic", (3, 4, 6, 3)),
    50: ("bottleneck", (3, 4, 6, 3)),
    101: ("bottleneck", (3, 4, 23, 3)),
    152: ("bottleneck", (3, 8, 36, 3)),
}


def _conv3x3(in_planes, out_planes, stride=1):
    """3x3 convolution with padding 1 and no bias (torchvision's)."""
    return nn.Conv2d(
        in_planes, out_planes, 3, stride=stride, padding=1, bias=False
    )


def _conv1x1(in_planes, out_planes, stride=1):
    """1x1 convolution with no bias (torchvision's)."""
    return nn.Conv2d(in_planes, out_planes, 1, stride=stride, bias=False)


def _out_frames(n, kernel, stride, padding):
    """Output length of a convolution or pooling over ``n`` frames."""
    return (
        torch.div(n + 2 * padding - kernel, stride, rounding_mode="floor") + 1
    )


def _out_size(t, kernel, stride, padding):
    """Output length (python int) of a convolution over ``t`` frames."""
    return (t + 2 * padding - kernel) // stride + 1


def _is_tracing():
    """True while tracing, scripting or compiling (no data-dependent ifs)."""
    if torch.jit.is_tracing() or torch.jit.is_scripting():
        return True
    compiler = getattr(torch, "compiler", None)
    is_compiling = getattr(compiler, "is_compiling", None)
    return bool(is_compiling and is_compiling())


class BasicBlock(nn.Module):
    """torchvision's two-convolution residual block (ResNet-18/34).

    Arguments
    ---------
    inplanes : int
        Input channels.
    planes : int
        Output channels.
    stride : int
        Stride of the first 3x3 convolution.
    downsample : torch.nn.Module, optional
        Projection of the shortcut when the shape changes.
    activation : str
        ``"relu"`` or ``"prelu"`` (one slope shared by the block's
        activations, as when torchvision's ``relu`` module is replaced).

    Example
    -------
    >>> block = BasicBlock(4, 4)
    >>> block(torch.rand(2, 4, 6, 8)).shape
    torch.Size([2, 4, 6, 8])
    """

    expansion = 1

    def __init__(
        self, inplanes, planes, stride=1, downsample=None, activation="relu"
    ):
        super().__init__()
        self.stride = stride
        self.conv1 = _conv3x3(inplanes, planes, stride)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu = make_activation(activation)
        self.conv2 = _conv3x3(planes, planes)
        self.bn2 = nn.BatchNorm2d(planes)
        self.downsample = downsample

    def forward(self, x, mask_in=None, mask_out=None):
        """Apply the block.

        Arguments
        ---------
        x : torch.Tensor
            ``[B, C, F, T]``.
        mask_in : torch.Tensor, optional
            Time mask ``[B, 1, 1, T]`` at the input resolution.
        mask_out : torch.Tensor, optional
            Time mask at the output resolution.

        Returns
        -------
        torch.Tensor
            ``[B, planes, F', T']``.
        """
        identity = x
        if mask_in is not None:
            x = x * mask_in
        out = self.relu(self.bn1(self.conv1(x)))
        if mask_out is not None:
            out = out * mask_out
        out = self.bn2(self.conv2(out))
        if self.downsample is not None:
            identity = self.downsample(identity)
        return self.relu(out + identity)


class Bottleneck(nn.Module):
    """torchvision's bottleneck block (ResNet-50/101/152, stride on 3x3).

    Arguments
    ---------
    inplanes : int
        Input channels.
    planes : int
        Inner channels; the block outputs ``4 * planes``.
    stride : int
        Stride of the 3x3 convolution.
    downsample : torch.nn.Module, optional
        Projection of the shortcut when the shape changes.
    activation : str
        ``"relu"`` or ``"prelu"`` (one slope shared by the block's three
        activations, as when torchvision's ``relu`` module is replaced).

    Example
    -------
    >>> block = Bottleneck(16, 4)
    >>> block(torch.rand(2, 16, 6, 8)).shape
    torch.Size([2, 16, 6, 8])
    """

    expansion = 4

    def __init__(
        self, inplanes, planes, stride=1, downsample=None, activation="relu"
    ):
        super().__init__()
        self.stride = stride
        self.conv1 = _conv1x1(inplanes, planes)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = _conv3x3(planes, planes, stride)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = _conv1x1(planes, planes * self.expansion)
        self.bn3 = nn.BatchNorm2d(planes * self.expansion)
        self.relu = make_activation(activation)
        self.downsample = downsample

    def forward(self, x, mask_in=None, mask_out=None):
        """Apply the block.

        Arguments
        ---------
        x : torch.Tensor
            ``[B, C, F, T]``.
        mask_in : torch.Tensor, optional
            Time mask ``[B, 1, 1, T]`` at the input resolution.
        mask_out : torch.Tensor, optional
            Unused (only 1x1 convolutions follow the strided one).

        Returns
        -------
        torch.Tensor
            ``[B, 4 planes, F', T']``.
        """
        identity = x
        out = self.relu(self.bn1(self.conv1(x)))
        if mask_in is not None:
            out = out * mask_in
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        if self.downsample is not None:
            identity = self.downsample(identity)
        return self.relu(out + identity)


class EmbeddingHead(nn.Module):
    """``Linear(no bias) -> BatchNorm1d -> PReLU -> Dropout -> Linear``.

    Arguments
    ---------
    input_size : int
        Size of the pooled feature.
    hidden_size : int
        Size of the first linear layer (2048 in the paper).
    emb_dim : int
        Embedding size (2048 in the paper).
    dropout : float
        Dropout rate before the last linear layer (0.1 in the code).

    Example
    -------
    >>> head = EmbeddingHead(8, 6, 4).eval()
    >>> head(torch.rand(3, 8)).shape
    torch.Size([3, 4])
    """

    def __init__(self, input_size, hidden_size, emb_dim, dropout=0.1):
        super().__init__()
        self.fc1 = nn.Linear(input_size, hidden_size, bias=False)
        self.bn = nn.BatchNorm1d(hidden_size)
        self.act = nn.PReLU()
        self.drop = nn.Dropout(dropout)
        self.fc2 = nn.Linear(hidden_size, emb_dim)

    def forward(self, x):
        """Map pooled features ``[B, input_size]`` to ``[B, emb_dim]``.

        Arguments
        ---------
        x : torch.Tensor
            ``[B, input_size]``.

        Returns
        -------
        torch.Tensor
            ``[B, emb_dim]``.
        """
        return self.fc2(self.drop(self.act(self.bn(self.fc1(x)))))


class SEResNet(nn.Module):
    """Gated ResNet speaker-embedding network (the paper's model).

    The defaults are the paper's configuration: ResNet-50 on a
    spectrogram copied to 3 channels, spatial gates after conv2, conv3 and
    conv4 with 16 hidden channels and ReLU (the original code uses PReLU:
    ``gate_activation="prelu"``), PReLU in the last block, global average
    pooling and a 2048-d embedding.

    Arguments
    ---------
    depth : int
        18, 34 (basic blocks), 50, 101 or 152 (bottleneck blocks).
    base_width : int
        Channels of the stem and of the first stage; stage ``i`` has
        ``base_width * 2**i`` (times 4 at a bottleneck's output).
        64 is the standard ResNet; 16 gives a thin model that trains on CPU.
    in_channels : int
        Channels the stem expects: 3 (the paper copies the spectrogram
        three times, which lets ImageNet weights load unchanged) or 1.
    gate : str
        ``"spatial"`` (the paper's gate, no pooling), ``"se"`` (classic
        squeeze-and-excitation) or ``"none"`` (ablation).
    gate_stages : tuple of int
        Stages whose *output* is gated, numbered as in the paper
        (conv2..conv5 = torchvision's layer1..layer4). Paper: (2, 3, 4).
    gate_hidden : int
        Hidden channels of the spatial gate (16 in the original code).
    se_reduction : int
        Squeeze ratio of the SE gate.
    last_activation : str
        Activation of the last residual block: ``"prelu"`` (paper) or
        ``"relu"`` (plain ResNet).
    pooling : str
        ``"avg"`` (paper: global average), ``"max"`` (an earlier upload of
        the code) or ``"asp"`` (frequency mean, then SpeechBrain's
        attentive statistics pooling over time: twice the channels) or
        ``"stats"`` (mean and standard deviation over time of every
        channel and frequency row: ``2 C F'`` values; needs ``n_freq``).
    emb_dim : int
        Embedding size (paper: 2048).
    dropout : float
        Dropout of the embedding head (code: 0.1).
    head_hidden : int, optional
        Size of the head's first linear layer; default: the trunk's output
        channels (2048 for ResNet-50, as in the code).
    gate_activation : str
        Activation inside the gates: ``"relu"`` (paper text) or
        ``"prelu"`` (original code).
    gate_init_std : float or None
        Normal initialisation of the gates' weights (code: 0.001); ``None``
        keeps PyTorch's default.
    asp_attention_channels : int
        Attention size of ``pooling="asp"``.
    last_stride : int
        Stride of conv5 (2 standard; 1 in an earlier upload of the code).
    stem_kernel, stem_stride : int
        Kernel and stride of the stem convolution (ImageNet ResNet: 7 and
        2). Thin speaker ResNets keep more resolution with 3 and 1.
    stem_pool : bool
        Whether the stem ends with the 3 x 3, stride 2 max pooling
        (ImageNet ResNet: yes).
    n_freq : int, optional
        Frequency bins of the input features. Needed by
        ``pooling="stats"``, whose size depends on them.

    Example
    -------
    >>> model = SEResNet(depth=18, base_width=4, emb_dim=8).eval()
    >>> feats = torch.rand(2, 40, 20)  # SpeechBrain features [B, T, F]
    >>> model(feats).shape
    torch.Size([2, 1, 8])
    >>> model(torch.rand(2, 3, 20, 40), torch.tensor([1.0, 0.5])).shape
    torch.Size([2, 1, 8])
    >>> sorted(model.gates)
    ['conv2', 'conv3', 'conv4']
    """

    def __init__(
        self,
        depth=50,
        base_width=64,
        in_channels=3,
        gate="spatial",
        gate_stages=(2, 3, 4),
        gate_hidden=16,
        se_reduction=16,
        last_activation="prelu",
        pooling="avg",
        emb_dim=2048,
        dropout=0.1,
        head_hidden=None,
        gate_activation="relu",
        gate_init_std=1e-3,
        asp_attention_channels=128,
        last_stride=2,
        stem_kernel=7,
        stem_stride=2,
        stem_pool=True,
        n_freq=None,
    ):
        super().__init__()
        if depth not in DEPTHS:
            raise ValueError(
                f"SEResNet: depth must be one of {sorted(DEPTHS)}, got {depth}"
            )
        if base_width < 1 or in_channels < 1 or emb_dim < 1:
            raise ValueError(
                "SEResNet: base_width, in_channels and emb_dim must be "
                f"positive, got {base_width}, {in_channels}, {emb_dim}"
            )
        gate_stages = tuple(gate_stages)
        if any(s not in (2, 3, 4, 5) for s in gate_stages):
            raise ValueError(
                "SEResNet: gate_stages are the paper's stage numbers 2..5 "
                f"(conv2..conv5), got {gate_stages}"
            )
        if last_activation not in ("relu", "prelu"):
            raise ValueError(
                "SEResNet: last_activation must be 'relu' or 'prelu', got "
                f"{last_activation!r}"
            )
        kind, blocks = DEPTHS[depth]
        block_cls = BasicBlock if kind == "basic" else Bottleneck
        self.depth = depth
        self.base_width = base_width
        self.in_channels = in_channels
        self.emb_dim = emb_dim

        # Stem (torchvision names).
        if stem_kernel < 1 or stem_kernel % 2 == 0 or stem_stride < 1:
            raise ValueError(
                "SEResNet: stem_kernel must be odd and positive and "
                f"stem_stride positive, got {stem_kernel}, {stem_stride}"
            )
        self.stem = (int(stem_kernel), int(stem_stride), bool(stem_pool))
        self.conv1 = nn.Conv2d(
            in_channels,
            base_width,
            stem_kernel,
            stride=stem_stride,
            padding=stem_kernel // 2,
            bias=False,
        )
        self.bn1 = nn.BatchNorm2d(base_width)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = (
            nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
            if stem_pool
            else nn.Identity()
        )

        # Stages conv2..conv5 = layer1..layer4.
        self._inplanes = base_width
        strides = (1, 2, 2, last_stride)
        self.stage_channels = []
        for i, (n_blocks, stride) in enumerate(zip(blocks, strides)):
            last_act = last_activation if i == 3 else "relu"
            layer = self._make_layer(
                block_cls, base_width * 2**i, n_blocks, stride, last_act
            )
            setattr(self, f"layer{i + 1}", layer)
            self.stage_channels.append(self._inplanes)
        self.out_channels = self._inplanes
        del self._inplanes
        self._init_trunk()

        # Gates on the outputs of the chosen stages.
        self.gate_kind = gate
        self.gates = nn.ModuleDict()
        for stage in sorted(set(gate_stages)):
            g = make_gate(
                gate,
                self.stage_channels[stage - 2],
                hidden=gate_hidden,
                reduction=se_reduction,
                activation=gate_activation,
                init_std=gate_init_std,
            )
            if g is not None:
                self.gates[f"conv{stage}"] = g

        # Pooling and embedding head.
        if pooling == "avg":
            self.pool = GlobalAvgPool()
        elif pooling == "max":
            self.pool = GlobalMaxPool()
        elif pooling == "asp":
            self.pool = FreqMeanAttentiveStatsPool(
                self.out_channels, attention_channels=asp_attention_channels
            )
        elif pooling == "stats":
            if n_freq is None:
                raise ValueError(
                    "SEResNet: pooling='stats' needs n_freq, the number of "
                    "frequency bins of the input features"
                )
            self.pool = TemporalStatsPool(self.out_freq(n_freq))
        else:
            raise ValueError(
                "SEResNet: pooling must be 'avg', 'max', 'asp' or 'stats', "
                "got "
                f"{pooling!r}"
            )
        pooled = self.out_channels * self.pool.out_factor
        hidden = self.out_channels if head_hidden is None else head_hidden
        self.head = EmbeddingHead(pooled, hidden, emb_dim, dropout)

    def _make_layer(self, block_cls, planes, n_blocks, stride, last_act):
        """Build one stage as torchvision does (named ``layerN.i``)."""
        downsample = None
        out_planes = planes * block_cls.expansion
        if stride != 1 or self._inplanes != out_planes:
            downsample = nn.Sequential(
                _conv1x1(self._inplanes, out_planes, stride),
                nn.BatchNorm2d(out_planes),
            )
        layers = []
        for i in range(n_blocks):
            act = last_act if i == n_blocks - 1 else "relu"
            layers.append(
                block_cls(
                    self._inplanes,
                    planes,
                    stride if i == 0 else 1,
                    downsample if i == 0 else None,
                    act,
                )
            )
            self._inplanes = out_planes
        return nn.Sequential(*layers)

    def _init_trunk(self):
        """torchvision's initialisation of the convolutions and BN."""
        trunk = [self.conv1, self.bn1]
        trunk += [getattr(self, f"layer{i}") for i in range(1, 5)]
        for part in trunk:
            for m in part.modules():
                if isinstance(m, nn.Conv2d):
                    nn.init.kaiming_normal_(
                        m.weight, mode="fan_out", nonlinearity="relu"
                    )
                elif isinstance(m, nn.BatchNorm2d):
                    nn.init.ones_(m.weight)
                    nn.init.zeros_(m.bias)

    def out_freq(self, n_freq):
        """Frequency rows of the conv5 map for ``n_freq`` input bins.

        Arguments
        ---------
        n_freq : int
            Frequency bins of the input features.

        Returns
        -------
        int
            ``F'`` after the stem and the strided stages.

        Example
        -------
        >>> SEResNet(depth=18, base_width=4, emb_dim=8).out_freq(80)
        3
        >>> SEResNet(depth=18, base_width=4, emb_dim=8, stem_kernel=3,
        ...          stem_stride=1, stem_pool=False).out_freq(80)
        10
        """
        kernel, stride, pool = self.stem
        f = _out_size(int(n_freq), kernel, stride, kernel // 2)
        if pool:
            f = _out_size(f, 3, 2, 1)
        for layer in (self.layer1, self.layer2, self.layer3, self.layer4):
            f = _out_size(f, 3, layer[0].stride, 1)
        return f

    def arrange(self, x):
        """Bring the input to ``[B, in_channels, F, T]``.

        Arguments
        ---------
        x : torch.Tensor
            SpeechBrain features ``[B, T, F]`` (transposed and repeated to
            ``in_channels``), or an image ``[B, C, F, T]`` with
            ``C == in_channels`` or ``C == 1`` (repeated).

        Returns
        -------
        torch.Tensor
            ``[B, in_channels, F, T]``.

        Example
        -------
        >>> model = SEResNet(depth=18, base_width=4, emb_dim=8)
        >>> model.arrange(torch.rand(2, 50, 20)).shape
        torch.Size([2, 3, 20, 50])
        """
        if x.dim() == 3:
            x = x.transpose(1, 2).unsqueeze(1)
        elif x.dim() != 4:
            raise ValueError(
                "SEResNet: input x must be SpeechBrain features [B, T, F] or "
                f"an image [B, C, F, T], got shape {tuple(x.shape)}"
            )
        channels = x.shape[1]
        if channels != self.in_channels:
            if channels != 1:
                raise ValueError(
                    f"SEResNet: input x has {channels} channels, the model "
                    f"expects {self.in_channels} (or 1, which is repeated)"
                )
            x = x.expand(-1, self.in_channels, -1, -1)
        return x

    def frames_from_lengths(self, lengths, n_frames):
        """Real frames of each item from SpeechBrain's relative lengths.

        Arguments
        ---------
        lengths : torch.Tensor
            ``[B]`` relative lengths in (0, 1].
        n_frames : int
            Time size ``T`` of the (padded) batch.

        Returns
        -------
        torch.Tensor
            Integer ``[B]``: ``round(lengths * T)`` clamped to ``[1, T]``.

        Example
        -------
        >>> model = SEResNet(depth=18, base_width=4, emb_dim=8)
        >>> model.frames_from_lengths(torch.tensor([1.0, 0.5, 0.01]), 10)
        tensor([10,  5,  1])
        """
        lengths = torch.as_tensor(lengths)
        if lengths.dim() != 1:
            raise ValueError(
                "SEResNet: lengths must be a 1-D tensor of relative lengths "
                f"[B], got shape {tuple(lengths.shape)}"
            )
        if not _is_tracing():
            bad = (lengths <= 0) | (lengths > 1.0 + 1e-4)
            if bool(bad.any()):
                raise ValueError(
                    "SEResNet: lengths are relative lengths in (0, 1] "
                    f"(SpeechBrain convention), got {lengths.tolist()}"
                )
        frames = torch.round(lengths.double() * n_frames).long()
        return frames.clamp(1, n_frames)

    def trunk(self, x, lengths=None):
        """Run the stem, the stages and the gates.

        Arguments
        ---------
        x : torch.Tensor
            ``[B, T, F]`` or ``[B, C, F, T]`` (see :meth:`arrange`).
        lengths : torch.Tensor, optional
            ``[B]`` relative lengths (SpeechBrain convention).

        Returns
        -------
        feats : torch.Tensor
            The conv5 feature map ``[B, out_channels, F', T']``.
        n_frames : torch.Tensor or None
            Integer ``[B]``: real frames of each item at ``T'``, or
            ``None`` when every frame is real.

        Example
        -------
        >>> model = SEResNet(depth=18, base_width=4, emb_dim=8).eval()
        >>> feats, n = model.trunk(torch.rand(2, 3, 32, 64), torch.ones(2))
        >>> feats.shape, n
        (torch.Size([2, 32, 1, 2]), None)
        """
        x = self.arrange(x)
        t = x.shape[-1]
        n = None
        if lengths is not None:
            lengths = torch.as_tensor(lengths)
            if lengths.dim() != 1 or lengths.shape[0] != x.shape[0]:
                raise ValueError(
                    f"SEResNet: lengths must have shape [{x.shape[0]}] (one "
                    f"relative length per item), got {tuple(lengths.shape)}"
                )
            n = self.frames_from_lengths(lengths.to(x.device), t)
            if not _is_tracing() and bool((n >= t).all()):
                n = None  # no padding: skip the masks

        def mask_of(frames, size):
            if frames is None:
                return None
            return time_mask(frames, size, x.dtype)

        mask = mask_of(n, t)
        if mask is not None:
            x = x * mask
        x = self.relu(self.bn1(self.conv1(x)))
        if n is not None:
            kernel, stride, pool = self.stem
            n = _out_frames(n, kernel, stride, kernel // 2)
            x = x * mask_of(n, x.shape[-1])
            if pool:
                n = _out_frames(n, 3, 2, 1)
        x = self.maxpool(x)
        mask = mask_of(n, x.shape[-1])
        for stage in range(2, 6):
            for block in getattr(self, f"layer{stage - 1}"):
                if block.stride != 1 and n is not None:
                    t_out = _out_size(x.shape[-1], 3, block.stride, 1)
                    n_out = _out_frames(n, 3, block.stride, 1)
                    mask_out = mask_of(n_out, t_out)
                else:
                    n_out, mask_out = n, mask
                x = block(x, mask, mask_out)
                n, mask = n_out, mask_out
            gate_name = f"conv{stage}"
            if gate_name in self.gates:
                # the trunk owns x: at inference the gate may overwrite it
                x = self.gates[gate_name](x, mask, inplace=True)
        return x, n

    def forward(self, x, lengths=None):
        """Compute speaker embeddings.

        Arguments
        ---------
        x : torch.Tensor
            SpeechBrain features ``[B, T, F]`` or an image ``[B, C, F, T]``.
        lengths : torch.Tensor, optional
            ``[B]`` relative lengths (SpeechBrain convention); padded
            frames are left out (see the module's notes).

        Returns
        -------
        torch.Tensor
            ``[B, 1, emb_dim]``.
        """
        feats, n = self.trunk(x, lengths)
        return self.head(self.pool(feats, n)).unsqueeze(1)


class LinearClassifier(nn.Module):
    """Linear speaker classifier for the softmax term (as in the code).

    Keeps the layout of its input: ``[B, 1, D] -> [B, 1, n_classes]``
    (SpeechBrain's convention, like ``ECAPA_TDNN.Classifier``) and
    ``[B, D] -> [B, n_classes]``. Returns raw logits (no softmax).

    Arguments
    ---------
    input_size : int
        Embedding size ``D``.
    n_classes : int
        Number of training speakers.
    bias : bool
        Whether the layer has a bias (the code's ``nn.Linear`` does).

    Example
    -------
    >>> clf = LinearClassifier(8, 5)
    >>> clf(torch.rand(3, 1, 8)).shape
    torch.Size([3, 1, 5])
    >>> clf(torch.rand(3, 8)).shape
    torch.Size([3, 5])
    """

    def __init__(self, input_size, n_classes, bias=True):
        super().__init__()
        self.out = nn.Linear(input_size, n_classes, bias=bias)

    def forward(self, x):
        """Return the logits.

        Arguments
        ---------
        x : torch.Tensor
            ``[B, 1, D]`` or ``[B, D]``.

        Returns
        -------
        torch.Tensor
            ``[B, 1, n_classes]`` or ``[B, n_classes]``.
        """
        if x.dim() not in (2, 3):
            raise ValueError(
                "LinearClassifier: x must be [B, D] or [B, 1, D], got shape "
                f"{tuple(x.shape)}"
            )
        return self.out(x)


@dataclasses.dataclass
class LoadReport:
    """What :func:`load_torchvision_weights` did.

    Arguments
    ---------
    path : str
        The weights file.
    loaded : list of str
        Model keys filled from the file.
    missing : list of str
        Trunk keys of the model that the file lacks (left as initialised).
    new : list of str
        Keys of dampit's own modules (gates, PReLU slopes, pooling, head),
        which no torchvision file has; left as initialised.
    unexpected : list of str
        Keys of the file that the model does not have.
    ignored : list of str
        Keys deliberately skipped (torchvision's ``fc.*`` classifier).
    shape_mismatch : list of tuple
        ``(key, file_shape, model_shape)`` of keys left out because the
        shapes differ and cannot be adapted.
    adapted : list of str
        Keys loaded after an adaptation, with what was done.

    Example
    -------
    >>> r = LoadReport("w.pth", loaded=["conv1.weight"])
    >>> r.ok
    True
    """

    path: str
    loaded: list = dataclasses.field(default_factory=list)
    missing: list = dataclasses.field(default_factory=list)
    new: list = dataclasses.field(default_factory=list)
    unexpected: list = dataclasses.field(default_factory=list)
    ignored: list = dataclasses.field(default_factory=list)
    shape_mismatch: list = dataclasses.field(default_factory=list)
    adapted: list = dataclasses.field(default_factory=list)

    @property
    def ok(self):
        """True when every trunk tensor was loaded and nothing was left."""
        return not (self.missing or self.unexpected or self.shape_mismatch)

    def summary(self):
        """Return a readable multi-line summary.

        Returns
        -------
        str
            The counts, then the keys of every problem.

        Example
        -------
        >>> print(LoadReport("w.pth", missing=["bn1.bias"]).summary())
        torchvision weights w.pth: 0 loaded, 1 missing, 0 unexpected, ...
          missing (left as initialised): bn1.bias
        """
        lines = [
            f"torchvision weights {self.path}: {len(self.loaded)} loaded, "
            f"{len(self.missing)} missing, {len(self.unexpected)} unexpected, "
            f"{len(self.shape_mismatch)} shape mismatches, "
            f"{len(self.ignored)} ignored (fc), {len(self.new)} dampit-only "
            "(gates/head, left as initialised)"
        ]
        for note in self.adapted:
            lines.append(f"  adapted: {note}")
        if self.missing:
            lines.append(
                "  missing (left as initialised): " + ", ".join(self.missing)
            )
        if self.unexpected:
            lines.append("  unexpected: " + ", ".join(self.unexpected))
        for key, src, dst in self.shape_mismatch:
            lines.append(
                f"  shape mismatch, not loaded: {key} file {tuple(src)} "
                f"model {tuple(dst)}"
            )
        return "\n".join(lines)

    def __str__(self):
        return self.summary()


def _is_dampit_only(key):
    """True for keys of modules that torchvision's ResNet does not have."""
    return key.startswith(("gates.", "pool.", "head.")) or key.endswith(
        ".relu.weight"
    )


def _read_state_dict(path):
    """Read a state dict with ``torch.load(weights_only=True)``."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(
            f"load_torchvision_weights: weights file not found: {path}"
        )
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises many types on bad files
        raise ValueError(
            f"load_torchvision_weights: cannot read {path} as a PyTorch "
            f"state dict ({type(e).__name__}: {e})"
        ) from e
    for wrapper in ("state_dict", "model"):
        if isinstance(obj, dict) and isinstance(obj.get(wrapper), dict):
            obj = obj[wrapper]
    if not isinstance(obj, dict) or not obj:
        raise ValueError(
            f"load_torchvision_weights: {path} does not hold a state dict "
            f"(a non-empty mapping of names to tensors); got {type(obj)}"
        )
    state = {}
    for key, value in obj.items():
        if not isinstance(value, torch.Tensor):
            raise ValueError(
                f"load_torchvision_weights: {path}: entry {key!r} is a "
                f"{type(value).__name__}, not a tensor"
            )
        key = str(key)
        if key.startswith("module."):
            key = key[len("module.") :]
        state[key] = value
    return state


def load_torchvision_weights(
    model, path, strict=False, in_channel_reduce="sum"
):
    """Initialise a :class:`SEResNet` trunk from a torchvision state dict.

    The file (e.g. torchvision's ImageNet ``resnet50-*.pth``) is read with
    ``torch.load(weights_only=True)``; nothing is downloaded. Keys are
    matched by name; ``fc.*`` (ImageNet classifier) is ignored; the gates,
    the PReLU slope and the head keep their initialisation. When the model
    has one input channel and the file's ``conv1.weight`` has three, the
    kernel is reduced over the RGB axis: ``"sum"`` (default) gives exactly
    the response of the 3-channel network to the spectrogram copied three
    times (the paper's input), so the ImageNet batch-norm statistics stay
    matched; ``"mean"`` averages (a third of that response).

    Arguments
    ---------
    model : SEResNet
        The model to fill (in place).
    path : str or os.PathLike
        The state dict file; a dict wrapping it under ``"state_dict"`` or
        ``"model"`` and ``"module."`` prefixes are accepted.
    strict : bool
        Raise ``ValueError`` (after logging the report) when a trunk key is
        missing, unexpected or of another shape.
    in_channel_reduce : str
        ``"sum"`` or ``"mean"``: how a 3-channel ``conv1`` kernel is
        adapted to a 1-channel model.

    Returns
    -------
    LoadReport
        What was loaded, missing, unexpected, ignored and adapted; also
        logged (INFO, or WARNING when something was not loaded).

    Example
    -------
    >>> import os, tempfile
    >>> src = SEResNet(depth=18, base_width=4, emb_dim=8, gate="none")
    >>> state = {k: v for k, v in src.state_dict().items()
    ...          if not k.startswith(("head.", "layer4.1.relu."))}
    >>> path = os.path.join(tempfile.mkdtemp(), "resnet18.pth")
    >>> torch.save(state, path)
    >>> model = SEResNet(depth=18, base_width=4, emb_dim=8, in_channels=1)
    >>> report = load_torchvision_weights(model, path)
    >>> report.adapted
    ['conv1.weight: 3-channel kernel summed to 1 channel']
    >>> report.ok, len(report.missing)
    (True, 0)
    """
    if in_channel_reduce not in ("sum", "mean"):
        raise ValueError(
            "load_torchvision_weights: in_channel_reduce must be 'sum' or "
            f"'mean', got {in_channel_reduce!r}"
        )
    source = _read_state_dict(path)
    target = model.state_dict()
    report = LoadReport(path=os.fspath(path))
    to_load = {}
    for key, value in source.items():
        if key.startswith("fc."):
            report.ignored.append(key)
            continue
        if key not in target:
            report.unexpected.append(key)
            continue
        want = target[key].shape
        if value.shape != want:
            if (
                key == "conv1.weight"
                and value.dim() == 4
                and value.shape[1] == 3
                and want[1] == 1
                and value.shape[0] == want[0]
                and value.shape[2:] == want[2:]
            ):
                reduce = torch.sum if in_channel_reduce == "sum" else torch.mean
                value = reduce(value, dim=1, keepdim=True)
                verb = "summed" if in_channel_reduce == "sum" else "averaged"
                report.adapted.append(
                    f"{key}: 3-channel kernel {verb} to 1 channel"
                )
            else:
                report.shape_mismatch.append((key, tuple(value.shape), want))
                continue
        to_load[key] = value
        report.loaded.append(key)
    for key in target:
        if key in to_load or key.endswith("num_batches_tracked"):
            continue
        if _is_dampit_only(key):
            report.new.append(key)
        elif not any(key == m[0] for m in report.shape_mismatch):
            report.missing.append(key)
    model.load_state_dict(to_load, strict=False)

    text = report.summary()
    if not report.loaded:
        logger.warning("%s\n  nothing was loaded: wrong file?", text)
    elif report.ok:
        logger.info(text)
    else:
        logger.warning(text)
    if strict and not report.ok:
        raise ValueError(
            f"load_torchvision_weights(strict=True) failed:\n{text}"
        )
    return report
