"""The PPO loop: rollout → rewards and advantages → several PPO epochs over minibatches; logs, checkpoints, resume.

One step = one rollout of `batch_size` prompts, then `ppo_epochs` passes over it in minibatches of
`mini_batch_size` (each split into `grad_accum` micro-batches). Following the N-details reproduction of Ziegler
et al. 2019 (Huang et al., "The N Implementation Details of RLHF with PPO"):
- the policy samples at `temperature` and its log-probabilities are always computed from logits / temperature
  (align.logprobs.score_targets: only the reply positions go through the LM head);
- dropout is off in every model (policy, reference, value), so old and new log-probabilities agree at the start;
- the score is normalised with a gain and bias so the *initial* policy's replies have mean 0 and std 1 (Ziegler
  2019 §2.1), optionally clipped, and a reply that never reaches EOS gets a fixed score instead (N-details);
- per-token reward = -beta * KL to the reference, plus the score at the reply's last token; beta fixed or
  adaptive (Ziegler's controller); advantages by GAE (gamma 1, lambda 0.95) and whitened per rollout;
- Adam with eps 1e-5 and a learning rate that decays linearly to 0 over the run (N-details).

Everything that changes during training is in the checkpoint (trainable weights, optimizer, scheduler, KL
controller, reward normaliser, history, step); sampling and minibatch order are seeded by the step number, so a
resumed run continues exactly where the interrupted one would have gone.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import shutil
import time
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import torch
from torch import nn

from align.logprobs import score_targets, token_logprobs
from align.ppo import core
from align.ppo.settings import PPOSettings  # noqa: F401  (the loop's settings; re-exported)
from align.paths import move_into_place
from align.training import REWARD_PLOT, StepTrackers, save_history
from align.ppo.rollout import Messages, RewardFunction, Rollout, sample, stop_token_ids

STATE_FILE = "ppo_state.pt"


# ------------------------------------------------------------------------------------------------ models


class ActorCritic(nn.Module):
    """The policy (a causal LM, maybe a peft model) and its value function, trained together.

    value="head": a scalar head on the policy's last hidden state, initialised to zero (lm-human-preferences, the
    code of Ziegler et al. 2019 that the N-details post reproduces, puts the value head on the policy's trunk);
    cheapest on CPU: one forward and backward gives both.
    value=<a reward model>: a separate value network initialised from the RM, trunk and head (InstructGPT, Ouyang
    et al. 2022 §3.5 / appendix C.3: "we initialize the value function from the RM"); pass the RM's
    AutoModelForSequenceClassification.
    """

    def __init__(self, lm, value_model=None, value_lora=None):
        super().__init__()
        self.lm = lm
        if value_model is None:
            hidden = lm.config.get_text_config().hidden_size
            self.value_head = nn.Linear(hidden, 1)
            nn.init.zeros_(self.value_head.weight)
            nn.init.zeros_(self.value_head.bias)
            self.value_trunk = None
        else:
            trunk = getattr(value_model, value_model.base_model_prefix)
            if value_lora is not None:  # LoRA on the value trunk too; its head (one row) trains in full
                from peft import get_peft_model

                trunk = get_peft_model(trunk, value_lora)
            self.value_trunk = trunk
            self.value_head = value_model.score

    def forward(self, query_ids, query_mask, reply_ids, reply_mask, temperature: float):
        """Per reply token: log-probability of the sampled token, entropy of the policy, and the value."""
        ids, attention, positions, targets = _joined(query_ids, query_mask, reply_ids, reply_mask)
        width = reply_ids.shape[1]
        shared = self.value_trunk is None
        scored = score_targets(self.lm, ids, attention, targets, temperature=temperature, entropy=True,
                               position_ids=positions, output_hidden_states=shared, use_cache=False)
        if shared:
            hidden = scored.output.hidden_states[-1][:, -width - 1:-1]
        else:
            hidden = self.value_trunk(input_ids=ids, attention_mask=attention, position_ids=positions,
                                      use_cache=False).last_hidden_state[:, -width - 1:-1]
        values = self.value_head(hidden.to(self.value_head.weight.dtype)).squeeze(-1).float()
        return scored.logprobs[:, -width:], scored.entropy[:, -width:], values


def _joined(query_ids, query_mask, reply_ids, reply_mask):
    """The query and reply side by side: ids, attention mask, position ids, and the reply's tokens as targets."""
    ids = torch.cat([query_ids, reply_ids], dim=1)
    attention = torch.cat([query_mask, reply_mask.to(query_mask.dtype)], dim=1)
    positions = (attention.cumsum(dim=1) - 1).clamp(min=0)  # as generate() numbers left-padded rows
    targets = torch.cat([torch.zeros_like(query_mask, dtype=torch.bool), reply_mask.bool()], dim=1)
    return ids, attention, positions, targets


@torch.no_grad()
def reference_logprobs(reference, query_ids, query_mask, reply_ids, reply_mask, temperature: float,
                       context: Callable | None = None) -> torch.Tensor:
    """Log-probabilities of the reply tokens under the frozen reference (context: e.g. peft's disable_adapter)."""
    ids, attention, positions, targets = _joined(query_ids, query_mask, reply_ids, reply_mask)
    with (context() if context else nullcontext()):
        logprobs = token_logprobs(reference, ids, attention, targets, temperature, position_ids=positions,
                                  use_cache=False)
    return logprobs[:, -reply_ids.shape[1]:]


def disable_dropout(*models) -> None:
    """Dropout off everywhere (N-details: otherwise the first PPO ratio is not 1)."""
    for model in models:
        if model is not None:
            for module in model.modules():
                if isinstance(module, nn.Dropout):
                    module.p = 0.0


# ------------------------------------------------------------------------------------------------ options


@dataclass
class StepLog:
    """Running means of the per-minibatch statistics of one step."""

    sums: dict = field(default_factory=dict)
    counts: dict = field(default_factory=dict)

    def add(self, **values) -> None:
        for key, value in values.items():
            self.sums[key] = self.sums.get(key, 0.0) + float(value)
            self.counts[key] = self.counts.get(key, 0) + 1

    def means(self) -> dict:
        return {key: self.sums[key] / self.counts[key] for key in self.sums}


# ------------------------------------------------------------------------------------------------ trainer


class PPOTrainer:
    """Trains `actor_critic` on `prompts` against `reward_fn`, penalised by the KL to `reference`.

    reference: a frozen causal LM, or None with `reference_context` (LoRA: the policy with its adapter disabled).
    extra_rewards: (name, function) terms added to the normalised score (toxicity penalty...), each logged.
    trackers: where each step's figures go (align.training.trackers' names: tensorboard under logs_dir, mlflow into
    the active run, with the settings as its params; () for none); history.json and reward.png go to logs_dir.
    """

    def __init__(self, actor_critic: ActorCritic, tokenizer, prompts: Sequence[Messages], reward_fn: RewardFunction,
                 settings: PPOSettings, *, reference=None, reference_context: Callable | None = None,
                 extra_rewards: Sequence[tuple[str, RewardFunction]] = (), checkpoints_dir: Path | str,
                 logs_dir: Path | str | None = None, trackers: Sequence[str] = ("tensorboard",), accelerator=None,
                 progress: bool = True):
        from accelerate import Accelerator
        from transformers import get_scheduler

        if reference is None and reference_context is None:
            raise ValueError("PPO needs a reference: a frozen model, or a context that disables the adapter")
        if not prompts:
            raise ValueError("PPO needs at least one prompt")
        self.settings = s = settings
        self.tokenizer = tokenizer
        self.prompts = list(prompts)
        self.reward_fn = reward_fn
        self.extra_rewards = list(extra_rewards)
        self.reference_context = reference_context
        self.checkpoints_dir = Path(checkpoints_dir)
        self.logs_dir = Path(logs_dir) if logs_dir else None
        self.trackers = list(trackers)
        self.progress = progress
        self.accelerator = accelerator or Accelerator(cpu=not torch.cuda.is_available())
        disable_dropout(actor_critic, reference)
        if reference is not None:
            reference.eval().requires_grad_(False)
            reference.to(self.accelerator.device)
        self.reference = reference if reference is not None else actor_critic.lm
        params = [p for p in actor_critic.parameters() if p.requires_grad]
        optimizer = torch.optim.AdamW(params, lr=s.lr, eps=s.adam_eps, weight_decay=s.weight_decay)
        updates = s.max_steps * s.ppo_epochs * math.ceil(s.batch_size / s.mini_batch_size)
        scheduler = get_scheduler(s.lr_scheduler, optimizer, num_warmup_steps=int(s.warmup_ratio * updates),
                                  num_training_steps=updates)
        self.model, self.optimizer, self.scheduler = self.accelerator.prepare(actor_critic, optimizer, scheduler)
        self.kl = core.kl_controller(s.kl_coef, s.adaptive_kl, s.kl_target, s.kl_horizon)
        self.reward_norm: tuple[float, float] | None = None  # (mean, std) of the initial policy's scores
        self.step = 0
        self.history: list[dict] = []
        self.stop_ids = stop_token_ids(tokenizer, self.unwrapped.lm)

    @property
    def unwrapped(self) -> ActorCritic:
        return self.accelerator.unwrap_model(self.model)

    # -------------------------------------------------------------------------------------------- data

    def batch_prompts(self, step: int) -> list[Messages]:
        """The prompts of a step: epochs over the data, each in its own seeded order (a function of the step)."""
        n, size = len(self.prompts), self.settings.batch_size
        chosen = []
        for position in range(step * size, (step + 1) * size):
            epoch, index = divmod(position, n)
            order = torch.randperm(n, generator=torch.Generator().manual_seed(self.settings.seed + epoch))
            chosen.append(self.prompts[int(order[index])])
        return chosen

    # ----------------------------------------------------------------------------------------- scoring

    def scores(self, rollout: Rollout) -> tuple[torch.Tensor, dict]:
        """The per-reply score paid at the last token, and its parts for the log."""
        s = self.settings
        raw = torch.tensor([float(x) for x in self.reward_fn(rollout.prompts, rollout.replies)], dtype=torch.float32)
        if len(raw) != len(rollout.replies):
            raise ValueError(f"the reward function returned {len(raw)} scores for {len(rollout.replies)} replies")
        parts = {"reward": raw.mean().item(), "reward_std": raw.std().item() if len(raw) > 1 else 0.0}
        score = raw
        if s.normalize_reward:
            if self.reward_norm is None:  # Ziegler 2019 §2.1: gain and bias from the initial policy's samples
                std = raw.std().item() if len(raw) > 1 else 1.0
                self.reward_norm = (raw.mean().item(), std if std > 1e-6 else 1.0)
            mean, std = self.reward_norm
            score = (raw - mean) / std
        for name, function in self.extra_rewards:
            term = torch.tensor([float(x) for x in function(rollout.prompts, rollout.replies)], dtype=torch.float32)
            parts[name] = term.mean().item()
            score = score + term
        lengths = rollout.reply_lengths.float().cpu()
        if s.length_penalty:
            score = score - s.length_penalty * lengths
            parts["length_penalty"] = (-s.length_penalty * lengths).mean().item()
        if s.reward_clip > 0:
            score = score.clamp(-s.reward_clip, s.reward_clip)
        if s.missing_eos_score is not None:  # N-details: a reply that never ends gets a fixed low score
            score = torch.where(rollout.ended.cpu(), score, torch.full_like(score, s.missing_eos_score))
        parts["score"] = score.mean().item()
        return score, parts

    # ------------------------------------------------------------------------------------------- steps

    def _chunks(self, size: int, total: int):
        for start in range(0, total, size):
            yield slice(start, min(start + size, total))

    @torch.no_grad()
    def rollout(self, step: int) -> tuple[Rollout, dict, dict]:
        """Sample, score, and compute everything the PPO epochs need."""
        s = self.settings
        model = self.unwrapped
        torch.manual_seed(s.seed * 1000003 + step)
        batch = sample(model.lm, self.tokenizer, self.batch_prompts(step), max_new_tokens=s.max_new_tokens,
                       temperature=s.temperature, stop_ids=self.stop_ids)
        logprobs, ref_logprobs, values = [], [], []
        model.eval()
        for part in self._chunks(s.mini_batch_size, len(batch.replies)):
            args = (batch.query_ids[part], batch.query_mask[part], batch.reply_ids[part], batch.reply_mask[part])
            lp, _, v = model(*args, temperature=s.temperature)
            logprobs.append(lp)
            values.append(v)
            ref_logprobs.append(reference_logprobs(self.reference, *args, s.temperature, self.reference_context))
        model.train()
        mask = batch.reply_mask
        logprobs, ref_logprobs, values = torch.cat(logprobs), torch.cat(ref_logprobs), torch.cat(values)
        score, parts = self.scores(batch)
        score = score.to(logprobs.device)
        kl = core.kl_penalty(logprobs, ref_logprobs, s.kl_estimator) * mask
        rewards = core.shaped_rewards(score, kl, mask, self.kl.value)
        if s.whiten_rewards:
            rewards = core.masked_whiten(rewards, mask, shift_mean=False)
        advantages, returns = core.gae(rewards, values, mask, s.gamma, s.lam)
        advantages = core.masked_whiten(advantages, mask)
        sequence_kl = (core.kl_penalty(logprobs, ref_logprobs, "k1") * mask).sum(dim=1)  # what the controller steers
        tensors = {"logprobs": logprobs, "values": values * mask, "advantages": advantages, "returns": returns}
        stats = {**parts, "kl": sequence_kl.mean().item(), "kl_coef": self.kl.value,
                 "reply_length": batch.reply_lengths.float().mean().item(),
                 "ended": batch.ended.float().mean().item(),
                 "non_score_reward": (-self.kl.value * kl).sum(dim=1).mean().item()}
        return batch, tensors, stats

    def optimise(self, step: int, batch: Rollout, tensors: dict) -> dict:
        """`ppo_epochs` passes over the rollout in shuffled minibatches."""
        s = self.settings
        log = StepLog()
        n = len(batch.replies)
        micro = max(1, s.mini_batch_size // max(1, s.grad_accum))
        generator = torch.Generator().manual_seed(s.seed * 7919 + step)
        for _ in range(s.ppo_epochs):
            order = torch.randperm(n, generator=generator)
            for mb in self._chunks(s.mini_batch_size, n):
                indices = order[mb]
                self.optimizer.zero_grad()
                pieces = [indices[i:i + micro] for i in range(0, len(indices), micro)]
                for rows in pieces:
                    rows = rows.to(batch.query_ids.device)
                    mask = batch.reply_mask[rows]
                    logprobs, entropy, values = self.model(batch.query_ids[rows], batch.query_mask[rows],
                                                           batch.reply_ids[rows], mask, temperature=s.temperature)
                    pg_loss, pg_stats = core.policy_loss(logprobs, tensors["logprobs"][rows],
                                                         tensors["advantages"][rows], mask, s.clip_range)
                    vf_loss, vf_stats = core.value_loss(values, tensors["values"][rows], tensors["returns"][rows],
                                                        mask, s.clip_range_value)
                    loss = (pg_loss + s.vf_coef * vf_loss) / len(pieces)
                    self.accelerator.backward(loss)
                    log.add(policy_loss=pg_loss.item(), value_loss=vf_loss.item(), loss=loss.item() * len(pieces),
                            entropy=core.masked_mean(entropy.detach(), mask).item(), **pg_stats, **vf_stats)
                if s.max_grad_norm and s.max_grad_norm > 0:
                    self.accelerator.clip_grad_norm_(self.model.parameters(), s.max_grad_norm)
                self.optimizer.step()
                self.scheduler.step()
        return {**log.means(), "lr": self.scheduler.get_last_lr()[0]}

    def train(self, resume_from: str | Path | None = None) -> dict:
        """Run (or resume) to `max_steps`; returns a summary of the history."""
        from tqdm.auto import tqdm

        s = self.settings
        if resume_from:
            self.load_checkpoint(resume_from)
        tracking = StepTrackers(self.trackers, self.logs_dir, "ppo", params=dataclasses.asdict(s))
        started = time.perf_counter()
        try:
            with tqdm(total=s.max_steps, initial=self.step, desc="ppo", unit="step", disable=not self.progress) as bar:
                while self.step < s.max_steps:
                    step_started = time.perf_counter()
                    batch, tensors, stats = self.rollout(self.step)
                    stats.update(self.optimise(self.step, batch, tensors))
                    self.kl.update(stats["kl"], n_steps=len(batch.replies))  # Ziegler: after each batch
                    self.step += 1
                    stats = {"step": self.step, **{k: round(v, 6) for k, v in stats.items()},
                             "step_s": round(time.perf_counter() - step_started, 2)}
                    self.history.append(stats)
                    tracking.log(stats, self.step)
                    bar.update(1)
                    bar.set_postfix(reward=f"{stats['reward']:.3f}", kl=f"{stats['kl']:.2f}",
                                    len=f"{stats['reply_length']:.0f}")
                    if s.logging_steps and self.step % s.logging_steps == 0 and not self.progress:
                        print(f"[ppo] step {self.step}: reward {stats['reward']:.4f} kl {stats['kl']:.3f} "
                              f"entropy {stats['entropy']:.3f} clip {stats['clip_frac']:.3f} "
                              f"vf_loss {stats['value_loss']:.4f} len {stats['reply_length']:.1f}", flush=True)
                    if s.save_steps and self.step % s.save_steps == 0 and self.step < s.max_steps:
                        self.save_checkpoint()
        finally:
            tracking.close()
        if self.logs_dir is not None:
            save_history(self.history, self.logs_dir, REWARD_PLOT)
        return summarize(self.history, time.perf_counter() - started)

    # ------------------------------------------------------------------------------------ checkpoints

    def trainable_state(self) -> dict:
        model = self.unwrapped
        trainable = {name for name, p in model.named_parameters() if p.requires_grad}
        return {k: v.detach().cpu().clone() for k, v in model.state_dict().items() if k in trainable}

    def save_checkpoint(self) -> Path:
        """checkpoint-<step>/ppo_state.pt, written beside and renamed into place; old ones beyond the limit go."""
        self.checkpoints_dir.mkdir(parents=True, exist_ok=True)
        final = self.checkpoints_dir / f"checkpoint-{self.step}"
        tmp = self.checkpoints_dir / f".tmp-checkpoint-{self.step}"
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir()
        torch.save({"step": self.step, "model": self.trainable_state(), "optimizer": self.optimizer.state_dict(),
                    "scheduler": self.scheduler.state_dict(), "kl": self.kl.state_dict(),
                    "reward_norm": self.reward_norm, "history": self.history}, tmp / STATE_FILE)
        (tmp / "trainer_state.json").write_text(json.dumps({"step": self.step, "kl_coef": self.kl.value},
                                                           indent=1), encoding="utf-8")
        move_into_place(tmp, final)
        kept = sorted((p for p in self.checkpoints_dir.glob("checkpoint-*") if p.name.split("-")[-1].isdigit()),
                      key=lambda p: int(p.name.split("-")[-1]))
        for old in kept[:-max(1, self.settings.save_total_limit)]:
            shutil.rmtree(old, ignore_errors=True)
        return final

    def load_checkpoint(self, folder: str | Path) -> None:
        from align.errors import AlignError

        path = Path(folder) / STATE_FILE
        if not path.is_file():
            raise AlignError(f"--resume: {path} is missing (not a PPO checkpoint)")
        state = torch.load(path, map_location="cpu", weights_only=False)
        model = self.unwrapped
        missing = set(state["model"]) - set(model.state_dict())
        if missing:
            raise AlignError(f"--resume: {folder} does not match this model (e.g. {sorted(missing)[:3]}); "
                             f"was it written with other lora/value settings?")
        model.load_state_dict(state["model"], strict=False)
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.kl.load_state_dict(state["kl"])
        self.reward_norm = tuple(state["reward_norm"]) if state["reward_norm"] else None
        self.history = list(state["history"])
        self.step = int(state["step"])


# --------------------------------------------------------------------------------------------- history


def summarize(history: list[dict], wall_s: float) -> dict:
    """Figures for the manifest: reward and KL at the start and the end of training, and throughput."""
    if not history:
        return {"steps": 0}
    window = max(1, min(3, len(history) // 3 or 1))
    first, last = history[:window], history[-window:]

    def mean(rows, key):
        return round(sum(r[key] for r in rows) / len(rows), 4)

    return {"steps": history[-1]["step"], "train_reward_first": mean(first, "reward"),
            "train_reward_last": mean(last, "reward"), "train_kl_last": mean(last, "kl"),
            "train_reply_length_first": mean(first, "reply_length"),
            "train_reply_length_last": mean(last, "reply_length"),
            "kl_coef_last": history[-1]["kl_coef"], "train_wall_s": round(wall_s, 1)}
