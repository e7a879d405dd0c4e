"""One PPO schema: the loop's knobs are written once (align.ppo.settings, with their help and ranges); the recipe's
ppo section inherits them."""

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


def test_the_stage_writes_no_loop_knob_again():
    from align.ppo.settings import PPOLoopOptions
    from align.stages.ppo import Options

    loop = {f.name: f for f in dataclasses.fields(PPOLoopOptions)}
    assert set(Options.__annotations__) & set(loop) == set(), "stages/ppo.py redeclares a knob of the loop"
    section = {f.name: f for f in dataclasses.fields(Options)}
    for name, field in loop.items():  # the section's field is the loop's: default, help text and range
        assert (section[name].default, section[name].metadata) == (field.default, field.metadata), name
        assert field.metadata.get("help"), name
