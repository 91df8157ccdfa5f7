"""Configuration of the frozen-encoder evaluation (`vjepa/probe_train.py`): the reference
`video_classification_frozen` YAML sections (`data`, `optimization`, `pretrain`) plus this codebase's
`probe`, `meta` and `logging`."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import List, Optional

from data.config import DataAugConfig
from data.generated.motion_benchmark import MotionBenchmarkConfig

@dataclass
class ProbeDataConfig:
    """Reference `data:` section of the eval YAMLs.

    Args:
        dataset_train / dataset_val: CSV lists (`path label`) or class folders; both None = the built-in
            motion benchmark (`motion`).
        dataset_type: `VideoDataset` or `ImageDataset`. num_classes: None = read from the data.
        frames_per_clip / frame_step: clip length and frame step. num_segments: temporal clips per video
            (K400 16x8x3: 8; SSv2 16x2x3: 2). num_views_per_segment: spatial views at evaluation (3).
        root_path / image_folder / dataset_name: reference image-probe keys (IN1K): the folders
            `root_path/image_folder/{train,val}` are used.
        resolution: reference image-probe key; overrides `optimization.resolution` when set.
        num_workers: DataLoader workers.
    """

    dataset_train: Optional[str] = None
    dataset_val: Optional[str] = None
    dataset_type: str = "VideoDataset"
    num_classes: Optional[int] = None
    frames_per_clip: int = 16
    frame_step: int = 4
    num_segments: int = 1
    num_views_per_segment: int = 1
    root_path: Optional[str] = None
    image_folder: Optional[str] = None
    dataset_name: Optional[str] = None
    resolution: Optional[int] = None
    num_workers: int = 4
    motion: MotionBenchmarkConfig = field(default_factory=MotionBenchmarkConfig)


@dataclass
class ProbeOptimizationConfig:
    """Reference `optimization:` section. LRs and WDs of the grid are absolute; each probe's start/final
    LR scale with its LR. Warmup is in epochs.

    Args:
        attend_across_segments: the probe sees the tokens of all segments of a view at once.
        lr_grid / wd_grid: one probe per (lr, wd) pair; empty = [lr] / [weight_decay].
        final_weight_decay: cosine WD schedule to this value (None = constant, as V-JEPA).
        clip_grad: max grad norm per probe (reference 1.0). use_bfloat16: encoder autocast on GPU.
        cache_features: encode each sample once for the whole run (see module docstring).
    """

    attend_across_segments: bool = False
    num_epochs: int = 20
    resolution: int = 224
    batch_size: int = 4
    weight_decay: float = 0.01
    final_weight_decay: Optional[float] = None
    lr: float = 1e-3
    start_lr: float = 1e-3
    final_lr: float = 0.0
    warmup: float = 0.0
    lr_grid: List[float] = field(default_factory=list)
    wd_grid: List[float] = field(default_factory=list)
    clip_grad: Optional[float] = 1.0
    use_bfloat16: bool = True
    cache_features: bool = False


@dataclass
class EncoderSourceConfig:
    """Reference `pretrain:` section: which frozen encoder to probe. Geometry left at None is read from
    the checkpoint (see `vjepa.official.load_encoder`).

    Args:
        checkpoint: a checkpoint file, or its name inside `folder`. checkpoint_key: which weights.
        folder: reference key; also where results go (`folder/<eval_name>/<tag>`) unless logging.folder.
        random_init: probe a randomly initialised encoder of the checkpoint's (or model_name's) geometry.
        use_sdpa / tight_silu / write_tag / frame_step / clip_duration: reference keys; attention always
            uses SDPA; SiLU MLPs are not supported (use_silu must be false).
    """

    checkpoint: Optional[str] = None
    checkpoint_key: str = "target_encoder"
    folder: Optional[str] = None
    model_name: Optional[str] = None
    patch_size: Optional[int] = None
    tubelet_size: Optional[int] = None
    frames_per_clip: Optional[int] = None
    uniform_power: Optional[bool] = None
    use_rope: Optional[bool] = None
    num_heads: Optional[int] = None
    random_init: bool = False
    seed: int = 0
    clip_duration: Optional[float] = None
    frame_step: Optional[int] = None
    use_sdpa: bool = True
    use_silu: bool = False
    tight_silu: bool = False
    write_tag: str = "jepa"


@dataclass
class ProbeHeadConfig:
    """The probe itself.

    Args:
        type: `attentive` or `linear`. num_probe_blocks: 1 (V-JEPA) or 4 (V-JEPA 2).
        num_heads: probe heads (None = the encoder's). use_proj: output projection in the cross-attention.
        knn_k: also report a k-NN score on mean-pooled tokens with this k (0 = off; needs cached features).
        linear_readout: also report a linear probe on mean-pooled tokens, best over `linear_lr_grid`
            (needs cached features; see `vjepa.readouts`).
        low_shot: also report this probe trained on `low_shot` labelled samples per class (0 = off; needs
            cached features), for as many optimizer steps as the full probe.
    """

    type: str = "attentive"
    num_probe_blocks: int = 1
    num_heads: Optional[int] = None
    use_proj: bool = True
    knn_k: int = 20
    linear_readout: bool = False
    linear_lr_grid: List[float] = field(default_factory=lambda: [1e-3, 3e-3, 1e-2, 3e-2])
    low_shot: int = 0


@dataclass
class ProbeMetaConfig:
    seed: int = 0
    dtype: str = "bfloat16"


@dataclass
class ProbeLoggingConfig:
    folder: Optional[str] = None
    log_every: int = 20
    tensorboard: bool = False


@dataclass
class ProbeConfig:
    task: str = "probe"
    eval_name: str = "video_classification_frozen"
    tag: Optional[str] = None
    resume_checkpoint: bool = False
    data: ProbeDataConfig = field(default_factory=ProbeDataConfig)
    data_aug: DataAugConfig = field(default_factory=lambda: DataAugConfig(
        # Reference probe recipe: RandAugment, random erasing 0.25, no flip, wider crop scale.
        random_resize_scale=[0.08, 1.0], random_resize_aspect_ratio=[0.75, 4 / 3], horizontal_flip=False,
        auto_augment=True, reprob=0.25))
    optimization: ProbeOptimizationConfig = field(default_factory=ProbeOptimizationConfig)
    pretrain: EncoderSourceConfig = field(default_factory=EncoderSourceConfig)
    probe: ProbeHeadConfig = field(default_factory=ProbeHeadConfig)
    meta: ProbeMetaConfig = field(default_factory=ProbeMetaConfig)
    logging: ProbeLoggingConfig = field(default_factory=ProbeLoggingConfig)
