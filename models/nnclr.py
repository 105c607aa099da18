"""NNCLR projector and predictor (Dwibedi et al. 2021, as quoted by lightly's NNCLRProjectionHead
and NNCLRPredictionHead), for the SimCLR builder with a predictor.

- projector: 3 fully-connected layers [hidden, hidden, out], each followed by BatchNorm (affine),
  ReLU after all but the last;
- predictor: 2 fully-connected layers [pred_hidden, out], BatchNorm + ReLU after the hidden one.

Bias choice: a Linear followed by BatchNorm has no bias (the BN shift makes it redundant; lightly
does the same); the predictor's last Linear, with no BN after it, keeps its bias. solo-learn keeps
biases everywhere, which changes only the parameter count, not the function class.
"""

from __future__ import annotations

from torch import nn


def _fc_bn(in_dim: int, out_dim: int, relu: bool) -> list[nn.Module]:
    layers: list[nn.Module] = [nn.Linear(in_dim, out_dim, bias=False), nn.BatchNorm1d(out_dim)]
    return layers + [nn.ReLU(inplace=True)] if relu else layers


def nnclr_heads(
    feat_dim: int, hidden: int = 2048, pred_hidden: int = 4096, out: int = 256
) -> tuple[nn.Sequential, nn.Sequential]:
    """NNCLR (projector, predictor): feat_dim->hidden->hidden->out and out->pred_hidden->out."""
    projector = nn.Sequential(
        *_fc_bn(feat_dim, hidden, relu=True),
        *_fc_bn(hidden, hidden, relu=True),
        *_fc_bn(hidden, out, relu=False),
    )
    predictor = nn.Sequential(
        *_fc_bn(out, pred_hidden, relu=True),
        nn.Linear(pred_hidden, out),
    )
    return projector, predictor
