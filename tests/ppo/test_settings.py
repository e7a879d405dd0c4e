"""One PPO schema: the loop's defaults are written once (align.ppo.settings), the recipe's ppo section takes them."""

import dataclasses

from align.ppo.settings import PPOSettings


def test_the_recipe_section_and_the_loop_share_every_default():
    from align.stages.ppo import Options

    options = {f.name: f.default for f in dataclasses.fields(Options)}
    loop = {f.name: f.default for f in dataclasses.fields(PPOSettings)}
    shared = set(options) & set(loop)
    assert len(shared) >= 30  # the ~33 fields that used to be written twice
    # Where the section sets its own default it is the loop's; the loop-only keys (seed, max_steps) come from the run.
    own = {"max_steps", "seed", "logging_steps", "save_steps", "grad_accum", "weight_decay", "max_grad_norm",
           "save_total_limit"}  # TrainOptions' generic defaults, shared by every stage
    assert {k for k in shared - own if options[k] != loop[k]} == set()
    settings = PPOSettings.from_options(Options(), seed=7, max_steps=3)
    assert (settings.seed, settings.max_steps) == (7, 3)
    assert all(getattr(settings, k) == options[k] for k in shared - {"seed", "max_steps"})
