"""The networks of the paper as Flax linen modules (NHWC in, [B, J, H, W] heatmaps out).

* Backbones: dilated fully convolutional ResNet-18…152 (`resnet.py`) and stacked hourglasses
  (`hourglass.py`), built by name with `create_model`, or from a `ModelConfig` (`factory.py`).
* Output strategies dsnt / fc / hm and the HM target encoder/decoder (`heads.py`).
* The pose loss of the paper's HM, FC, DSNT and DSNTr configurations (`loss.py`).
* torchvision ResNet state-dict import/export (`pretrained.py`).
* `python -m dsnt_jax.models` prints heatmap sizes, parameter counts and GFLOPs (`summary.py`).
"""

from dsnt_jax.models.factory import (
    BACKBONES,
    COMPUTE_DTYPES,
    PRECISIONS,
    ModelConfig,
    ModelConfigError,
    Precision,
    create_model,
    heatmap_size_for,
    input_size_for,
    parse_overrides,
)
from dsnt_jax.models.fold import FoldedModel, fold_batchnorm
from dsnt_jax.models.heads import (
    ACTIVATIONS,
    FC_NAME,
    OUTPUTS,
    Output,
    PoseNetwork,
    decode,
    decode_with_params,
    hm_decode,
    hm_encode,
    outputs_from_logits,
)
from dsnt_jax.models.hourglass import HOURGLASS_STACKS, HourglassPose
from dsnt_jax.models.layers import BatchNorm
from dsnt_jax.models.loss import REGULARIZERS, Regularizer, pose_loss, variance_reg_losses_normalized
from dsnt_jax.models.pretrained import (
    load_state_dict_file,
    load_torchvision_resnet,
    save_state_dict_file,
    save_torchvision_resnet,
    state_dict_to_variables,
    variables_to_state_dict,
)
from dsnt_jax.models.resnet import (
    RES_TO_DILATE,
    RESNET_SPECS,
    RESOLUTIONS,
    ResNet,
    ResNetPose,
    Resolution,
    feature_size,
    output_stride,
    stage_plan,
)
from dsnt_jax.models.summary import count_params, model_summary

__all__ = [
    "ACTIVATIONS",
    "BACKBONES",
    "COMPUTE_DTYPES",
    "PRECISIONS",
    "Precision",
    "FC_NAME",
    "FoldedModel",
    "HOURGLASS_STACKS",
    "OUTPUTS",
    "REGULARIZERS",
    "RESNET_SPECS",
    "RES_TO_DILATE",
    "RESOLUTIONS",
    "Output",
    "PoseNetwork",
    "Regularizer",
    "Resolution",
    "BatchNorm",
    "HourglassPose",
    "ModelConfig",
    "ModelConfigError",
    "ResNet",
    "ResNetPose",
    "count_params",
    "create_model",
    "decode",
    "decode_with_params",
    "feature_size",
    "fold_batchnorm",
    "heatmap_size_for",
    "hm_decode",
    "hm_encode",
    "input_size_for",
    "load_state_dict_file",
    "load_torchvision_resnet",
    "model_summary",
    "output_stride",
    "parse_overrides",
    "outputs_from_logits",
    "pose_loss",
    "save_state_dict_file",
    "save_torchvision_resnet",
    "stage_plan",
    "state_dict_to_variables",
    "variables_to_state_dict",
    "variance_reg_losses_normalized",
]
