"""What a run trains and how fast: frozen encoder parts, the gradual unfreezing schedule, AdamW with its
parameter groups, and the learning-rate schedule.

Parameter groups (hfmtl/model/freezing.py's `build_param_groups`): no weight decay on biases and norm
weights, layer-wise learning-rate decay and a head learning rate if asked; a loss weighting that learns
(uncertainty) gets a group of its own, at its own rate and without weight decay.

Example:
    >>> unfreezer = freeze_for_training(model, config)                        # doctest: +SKIP
    >>> optimizer = build_optimizer(model, config.train, balancer=None)       # doctest: +SKIP
    >>> scheduler = build_scheduler(optimizer, config.train, total_steps=1000)  # doctest: +SKIP
"""

from __future__ import annotations

import logging

import torch
from transformers import get_scheduler

from ..balancing import Balancer
from ..config import RunConfig, TrainConfig
from ..model.adapters import count_parameters
from ..model.freezing import GradualUnfreezer, build_param_groups, freeze_encoder_parts

logger = logging.getLogger("hfmtl")


def freeze_for_training(model, config: RunConfig) -> GradualUnfreezer | None:
    """Freeze the encoder parts the config names, log what trains, and return the gradual unfreezing
    schedule (None without ``train.gradual_unfreezing_steps``)."""
    args = config.train
    if args.freezes_encoder_parts:
        frozen = freeze_encoder_parts(
            model, embeddings=args.freeze_embeddings, bottom_layers=args.freeze_layers, encoder=args.freeze_encoder
        )
        logger.info("frozen: %.2fM encoder parameters", frozen / 1e6)
    trainable, total = count_parameters(model)
    logger.info(
        "model: %s encoder%s, %.2fM trainable of %.2fM parameters (%.2f%%)",
        model.config.encoder.model_type,
        f" + {config.peft.config['peft_type']} adapters ({config.peft.mode})" if config.peft else "",
        trainable / 1e6,
        total / 1e6,
        100 * trainable / total,
    )
    return GradualUnfreezer(model, args.gradual_unfreezing_steps) if args.gradual_unfreezing_steps else None


def build_optimizer(model, args: TrainConfig, balancer: Balancer | None) -> torch.optim.AdamW:
    """AdamW over the model's parameter groups, plus the balancer's learned parameters if it has any."""
    param_groups = build_param_groups(
        model,
        learning_rate=args.learning_rate,
        weight_decay=args.weight_decay,
        layerwise_lr_decay=args.layerwise_lr_decay,
        head_learning_rate=args.head_learning_rate,
    )
    learned = list(balancer.parameters()) if balancer is not None else []
    if learned:  # a learned loss weighting trains with the model: no weight decay, its own lr
        lr = getattr(balancer, "lr", args.learning_rate)
        param_groups.append({"params": learned, "weight_decay": 0.0, "lr": lr, "name": "balancer"})
    return torch.optim.AdamW(
        param_groups,
        lr=args.learning_rate,
        weight_decay=args.weight_decay,
        betas=(args.adam_beta1, args.adam_beta2),
        eps=args.adam_epsilon,
        fused=args.optim == "adamw_torch_fused" or None,  # None: torch picks foreach or the loop
    )


def build_scheduler(
    optimizer: torch.optim.Optimizer, args: TrainConfig, total_steps: int
) -> torch.optim.lr_scheduler.LRScheduler:
    """``train.lr_scheduler_type`` over `total_steps`, after ``train.warmup_steps`` (a count, or below 1 a
    ratio of `total_steps`).

    Not to be passed through `accelerator.prepare`: Accelerate would step it once per process per step;
    the loop steps it once per real optimizer step, so the schedule is the same on 1 or N processes.
    """
    return get_scheduler(args.lr_scheduler_type, optimizer, args.num_warmup_steps(total_steps), total_steps)
